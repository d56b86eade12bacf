"""`time-wait`: a connection per request, closed by the server: every request pays the connection's
set-up, and TIME_WAIT sockets pile up on the server's ports (active close: 2 x MSL each).

Time, in the unit every finding ranks by: the set-up a slow request's client waited for before
the server read it (the probe's accept-queue wait, from the handshake to the accept, less the part
spent behind the servers' blocking calls, which their own findings count), for requests that were
the only one on their connection. The count of TIME_WAIT sockets is the finding's own
figure: without measured time it is reported at info, after every time-based finding, never as a
warning by count alone (port exhaustion shows as connect errors, which another finding would see).
"""
from __future__ import annotations

from diag.analyze.context import AnalysisContext
from diag.analyze.crossing import HOLDER_FAMILIES
from diag.analyze.rules.accept_backlog import accepted
from diag.analyze.rules.common import MIN_SHARE, severity, slow_window
from diag.model import Evidence, Finding
from diag.units import fmt_duration

ID = "time-wait"
MIN_TIME_WAIT = 200
RECOMMENDATION = ("Keep connections alive and reuse them (HTTP keep-alive, connection pools); let the client close "
                  "first; SO_LINGER {1, 0} only where losing unacknowledged data is acceptable.")


def check(ctx: AnalysisContext) -> Finding | None:
    counts = [(s.ts_ns, dict(s.socket_states).get("TIME_WAIT", 0)) for s in ctx.data.snapshots]
    if not counts:
        return None
    ts, peak = max(counts, key=lambda x: x[1])
    if peak < MIN_TIME_WAIT:
        return None
    ra = ctx.req
    n = accepted(ctx)
    closes = [st for (name, kind), st in ctx.by_syscall.items() if name == "close" and kind.value == "socket"]
    ev = [Evidence("process", f"{peak:,} sockets in TIME_WAIT on the target's listening ports at the peak "
                              f"(server-side active close)", (ts, ts))]
    if n:
        ev.append(Evidence("syscalls", f"{n:,} connections accepted in the capture, "
                                       f"{sum(c.count for c in closes):,} socket close() calls by the server"))
    setup = 0
    if ra is not None and ra.slow:
        conns = {}
        for r in ra.requests:
            key = (r.pid, r.fd, r.conn_start_ns)
            conns[key] = conns.get(key, 0) + 1
        single = [s for s in ra.slow if conns.get((s.request.pid, s.request.fd, s.request.conn_start_ns)) == 1]
        # the part of the queue wait spent behind the servers' blocking calls (a busy pre-fork
        # worker's fsync) is counted by that call's finding: only the rest is the set-up's own
        # (behind the servers' plain request handling, it is the cost of a connection per request)
        setup = sum(max(0, s.breakdown.get("queue", 0) - sum(ns for fam, ns in s.queue_behind.items()
                                                              if fam in HOLDER_FAMILIES))
                    + s.breakdown.get("setup", 0) for s in single)
        one = sum(1 for c in conns.values() if c == 1)
        if conns:
            ev.append(Evidence("requests", f"{one:,} of {len(conns):,} connections carried one request; slow requests "
                                           f"waited {fmt_duration(setup)} for their connection's set-up (handshake, "
                                           f"accept queue, accept) before the server read them",
                                           slow_window(single or ra.slow)))
    share = setup / ra.slow_total_ns if ra is not None and ra.slow_total_ns else 0.0
    if setup and share >= MIN_SHARE:
        per = setup / len(ra.slow)
        return Finding(ID, severity(share, per, ra.typical_ns), share,
                       f"a connection per request: {share:.0%} of client-visible slow-request time in connection "
                       f"set-up, {peak:,} sockets in TIME_WAIT", tuple(ev), RECOMMENDATION, setup)
    return Finding(ID, "info", 0.0, f"{peak:,} server sockets in TIME_WAIT: the server closes connections first "
                                    f"(no request time measured behind it)", tuple(ev), RECOMMENDATION, 0)
