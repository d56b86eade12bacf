"""`small-writes`: responses sent in several small writes; with Nagle and delayed ACK, a stall.

A response written as header then body in two small writes, on a socket without TCP_NODELAY,
waits for the ACK of the first segment before the second leaves; the client delays that ACK
(~40 ms on Linux). The server's own latency looks fine: the stall shows as the gap between the
response and the client's next request on the same connection.
"""
from __future__ import annotations

from collections import defaultdict
from statistics import median

from diag.analyze.context import AnalysisContext
from diag.units import fmt_duration
from diag.model import Evidence, Finding

ID = "small-writes"
MSS = 1448
MANY_WRITES = 8
DELAYED_ACK_NS = (35_000_000, 60_000_000)


def check(ctx: AnalysisContext) -> Finding | None:
    ra = ctx.req
    if ra is None or not ra.requests:
        return None
    multi = [r for r in ra.requests if r.writes >= 2 and r.bytes_out / r.writes < MSS]
    share = len(multi) / len(ra.requests)
    if share < 0.2:
        return None
    # the gap from each response to the next request on the same connection
    by_conn = defaultdict(list)
    for r in ra.requests:
        by_conn[(r.pid, r.fd, r.conn_start_ns)].append(r)
    gaps, multi_ids = [], {id(r) for r in multi}
    for reqs in by_conn.values():
        reqs.sort(key=lambda r: r.start_ns)
        for a, b in zip(reqs, reqs[1:]):
            if id(a) in multi_ids:
                gaps.append(b.start_ns - a.end_ns)
    stalled = [g for g in gaps if DELAYED_ACK_NS[0] <= g <= DELAYED_ACK_NS[1]]
    writes = median(r.writes for r in multi)
    size = median(r.bytes_out / r.writes for r in multi)
    w = (multi[0].start_ns, multi[0].end_ns)
    ev = [Evidence("syscalls", f"{len(multi):,} of {len(ra.requests):,} responses ({share:.0%}) sent in {writes:.0f} "
                               f"writes of ~{size:.0f} B (medians)", w)]
    nagle = bool(gaps) and len(stalled) >= 0.5 * len(gaps)
    if gaps:
        ev.append(Evidence("syscalls", f"gap before the client's next request on the same connection: median "
                                       f"{fmt_duration(median(gaps))}; {len(stalled)} of {len(gaps)} in "
                                       f"{fmt_duration(DELAYED_ACK_NS[0])}-{fmt_duration(DELAYED_ACK_NS[1])}, the delayed-ACK "
                                       f"stall of Nagle's algorithm"))
    if nagle:
        summary = (f"write-write-read stall (Nagle + delayed ACK): {len(stalled)} responses waited "
                   f"~{fmt_duration(median(stalled))} each")
        sev = "critical" if share >= 0.5 else "warning"
    elif writes >= MANY_WRITES:
        summary = f"responses sent in many small writes: {writes:.0f} writes of ~{size:.0f} B"
        sev = "warning" if share >= 0.5 else "info"
    else:
        return None
    return Finding(ID, sev, share, summary, tuple(ev),
                   "Send each response in one write: buffer it (a buffered writer, flush at the end of the "
                   "response) or use writev/sendmsg with all parts; set TCP_NODELAY on sockets that must send "
                   "small messages immediately.", sum(stalled))
