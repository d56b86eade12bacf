"""`lock-contention`: requests wait on a user-space lock while its holder works.

With the probe's wakeups, every lock wait of a slow request is followed to the thread that
released the lock and to what that thread did meanwhile (diag.analyze.blame). The holder's own
CPU work under the lock is this finding's time; a holder blocked in fsync, asleep or waiting on
an upstream hands the waits to that root's finding (disk-sync, explicit-sleep, slow-upstream),
where they rank with the holder's own call. This finding then still names the lock as the
mechanism, at info.

Without wakeups (strace, or an older capture) it falls back to durations: futex waits longer than
CPython's GIL switch interval are lock waits, less the part spent behind another thread's
blocking call.
"""
from __future__ import annotations

from collections import Counter

from diag.analyze.blame import CPU, FUTEX, GC, LOCK, OTHER, RUNQ, Blame
from diag.analyze.context import AnalysisContext
from diag.analyze.rules.common import (MIN_SHARE, STRACE_NOTE, calls_line, frames_line, holder_frames_line,
                                       severity, slow_window, strace_inflated)
from diag.model import Evidence, Finding
from diag.syscalls import family
from diag.units import fmt_duration

ID = "lock-contention"
GIL_WAIT_MAX_NS = 6_000_000     # CPython's switch interval (5 ms) plus scheduling slack
HOLDER_WORK = (CPU, RUNQ, FUTEX, OTHER)      # the holder's own doing (GC is gc-pause's)
ROOT_NAMES = {"sync": "fsync", "sleep": "a sleep", "upstream": "an upstream call", "file": "file I/O",
              "socket": "client socket I/O", "poll": "a poll", GC: "garbage collection", CPU: "CPU work",
              RUNQ: "waiting for a CPU", FUTEX: "another lock", OTHER: "other work"}
RECOMMENDATION = ("Shorten the critical section (no I/O or sleeps while holding the lock), split the lock, or "
                  "use per-thread/per-connection state; the frames above name the code that holds it.")


def check(ctx: AnalysisContext) -> Finding | None:
    ra = ctx.req
    if ra is None or not ra.slow:
        return None
    if ra.followed:
        return _from_chains(ctx)
    return _from_durations(ctx)


def _from_chains(ctx: AnalysisContext) -> Finding | None:
    ra = ctx.req
    tot = ra.slow_total_ns
    lock: list[Blame] = [b for sr in ra.slow for b in sr.blame if b.via == LOCK]
    waited = sum(b.ns for b in lock)
    if not tot or waited / tot < MIN_SHARE:
        return None
    own = sum(b.ns for b in lock if b.root in HOLDER_WORK)
    share = own / tot
    roots = Counter()
    for b in lock:
        roots[b.root] += b.ns
    waiters = {b.chain[0] for b in lock}
    holders = Counter()
    for b in lock:
        if b.holder is not None and b.root in HOLDER_WORK:
            holders[b.holder] += b.ns
    parts = ", ".join(f"{ROOT_NAMES.get(r, r)} {fmt_duration(ns)}" for r, ns in roots.most_common())
    evidence = [Evidence("ebpf (wakeups)", f"{len(waiters)} request threads waited {fmt_duration(waited)} of "
                                           f"{fmt_duration(tot)} ({waited / tot:.0%}) of slow-request time on "
                                           f"user-space locks; over those waits the holder was: {parts}",
                         slow_window(ra.slow))]
    if holders:
        evidence.append(Evidence("ebpf (wakeups)", "lock holders (the threads that released the lock): " +
                                 ", ".join(f"tid {t} {fmt_duration(ns)}" for t, ns in holders.most_common(4))))
        h = holder_frames_line(ctx, [b for b in lock if b.root in HOLDER_WORK],
                               "Python frames of the holders while the requests waited (the critical section)")
        if h:
            evidence.append(h)
    f = frames_line(ra.slow, "Python frames where the requests wait (the line that takes the lock)")
    if f:
        evidence.append(f)
    per_req = own / len(ra.slow)
    if share >= MIN_SHARE:
        sev = severity(share, per_req, ra.typical_without("futex", ctx.idx))
        summary = (f"lock contention: {share:.0%} of slow-request time waiting for a lock while its holder works "
                   f"({fmt_duration(per_req)} per slow request)")
        return Finding(ID, sev, share, summary, tuple(evidence), RECOMMENDATION, own)
    # the lock is only the mechanism: its root has its own finding, which ranks the time
    top = roots.most_common(1)[0][0]
    summary = (f"lock contention as the mechanism: {waited / tot:.0%} of slow-request time waiting for a lock "
               f"held across {ROOT_NAMES.get(top, top)} (ranked under that cause)")
    return Finding(ID, "info", waited / tot, summary, tuple(evidence), RECOMMENDATION, waited)


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


def _from_durations(ctx: AnalysisContext) -> Finding | None:
    ra = ctx.req
    waits = long_waits(ctx)
    total = max(0, sum(c.dur_ns or 0 for c in waits) - long_behind(ctx))
    share = total / ra.slow_total_ns if ra.slow_total_ns else 0.0
    threads = {c.tid for c in waits}
    if share < MIN_SHARE or len(threads) < 1:
        return None
    per_req = total / len(ra.slow)
    evidence = [Evidence("syscalls", f"{len(waits)} futex waits longer than {fmt_duration(GIL_WAIT_MAX_NS)} (a GIL "
                                     f"hand-off never waits that long) in {len(ra.slow)} slow requests on "
                                     f"{len(threads)} threads: {fmt_duration(total)} of {fmt_duration(ra.slow_total_ns)} "
                                     f"({share:.0%}) while the lock holder was not itself blocked in a syscall "
                                     f"(no wakeup records: waits judged by their duration)")]
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
                   f"{len(threads)} threads", tuple(evidence), RECOMMENDATION, total)
