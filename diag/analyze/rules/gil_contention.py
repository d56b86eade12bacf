"""`gil-contention`: request threads wait for the GIL while a thread that serves no request holds it.

With the probe's wakeups and the runtime sampler, a GIL wait is a futex wait inside the
interpreter's GIL state, and the time is attributed to the threads that held the GIL over it
(diag.analyze.blame). When those holders serve requests themselves, the cure is the request code
(`cpu-bound` takes that time); when they are background threads (a cache refresher, a metrics
loop, a spinning worker), this finding names them and their frames.

Without wakeups it falls back to durations: many short futex waits (at most the 5 ms switch
interval) on several serving threads, with on-CPU time in the slow requests.
"""
from __future__ import annotations

from diag.analyze.blame import BACKGROUND, CPU, GIL, RUNQ
from diag.analyze.context import AnalysisContext
from diag.analyze.rules.common import (STRACE_NOTE, frames_line, holder_frames_line, is_python, severity,
                                       slow_window, strace_inflated)
from diag.analyze.rules.lock_contention import long_behind, long_waits
from diag.model import Evidence, Finding
from diag.units import fmt_duration

ID = "gil-contention"
MIN_SHARE = 0.25
MIN_USER_NS = 1_000_000
RECOMMENDATION = ("A thread that serves no request holds the GIL: move its work to a process "
                  "(multiprocessing, a separate worker), to native code that releases the GIL, make it yield "
                  "(smaller batches, time.sleep(0) between them), or run it less often.")


def check(ctx: AnalysisContext) -> Finding | None:
    ra = ctx.req
    if ra is None or not ra.slow or not is_python(ctx):
        return None
    if ra.followed:
        return _from_chains(ctx)
    return _from_durations(ctx)


def _from_chains(ctx: AnalysisContext) -> Finding | None:
    ra = ctx.req
    tot = ra.slow_total_ns
    bg = [b for sr in ra.slow for b in sr.blame if b.via == GIL and b.role == BACKGROUND and b.root in (CPU, RUNQ)]
    ns = sum(b.ns for b in bg)
    share = ns / tot if tot else 0.0
    if share < MIN_SHARE / 2.5:             # 10 %: below that, background GIL use is noise
        return None
    gil_all = ra.blamed(via=GIL)
    holders = sorted({b.holder for b in bg if b.holder is not None})
    evidence = [Evidence("ebpf (wakeups) + runtime", f"request threads waited {fmt_duration(gil_all)} for the GIL "
                                                     f"in slow requests; {fmt_duration(ns)} of it ({share:.0%} of "
                                                     f"slow-request time) while thread(s) {holders[:5]}, which serve "
                                                     f"no request, held it", slow_window(ra.slow))]
    h = holder_frames_line(ctx, bg, "what the background thread(s) ran while holding the GIL")
    if h:
        evidence.append(h)
    per_req = ns / len(ra.slow)
    return Finding(ID, severity(share, per_req), share,
                   f"a background thread holds the GIL: {share:.0%} of slow-request time, {fmt_duration(per_req)} "
                   f"per slow request, waiting for thread(s) {holders[:3]}", tuple(evidence), RECOMMENDATION, ns)


def _from_durations(ctx: AnalysisContext) -> Finding | None:
    ra = ctx.req
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
    evidence = [Evidence("syscalls", f"{fmt_duration(short)} of {fmt_duration(ra.slow_total_ns)} ({share:.0%}) of "
                                     f"slow-request time in short futex waits (≤ 6 ms, the GIL's hand-off) on "
                                     f"{len(threads)} threads (no wakeup records: waits judged by their duration)")]
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
