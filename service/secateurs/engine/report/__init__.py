"""The report: its JSON Schema and the self-contained HTML page."""
