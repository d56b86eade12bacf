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
import os
from dataclasses import dataclass

from diag.activity import (assign_by_activity, blocked_intervals, find_offset, map_threads,
                           process_blocked)
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
    """Per stream: its clock, how it was put on the report's time base and with what error;
    overall: the error bound between timed streams (None when some could not be aligned)."""
    rows = []
    for s in data.streams:
        domain = s.domain if s.domain is not None else (None if s.clock is Clock.NONE else "monotonic")
        rows.append({"stream": s.name, "format": s.format, "clock": s.clock.value, "clock_kind": clock_kind(domain),
                     "offset_ns": s.offset_ns, "uncertainty_ns": s.uncertainty_ns,
                     "aligned": s.clock is not Clock.NONE and s.uncertainty_ns is not None and not s.side_by_side,
                     "side_by_side": s.side_by_side, "method": s.method})
    timed = [s for s in data.streams if s.clock is not Clock.NONE and s.records]
    apart = [s.name for s in timed if s.side_by_side or s.uncertainty_ns is None]
    if apart and len(timed) > 1:
        note = ("streams " + ", ".join(apart) + " could not be put on the others' clock: each is analysed on its "
                "own, never crossed in time with the others (give --offset FILE=+SECONDS)")
        error = None
    else:
        error = max((s.uncertainty_ns or 0 for s in timed), default=0)
        how = sorted({s.method for s in timed if s.method and "reference clock" not in s.method})
        note = (f"streams on one clock within ±{error / 1e6:.3f} ms" if len(timed) > 1 else
                "one timed stream" if timed else "no timed streams")
        if how and len(timed) > 1:
            note += " (" + "; ".join(how) + ")"
    return {"streams": rows, "error_ns": error, "note": note}


def stream_time_range(data: Dataset) -> tuple[int, int] | None:
    """The [first, last] time covered by timed records, on the common base."""
    lo = hi = None
    if data.syscalls:
        # SyscallEvent fields 3 and 4 (start_ns, dur_ns) read directly: this runs over every call
        lo = min(e[3] for e in data.syscalls)
        hi = max(e[3] + (e[4] or 0) for e in data.syscalls)
    ts = [s.ts_ns for s in data.samples if s.ts_ns is not None]
    if ts:
        lo = min(ts) if lo is None else min(lo, min(ts))
        hi = max(ts) if hi is None else max(hi, max(ts))
    if lo is None or hi is None:
        return None
    return lo, hi


__all__ = ["Anchor", "anchor_for", "context_for", "alignment_summary", "stream_time_range", "StreamInfo"]


# --- raw files: clocks that do not line up -----------------------------------------------------
#
# Raw trace files come without a capture manifest: nothing says how their clocks relate. Each
# stream's clock is known from its format (strace -ttt/-tt: the wall clock; perf script: perf's
# clock, CLOCK_MONOTONIC only when its header says so; py-spy chrometrace, strace -r, perf trace:
# relative to the tool's own start; speedscope, raw, pprof: no times at all). Streams on one clock
# (a "domain") line up as they are. The domain with the most syscalls is the reference; every
# other one is put on it by an explicit --offset, else by thread activity (diag/activity.py),
# else it is kept side by side: its samples lose their times (they still count in profiles,
# never in a time window) and a syscall stream is moved to start with the reference, with a
# warning. So no report mixes an epoch-sized clock with a relative one.

PTHREAD_ID_MIN = 1 << 22      # above the largest pid_max: a "tid" this big is a pthread id
PYSPY_LAGS_NS = (0, 2_000_000, PYSPY_ANCHOR_ERROR_NS)     # how late py-spy's stamps may be


def clock_domain(fmt: str, clock: Clock, ctx_clock: Clock | None, path: str) -> str | None:
    """The clock a raw stream's times are on; streams of one domain line up as they are."""
    if clock is Clock.NONE:
        return None
    if fmt in ("ebpf-jsonl", "process-jsonl"):
        return "monotonic"
    if fmt == "perf-script":
        return "monotonic" if ctx_clock is Clock.MONOTONIC else "perf"
    if fmt == "perf-trace":
        return "perf" if ctx_clock is Clock.MONOTONIC else "relative:" + path
    if clock is Clock.REALTIME:
        return "realtime"
    if clock is Clock.MONOTONIC:
        return "monotonic"
    return "relative:" + path


