"""`lock-contention`: request threads waiting on locks (futex waits) on the request path.

A healthy threaded CPython server spends a lot of summed time in futex: GIL hand-offs are timed
futex waits of at most the switch interval (5 ms), repeated. So only waits longer than that
count here (a lock held across slow work); the short ones are `gil-contention`'s evidence.
"""
from __future__ import annotations

from diag.analyze.context import AnalysisContext
from diag.units import fmt_duration
from diag.analyze.rules.common import STRACE_NOTE, strace_inflated, MIN_SHARE, calls_line, frames_line, severity
from diag.model import Evidence, Finding
from diag.syscalls import family

ID = "lock-contention"
GIL_WAIT_MAX_NS = 6_000_000     # CPython's switch interval (5 ms) plus scheduling slack


def long_waits(ctx: AnalysisContext):
    ra = ctx.req
    return [c for s in ra.slow for c in s.calls if family(c.name) == "futex" and (c.dur_ns or 0) > GIL_WAIT_MAX_NS]


def long_behind(ctx: AnalysisContext) -> int:
    """The part of the long waits spent behind another thread's blocking call (fsync, sleep...):
    those waits are that call's latency, spread by the lock, and counted by its rule."""
    from diag.analyze.crossing import waits_behind

    ra = ctx.req
    total = 0
    for sr in ra.slow:
        longs = [c for c in sr.calls if family(c.name) == "futex" and (c.dur_ns or 0) > GIL_WAIT_MAX_NS]
        if longs:
            view = type(sr)(sr.request, sr.breakdown, longs, [])
            total += sum(waits_behind(view, ctx.idx, ra.upstream_fds).values())
    return total


def check(ctx: AnalysisContext) -> Finding | None:
    ra = ctx.req
    if ra is None or not ra.slow:
        return None
    waits = long_waits(ctx)
    total = max(0, sum(c.dur_ns or 0 for c in waits) - long_behind(ctx))
    share = total / ra.slow_total_ns if ra.slow_total_ns else 0.0
    threads = {c.tid for c in waits}
    if share < MIN_SHARE or len(threads) < 1:
        return None
    per_req = total / len(ra.slow)
    evidence = [Evidence("syscalls", f"{len(waits)} futex waits longer than {fmt_duration(GIL_WAIT_MAX_NS)} (a GIL hand-off "
                                     f"never waits that long) in {len(ra.slow)} slow requests on {len(threads)} "
                                     f"threads: {fmt_duration(total)} of {fmt_duration(ra.slow_total_ns)} ({share:.0%}) while "
                                     f"the lock holder was not itself blocked in a syscall")]
    line = calls_line(waits, "threads blocked on a lock held by another")
    if line:
        evidence.append(line)
    f = frames_line(ra.slow, "Python frames where the threads wait (the line that takes the lock)")
    if f:
        evidence.append(f)
    sev = severity(share, per_req, ra.typical_without("futex", ctx.idx))
    if strace_inflated(ctx):
        sev = "info"
        evidence.append(STRACE_NOTE)
    return Finding(ID, sev, share,
                   f"lock contention on the request path: {share:.0%} of slow-request time in long futex waits, "
                   f"{len(threads)} threads", tuple(evidence),
                   "Shorten the critical section (no I/O or sleeps while holding the lock), split the lock, or "
                   "use per-thread/per-connection state; the frames above name the line that takes it.", total)
