"""Renderers: each reads only the report dict (schema diag.report/1) and returns one output.

Every renderer module has the same shape (pyinstrument's): `NAME`, `EXTENSION` and
`render(report) -> str`. `for_path` picks one from an output file's extension and `write` writes
its text atomically; the CLI's --json/--html/--markdown and `--report FILE` go through them.
"""
from __future__ import annotations

from importlib import import_module
from types import ModuleType

from diag.errors import DiagError
from diag.fsutil import write_text

MODULES = ("json_report", "html", "markdown", "terminal")


def renderers() -> list[ModuleType]:
    return [import_module(f"diag.render.{m}") for m in MODULES]


def by_name(name: str) -> ModuleType:
    for r in renderers():
        if r.NAME == name:
            return r
    raise DiagError(f"no renderer {name!r}: choose from {', '.join(r.NAME for r in renderers())}")


def for_path(path: str) -> ModuleType:
    """The renderer whose extension the file has (report.html, report.json, summary.md, report.txt)."""
    low = path.lower()
    for r in renderers():
        if low.endswith(r.EXTENSION):
            return r
    raise DiagError(f"{path}: cannot tell the report format from the extension; use one of "
                    f"{', '.join(r.EXTENSION for r in renderers())}")


def write(report: dict, path: str, renderer: ModuleType | None = None, **kw) -> None:
    """Render and write atomically (a CI job never reads a half-written report)."""
    write_text(path, (renderer or for_path(path)).render(report, **kw))
