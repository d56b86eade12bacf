"""`file-io`: slow reads and writes on regular files inside requests (cold page cache, big files)."""
from __future__ import annotations

from diag.analyze.context import AnalysisContext
from diag.analyze.rules.common import time_finding
from diag.model import Finding
from diag.syscalls import FdKind, family

ID = "file-io"


def check(ctx: AnalysisContext) -> Finding | None:
    return time_finding(
        ctx, ID, "file", "reads/writes on regular files", "file I/O",
        lambda c: family(c.name) in ("read", "write") and c.fd_kind is FdKind.FILE, "",
        "Python frames in slow requests",
        "file reads/writes on the request path: {share:.0%} of slow-request time, {per_req} per slow request",
        "Keep hot files in memory (or warm the page cache), read through a large buffer, and move big file "
        "writes off the request path; check the device's latency (iostat -x) if single calls are slow.")
