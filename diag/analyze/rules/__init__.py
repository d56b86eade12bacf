"""One module per finding id; each exposes `ID` and `check(ctx) -> Finding | None`.

The ids are the JSON contract of the report (docs/report-schema.md) and never change meaning.
Rules are discovered: every module of this package with an `ID` and a `check` runs (common.py,
the shared builders, has neither). docs/extending.md says how to add one.
"""
from __future__ import annotations

from dataclasses import replace

from diag.analyze.context import AnalysisContext
from diag.model import Finding
from diag.units import SEVERITY_RANK, ladder

TAXONOMY = ("disk-sync", "file-io", "small-reads", "small-writes", "cpu-bound", "cpu-stall",
            "event-loop-blocked", "lock-contention", "gil-contention", "gc-pause", "explicit-sleep",
            "slow-upstream", "accept-backlog", "time-wait")



def all_rules():
    """The rule modules of this package, by module name (the order does not matter: findings
    are ranked after every rule has run)."""
    import importlib
    import pkgutil

    mods = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)]
    rules = [m for m in sorted(mods, key=lambda m: m.__name__) if hasattr(m, "ID") and hasattr(m, "check")]
    unknown = {m.ID for m in rules} - set(TAXONOMY)
    assert not unknown, f"rules with ids outside the taxonomy: {unknown}"
    return rules


def run_rules(ctx: AnalysisContext) -> list[Finding]:
    """Every rule's finding, ranked by share (then severity, then absolute impact)."""
    found = []
    for rule in all_rules():
        f = rule.check(ctx)
        if f is not None:
            assert f.id in TAXONOMY, f.id
            found.append(f)
    # By share of the time explained; findings below the harm thresholds (info) come after the
    # ones that are not, so a large share of something harmless never hides a real cause; a
    # finding that explains no measured time (a count of sockets) comes after every one that does
    # and is never more than info.
    found = [f if f.impact_ns or f.severity == "info" else replace(f, severity="info") for f in found]
    found.sort(key=lambda f: (f.severity != "info", f.impact_ns > 0, f.share, SEVERITY_RANK[f.severity], f.impact_ns),
               reverse=True)
    return found


def severity_for(share: float, impact_ns: int, worst_ns: int) -> str:
    """Severity from the share of time explained and the absolute harm.

    critical: explains most of the slow time and single occurrences cost tens of ms;
    warning: a real fraction and at least a few ms per occurrence; info: the rest.
    """
    return ladder(share, worst_ns, 5_000_000, 20_000_000, warning_share=0.2)
