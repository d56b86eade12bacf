"""One module per finding id; each exposes `ID` and `check(ctx) -> Finding | None`.

The ids are the JSON contract of the report (docs/report-schema.md) and never change meaning.
"""
from __future__ import annotations

from diag.analyze.context import AnalysisContext
from diag.model import Finding

TAXONOMY = ("disk-sync", "file-io", "small-reads", "small-writes", "cpu-bound", "cpu-stall",
            "event-loop-blocked", "lock-contention", "gil-contention", "gc-pause", "explicit-sleep",
            "slow-upstream", "accept-backlog", "time-wait")

SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}


def all_rules():
    from diag.analyze.rules import disk_sync

    return [disk_sync]


def run_rules(ctx: AnalysisContext) -> list[Finding]:
    """Every rule's finding, ranked by share (then severity, then absolute impact)."""
    found = []
    for rule in all_rules():
        f = rule.check(ctx)
        if f is not None:
            assert f.id in TAXONOMY, f.id
            found.append(f)
    found.sort(key=lambda f: (f.share, SEVERITY_ORDER[f.severity], f.impact_ns), reverse=True)
    return found


def severity_for(share: float, impact_ns: int, worst_ns: int) -> str:
    """Severity from the share of time explained and the absolute harm.

    critical: explains most of the slow time and single occurrences cost tens of ms;
    warning: a real fraction and at least a few ms per occurrence; info: the rest.
    """
    if share >= 0.5 and worst_ns >= 20_000_000:
        return "critical"
    if share >= 0.2 and worst_ns >= 5_000_000:
        return "warning"
    return "info"
