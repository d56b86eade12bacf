"""`explicit-sleep`: sleeps (nanosleep / clock_nanosleep) on the request path of worker threads.

A sleep on an event-loop thread blocks every connection: that is `event-loop-blocked`, which
names the sleep; it is not counted here.
"""
from __future__ import annotations

from diag.analyze.context import AnalysisContext
from diag.units import fmt_duration
from diag.analyze.rules.common import behind_line, MIN_SHARE, calls_line, calls_of, frames_line, requests_line, severity
from diag.model import Finding
from diag.syscalls import family

ID = "explicit-sleep"


def check(ctx: AnalysisContext) -> Finding | None:
    ra = ctx.req
    if ra is None or not ra.slow:
        return None
    slow = [s for s in ra.slow if s.request.tid not in ctx.polling_tids]
    total = sum(s.breakdown.get("sleep", 0) + s.behind.get("sleep", 0) for s in slow)
    share = total / ra.slow_total_ns if ra.slow_total_ns else 0.0
    if share < MIN_SHARE:
        return None
    per_req = total / len(ra.slow)
    evidence = [requests_line(ctx, "sleep", "sleep calls")]
    b = behind_line(ctx, "sleep", "a sleep")
    if b:
        evidence.append(b)
    line = calls_line(calls_of(slow, lambda c: family(c.name) == "sleep"), "the thread sleeps on purpose")
    if line:
        evidence.append(line)
    f = frames_line(slow, "where the threads sleep")
    if f:
        evidence.append(f)
    return Finding(ID, severity(share, per_req, ra.typical_without("sleep", ctx.idx)), share,
                   f"sleeps on the request path: {share:.0%} of slow-request time, {fmt_duration(per_req)} per slow request",
                   tuple(evidence),
                   "Remove the sleep from the request path (retry back-off, polling loops, rate limiting by "
                   "sleeping): wait on the event that matters instead, or move the delay off the request.",
                   total)
