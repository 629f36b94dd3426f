"""report.json against its JSON Schema, and report.html: self-contained, every plot decodes,
in Pillow and in headless Chromium, for a real job with a search and a recovery."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from PIL import Image

from secateurs.engine.budget import Budget
from secateurs.engine.spec import CompressSpec, DataSpec, ModelSpec, ProtocolSpec, RecoverySpec, TransformSpec
from secateurs.engine.pipeline import REPORT_VERSION, compress
from secateurs.engine.report.html import render_report_html
from secateurs.engine.report.schema import load_report_schema, validate_report

QUICK = ProtocolSpec(warmup_runs=3, warmup_seconds=0.0, window=10, min_samples=20, max_seconds=0.5)  # no latency asserted
DIGITS = TransformSpec(resize=32)
DATA_URI = re.compile(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars")


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """A small real job with every report section: a params budget (search), labelled digits
    (accuracy) and two epochs of recovery."""
    out = tmp_path_factory.mktemp("job")
    spec = CompressSpec(model=ModelSpec(arch="zoo:resnet20", arch_kwargs={"width": 8}), input_shape=(1, 3, 32, 32),
                        out_dir=out, protocol=QUICK, exports=("onnx", "plan"), calibration_samples=32,
                        cache_dir=out / "cache", budget=Budget(params=20_000),
                        data=DataSpec(source="digits", split="test", channels=3, transform=DIGITS, limit=64),
                        train_data=DataSpec(source="digits", split="train", channels=3, transform=DIGITS, limit=256),
                        recovery=RecoverySpec(epochs=2, batch_size=32, max_steps_per_epoch=4, lr=0.05,
                                              warmup_epochs=0.0))
    result = compress(spec)
    assert result.artifacts["report_html"] == out / "report.html"
    return result.report, out


def test_report_of_a_real_job_matches_the_schema(job: tuple[dict[str, Any], Path]) -> None:
    report, out = job
    on_disk = json.loads((out / "report.json").read_text())
    validate_report(on_disk)
    schema = load_report_schema()
    assert schema["properties"]["schema_version"]["const"] == REPORT_VERSION == on_disk["schema_version"]
    assert set(schema["required"]) == set(on_disk)  # every key documented, none left out
    assert on_disk["job"]["id"] is None and on_disk["job"]["seconds"] > 0
    assert on_disk["search"]["trace"] and on_disk["recovery"]["history"]
    hist = on_disk["latency"]["compressed"]["histogram"]
    assert sum(hist["counts"]) == on_disk["latency"]["compressed"]["n"] and len(hist["edges_ms"]) == len(
        hist["counts"]) + 1
    assert on_disk["measurements"]["latency"] > 2  # the search measured layers and candidates too
    broken = dict(on_disk, latency={**on_disk["latency"], "speedup": "fast"})
    with pytest.raises(jsonschema.ValidationError, match="speedup"):
        validate_report(broken)


def _images(page: str) -> dict[str, Image.Image]:
    images = {}
    for alt, data in DATA_URI.findall(page):
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        image.load()
        images[alt] = image
    return images


def test_report_html_is_self_contained_with_a_plot_per_section(job: tuple[dict[str, Any], Path]) -> None:
    report, out = job
    page = (out / "report.html").read_text()
    images = _images(page)
    assert set(images) == {"Per-group pruning", "Latency distribution", "Search trace", "Recovery",
                           "Where the time went"}
    assert all(im.format == "PNG" and im.width > 300 and im.height > 100 for im in images.values())
    assert page.count("<img") == len(images)
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing to fetch: it opens offline
    assert "<script" not in page and "zoo:resnet20" in page and "budget met" in page
    # without a search or recovery there is simply no such plot
    bare = dict(report, search=None, recovery=None)
    assert set(_images(render_report_html(bare))) == {"Per-group pruning", "Latency distribution",
                                                      "Where the time went"}


def test_report_html_opens_in_headless_chromium_and_every_image_decodes(
        job: tuple[dict[str, Any], Path], chromium_bin: str, tmp_path: Path) -> None:
    _, out = job
    page = (out / "report.html").read_text()
    # a copy that writes, once loaded, each image's decoded size into the DOM
    probe = page.replace("</body>", "<script>window.addEventListener('load', () => document.body.setAttribute("
                                    "'data-decoded', JSON.stringify([...document.images].map("
                                    "i => [i.complete, i.naturalWidth, i.naturalHeight]))));</script></body>")
    (tmp_path / "probe.html").write_text(probe)
    common = [chromium_bin, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--virtual-time-budget=10000", "--dump-dom", (tmp_path / "probe.html").as_uri()],
                         capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    decoded = json.loads(re.search(r'data-decoded="([^"]*)"', dom.stdout).group(1).replace("&quot;", '"'))
    expected = [(im.width, im.height) for im in _images(page).values()]
    assert [(w, h) for _, w, h in decoded] == expected and all(done for done, _, _ in decoded)

    shot = tmp_path / "report.png"
    done = subprocess.run([*common, f"--screenshot={shot}", "--window-size=1200,1600",
                           (out / "report.html").as_uri()], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1200, 1600)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50  # text and plots, not a blank page
