"""The machine-readable report: the report dict as JSON, keys sorted so output is deterministic."""
from __future__ import annotations

import json

from diag.fsutil import write_text


def dumps(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(report: dict, path: str) -> None:
    """Write atomically (a CI job never reads a half-written report); devices in place."""
    write_text(path, dumps(report))
