"""`accept-backlog`: connections dropped or delayed at the listen queue (SYNs and accepts lost
because the accept queue was full). Share: dropped connections over all connection attempts."""
from __future__ import annotations

from diag.analyze.context import AnalysisContext
from diag.model import Evidence, Finding

ID = "accept-backlog"
MIN_LOST = 3


def _accepted(ctx: AnalysisContext) -> int:
    rows = [st.count for (name, _), st in ctx.by_syscall.items() if name in ("accept", "accept4")]
    return sum(rows)


def check(ctx: AnalysisContext) -> Finding | None:
    snaps = [s for s in ctx.data.snapshots if s.listen_overflows is not None]
    if len(snaps) < 2:
        return None
    overflows = snaps[-1].listen_overflows - snaps[0].listen_overflows
    drops = (snaps[-1].listen_drops or 0) - (snaps[0].listen_drops or 0)
    lost = max(overflows, drops)
    accepted = _accepted(ctx)
    queue = max((s.listen_queue or 0) for s in snaps)
    # The counters are per network namespace, not per listener: overflows may be another
    # process's. Call them the target's only when its own accept queue was seen backed up.
    if lost < MIN_LOST or queue == 0:
        return None
    share = lost / (lost + accepted) if (lost + accepted) else 1.0
    sev = "critical" if share >= 0.05 else "warning" if share >= 0.005 else "info"
    w = (snaps[0].ts_ns, snaps[-1].ts_ns)
    ev = [Evidence("process", f"TcpExt ListenOverflows +{overflows}, ListenDrops +{drops} during the capture "
                              f"(counters of the target's network namespace)", w),
          Evidence("process", f"accept queue of the target's listeners peaked at {queue} waiting connections", w)]
    if accepted:
        ev.append(Evidence("syscalls", f"{accepted:,} connections accepted in the same window: {share:.1%} of attempts "
                                       "were dropped (clients retry SYNs after 1 s, 3 s...)"))
    return Finding(ID, sev, share, f"listen queue overflowing: {lost} connections dropped ({share:.1%} of attempts)",
                   tuple(ev),
                   "Accept faster (more acceptor threads/processes, non-blocking accept driven by epoll), and "
                   "raise the backlog: listen(backlog) in the server and net.core.somaxconn / "
                   "net.ipv4.tcp_max_syn_backlog in the kernel.", 0)