def clock_kind(domain: str | None) -> str:
    if domain is None:
        return "unknown"
    return "relative" if domain.startswith("relative:") else "absolute"


def _times(data: Dataset) -> tuple[int, int] | None:
    return stream_time_range(data)


def _samples_by_tid(data: Dataset) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for s in data.samples:
        if s.ts_ns is not None and s.on_cpu is not False:
            out.setdefault(s.tid, []).append(s.ts_ns)
    for v in out.values():
        v.sort()
    return out


def _shift(data: Dataset, d: int) -> None:
    """Add d ns to every time of a stream's records (records are frozen: new ones)."""
    if not d:
        return
    from diag.model import StackSample, SyscallEvent

    data.syscalls[:] = [SyscallEvent(e.pid, e.tid, e.name, e.start_ns + d, e.dur_ns, e.ret, e.errno, e.fd,
                                     e.fd_kind, e.nbytes, e.source) for e in data.syscalls]
    data.samples[:] = [s if s.ts_ns is None else StackSample(s.tid, s.ts_ns + d, s.frames, s.on_cpu, s.source,
                                                             s.weight, s.pid, s.thread_name, s.dur_ns)
                       for s in data.samples]
    if data.snapshots:
        import dataclasses
        data.snapshots[:] = [dataclasses.replace(x, ts_ns=x.ts_ns + d) for x in data.snapshots]
    if data.requests:
        data.requests[:] = [r._replace(
            start_ns=r.start_ns + d, end_ns=r.end_ns + d,
            first_write_ns=None if r.first_write_ns is None else r.first_write_ns + d,
            conn_start_ns=None if r.conn_start_ns is None else r.conn_start_ns + d) for r in data.requests]


def _untime(data: Dataset) -> None:
    from diag.model import StackSample

    data.samples[:] = [s if s.ts_ns is None else StackSample(s.tid, None, s.frames, s.on_cpu, s.source, s.weight,
                                                             s.pid, s.thread_name, s.dur_ns) for s in data.samples]


def _retid(data: Dataset, tid_map: dict[int, int]) -> None:
    from diag.model import StackSample

    data.samples[:] = [s if s.tid not in tid_map else StackSample(tid_map[s.tid], s.ts_ns, s.frames, s.on_cpu,
                                                                  s.source, s.weight, s.pid, s.thread_name, s.dur_ns)
                       for s in data.samples]


def _merged(streams) -> Dataset:
    d = Dataset()
    for ps in streams:
        d.syscalls.extend(ps.data.syscalls)
        d.samples.extend(ps.data.samples)
    return d


