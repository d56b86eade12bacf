"""Where diag's non-Python files are: the eBPF probe sources and the report templates and assets.

A source checkout or an editable install has them at the top of the repository (`probes/`,
`reports/`); an installed wheel carries them as package data. Every module that needs one asks
here, so there is one answer for all three cases.
"""
from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_REPO = _PACKAGE.parent


def _first(*candidates: Path) -> Path:
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[0]


def probe_dir() -> Path:
    """probes/: the eBPF C sources and their shared header (DIAG_PROBE_DIR overrides)."""
    env = os.environ.get("DIAG_PROBE_DIR")
    return Path(env) if env else _first(_REPO / "probes", _PACKAGE / "_data" / "probes")


def reports_dir() -> Path:
    """reports/: HTML templates and static assets (DIAG_REPORTS_DIR overrides)."""
    env = os.environ.get("DIAG_REPORTS_DIR")
    return Path(env) if env else _first(_REPO / "reports", _PACKAGE / "_data" / "reports")


def package_root() -> Path:
    """The directory that holds the `diag` package: what a child interpreter needs on its path."""
    return _REPO
