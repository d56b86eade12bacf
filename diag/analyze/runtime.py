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
    index = data.runtime()
    return Runtime(index if index else None, ranges)
