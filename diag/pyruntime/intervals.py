"""Samples -> interval records: one line per change of the GIL's holder and per collection seen.

A sample is (t0, t1, Sample | None): the CLOCK_MONOTONIC times taken just before and after the
read, and what it saw (None: the read failed). Consecutive samples that saw the same GIL state
(held by tid N, held by an unidentified thread, or free) make one `gil` record; consecutive
samples that saw `collecting` set make one `gc` record. A record's `start_ns` is the t0 of its
first sample and `end_ns` the t1 of its last: the reads that saw the state all happened inside,
and the state itself began at most one period before and ended at most one period after. A
failed read ends every open record (the stream never spans what was not seen), and a GIL record
is cut every `max_span_ns` (1 s) so a capture killed mid-hold still has most of it on disk.

The generation of a collection is inferred twice. The interpreter resets the counts of the
generations it collects when a collection starts and adds one to the next generation's count:
while a gen-0 collection runs count[1] >= 1, gen 1: count[1] == 0 and count[2] >= 1, gen 2: all
zero (count[0] also moves with allocations, so it is not used). And `generation_stats[g]
.collections` grows by one when a collection of generation g ends: between the last sample before
the run and the first one after, the generations whose stats grew are the collections that ran.
The stats win when they name one generation; the counts pick among several (a short collection
also ran in between, unseen); else the generation is unknown (null). `collections` says how many
collections the stats counted in that window (more than 1: several merged into one record).
"""
from __future__ import annotations

from collections import Counter

from diag.pyruntime.reader import Sample

HELD, FREE = "held", "free"


def generation_from_counts(counts: tuple[int, int, int] | None) -> int | None:
    if counts is None:
        return None
    if counts[1] > 0:
        return 0
    if counts[2] > 0:
        return 1
    return 2


class _Run:
    __slots__ = ("key", "start", "end", "samples", "first_switch", "last_switch", "holders", "counts")

    def __init__(self, key, t0: int, t1: int, s: Sample) -> None:
        self.key = key
        self.start, self.end, self.samples = t0, t1, 1
        self.first_switch = self.last_switch = s.switch_number
        self.holders: Counter = Counter()
        self.counts = s.gc_counts

    def add(self, t1: int, s: Sample) -> None:
        self.end = t1
        self.samples += 1
        self.last_switch = s.switch_number
        if s.gc_counts is not None:
            self.counts = s.gc_counts


class IntervalBuilder:
    """Feed samples in time order; get the records they close. `finish()` closes the rest."""

    def __init__(self, max_span_ns: int = 1_000_000_000) -> None:
        self.max_span_ns = max_span_ns
        self._gil: _Run | None = None
        self._gc: _Run | None = None
        self._gc_before: tuple[int, int, int] | None = None      # stats at the last idle sample
        self.first_stats: tuple[int, int, int] | None = None
        self.last_stats: tuple[int, int, int] | None = None
        self.first_switch: int | None = None
        self.last_switch: int | None = None
        self.gil_records = 0
        self.gc_records = 0

    def feed(self, t0: int, t1: int, s: Sample | None) -> list[dict]:
        out: list[dict] = []
        if s is None:
            self._close_gil(out)
            self._end_gc(out, after=None)
            self._gc_before = None
            return out
        if s.switch_number is not None:
            if self.first_switch is None:
                self.first_switch = s.switch_number
            self.last_switch = s.switch_number
        if s.gc_collections is not None:
            if self.first_stats is None:
                self.first_stats = s.gc_collections
            self.last_stats = s.gc_collections
        self._feed_gil(t0, t1, s, out)
        self._feed_gc(t0, t1, s, out)
        return out

    def finish(self) -> list[dict]:
        out: list[dict] = []
        self._close_gil(out)
        self._end_gc(out, after=None)
        return out

    # ---- GIL ------------------------------------------------------------------------------------

    def _feed_gil(self, t0: int, t1: int, s: Sample, out: list[dict]) -> None:
        if s.gil_locked is None:
            self._close_gil(out)
            return
        key = (HELD, s.holder_tid) if s.gil_locked else (FREE, None)
        run = self._gil
        if run is not None and run.key == key and t1 - run.start <= self.max_span_ns:
            run.add(t1, s)
            return
        self._close_gil(out)
        self._gil = _Run(key, t0, t1, s)

    def _close_gil(self, out: list[dict]) -> None:
        run, self._gil = self._gil, None
        if run is None:
            return
        state, tid = run.key
        switches = None
        if run.first_switch is not None and run.last_switch is not None:
            switches = run.last_switch - run.first_switch
        out.append({"type": "gil", "state": state, "tid": tid, "start_ns": run.start, "end_ns": run.end,
                    "samples": run.samples, "switches": switches})
        self.gil_records += 1

    # ---- GC -------------------------------------------------------------------------------------

    def _feed_gc(self, t0: int, t1: int, s: Sample, out: list[dict]) -> None:
        if s.gc_collecting is None:
            self._end_gc(out, after=None)
            self._gc_before = None
            return
        if s.gc_collecting:
            if self._gc is None:
                self._gc = _Run("gc", t0, t1, s)
            else:
                self._gc.add(t1, s)
            if s.gil_locked and s.holder_tid is not None:
                self._gc.holders[s.holder_tid] += 1
            return
        self._end_gc(out, after=s.gc_collections)
        self._gc_before = s.gc_collections

    def _end_gc(self, out: list[dict], after: tuple[int, int, int] | None) -> None:
        """Close the open collection run, if any, with the stats of the first idle sample after it
        (None: the run ended in a failed read or the end of the capture)."""
        run, self._gc = self._gc, None
        if run is None:
            return
        rec = {"type": "gc", "start_ns": run.start, "end_ns": run.end, "samples": run.samples,
               "generation": None, "collections": None,
               "tid": run.holders.most_common(1)[0][0] if run.holders else None}
        by_counts, before = generation_from_counts(run.counts), self._gc_before
        ran: list[int] = []
        if before is not None and after is not None:
            deltas = [a - b for a, b in zip(after, before)]
            if all(d >= 0 for d in deltas):
                rec["collections"] = sum(deltas)
                ran = [g for g, d in enumerate(deltas) if d > 0]
        if len(ran) == 1:
            rec["generation"] = ran[0]
        elif by_counts is not None and (not ran or by_counts in ran):
            rec["generation"] = by_counts
        out.append(rec)
        self.gc_records += 1

    # ---- totals ---------------------------------------------------------------------------------

    def collections_seen_by_stats(self) -> list[int] | None:
        """Collections per generation that completed between the first and last sample (exact,
        whether or not the sampler saw them run)."""
        if self.first_stats is None or self.last_stats is None:
            return None
        return [b - a for a, b in zip(self.first_stats, self.last_stats)]

    def switches(self) -> int | None:
        """GIL hand-offs the interpreter counted between the first and last sample."""
        if self.first_switch is None or self.last_switch is None:
            return None
        return self.last_switch - self.first_switch
