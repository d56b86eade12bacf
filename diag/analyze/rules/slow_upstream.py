"""`slow-upstream`: requests waiting on an outbound connection the target opened (a database,
a cache, another service): reads/writes/connects on sockets the target called connect() on."""
from __future__ import annotations

from diag.analyze.context import AnalysisContext, fmt_ms
from diag.analyze.rules.common import behind_line, share_with_behind, MIN_SHARE, calls_line, calls_of, frames_line, requests_line, severity
from diag.model import Finding, family

ID = "slow-upstream"


def check(ctx: AnalysisContext) -> Finding | None:
    ra = ctx.req
    if ra is None or not ra.slow:
        return None
    share, part = share_with_behind(ctx, "upstream")
    if share < MIN_SHARE:
        return None
    per_req = part / len(ra.slow)
    evidence = [requests_line(ctx, "upstream", "calls on sockets the target connected (upstream)")]
    b = behind_line(ctx, "upstream", "an upstream call")
    if b:
        evidence.append(b)
    calls = calls_of(ra.slow, lambda c: c.fd is not None and (c.pid, c.fd) in ra.upstream_fds
                     and family(c.name) in ("read", "write", "connect"))
    line = calls_line(calls, "waiting for the upstream's answer")
    if line:
        evidence.append(line)
    connects = [e for e in ctx.timed_syscalls if e.name == "connect"]
    if connects:
        evidence.append(type(evidence[0])("syscalls", f"{len(connects)} connect() calls in the capture, "
                                          f"worst {fmt_ms(max(e.dur_ns or 0 for e in connects))}"))
    f = frames_line(ra.slow, "Python frames while waiting")
    if f:
        evidence.append(f)
    return Finding(ID, severity(share, per_req, ra.typical_without("upstream", ctx.idx)), share,
                   f"waiting on an upstream connection: {share:.0%} of slow-request time, "
                   f"{fmt_ms(per_req)} per slow request", tuple(evidence),
                   "Find which upstream is slow (the fd's peer in the evidence) and fix it there; meanwhile set "
                   "timeouts, keep a warm connection pool (no connect per request), and cache or batch calls.",
                   part)
