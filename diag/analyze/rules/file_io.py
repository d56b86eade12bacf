"""`file-io`: slow reads and writes on regular files inside requests (cold page cache, big files)."""
from __future__ import annotations

from diag.analyze.context import AnalysisContext, fmt_ms
from diag.analyze.rules.common import (behind_line, share_with_behind, MIN_SHARE, calls_line, calls_of, frames_line, kernel_line, requests_line,
                                       severity)
from diag.model import FdKind, Finding, family

ID = "file-io"


def check(ctx: AnalysisContext) -> Finding | None:
    ra = ctx.req
    if ra is None or not ra.slow:
        return None
    share, part = share_with_behind(ctx, "file")
    if share < MIN_SHARE:
        return None
    per_req = part / len(ra.slow)
    evidence = [requests_line(ctx, "file", "reads/writes on regular files")]
    b = behind_line(ctx, "file", "file I/O")
    if b:
        evidence.append(b)
    calls = calls_of(ra.slow, lambda c: family(c.name) in ("read", "write") and c.fd_kind is FdKind.FILE)
    line = calls_line(calls, "")
    if line:
        evidence.append(line)
        worst = max(calls, key=lambda c: c.dur_ns or 0)
        k = kernel_line(ctx, worst)
        if k:
            evidence.append(k)
    f = frames_line(ra.slow)
    if f:
        evidence.append(f)
    return Finding(ID, severity(share, per_req, ra.typical_without("file", ctx.idx)), share,
                   f"file reads/writes on the request path: {share:.0%} of slow-request time, "
                   f"{fmt_ms(per_req)} per slow request", tuple(evidence),
                   "Keep hot files in memory (or warm the page cache), read through a large buffer, and move "
                   "big file writes off the request path; check the device's latency (iostat -x) if single "
                   "calls are slow.", part)
