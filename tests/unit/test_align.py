"""Clocks onto one time base (diag/align.py): the anchor of each capture stream, its parse context,
the alignment summary of a report, and raw files put on one clock by an explicit --offset or kept
side by side. The offset found from thread activity is tests/unit/test_activity.py's."""
from __future__ import annotations

import datetime as _dt
import os
import sys
import time

import pytest

from diag.align import (PTHREAD_ID_MIN, PYSPY_ANCHOR_ERROR_NS, STRACE_STAMP_LAG_NS, align_raw, alignment_summary,
                        anchor_for, clock_domain, clock_kind, context_for, stream_time_range)
from diag.capture.clock import ClockPair
from diag.model import Clock, Dataset, Frame, StackSample, StreamInfo
from diag.parse.base import ParsedStream

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "rules"))
from synth import MS, call, sample  # noqa: E402

S = 1_000_000_000
T0 = 1_710_504_000 * S            # 2024-03-15 12:00:00 UTC, on the wall clock


def wall(name: str, ms: float, dur_ms: float = 1, tid: int = 10):
    """A strace call stamped on the wall clock, `ms` after T0."""
    return call(name, 0, dur_ms, tid=tid, source="strace")._replace(start_ns=T0 + int(ms * MS))


def untimed(function: str) -> StackSample:
    """A sample of a format without times (py-spy speedscope/raw)."""
    return StackSample(tid=10, ts_ns=None, frames=(Frame(function, "app.py", 1),))


def stream(path: str, fmt: str, clock: Clock, domain: str | None, syscalls=(), samples=()) -> ParsedStream:
    info = StreamInfo(name=os.path.basename(path), path=path, format=fmt, clock=clock, domain=domain,
                      records=len(syscalls) + len(samples))
    return ParsedStream(info, Dataset(syscalls=list(syscalls), samples=list(samples)))


# ---- anchors of capture streams ----------------------------------------------------------------

def test_an_offset_the_collector_recorded_wins_over_the_format_default():
    pair = ClockPair(T0, 5 * S, 1000)
    a = anchor_for("strace", {"clock": {"offset_ns": 123, "uncertainty_ns": 7, "method": "measured"}}, pair, pair)
    assert (a.offset_ns, a.uncertainty_ns, a.method) == (123, 7, "measured")
    b = anchor_for("perf-script", {"clock": {"offset_ns": "-40"}}, None, None)
    assert (b.offset_ns, b.uncertainty_ns, b.method) == (-40, None, "recorded by the collector")


def test_strace_goes_on_monotonic_by_the_clock_pairs_within_their_drift_gap_and_stamp_lag():
    # GIVEN pairs read at the start and the end of the capture: the wall clock moved 2 µs
    # against the monotonic one meanwhile, and the pairs took 1 and 3 µs to read
    start = ClockPair(realtime_ns=T0, monotonic_ns=5 * S, gap_ns=1_000)
    end = ClockPair(realtime_ns=T0 + 60 * S - 2_000, monotonic_ns=65 * S, gap_ns=3_000)
    a = anchor_for("strace", {}, start, end)
    # THEN the offset is their mean, the error half the drift plus the worse gap plus the lag
    assert a.offset_ns == 5 * S - T0 + 1_000
    assert a.uncertainty_ns == 1_000 + 3_000 + STRACE_STAMP_LAG_NS


def test_strace_without_a_clock_pair_stays_on_the_wall_clock_unanchored():
    a = anchor_for("strace", {}, None, None)
    assert (a.offset_ns, a.uncertainty_ns) == (0, None)


@pytest.mark.parametrize("fmt", ["perf-script", "process-jsonl", "ebpf-jsonl", "pyruntime-jsonl"])
def test_streams_recorded_on_monotonic_need_no_offset(fmt):
    a = anchor_for(fmt, {}, None, None)
    assert (a.offset_ns, a.uncertainty_ns) == (0, 0)


def test_py_spy_is_anchored_where_the_collector_saw_it_start_else_left_relative():
    seen = anchor_for("pyspy-chrometrace", {"started_monotonic_ns": 7 * S}, None, None)
    assert (seen.offset_ns, seen.uncertainty_ns) == (7 * S, PYSPY_ANCHOR_ERROR_NS)
    assert anchor_for("pyspy-chrometrace", {"clock": {"started_monotonic_ns": 8 * S}}, None, None).offset_ns == 8 * S
    unanchored = anchor_for("pyspy-chrometrace", {}, None, None)
    assert (unanchored.offset_ns, unanchored.uncertainty_ns) == (0, None)
    assert anchor_for("pyspy-speedscope", {}, None, None).method == "stream has no timestamps"


