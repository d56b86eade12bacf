"""`small-reads`: many tiny reads per request (unbuffered socket reads, 1-64 bytes at a time).

Each read is a syscall (and, blocking, a possible context switch); a request read in 40 pieces
pays 40 times. The share is the fraction of requests affected.
"""
from __future__ import annotations

from statistics import median

from diag.analyze.context import AnalysisContext
from diag.model import Evidence, Finding

ID = "small-reads"
MIN_READS = 8
SMALL_BYTES = 128


def check(ctx: AnalysisContext) -> Finding | None:
    ra = ctx.req
    if ra is None or not ra.requests:
        return None
    affected = [r for r in ra.requests if r.reads >= MIN_READS and r.bytes_in / r.reads < SMALL_BYTES]
    share = len(affected) / len(ra.requests)
    if share < 0.2:
        return None
    reads = median(r.reads for r in affected)
    size = median(r.bytes_in / r.reads for r in affected)
    sev = "warning" if share >= 0.5 and reads >= 16 else "info"
    w = (affected[0].start_ns, affected[0].end_ns)
    ev = [Evidence("syscalls", f"{len(affected):,} of {len(ra.requests):,} requests ({share:.0%}) were read in "
                               f"{reads:.0f} reads of {size:.0f} bytes (medians); tid {affected[0].tid}", w)]
    slow_aff = [s for s in ra.slow if s.request.reads >= MIN_READS]
    if slow_aff and ra.slow_total_ns:
        sock = sum(s.breakdown.get("socket", 0) for s in slow_aff)
        ev.append(Evidence("syscalls", f"socket reads/writes take {sock / ra.slow_total_ns:.0%} of slow-request time"))
    return Finding(ID, sev, share, f"requests read in many tiny reads: {reads:.0f} reads of ~{size:.0f} B each",
                   tuple(ev),
                   "Read through a buffer (64 KB covers almost every request): a buffered reader "
                   "(socket.makefile with a buffer, rbufsize > 0, BufferedReader) instead of reading byte by byte.",
                   0)
