"""The Python runtime as the analysis sees it: GIL holders and GC pauses over time, per process.

Filled from the runtime sampler's records (diag/collect/pyruntime.py) when the capture has them;
empty otherwise, and the critical path then follows GIL waits to whichever thread woke them.
"""
from __future__ import annotations

from diag.analyze.blame import Runtime
from diag.model import Dataset


def runtime_of(data: Dataset) -> Runtime:
    rt = Runtime()
    for r in getattr(data, "gil_holds", ()):      # filled once the runtime sampler's records exist
        rt.holders.setdefault(r.pid, []).append((r.start_ns, r.end_ns, r.tid))
    for g in getattr(data, "gc_pauses", ()):
        rt.gc.setdefault(g.pid, []).append((g.start_ns, g.end_ns, g.generation))
    for pid, lo, hi in getattr(data, "gil_ranges", ()):
        rt.gil_ranges.append((pid, lo, hi))
    for v in rt.holders.values():
        v.sort()
    return rt