def align_raw(streams: list, offsets: dict[str, int], pthread_ids: dict[int, int],
              anchored: Dataset | None = None) -> list[str]:
    """Put raw parsed streams (`ParsedStream`s, each with `info.domain` set) on one time base, in
    place. `offsets`: path -> ns given by the user (--offset FILE=+S); `pthread_ids`: pthread id ->
    OS tid learned from syscall traces; `anchored`: records already on CLOCK_MONOTONIC (a
    capture), which are then the reference. Returns the warnings to show."""
    notes: list[str] = []
    # pthread ids (py-spy chrometrace without --threads) -> OS tids, where a trace saw the clone
    for ps in streams:
        unmapped = {s.tid for s in ps.data.samples if s.tid >= PTHREAD_ID_MIN}
        known = {t: pthread_ids[t] for t in unmapped if t in pthread_ids}
        if known:
            _retid(ps.data, known)
            ps.info.method = f"{len(known)} pthread id(s) mapped to OS tids by the trace's clone calls"

    groups: dict[str, list] = {}
    for ps in streams:
        if ps.info.domain is not None and _times(ps.data) is not None:
            groups.setdefault(ps.info.domain, []).append(ps)
    for ps in streams:
        if ps.info.domain is None:
            ps.info.method = ps.info.method or "no timestamps: profiles only, never in a time window"
    if not groups:
        return notes

    def weight(dom: str) -> tuple[int, int]:
        ds = groups[dom]
        return (sum(len(p.data.syscalls) for p in ds), sum(len(p.data.samples) for p in ds))

    if anchored is not None and _times(anchored) is not None:
        ref_dom, ref_data = "monotonic", anchored
        if "monotonic" in groups:
            ref_data = Dataset()
            ref_data.extend(anchored)
            for ps in groups["monotonic"]:
                ref_data.syscalls.extend(ps.data.syscalls)
                ref_data.samples.extend(ps.data.samples)
    else:
        ref_dom = max(groups, key=weight)
        ref_data = _merged(groups[ref_dom])
    for ps in groups.get(ref_dom, ()):
        ps.info.method = (ps.info.method + "; " if ps.info.method else "") + \
            f"the reference clock ({clock_kind(ref_dom)}: {_domain_label(ref_dom)})"
        ps.info.uncertainty_ns = STRACE_STAMP_LAG_NS if ps.info.format == "strace" else 0
    ref_lo, ref_hi = _times(ref_data)
    others = [dom for dom in groups if dom != ref_dom]
    ref_blocked = blocked_intervals((e.tid, e.start_ns, e.dur_ns) for e in ref_data.syscalls) if others else {}
    ref_samples = _samples_by_tid(ref_data) if others else {}

    for dom, members in groups.items():
        if dom == ref_dom:
            continue
        data = _merged(members)
        lo, hi = _times(data)
        names = ", ".join(os.path.basename(p.info.path) for p in members)
        given = [offsets[p.info.path] for p in members if p.info.path in offsets]
        if given:
            d = given[0] + (ref_lo if clock_kind(dom) == "relative" else 0)
            how = (f"--offset {given[0] / 1e9:+.6f} s" + (" from the reference's first record"
                                                            if clock_kind(dom) == "relative" else ""))
            _apply(members, d, 0, how)
            continue
        match, tid_map, how = _by_activity(data, ref_data, ref_blocked, ref_samples, lo, hi, ref_lo, ref_hi, dom)
        if match is not None:
            for ps in members:
                if tid_map:
                    _retid(ps.data, tid_map)
            _apply(members, match[0], match[1], how)
            unmapped = {s.tid for p in members for s in p.data.samples if s.tid >= PTHREAD_ID_MIN}
            if unmapped:
                notes.append(f"{names}: {len(unmapped)} thread(s) named by pthread id could not be matched to OS "
                             "threads (record py-spy with --threads to name them by OS tid)")
            continue
        # side by side
        for ps in members:
            ps.info.side_by_side = True
            ps.info.uncertainty_ns = None
            ps.info.method = (f"side by side: no common clock with the reference ({_domain_label(ref_dom)}) and "
                              f"no offset found ({how}); pass --offset {os.path.basename(ps.info.path)}=+SECONDS")
            if ps.data.samples:
                _untime(ps.data)
            if ps.data.syscalls or ps.data.snapshots or ps.data.requests:
                _shift(ps.data, ref_lo - lo)
                ps.info.offset_ns += ref_lo - lo
        notes.append(f"{names}: not aligned with {_domain_label(ref_dom)} ({how}): analysed side by side, never "
                     f"crossed in time; give --offset FILE=+SECONDS to align it")
    return notes


def _domain_label(dom: str) -> str:
    if dom.startswith("relative:"):
        return "the relative clock of " + os.path.basename(dom[len("relative:"):])
    return {"realtime": "wall-clock time (strace -t/-tt/-ttt)", "monotonic": "CLOCK_MONOTONIC",
            "perf": "perf's clock"}.get(dom, dom)


def _apply(members, d: int, err: int, how: str) -> None:
    for ps in members:
        _shift(ps.data, d)
        ps.info.offset_ns += d
        ps.info.uncertainty_ns = err
        ps.info.method = (ps.info.method + "; " if ps.info.method else "") + how


