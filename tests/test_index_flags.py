"""`make` installs with uv, given the indexes pip is configured with (tools/index_flags.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "index_flags.py"


def _module():
    spec = importlib.util.spec_from_file_location("index_flags", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pip_settings_become_uv_flags_in_pips_order():
    listing = "\n".join([
        ":env:.find-links='/opt/wheels'",
        ":env:.cert='/etc/ssl/certs/ca-certificates.crt'",  # not an index: left to uv's --native-tls
        "global.find-links='/opt/wheels'",  # the same directory twice is passed once
        "global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'",
        "global.index-url='https://mirror.example/simple'",
        "global.index-url='https://other.example/simple'",  # one index-url only: the first listed
    ])
    assert _module().pip_settings(listing) == {
        "find-links": ["/opt/wheels"],
        "extra-index-url": ["file:///opt/pypi/simple", "file:///opt/pypi-more/simple"],
        "index-url": ["https://mirror.example/simple"],
    }


def test_a_machine_without_settings_gets_no_flags():
    assert _module().pip_settings("global.cert='/etc/ssl/certs/ca-certificates.crt'\n") == {}