@pytest.fixture
def utc(monkeypatch):
    """Local time is UTC for the test (the date of strace -t/-tt stamps is a local date)."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_parse_context_of_a_capture_stream(utc):
    start = ClockPair(realtime_ns=T0, monotonic_ns=5 * S, gap_ns=0)
    entry = {"tid_map": {"140000": "42"}, "started_monotonic_ns": 6 * S}
    ctx = context_for("streams/strace.txt", "strace", entry, start, None, {"pid": 41, "threads": [41, 42]})
    assert ctx.path == "streams/strace.txt"
    assert (ctx.offset_ns, ctx.uncertainty_ns) == (5 * S - T0, STRACE_STAMP_LAG_NS)
    assert ctx.date == _dt.date(2024, 3, 15)
    assert ctx.tid_map == {140000: 42}
    assert (ctx.pid, ctx.thread_groups) == (41, {41: 41, 42: 41})
    assert ctx.stream_start_ns == 6 * S


# ---- what the report says of the alignment -----------------------------------------------------

def info(name, clock, unc, records=10, **kw) -> StreamInfo:
    return StreamInfo(name=name, path=name, format=name, clock=clock, uncertainty_ns=unc, records=records, **kw)


def test_summary_of_aligned_streams_promises_the_largest_error():
    data = Dataset(streams=[info("strace", Clock.REALTIME, 120_000, method="clock pairs", domain="realtime"),
                            info("ebpf", Clock.MONOTONIC, 0, method="recorded on CLOCK_MONOTONIC")])
    s = alignment_summary(data)
    assert s["error_ns"] == 120_000
    assert s["note"] == "streams on one clock within ±0.120 ms (clock pairs; recorded on CLOCK_MONOTONIC)"
    assert [(r["stream"], r["aligned"], r["clock_kind"]) for r in s["streams"]] == \
        [("strace", True, "absolute"), ("ebpf", True, "absolute")]


def test_summary_with_a_stream_side_by_side_promises_no_error_and_says_how_to_align_it():
    data = Dataset(streams=[info("strace", Clock.REALTIME, 100_000, domain="realtime"),
                            info("app.pyspy.json", Clock.RELATIVE, None, side_by_side=True,
                                 domain="relative:app.pyspy.json")])
    s = alignment_summary(data)
    assert s["error_ns"] is None
    assert "app.pyspy.json could not be put on the others' clock" in s["note"] and "--offset" in s["note"]
    assert [(r["aligned"], r["side_by_side"], r["clock_kind"]) for r in s["streams"]] == \
        [(True, False, "absolute"), (False, True, "relative")]


def test_summary_of_one_timed_stream_and_an_untimed_profile():
    data = Dataset(streams=[info("perf", Clock.MONOTONIC, 0), info("profile.speedscope", Clock.NONE, None)])
    s = alignment_summary(data)
    assert (s["error_ns"], s["note"]) == (0, "one timed stream")
    assert [(r["aligned"], r["clock_kind"]) for r in s["streams"]] == [(True, "absolute"), (False, "unknown")]


def test_time_range_covers_calls_to_their_end_and_timed_samples():
    data = Dataset(syscalls=[call("read", 10, 5), call("write", 20, 30)],
                   samples=[sample(10, 5, "f"), sample(10, 45, "f"), untimed("g")])
    assert stream_time_range(data) == (5 * MS, 50 * MS)
    assert stream_time_range(Dataset(syscalls=[call("fsync", 3, 1)])) == (3 * MS, 4 * MS)
    assert stream_time_range(Dataset()) is None


# ---- clock domains of raw files ----------------------------------------------------------------

@pytest.mark.parametrize("fmt, clock, ctx_clock, domain", [
    ("strace", Clock.REALTIME, None, "realtime"),
    ("strace", Clock.RELATIVE, Clock.RELATIVE, "relative:a.txt"),        # strace -r
    ("perf-script", Clock.MONOTONIC, Clock.MONOTONIC, "monotonic"),      # perf -k CLOCK_MONOTONIC
    ("perf-script", Clock.MONOTONIC, None, "perf"),                      # perf's own clock
    ("perf-trace", Clock.RELATIVE, None, "relative:a.txt"),
    ("perf-trace", Clock.RELATIVE, Clock.MONOTONIC, "perf"),
    ("ebpf-jsonl", Clock.MONOTONIC, None, "monotonic"),
    ("pyspy-chrometrace", Clock.RELATIVE, None, "relative:a.txt"),
    ("pyspy-speedscope", Clock.NONE, None, None),
])
def test_clock_domain_of_a_raw_stream(fmt, clock, ctx_clock, domain):
    assert clock_domain(fmt, clock, ctx_clock, "a.txt") == domain


@pytest.mark.parametrize("domain, kind", [("realtime", "absolute"), ("perf", "absolute"),
                                          ("relative:a.json", "relative"), (None, "unknown")])
def test_clock_kind(domain, kind):
    assert clock_kind(domain) == kind


# ---- raw files on one clock --------------------------------------------------------------------

def test_an_explicit_offset_puts_a_relative_stream_after_the_references_first_record():
    # GIVEN a strace log on the wall clock and a py-spy chrometrace relative to py-spy's start
    strace = stream("/in/app.strace", "strace", Clock.REALTIME, "realtime",
                    syscalls=[wall("read", 0), wall("write", 2000)])
    pyspy = stream("/in/app.pyspy.json", "pyspy-chrometrace", Clock.RELATIVE, "relative:/in/app.pyspy.json",
                   samples=[sample(10, 0, "main"), sample(10, 10, "main")])
    # WHEN aligned with --offset app.pyspy.json=+1.5
    notes = align_raw([strace, pyspy], {"/in/app.pyspy.json": 3 * S // 2}, {})
    # THEN py-spy's times count from the strace log's first call, plus 1.5 s, exactly
    assert notes == []
    assert [s.ts_ns for s in pyspy.data.samples] == [T0 + 1500 * MS, T0 + 1510 * MS]
    assert (pyspy.info.offset_ns, pyspy.info.uncertainty_ns) == (T0 + 1500 * MS, 0)
    assert "--offset +1.500000 s from the reference's first record" in pyspy.info.method
    # and the strace log is the reference, untouched, within its stamp lag
    assert [e.start_ns for e in strace.data.syscalls] == [T0, T0 + 2000 * MS]
    assert strace.info.uncertainty_ns == STRACE_STAMP_LAG_NS and "the reference clock" in strace.info.method


def test_an_explicit_offset_of_an_absolute_clock_is_added_as_it_is():
    strace = stream("/in/app.strace", "strace", Clock.REALTIME, "realtime",
                    syscalls=[wall("read", 0), wall("write", 5)])
    perf = stream("/in/perf.txt", "perf-script", Clock.MONOTONIC, "perf", samples=[sample(10, 7, "f")])
    align_raw([strace, perf], {"/in/perf.txt": -2 * S}, {})
    assert perf.data.samples[0].ts_ns == 7 * MS - 2 * S
    assert perf.info.method == "--offset -2.000000 s"


def test_syscalls_on_an_unrelated_clock_are_kept_side_by_side_from_the_references_start():
    # GIVEN a strace log on the wall clock and a perf trace on its own relative clock, with no
    # samples on either side to match thread activity by, and no --offset
    strace = stream("/in/app.strace", "strace", Clock.REALTIME, "realtime",
                    syscalls=[wall("read", 0), wall("write", 5), wall("fsync", 9)])
    trace = stream("/in/trace.txt", "perf-trace", Clock.RELATIVE, "relative:/in/trace.txt",
                   syscalls=[call("read", 3, 1, source="perf"), call("write", 8, 1, source="perf")])
    # WHEN aligned
    notes = align_raw([strace, trace], {}, {})
    # THEN the trace is moved to start with the reference, marked unaligned, and the user is told
    assert [e.start_ns for e in trace.data.syscalls] == [T0, T0 + 5 * MS]
    assert trace.info.side_by_side and trace.info.uncertainty_ns is None
    assert trace.info.offset_ns == T0 - 3 * MS
    assert "pass --offset trace.txt=+SECONDS" in trace.info.method
    assert len(notes) == 1 and notes[0].startswith("trace.txt: not aligned with wall-clock time")
    assert not strace.info.side_by_side


def test_samples_kept_side_by_side_lose_their_times_but_not_their_stacks():
    # GIVEN two sampled streams on unrelated clocks: nothing to match activity with
    perf = stream("/in/perf.txt", "perf-script", Clock.MONOTONIC, "perf",
                  samples=[sample(10, t, "work") for t in (1, 2, 3)])
    pyspy = stream("/in/app.pyspy.json", "pyspy-chrometrace", Clock.RELATIVE, "relative:/in/app.pyspy.json",
                   samples=[sample(10, 0, "main", "handler")])
    notes = align_raw([perf, pyspy], {}, {})
    # THEN the smaller one is side by side: its samples untimed, still with their frames
    assert pyspy.info.side_by_side and [s.ts_ns for s in pyspy.data.samples] == [None]
    assert [f.function for f in pyspy.data.samples[0].frames] == ["main", "handler"]
    assert [s.ts_ns for s in perf.data.samples] == [1 * MS, 2 * MS, 3 * MS]
    assert "nothing to match" in notes[0]


def test_streams_without_timestamps_are_profiles_only():
    speedscope = stream("/in/p.speedscope.json", "pyspy-speedscope", Clock.NONE, None,
                        samples=[untimed("f")])
    assert align_raw([speedscope], {}, {}) == []
    assert speedscope.info.method == "no timestamps: profiles only, never in a time window"
    assert speedscope.info.offset_ns == 0 and not speedscope.info.side_by_side


def test_pthread_ids_seen_in_the_trace_are_mapped_to_os_thread_ids():
    pthread = PTHREAD_ID_MIN + 0x7F00
    strace = stream("/in/app.strace", "strace", Clock.REALTIME, "realtime", syscalls=[wall("read", 0, tid=42)])
    pyspy = stream("/in/app.pyspy.json", "pyspy-chrometrace", Clock.RELATIVE, "relative:/in/app.pyspy.json",
                   samples=[sample(pthread, 0, "main"), sample(7, 1, "main")])
    align_raw([strace, pyspy], {"/in/app.pyspy.json": 0}, {pthread: 42})
    assert [s.tid for s in pyspy.data.samples] == [42, 7]
    assert pyspy.info.method.startswith("1 pthread id(s) mapped to OS tids")
