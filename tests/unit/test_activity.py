"""Offsets between clocks from thread activity (diag/activity.py), on synthetic threads whose
truth is known: a sampler sees a thread only between its blocked calls."""
from __future__ import annotations

import random

from diag.activity import blocked_intervals, find_offset, map_threads, process_blocked

MS = 1_000_000


def synthetic(seed=1, threads=(11, 12, 13), span_ms=8000, offset_ms=1_234_567_890_123):
    """Threads that block 20-120 ms then run 5-30 ms; samples every 10 ms while running, on a
    clock `offset_ms` behind the trace's."""
    rng = random.Random(seed)
    calls, samples = [], {}
    for tid in threads:
        t = rng.randrange(0, 50) * MS
        ts = []
        while t < span_ms * MS:
            block = rng.randrange(20, 120) * MS
            calls.append((tid, t, block))
            t += block
            run = rng.randrange(5, 30) * MS
            s = t + rng.randrange(1, 3) * MS
            while s < t + run - MS:
                ts.append(s - offset_ms * MS)
                s += 10 * MS
            t += run
        samples[tid] = ts
    return calls, samples


def test_offset_found_within_its_error():
    calls, samples = synthetic()
    blocked = blocked_intervals(calls)
    span = (0, 8000 * MS)
    true = 1_234_567_890_123 * MS
    lo = span[0] - max(max(v) for v in samples.values())
    hi = span[1] - min(min(v) for v in samples.values())
    m = find_offset(samples, blocked, lo, hi, span)
    assert m is not None
    assert abs(m.offset_ns - true) <= m.error_ns, (m.offset_ns - true, m.error_ns)
    assert m.error_ns <= 15 * MS and m.conflicts <= 0.05 * m.samples


def test_threads_that_never_block_give_no_offset():
    samples = {11: list(range(0, 5000 * MS, 10 * MS))}
    blocked = blocked_intervals([(11, t, 100_000) for t in range(0, 5000 * MS, MS)])     # 0.1 ms calls
    assert find_offset(samples, blocked, -10_000 * MS, 10_000 * MS, (0, 5000 * MS)) is None


def test_pthread_ids_are_matched_by_activity_at_the_process_offset():
    calls, samples = synthetic(seed=3)
    blocked = blocked_intervals(calls)
    renamed = {0x7F0000000000 + tid: ts for tid, ts in samples.items()}
    allp = sorted(x for v in renamed.values() for x in v)
    span = (0, 8000 * MS)
    m = find_offset({0: allp}, {0: process_blocked(blocked)}, span[0] - allp[-1], span[1] - allp[0], span)
    assert m is not None
    mapping = map_threads(renamed, blocked, m.offset_ns)
    assert mapping == {0x7F0000000000 + t: t for t in samples}


def test_threads_and_offset_found_together_when_the_process_is_never_idle():
    from diag.activity import assign_by_activity
    calls, samples = synthetic(seed=5, threads=(11, 12, 13, 14))
    # one more thread that never blocks: the process as a whole is never idle
    calls += [(15, t, 100_000) for t in range(0, 8000 * MS, 5 * MS)]
    blocked = blocked_intervals(calls)
    renamed = {0x7F0000000000 + tid: ts for tid, ts in samples.items()}
    span = (0, 8000 * MS)
    allp = sorted(x for v in renamed.values() for x in v)
    lo, hi = span[0] - allp[-1], span[1] - allp[0]
    assert find_offset({0: allp}, {0: process_blocked(blocked, 5)}, lo, hi, span) is None
    mapping = assign_by_activity(renamed, blocked, lo, hi, span)
    assert mapping == {0x7F0000000000 + t: t for t in samples}
    m = find_offset({mapping[p]: v for p, v in renamed.items()}, blocked, lo, hi, span)
    assert m is not None and abs(m.offset_ns - 1_234_567_890_123 * MS) <= m.error_ns
