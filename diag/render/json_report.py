"""The machine-readable report: the report dict as JSON, keys sorted so output is deterministic."""
from __future__ import annotations

import json

NAME = "json"
EXTENSION = ".json"


def render(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


dumps = render
