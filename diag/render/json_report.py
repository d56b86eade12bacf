"""The machine-readable report: the report dict as JSON, keys sorted so output is deterministic."""
from __future__ import annotations

import json
import os
import tempfile


def dumps(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(report: dict, path: str) -> None:
    """Write atomically: a CI job never reads a half-written report."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".report.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(dumps(report))
    os.replace(tmp, path)