def _by_activity(data, ref_data, ref_blocked, ref_samples, lo, hi, ref_lo, ref_hi, dom):
    """(offset, error) or None, the tid map, and a sentence saying how (or why not)."""
    prior = ref_lo if clock_kind(dom) == "relative" else None
    samples = _samples_by_tid(data)
    if samples and ref_blocked:
        # this stream samples, the reference traces calls: d is what to add to this stream
        known = {t: v for t, v in samples.items() if t < PTHREAD_ID_MIN}
        m = None
        if all(s.source == "py-spy" for s in data.samples):
            # py-spy stamps a sample when it processes it, up to a few ms after the stack was
            # read: a sample conflicts with a call only that far inside it. How late depends on
            # the load; the lag whose offset stands out most is kept.
            best = None
            for lag in PYSPY_LAGS_NS:
                blocked = ref_blocked if not lag else blocked_intervals(
                    ((e.tid, e.start_ns, e.dur_ns) for e in ref_data.syscalls), lag_ns=lag)
                cand = find_offset(known, blocked, ref_lo - hi, ref_hi - lo, (ref_lo, ref_hi), prior)
                if cand is not None and (best is None or cand.typical_conflicts / (cand.conflicts + 1) >
                                         best.typical_conflicts / (best.conflicts + 1)):
                    best = cand
            m = best
        else:
            m = find_offset(known, ref_blocked, ref_lo - hi, ref_hi - lo, (ref_lo, ref_hi), prior)
        tid_map: dict[int, int] = {}
        if m is None and any(t >= PTHREAD_ID_MIN for t in samples):
            # threads named by pthread id: the whole process first, then thread by thread
            unnamed = {t: v for t, v in samples.items() if t >= PTHREAD_ID_MIN}
            allp = sorted(x for v in samples.values() for x in v)
            n_threads = len({e.tid for e in ref_data.syscalls})
            m = find_offset({0: allp}, {0: process_blocked(ref_blocked, n_threads)}, ref_lo - hi, ref_hi - lo,
                            (ref_lo, ref_hi), prior)
            if m is not None:
                tid_map = map_threads(unnamed, ref_blocked, m.offset_ns)
            else:
                # a process always busy somewhere: assign threads and offset together
                tid_map = assign_by_activity(unnamed, ref_blocked, ref_lo - hi, ref_hi - lo, (ref_lo, ref_hi))
                if tid_map:
                    mapped = {tid_map[t]: v for t, v in unnamed.items() if t in tid_map}
                    m = find_offset(mapped, ref_blocked, ref_lo - hi, ref_hi - lo, (ref_lo, ref_hi), prior)
                    if m is None:
                        tid_map = {}
        if m is not None:
            how = (f"thread activity: offset found ±{m.error_ns / 1e6:.1f} ms, {m.samples} samples of {m.threads} "
                   f"thread(s), {m.conflicts} inside a blocked call (vs ~{m.typical_conflicts:.0f} at other offsets)")
            if tid_map:
                how += f"; {len(tid_map)} pthread id(s) matched to OS tids by activity"
            return (m.offset_ns, m.error_ns), tid_map, how
        return None, {}, "thread activity: no offset fits clearly (too few samples on traced threads, or threads that never block)"
    if data.syscalls and ref_samples:
        blocked = blocked_intervals((e.tid, e.start_ns, e.dur_ns) for e in data.syscalls)
        m = find_offset({t: v for t, v in ref_samples.items() if t < PTHREAD_ID_MIN}, blocked, lo - ref_hi,
                        hi - ref_lo, (lo, hi), None if prior is None else lo - ref_lo)
        if m is not None:
            how = (f"thread activity: offset found ±{m.error_ns / 1e6:.1f} ms, {m.samples} samples of {m.threads} "
                   f"thread(s), {m.conflicts} inside a blocked call (vs ~{m.typical_conflicts:.0f} at other offsets)")
            return (-m.offset_ns, m.error_ns), {}, how
        return None, {}, "thread activity: no offset fits clearly"
    return None, {}, "nothing to match: thread activity needs samples on one side and timed syscalls on the other"
