"""`event-loop-blocked`: the polling thread is busy or blocked between polls while events wait.

An event loop serves every connection from one thread: whatever that thread does between two
polls (a blocking syscall, a sleep, CPU work) delays all of them. Requests served by a polling
thread whose time is not socket I/O or polling are that blocked time; the largest part names
what blocks it.
"""
from __future__ import annotations

from diag.analyze.context import AnalysisContext
from diag.units import fmt_duration, ladder
from diag.analyze.rules.common import MIN_SHARE, calls_line, frames_line, slow_window
from diag.model import Evidence, Finding
from diag.syscalls import POLL_NAMES, family

ID = "event-loop-blocked"
# fsync, file I/O and upstream calls on the loop have their own findings (which say the thread is
# an event loop); this one covers what only the loop's structure makes harmful.
BLOCKING_KEYS = ("sleep", "futex", "user", "other", "connect")
LABEL = {"sleep": "sleep calls (time.sleep on the loop)", "sync": "fsync", "file": "file I/O",
         "futex": "lock waits", "upstream": "blocking upstream calls", "user": "CPU work between polls",
         "other": "other blocking syscalls", "connect": "blocking connect"}


def check(ctx: AnalysisContext) -> Finding | None:
    ra = ctx.req
    if ra is None or not ra.slow or not ctx.polling_tids:
        return None
    slow = [s for s in ra.slow if s.request.tid in ctx.polling_tids]
    if not slow:
        return None
    parts = {k: sum(s.breakdown.get(k, 0) for s in slow) for k in BLOCKING_KEYS}
    blocked = sum(parts.values())
    share = blocked / ra.slow_total_ns if ra.slow_total_ns else 0.0
    if share < MIN_SHARE:
        return None
    per_req = blocked / len(ra.slow)
    top = max(parts, key=parts.get)
    loop_tids = sorted({s.request.tid for s in slow})
    evidence = [Evidence("syscalls", f"{len(slow)} slow requests served by polling thread(s) {loop_tids}: "
                                     f"{fmt_duration(blocked)} of {fmt_duration(ra.slow_total_ns)} ({share:.0%}) spent blocking "
                                     f"the loop, mostly {LABEL[top]} ({fmt_duration(parts[top])})", slow_window(slow))]
    if top != "user":
        fams = {"sleep": ("sleep",), "futex": ("futex",), "connect": ("connect",)}.get(top)
        calls = [c for s in slow for c in s.calls if fams is None or family(c.name) in fams]
        line = calls_line([c for c in calls if family(c.name) not in ("poll",)], "on the event-loop thread")
        if line:
            evidence.append(line)
    polls = [e for e in ctx.timed_syscalls if e.name in POLL_NAMES and e.tid in loop_tids and e.source != "ebpf"]
    if polls:      # a complete stream (strace) has every poll; eBPF sends only the slow ones
        evidence.append(Evidence("syscalls", f"the loop thread polled {len(polls):,} times; while it was blocked, "
                                             "ready connections waited"))
    f = frames_line(slow, "what the loop thread runs when blocked")
    if f:
        evidence.append(f)
    # A loop shares its thread between connections: a few ms of other requests' work inside a
    # request is normal interleaving. Blocking means tens of ms at a stretch.
    return Finding(ID, ladder(share, per_req, 10_000_000, 20_000_000), share,
                   f"event loop blocked by {LABEL[top]}: {share:.0%} of slow-request time, {fmt_duration(per_req)} each",
                   tuple(evidence),
                   "Never block the loop thread: await the async form (asyncio.sleep, an async driver), or run "
                   "blocking calls and CPU work in an executor (loop.run_in_executor / asyncio.to_thread).",
                   blocked)
