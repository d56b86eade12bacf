"""Time queries over the CPython runtime records of a Dataset: who held the GIL, was the GC running.

The runtime sampler records runs of samples (`GilSpan`, `GcPause`), each bounded by the reads
that saw it. Between two runs lies one sampling period that no read saw; this index gives that
time to the nearest sample: each run is widened by half a period per side, or less when a
neighbour is nearer (consecutive GIL spans meet at the midpoint between their samples), so the
GIL spans tile the sampled time and a question about any window [t0, t1] gets an answer that
adds up (time no sample is near is "unseen"). The answers
are samples, not traces: a hand-off shorter than a period may be missed (a span's `switches`
counts those), and a collection shorter than a period mostly is (see diag/pyruntime/).

    idx = dataset.runtime()
    w = idx.gil_window(t0, t1)          # GilWindow: ns per holder tid, free, unseen
    w.top(), w.share(tid)
    idx.gc_pauses_in(t0, t1)            # the GcPause records overlapping [t0, t1]
    idx.gc_ns(t0, t1)                   # how much of [t0, t1] a collection was running
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

from diag.model import GcPause, GilSpan, RuntimeWindow

DEFAULT_PERIOD_NS = 5_000_000


@dataclass(frozen=True)
class GilWindow:
    """The GIL over [t0, t1]: ns held per holder tid (None: held by an unidentified thread), ns
    free, and ns no sample covers (outside the sampler's window, or failed reads)."""

    t0: int
    t1: int
    by_tid: dict[int | None, int] = field(default_factory=dict)
    free_ns: int = 0
    unseen_ns: int = 0

    @property
    def held_ns(self) -> int:
        return sum(self.by_tid.values())

    @property
    def seen_ns(self) -> int:
        return self.held_ns + self.free_ns

    def top(self) -> int | None:
        """The thread that held the GIL longest in the window (None if nobody identified did)."""
        known = {t: ns for t, ns in self.by_tid.items() if t is not None}
        return max(known, key=known.__getitem__) if known else None

    def share(self, tid: int | None) -> float:
        """Share of the seen part of the window that `tid` held the GIL (0 when nothing was seen)."""
        return self.by_tid.get(tid, 0) / self.seen_ns if self.seen_ns else 0.0


class _Track:
    """One pid's records, sorted, each widened by half a period per side (less where a neighbour
    is nearer: consecutive GIL spans meet at the midpoint between their samples)."""

    def __init__(self, spans: list, period_ns: int) -> None:
        self.items = sorted(spans, key=lambda r: (r.start_ns, r.end_ns))
        half = period_ns // 2
        n = len(self.items)
        self.lo = [0] * n
        self.hi = [0] * n
        for i, r in enumerate(self.items):
            before = r.start_ns - self.items[i - 1].end_ns if i else 2 * half
            after = self.items[i + 1].start_ns - r.end_ns if i + 1 < n else 2 * half
            self.lo[i] = r.start_ns - min(half, max(0, before) // 2)
            self.hi[i] = r.end_ns + min(half, max(0, after) // 2)
        # records of one sampler never overlap; keep `hi` sorted for bisect even if some did
        for i in range(1, n):
            self.hi[i] = max(self.hi[i], self.hi[i - 1])

    def overlapping(self, t0: int, t1: int):
        """(record, overlap ns) for every record whose widened bounds overlap [t0, t1)."""
        for r, s, e in self.pieces(t0, t1):
            yield r, e - s

    def pieces(self, t0: int, t1: int):
        """(record, start, end): each record's widened bounds clipped to [t0, t1), when not empty."""
        i = bisect_right(self.hi, t0)
        while i < len(self.items) and self.lo[i] < t1:
            s, e = max(self.lo[i], t0), min(self.hi[i], t1)
            if e > s:
                yield self.items[i], s, e
            i += 1


class RuntimeIndex:
    """Built from a Dataset's `gil`, `gc_pauses` and `runtime_windows` (Dataset.runtime())."""

    def __init__(self, gil: list[GilSpan], gc_pauses: list[GcPause], windows: list[RuntimeWindow]) -> None:
        self.source_sizes = (len(gil), len(gc_pauses), len(windows))
        self.windows = list(windows)
        periods = {w.pid: w.period_ns for w in windows}
        by_pid_gil: dict[int | None, list] = {}
        by_pid_gc: dict[int | None, list] = {}
        for s in gil:
            by_pid_gil.setdefault(s.pid, []).append(s)
        for p in gc_pauses:
            by_pid_gc.setdefault(p.pid, []).append(p)
        self._gil = {pid: _Track(v, periods.get(pid, DEFAULT_PERIOD_NS)) for pid, v in by_pid_gil.items()}
        self._gc = {pid: _Track(v, periods.get(pid, DEFAULT_PERIOD_NS)) for pid, v in by_pid_gc.items()}

    def __bool__(self) -> bool:
        return bool(self._gil or self._gc or self.windows)

    def pids(self) -> list[int]:
        return sorted({p for p in (*self._gil, *self._gc) if p is not None})

    def _tracks(self, tracks: dict, pid: int | None):
        if pid is None:
            return list(tracks.values())
        return [tracks[pid]] if pid in tracks else []

    # ---- the GIL --------------------------------------------------------------------------------

    def gil_window(self, t0: int, t1: int, pid: int | None = None) -> GilWindow:
        """Who held the GIL during [t0, t1] (one process: `pid`, or the only one sampled)."""
        by_tid: dict[int | None, int] = {}
        free = 0
        for track in self._tracks(self._gil, pid):
            for span, ns in track.overlapping(t0, t1):
                if span.held:
                    by_tid[span.tid] = by_tid.get(span.tid, 0) + ns
                else:
                    free += ns
        seen = sum(by_tid.values()) + free
        return GilWindow(t0, t1, by_tid, free, max(0, (t1 - t0) - seen))

    def gil_pieces(self, t0: int, t1: int, pid: int | None = None) -> list[tuple[GilSpan, int, int]]:
        """The GIL's states over [t0, t1] as (span, start, end), in time order: who held it when."""
        return [p for track in self._tracks(self._gil, pid) for p in track.pieces(t0, t1)]

    def gc_pieces(self, t0: int, t1: int, pid: int | None = None) -> list[tuple[GcPause, int, int]]:
        """Collections running over [t0, t1] as (pause, start, end)."""
        return [p for track in self._tracks(self._gc, pid) for p in track.pieces(t0, t1)]

    def gil_at(self, t: int, pid: int | None = None) -> GilSpan | None:
        """The GIL span the instant `t` is attributed to (None: no sample near it)."""
        for track in self._tracks(self._gil, pid):
            for span, _ in track.overlapping(t, t + 1):
                return span
        return None

    # ---- the GC ---------------------------------------------------------------------------------

    def gc_pauses_in(self, t0: int, t1: int, pid: int | None = None) -> list[GcPause]:
        """Collections seen running at some point of [t0, t1], in time order."""
        out = [p for track in self._tracks(self._gc, pid) for p, _ in track.overlapping(t0, t1)]
        return sorted(out, key=lambda p: p.start_ns)

    def gc_ns(self, t0: int, t1: int, pid: int | None = None) -> int:
        """How much of [t0, t1] a collection was running (nearest-sample attribution)."""
        return sum(ns for track in self._tracks(self._gc, pid) for _, ns in track.overlapping(t0, t1))

    def gc_running(self, t0: int, t1: int, pid: int | None = None) -> bool:
        return self.gc_ns(t0, t1, pid) > 0

    def sampled(self, t0: int, t1: int, pid: int | None = None) -> bool:
        """Whether a runtime sampler was watching at any point of [t0, t1]: without one, "no GC
        pause" means "not measured", not "none"."""
        return any(w.start_ns < t1 and w.end_ns > t0 and (pid is None or w.pid == pid) for w in self.windows)
