"""The Python runtime as the critical path sees it: per process, where the GIL's state lives, who
held the GIL when, and when the cyclic GC ran.

From the runtime sampler's records (diag/collect/pyruntime.py) when the capture has them; empty
otherwise, and the critical path then follows a GIL wait to whichever thread woke it.
"""
from __future__ import annotations

from diag.analyze.blame import Runtime
from diag.model import Dataset


def runtime_of(data: Dataset) -> Runtime:
    ranges = [(w.pid, w.gil_state[0], w.gil_state[0] + w.gil_state[1]) for w in data.runtime_windows if w.gil_state]
    # the target's own, read once at the attach (when the runtime sampler did not run)
    target = (data.manifest or {}).get("target") or {}
    for t in [target, *(target.get("processes") or ())]:
        state = t.get("gil_state") if isinstance(t, dict) else None
        if isinstance(state, list) and len(state) == 2 and t.get("pid"):
            ranges.append((int(t["pid"]), int(state[0]), int(state[0]) + int(state[1])))
    index = data.runtime()
    return Runtime(index if index else None, ranges)
