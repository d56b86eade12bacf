"""`slow-upstream`: requests waiting on an outbound connection the target opened (a database,
a cache, another service): reads/writes/connects on sockets the target called connect() on."""
from __future__ import annotations

from diag.analyze.context import AnalysisContext
from diag.units import fmt_duration
from diag.analyze.rules.common import time_finding
from diag.model import Evidence, Finding
from diag.syscalls import family

ID = "slow-upstream"


def check(ctx: AnalysisContext) -> Finding | None:
    def connects(ra):
        calls = [e for e in ctx.timed_syscalls if e.name == "connect"]
        if calls:
            yield Evidence("syscalls", f"{len(calls)} connect() calls in the capture, worst "
                                       f"{fmt_duration(max(e.dur_ns or 0 for e in calls))}")

    upstream = ctx.req.upstream_fds if ctx.req is not None else set()
    return time_finding(
        ctx, ID, "upstream", "calls on sockets the target connected (upstream)", "an upstream call",
        lambda c: c.fd is not None and (c.pid, c.fd) in upstream and family(c.name) in ("read", "write", "connect"),
        "waiting for the upstream's answer", "Python frames while waiting",
        "waiting on an upstream connection: {share:.0%} of slow-request time, {per_req} per slow request",
        "Find which upstream is slow (the fd's peer in the evidence) and fix it there; meanwhile set timeouts, "
        "keep a warm connection pool (no connect per request), and cache or batch calls.",
        extra=connects, kernel=False)
