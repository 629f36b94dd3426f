"""The JSON Schema of report.json (schema.json beside it, shipped as package data).

Validation needs the `jsonschema` package, which the server does not depend on:
tests and pipelines that check reports install it.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Mapping

SCHEMA_FILE = "schema.json"


def load_report_schema() -> dict[str, Any]:
    """The schema as a dict (draft 2020-12)."""
    return json.loads(resources.files("secateurs.engine.report").joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


def validate_report(report: Mapping[str, Any]) -> None:
    """Raise jsonschema.ValidationError naming the first path that does not fit the schema."""
    import jsonschema

    schema = load_report_schema()
    jsonschema.validate(report, schema, cls=jsonschema.Draft202012Validator,
                        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
