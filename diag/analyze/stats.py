"""Latency statistics of syscalls: per syscall and fd kind, per family, slowest calls, spikes.

Pure functions over `SyscallEvent`s; no I/O. Percentiles are nearest-rank on exact durations.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from diag.model import FdKind, SyscallEvent, family

# Families whose long calls are usually a thread waiting for work, not work taking long: an idle
# worker in epoll_wait or accept, a thread parked on a futex, an explicit sleep. They are shown,
# but never called a latency spike on their own.
WAIT_FAMILIES = frozenset({"poll", "accept", "futex", "sleep"})


@dataclass(frozen=True)
class LatencyStats:
    count: int
    total_ns: int
    p50_ns: int
    p90_ns: int
    p99_ns: int
    max_ns: int
    errors: int = 0
    nbytes: int = 0

    def to_json(self) -> dict:
        return {"count": self.count, "total_ns": self.total_ns, "p50_ns": self.p50_ns, "p90_ns": self.p90_ns,
                "p99_ns": self.p99_ns, "max_ns": self.max_ns, "errors": self.errors, "bytes": self.nbytes}


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return 0
    k = max(0, min(len(sorted_values) - 1, int(-(-q * len(sorted_values) // 100)) - 1))
    return sorted_values[k]


def summarize(durations: list[int], errors: int = 0, nbytes: int = 0) -> LatencyStats:
    durations.sort()
    return LatencyStats(len(durations), sum(durations), percentile(durations, 50), percentile(durations, 90),
                        percentile(durations, 99), durations[-1] if durations else 0, errors, nbytes)


def per_syscall(events: list[SyscallEvent]) -> dict[tuple[str, FdKind], LatencyStats]:
    """Stats per (syscall name, fd kind) over calls whose duration is known."""
    durs: dict[tuple[str, FdKind], list[int]] = defaultdict(list)
    errs: dict[tuple[str, FdKind], int] = defaultdict(int)
    nbytes: dict[tuple[str, FdKind], int] = defaultdict(int)
    for ev in events:
        if ev.dur_ns is None:
            continue
        key = (ev.name, ev.fd_kind)
        durs[key].append(ev.dur_ns)
        if ev.errno is not None:
            errs[key] += 1
        if ev.nbytes:
            nbytes[key] += ev.nbytes
    return {k: summarize(v, errs[k], nbytes[k]) for k, v in durs.items()}


def per_family(events: list[SyscallEvent]) -> dict[str, LatencyStats]:
    durs: dict[str, list[int]] = defaultdict(list)
    for ev in events:
        if ev.dur_ns is not None:
            durs[family(ev.name)].append(ev.dur_ns)
    return {k: summarize(v) for k, v in durs.items()}


def slowest(events: list[SyscallEvent], n: int = 10, include_waits: bool = False) -> list[SyscallEvent]:
    """The n slowest calls (optionally leaving out the wait families), slowest first."""
    pool = (ev for ev in events if ev.dur_ns is not None
            and (include_waits or family(ev.name) not in WAIT_FAMILIES))
    import heapq
    return heapq.nlargest(n, pool, key=lambda e: e.dur_ns or 0)


@dataclass(frozen=True)
class Spike:
    """A time window where work calls were unusually slow."""

    start_ns: int
    end_ns: int
    worst: SyscallEvent
    calls: int           # slow calls inside the window
    total_ns: int        # their summed duration


def is_work_call(ev: SyscallEvent) -> bool:
    """A call whose duration is the server doing work (not waiting for a client or for work).

    Reads on sockets are left out: a keep-alive worker blocks in read() until the client's next
    request, which is idle time, not latency.
    """
    fam = family(ev.name)
    if fam in WAIT_FAMILIES:
        return False
    if fam == "read" and ev.fd_kind in (FdKind.SOCKET, FdKind.PIPE, FdKind.UNKNOWN):
        return False
    return True


def spikes(events: list[SyscallEvent], threshold_ns: int | None = None, gap_ns: int = 10_000_000,
           limit: int = 10) -> list[Spike]:
    """Windows of slow work calls: calls above `threshold_ns` (default: max(1 ms, p99 of work
    calls)) merged when less than `gap_ns` apart; the `limit` worst windows, worst first."""
    work = [ev for ev in events if ev.dur_ns is not None and is_work_call(ev)]
    if not work:
        return []
    if threshold_ns is None:
        threshold_ns = max(1_000_000, percentile(sorted(ev.dur_ns or 0 for ev in work), 99))
    slow = sorted((ev for ev in work if (ev.dur_ns or 0) >= threshold_ns), key=lambda e: e.start_ns)
    out: list[Spike] = []
    cur: list[SyscallEvent] = []
    for ev in slow:
        if cur and ev.start_ns - max(e.end_ns for e in cur[-1:]) > gap_ns:
            out.append(_spike(cur))
            cur = []
        cur.append(ev)
    if cur:
        out.append(_spike(cur))
    out.sort(key=lambda s: s.worst.dur_ns or 0, reverse=True)
    return out[:limit]


def _spike(calls: list[SyscallEvent]) -> Spike:
    worst = max(calls, key=lambda e: e.dur_ns or 0)
    return Spike(min(e.start_ns for e in calls), max(e.end_ns for e in calls), worst, len(calls),
                 sum(e.dur_ns or 0 for e in calls))
