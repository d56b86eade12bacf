"""`small-reads`: many tiny reads per request (unbuffered socket reads, 1-64 bytes at a time).

Each read is a syscall (and, blocking, a possible context switch); a request read in 40 pieces
pays 40 times. In CPython each read also releases the GIL and takes it back: with several threads
reading so, every read is a hand-off, and the waits for the GIL grow with the reads. The share is
what the slow requests read that way spent in socket I/O, in the read loop's CPU and in those GIL
waits, over all slow-request time (the unit every finding ranks by).
"""
from __future__ import annotations

from statistics import median

from diag.analyze.context import AnalysisContext
from diag.analyze.rules.common import MIN_SHARE, gil_handoffs_ns, read_loop_ns, severity, tiny_reads
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
    # the time tiny reads cost: the reads themselves, the CPU of the loop that makes them (the
    # read path's share of the samples) and, in CPython, the GIL hand-offs they cause
    io = sum(s.breakdown.get("socket", 0) for s in slow_aff)
    reading = sum(read_loop_ns(ctx, s) for s in slow_aff)
    handoffs = sum(gil_handoffs_ns(ctx, s) for s in slow_aff)
    sock = io + reading + handoffs
    share = sock / ra.slow_total_ns
    if share < MIN_SHARE:
        return None
    reads = median(r.reads for r in affected)
    size = median(r.bytes_in / r.reads for r in affected)
    w = (affected[0].start_ns, affected[0].end_ns)
    spent = f"{fmt_duration(io)} in socket reads, {fmt_duration(reading)} of CPU in the read loop (py-spy frames in " \
            f"readinto/readline/recv: {ctx.read_loop_share:.0%} of the samples of requests read so)"
    if handoffs:
        spent += f", {fmt_duration(handoffs)} waiting to take the GIL back after a read"
    ev = [Evidence("syscalls", f"{part:.0%} of requests were read in {reads:.0f} reads of {size:.0f} bytes "
                               f"(medians); tid {affected[0].tid}", w),
          Evidence("syscalls+py-spy", f"{len(slow_aff)} slow requests read that way spent {fmt_duration(sock)} of "
                                      f"{fmt_duration(ra.slow_total_ns)} ({share:.0%}) reading: {spent}")]
    per_req = sock / len(ra.slow)
    sev = severity(share, per_req, ra.typical_ns) if reads >= 16 else "info"
    return Finding(ID, sev, share, f"requests read in many tiny reads: {reads:.0f} reads of ~{size:.0f} B each, "
                                   f"{share:.0%} of slow-request time", tuple(ev),
                   "Read through a buffer (64 KB covers almost every request): a buffered reader "
                   "(socket.makefile with a buffer, rbufsize > 0, BufferedReader) instead of reading byte by byte.",
                   sock)
