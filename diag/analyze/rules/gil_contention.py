"""`gil-contention`: Python threads runnable but waiting for the GIL on the request path.

Evidence: many short futex waits (GIL hand-offs are timed waits of at most the 5 ms switch
interval) on several serving threads of a Python target, inside slow requests whose remaining
time is user-space work.
"""
from __future__ import annotations

from diag.analyze.context import AnalysisContext
from diag.units import fmt_duration
from diag.analyze.rules.common import STRACE_NOTE, strace_inflated, frames_line, severity
from diag.analyze.rules.lock_contention import long_behind, long_waits
from diag.model import Evidence, Finding

ID = "gil-contention"
MIN_SHARE = 0.25
MIN_USER_NS = 1_000_000


def check(ctx: AnalysisContext) -> Finding | None:
    ra = ctx.req
    if ra is None or not ra.slow:
        return None
    target = (ctx.data.manifest or {}).get("target") or {}
    if not target.get("python") and not any(s.source == "py-spy" for s in ctx.data.samples):
        return None
    long_total = sum(c.dur_ns or 0 for c in long_waits(ctx))
    behind_short = sum(sum(s.behind.values()) for s in ra.slow) - long_behind(ctx)
    short = max(0, ra.total("futex") - long_total - behind_short)
    share = short / ra.slow_total_ns if ra.slow_total_ns else 0.0
    threads = {s.request.tid for s in ra.slow if s.breakdown.get("futex", 0) > 0}
    # Someone must hold the GIL doing Python work for waiting on it to be contention: without
    # on-CPU time in the slow requests, the waits are a starved CPU's (see the runq breakdown).
    user_per_req = ra.total("user") / len(ra.slow)
    if share < MIN_SHARE or len(threads) < 2 or user_per_req < MIN_USER_NS:
        return None
    per_req = short / len(ra.slow)
    evidence = [Evidence("syscalls", f"{fmt_duration(short)} of {fmt_duration(ra.slow_total_ns)} ({share:.0%}) of slow-request time "
                                     f"in short futex waits (≤ 6 ms, the GIL's hand-off) on {len(threads)} threads")]
    f = frames_line(ra.slow, "Python frames of the waiting threads")
    if f:
        evidence.append(f)
    # GIL hand-offs of a few hundred µs are how a threaded CPython server always runs, however
    # fast its median: only ms of waiting per slow request is contention worth fixing.
    sev = severity(share, per_req)
    if strace_inflated(ctx):
        sev = "info"
        evidence.append(STRACE_NOTE)
    return Finding(ID, sev, share,
                   f"threads wait for the GIL: {share:.0%} of slow-request time, {len(threads)} threads",
                   tuple(evidence),
                   "CPU-bound Python work in threads serializes on the GIL: move it to processes (multiprocessing, "
                   "a process pool, more worker processes), to native code that releases the GIL, or off the "
                   "request path.", short)
