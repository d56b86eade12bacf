"""Latency statistics of syscalls: per syscall and fd kind, per family, slowest calls, spikes.

Pure functions over `SyscallEvent`s; no I/O. Percentiles are nearest-rank on exact durations.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from diag.model import SyscallEvent
from operator import itemgetter

from diag.syscalls import WAIT_FAMILIES, WAIT_NAMES, FdKind, family

_DUR = itemgetter(4)      # SyscallEvent.dur_ns, as a C-level sort key



@dataclass(frozen=True)
class LatencyStats:
    """Latency of one group of calls. `approx` is True when percentiles come from a log2
    histogram (eBPF in-kernel aggregates: exact counts and totals, bucketed durations)."""

    count: int
    total_ns: int
    p50_ns: int
    p90_ns: int
    p99_ns: int
    max_ns: int
    errors: int = 0
    nbytes: int = 0
    approx: bool = False
    source: str = "events"

    def to_json(self) -> dict:
        return {"count": self.count, "total_ns": self.total_ns, "p50_ns": self.p50_ns, "p90_ns": self.p90_ns,
                "p99_ns": self.p99_ns, "max_ns": self.max_ns, "errors": self.errors, "bytes": self.nbytes,
                "approx": self.approx, "source": self.source}


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return 0
    k = max(0, min(len(sorted_values) - 1, int(-(-q * len(sorted_values) // 100)) - 1))
    return sorted_values[k]


def weighted_percentile(pairs: list[tuple[int, int]], q: float) -> int:
    """Nearest-rank percentile of (value, weight) pairs sorted by value: a record standing for
    `weight` requests (an exemplar of many) counts that many times."""
    total = sum(w for _, w in pairs)
    if not total:
        return 0
    rank = max(1, -(-q * total // 100))
    seen = 0
    for v, w in pairs:
        seen += w
        if seen >= rank:
            return v
    return pairs[-1][0]


def slots_percentile(slots, q: float) -> int:
    """Percentile of a histogram of (lower, upper, count) slots, interpolated inside its slot."""
    total = sum(c for *_, c in slots)
    if not total:
        return 0
    rank = q * total / 100
    seen = 0
    for lo, hi, c in slots:
        if c and seen + c >= rank:
            return int(lo + (hi - lo) * (rank - seen) / c)
        seen += c
    return slots[-1][1]


def summarize(durations: list[int], errors: int = 0, nbytes: int = 0, source: str = "events") -> LatencyStats:
    durations.sort()
    return LatencyStats(len(durations), sum(durations), percentile(durations, 50), percentile(durations, 90),
                        percentile(durations, 99), durations[-1] if durations else 0, errors, nbytes, False, source)


def log2_bucket(ns: int) -> int:
    """Lower bound of the log2 bucket holding `ns` (the eBPF histograms' buckets)."""
    return 1 << (max(1, ns).bit_length() - 1)


def hist_percentile(hist: dict[int, int], q: float, max_ns: int = 0) -> int:
    """Percentile of a log2 histogram {bucket lower bound: count}, interpolated in its bucket and
    capped by the largest value seen."""
    total = sum(hist.values())
    if not total:
        return 0
    rank = max(1, -(-q * total // 100))
    seen = 0
    for lo in sorted(hist):
        n = hist[lo]
        if seen + n >= rank:
            est = int(lo + lo * (rank - seen) / n)       # bucket is [lo, 2*lo)
            return min(est, max_ns) if max_ns else est
        seen += n
    return max_ns


def _from_hist(hist: dict[int, int], count: int, total: int, max_ns: int, nbytes: int, source: str) -> LatencyStats:
    return LatencyStats(count, total, hist_percentile(hist, 50, max_ns), hist_percentile(hist, 90, max_ns),
                        hist_percentile(hist, 99, max_ns), max_ns, 0, nbytes, True, source)


def per_syscall(events: list[SyscallEvent], aggregates=()) -> dict[tuple[str, FdKind], LatencyStats]:
    """Stats per (syscall name, fd kind).

    Where in-kernel aggregates exist for a key they are the truth (every call counted); the
    per-call events of that source are only the slow subset and are not counted again. Other
    sources' events (strace, perf) give exact percentiles for their keys.
    """
    hists: dict[tuple[str, FdKind], dict[int, int]] = defaultdict(lambda: defaultdict(int))
    agg_tot: dict[tuple[str, FdKind], list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # count total max bytes
    agg_sources = set()
    for a in aggregates:
        key = (a.name, a.fd_kind)
        agg_sources.add(a.source)
        for lo, n in a.log2_hist_ns:
            hists[key][lo] += n
        t = agg_tot[key]
        t[0] += a.count
        t[1] += a.total_ns
        t[2] = max(t[2], a.max_ns)
        t[3] += a.bytes_total
    durs: dict[tuple[str, FdKind], list[int]] = defaultdict(list)
    errs: dict[tuple[str, FdKind], int] = defaultdict(int)
    nbytes: dict[tuple[str, FdKind], int] = defaultdict(int)
    slow_max: dict[tuple[str, FdKind], int] = defaultdict(int)
    # SyscallEvents unpacked once each (faster than five attribute reads on a million calls)
    for _pid, _tid, name, _start, dur, _ret, errno, _fd, kind, nb, source in events:
        if dur is None:
            continue
        key = (name, kind)
        if agg_sources and source in agg_sources:
            slow_max[key] = max(slow_max[key], dur)
            continue
        durs[key].append(dur)
        if errno is not None:
            errs[key] += 1
        if nb:
            nbytes[key] += nb
    out = {k: summarize(v, errs[k], nbytes[k], "events") for k, v in durs.items()}
    for key, (count, total, mx, b) in agg_tot.items():
        if key in out:      # two sources saw the same calls: keep the exact one
            continue
        out[key] = _from_hist(hists[key], count, total, max(mx, slow_max[key]), b, "aggregate")
    return out


def per_family(rows: dict[tuple[str, FdKind], LatencyStats], events: list[SyscallEvent],
               aggregates=()) -> dict[str, LatencyStats]:
    """Stats per syscall family, from the same sources `per_syscall` chose."""
    fam_rows: dict[str, list[tuple[tuple[str, FdKind], LatencyStats]]] = defaultdict(list)
    for key, st in rows.items():
        fam_rows[family(key[0])].append((key, st))
    exact_keys = {k for k, st in rows.items() if not st.approx}
    durs: dict[str, list[int]] = defaultdict(list)
    fam_of = {name: durs[family(name)] for name, _ in exact_keys}     # name -> its family's list
    for _pid, _tid, name, _start, d, _ret, _errno, _fd, kind, _nb, _src in events:
        if d is not None and (name, kind) in exact_keys:
            fam_of[name].append(d)
    approx_keys = {k for k, st in rows.items() if st.approx}
    hists: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for a in aggregates:
        if (a.name, a.fd_kind) in approx_keys:
            for lo, n in a.log2_hist_ns:
                hists[family(a.name)][lo] += n
    out = {}
    for fam, members in fam_rows.items():
        count = sum(st.count for _, st in members)
        total = sum(st.total_ns for _, st in members)
        mx = max(st.max_ns for _, st in members)
        b = sum(st.nbytes for _, st in members)
        if any(st.approx for _, st in members):
            h = hists[fam]
            for d in durs.get(fam, ()):
                h[log2_bucket(d)] += 1
            out[fam] = _from_hist(h, count, total, mx, b, "aggregate")
        else:
            out[fam] = summarize(durs[fam], sum(st.errors for _, st in members), b)
    return out


def slowest(events: list[SyscallEvent], n: int = 10, include_waits: bool = False) -> list[SyscallEvent]:
    """The n slowest calls (optionally leaving out the wait families), slowest first."""
    import heapq
    pool = [ev for ev in events if ev.dur_ns is not None and (include_waits or ev.name not in WAIT_NAMES)]
    return heapq.nlargest(n, pool, key=_DUR)


@dataclass(frozen=True)
class Spike:
    """A time window where work calls were unusually slow."""

    start_ns: int
    end_ns: int
    worst: SyscallEvent
    calls: int           # slow calls inside the window
    total_ns: int        # their summed duration


def is_work(name: str, kind: FdKind) -> bool:
    """Calls whose duration is the server doing work (not waiting for a client or for work).

    Reads on sockets are left out: a keep-alive worker blocks in read() until the client's next
    request, which is idle time, not latency.
    """
    fam = family(name)
    if fam in WAIT_FAMILIES:
        return False
    if fam == "read" and kind in (FdKind.SOCKET, FdKind.PIPE, FdKind.UNKNOWN):
        return False
    return True


def is_work_call(ev: SyscallEvent) -> bool:
    return is_work(ev.name, ev.fd_kind)


def _work_keys(events) -> set[tuple[str, FdKind]]:
    """The (name, fd kind) pairs of `events` that are work (is_work), each judged once."""
    return {k for k in {(e.name, e.fd_kind) for e in events} if is_work(*k)}


def spikes(events: list[SyscallEvent], threshold_ns: int | None = None, gap_ns: int = 10_000_000,
           limit: int = 10) -> list[Spike]:
    """Windows of slow work calls: calls above `threshold_ns` (default: max(1 ms, p99 of work
    calls)) merged when less than `gap_ns` apart; the `limit` worst windows, worst first."""
    keys = _work_keys(events)
    work = [ev for ev in events if ev.dur_ns is not None and (ev.name, ev.fd_kind) in keys]
    if not work:
        return []
    if threshold_ns is None:
        threshold_ns = max(1_000_000, percentile(sorted([ev.dur_ns for ev in work]), 99))
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
