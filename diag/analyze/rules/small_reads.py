"""`small-reads`: many tiny reads per request (unbuffered socket reads, 1-64 bytes at a time).

Each read is a syscall (and, blocking, a possible context switch); a request read in 40 pieces
pays 40 times. The share is the time the slow requests read that way spent in socket I/O, over all
slow-request time (the unit every finding ranks by); how many requests read so is its figure.
"""
from __future__ import annotations

from statistics import median

from diag.analyze.context import AnalysisContext
from diag.analyze.rules.common import MIN_SHARE, read_loop_ns, severity, tiny_reads
from diag.model import Evidence, Finding
from diag.units import fmt_duration

ID = "small-reads"


def check(ctx: AnalysisContext) -> Finding | None:
    ra = ctx.req
    if ra is None or not ra.requests:
        return None
    tiny = tiny_reads
    affected = [r for r in ra.requests if tiny(r)]
    counted = sum(r.weight for r in ra.requests)
    part = sum(r.weight for r in affected) / counted if counted else 0.0
    slow_aff = [s for s in ra.slow if tiny(s.request)]
    if part < 0.2 or not slow_aff or not ra.slow_total_ns:
        return None
    # the time tiny reads cost: the reads themselves, and the CPU of the loop that makes them
    # (the share of the request thread's samples inside the read path)
    sock = sum(s.breakdown.get("socket", 0) for s in slow_aff)
    reading = sum(read_loop_ns(s) for s in slow_aff)
    sock += int(reading)
    share = sock / ra.slow_total_ns
    if share < MIN_SHARE:
        return None
    reads = median(r.reads for r in affected)
    size = median(r.bytes_in / r.reads for r in affected)
    w = (affected[0].start_ns, affected[0].end_ns)
    ev = [Evidence("syscalls", f"{part:.0%} of requests were read in {reads:.0f} reads of {size:.0f} bytes "
                               f"(medians); tid {affected[0].tid}", w),
          Evidence("syscalls+py-spy", f"{len(slow_aff)} slow requests read that way spent {fmt_duration(sock)} of "
                                      f"{fmt_duration(ra.slow_total_ns)} ({share:.0%}) reading: socket I/O, and "
                                      f"{fmt_duration(reading)} of CPU in the read loop (py-spy frames in "
                                      f"readinto/readline/recv)")]
    per_req = sock / len(ra.slow)
    sev = severity(share, per_req, ra.typical_ns) if reads >= 16 else "info"
    return Finding(ID, sev, share, f"requests read in many tiny reads: {reads:.0f} reads of ~{size:.0f} B each, "
                                   f"{share:.0%} of slow-request time", tuple(ev),
                   "Read through a buffer (64 KB covers almost every request): a buffered reader "
                   "(socket.makefile with a buffer, rbufsize > 0, BufferedReader) instead of reading byte by byte.",
                   sock)
