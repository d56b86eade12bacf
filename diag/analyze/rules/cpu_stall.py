"""`cpu-stall`: high cycles per instruction while the target runs (cache misses, branch
mispredictions). Needs hardware counters: on VMs without them the matrix says not measurable."""
from __future__ import annotations

from diag.analyze.context import AnalysisContext
from diag.analyze.matrix import HIGH_CPI, perf_counters
from diag.model import Evidence, Finding

ID = "cpu-stall"


def check(ctx: AnalysisContext) -> Finding | None:
    c = perf_counters(ctx)
    cycles, instructions = c.get("cycles"), c.get("instructions")
    if not cycles or not instructions:
        return None
    cpi = cycles / instructions
    if cpi < HIGH_CPI:
        return None
    ra = ctx.req
    share = ra.share("user") if ra is not None and ra.slow else 0.0
    if share < 0.1:
        return None
    return Finding(ID, "warning" if cpi >= 2.5 else "info", share,
                   f"CPU stalls: {cpi:.2f} cycles per instruction while user-space time dominates",
                   (Evidence("perf", f"perf stat: {cycles:,} cycles / {instructions:,} instructions = CPI {cpi:.2f}"),),
                   "Look for cache-unfriendly data structures and unpredictable branches in the hot functions "
                   "(perf record -e cache-misses, perf annotate).", ra.total("user"))
