"""`gc-pause`: runtime garbage collection in the stacks sampled during slow requests.

CPython's cyclic collector shows only in native frames (perf on an interpreter with symbols,
py-spy --native); an explicit gc.collect() shows as a Python frame.
"""
from __future__ import annotations

from diag.analyze.context import AnalysisContext
from diag.analyze.matrix import RUNTIME_FRAMES
from diag.analyze.rules.common import slow_window
from diag.model import Evidence, Finding

ID = "gc-pause"
GC_FRAMES = tuple(f for f in RUNTIME_FRAMES if "gc" in f.lower() or "unreachable" in f or "refs" in f) + ("collect",)


def _is_gc(frame) -> bool:
    return frame.function.startswith(GC_FRAMES[:-1]) or (frame.function == "collect" and (frame.file or "") in ("", "gc"))


def check(ctx: AnalysisContext) -> Finding | None:
    ra = ctx.req
    if ra is None or not ra.slow:
        return None
    samples = [s for sr in ra.slow for s in sr.samples if s.source in ("perf", "py-spy")]
    total = sum(s.weight for s in samples)
    if not total:
        return None
    gc = sum(s.weight for s in samples if any(_is_gc(f) for f in s.frames))
    share = gc / total
    if share < 0.1:
        return None
    sev = "warning" if share >= 0.25 else "info"
    return Finding(ID, sev, share, f"garbage collection in {share:.0%} of the stacks sampled during slow requests",
                   (Evidence("+".join(sorted({s.source for s in samples})),
                             f"{gc} of {total} samples in slow requests inside the collector", slow_window(ra.slow)),),
                   "Allocate fewer container objects per request; raise the GC thresholds (gc.set_threshold) or "
                   "gc.freeze() long-lived objects after start-up so collections scan less.", 0)
