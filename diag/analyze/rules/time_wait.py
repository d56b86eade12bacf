"""`time-wait`: TIME_WAIT sockets piling up on the server's ports because it closes connections
first (active close: 2 x MSL per socket); port and memory pressure with many short connections.
Share: sockets left in TIME_WAIT over connections accepted."""
from __future__ import annotations

from diag.analyze.context import AnalysisContext
from diag.analyze.rules.accept_backlog import _accepted
from diag.model import Evidence, Finding

ID = "time-wait"
MIN_TIME_WAIT = 200


def check(ctx: AnalysisContext) -> Finding | None:
    counts = [(s.ts_ns, dict(s.socket_states).get("TIME_WAIT", 0)) for s in ctx.data.snapshots]
    if not counts:
        return None
    ts, peak = max(counts, key=lambda x: x[1])
    if peak < MIN_TIME_WAIT:
        return None
    accepted = _accepted(ctx)
    share = min(1.0, peak / accepted) if accepted else 1.0
    sev = "warning" if peak >= 1000 or share >= 0.5 else "info"
    closes = [st for (name, kind), st in ctx.by_syscall.items() if name == "close" and kind.value == "socket"]
    ev = [Evidence("process", f"{peak:,} sockets in TIME_WAIT on the target's listening ports at the peak "
                              f"(server-side active close)", (ts, ts))]
    if accepted:
        ev.append(Evidence("syscalls", f"{accepted:,} connections accepted in the capture, "
                                       f"{sum(c.count for c in closes):,} socket close() calls by the server"))
    return Finding(ID, sev, share, f"{peak:,} server sockets in TIME_WAIT: the server closes connections first",
                   tuple(ev),
                   "Keep connections alive and reuse them (HTTP keep-alive, connection pools); let the client close "
                   "first; SO_LINGER {1, 0} only where losing unacknowledged data is acceptable.", 0)
