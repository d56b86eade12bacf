"""Clocks and thread ids onto one time base: CLOCK_MONOTONIC nanoseconds, OS thread ids.

Each collector's stream has its own clock (see `diag.model.Clock`). This module decides, from a
capture's manifest, the offset that puts a stream on CLOCK_MONOTONIC and how far that offset can
be trusted, and summarizes the result for the report ("alignment error the report can promise").

Measured on the reference machine (kernel 6.18 VM):
- strace -ttt stamps are CLOCK_REALTIME, taken after the call entered, lagging it by tens of µs;
- perf recorded with `-k CLOCK_MONOTONIC` prints monotonic times with `perf script --ns`;
- py-spy chrometrace `ts` is µs from py-spy's own start, stamped when a sample is processed;
  anchored by the monotonic time the collector saw py-spy announce sampling: late, never early.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from diag.capture.clock import ClockPair, realtime_to_monotonic
from diag.model import Clock, Dataset, StreamInfo
from diag.parse.base import ParseContext

# strace stamps a call after its entry, so its times lag the true start by a few tens of µs
# (measured 20-80 µs on the reference machine). Part of every strace stream's error bound.
STRACE_STAMP_LAG_NS = 100_000
# py-spy's chrometrace clock starts when its recorder is created (py-spy src/chrometrace.rs),
# before it attaches to the target and announces "Sampling process" on stdout; each `ts` is taken
# when py-spy's main thread processes a sample, after its sampler thread read the stack. The
# collector anchors the stream at the moment it sees that line (polled every 0.5 ms), so both
# delays make stamps late, never early. Measured against a marker (tests/integration/
# test_alignment.py, strace + perf + py-spy on 2 busy cores): samples of a function stamped up to
# 3.2 ms after it returned, never before it started (anchored at py-spy's spawn instead, stamps
# came >= 2.8 ms early). The bound promised to the report:
PYSPY_ANCHOR_ERROR_NS = 5_000_000


@dataclass(frozen=True)
class Anchor:
    offset_ns: int
    uncertainty_ns: int | None
    method: str


def anchor_for(fmt: str, entry: dict, start: ClockPair | None, end: ClockPair | None) -> Anchor:
    """How to put a capture stream of format `fmt` on CLOCK_MONOTONIC.

    An explicit `clock` object in the collector's manifest entry wins (a collector that measured
    its own offset knows best); otherwise the offset follows from the stream's clock.
    """
    explicit = entry.get("clock") or {}
    if "offset_ns" in explicit:
        unc = explicit.get("uncertainty_ns")
        return Anchor(int(explicit["offset_ns"]), None if unc is None else int(unc),
                      explicit.get("method", "recorded by the collector"))
    if fmt == "strace":
        if start is None:
            return Anchor(0, None, "no clock pair in manifest: strace stays on wall-clock time")
        off, unc = realtime_to_monotonic(start, end)
        return Anchor(off, unc + STRACE_STAMP_LAG_NS, "CLOCK_REALTIME->MONOTONIC pair read at start and end")
    if fmt in ("perf-script", "process-jsonl", "ebpf-jsonl", "pyruntime-jsonl"):
        return Anchor(0, 0, "recorded on CLOCK_MONOTONIC")
    if fmt == "pyspy-chrometrace":
        started = explicit.get("started_monotonic_ns") or entry.get("started_monotonic_ns")
        if started is None:
            return Anchor(0, None, "py-spy start time not recorded: relative times only")
        return Anchor(int(started), PYSPY_ANCHOR_ERROR_NS, "py-spy start seen on CLOCK_MONOTONIC")
    return Anchor(0, None, "stream has no timestamps")


def context_for(path: str, fmt: str, entry: dict, start: ClockPair | None, end: ClockPair | None,
                target: dict | None = None) -> ParseContext:
    """The ParseContext of one capture stream: its offset, date, pid and thread-id map."""
    a = anchor_for(fmt, entry, start, end)
    ctx = ParseContext(path=path, offset_ns=a.offset_ns, uncertainty_ns=a.uncertainty_ns)
    if start is not None:
        ctx.date = _dt.datetime.fromtimestamp(start.realtime_ns / 1e9).date()
    tid_map = entry.get("tid_map") or {}
    ctx.tid_map = {int(k): int(v) for k, v in tid_map.items()}
    if target and target.get("pid"):
        ctx.pid = int(target["pid"])
        ctx.thread_groups = {int(t): ctx.pid for t in target.get("threads") or ()}
    ctx.stream_start_ns = entry.get("started_monotonic_ns")
    return ctx


def alignment_summary(data: Dataset) -> dict:
    """Per stream: clock, offset, uncertainty; overall: the error bound between timed streams."""
    rows = []
    for s in data.streams:
        rows.append({"stream": s.name, "format": s.format, "clock": s.clock.value,
                     "offset_ns": s.offset_ns, "uncertainty_ns": s.uncertainty_ns,
                     "aligned": s.clock is not Clock.NONE and s.uncertainty_ns is not None})
    timed = [s for s in data.streams if s.clock is not Clock.NONE and s.records]
    unaligned = [s.name for s in timed if s.uncertainty_ns is None]
    bases = {s.clock for s in timed if s.uncertainty_ns is None}
    if unaligned and (len(timed) > 1):
        note = ("streams " + ", ".join(unaligned) + " are not anchored to CLOCK_MONOTONIC "
                "(raw files without a capture manifest): times within each stream are exact, "
                "but crossing them in time is not possible")
        error = None
    else:
        error = max((s.uncertainty_ns or 0 for s in timed), default=0)
        note = f"streams aligned on CLOCK_MONOTONIC within ±{error / 1e6:.3f} ms" if timed else "no timed streams"
        if len(bases) > 1:
            note += "; mixed clocks"
    return {"streams": rows, "error_ns": error, "note": note}


def stream_time_range(data: Dataset) -> tuple[int, int] | None:
    """The [first, last] time covered by timed records, on the common base."""
    lo = hi = None
    for ev in data.syscalls:
        if lo is None or ev.start_ns < lo:
            lo = ev.start_ns
        e = ev.start_ns + (ev.dur_ns or 0)
        if hi is None or e > hi:
            hi = e
    for s in data.samples:
        if s.ts_ns is None:
            continue
        if lo is None or s.ts_ns < lo:
            lo = s.ts_ns
        if hi is None or s.ts_ns > hi:
            hi = s.ts_ns
    if lo is None or hi is None:
        return None
    return lo, hi


__all__ = ["Anchor", "anchor_for", "context_for", "alignment_summary", "stream_time_range", "StreamInfo"]
