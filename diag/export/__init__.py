"""Exports of a capture for other tools: Perfetto/Chrome trace JSON, speedscope, folded stacks.

Unlike the renderers (which read only the report dict), exports need the per-event records, so
they take the loaded Dataset, plus the report for what analysis added (findings, requests).
"""
from __future__ import annotations

from diag.errors import DiagError

FORMATS = ("perfetto", "speedscope", "folded")
# Longest suffix first: `x.speedscope.json` is speedscope, a plain `x.json` is a Perfetto trace.
_BY_SUFFIX = ((".speedscope.json", "speedscope"), (".folded", "folded"), (".collapsed", "folded"),
              (".txt", "folded"), (".perfetto.json", "perfetto"), (".trace.json", "perfetto"),
              (".json", "perfetto"))


def format_for(path: str | None, fmt: str | None) -> str:
    """The export format: --format if given, else chosen from the output file's extension."""
    if fmt:
        if fmt not in FORMATS:
            raise DiagError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
        return fmt
    for suffix, name in _BY_SUFFIX:
        if path and path.lower().endswith(suffix):
            return name
    raise DiagError("diag export: give --format perfetto|speedscope|folded (or an -o file ending in .json, "
                    ".speedscope.json or .folded)")


def export(data, report: dict, fmt: str) -> str:
    if fmt == "perfetto":
        from diag.export import perfetto

        return perfetto.dumps(perfetto.trace(data, report))
    if fmt == "speedscope":
        from diag.export import speedscope

        return speedscope.dumps(speedscope.profile(data, report))
    from diag.export import folded

    return folded.render(data.samples)
