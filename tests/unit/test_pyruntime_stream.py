"""Samples -> interval records -> stream -> parser -> Dataset -> queries, on small hand-made inputs.

The sequences are what the sampler would read from a real interpreter (diag/pyruntime/reader.py
Sample), at 1 ms per sample to keep the numbers readable; the GC counts and stats follow the
interpreter's rules (a gen-g collection zeroes count[0..g], adds one to count[g+1], and adds one
to generation_stats[g].collections when it ends).
"""
from __future__ import annotations

import io
import json

import pytest

from diag.errors import ParseError
from diag.model import Dataset, GcPause, GilSpan, RuntimeWindow
from diag.parse import collect_records, parse_file
from diag.parse.base import ParseContext
from diag.parse.pyruntime import PyRuntimeParser
from diag.pyruntime.intervals import IntervalBuilder, generation_from_counts
from diag.pyruntime.reader import Sample

MS = 1_000_000
IDLE_COUNTS = (120, 3, 1)


def held(tid, switch=10, collecting=False, counts=IDLE_COUNTS, stats=(50, 5, 1)):
    return Sample(True, tid, switch, collecting, counts, stats)


def free(switch=10, stats=(50, 5, 1)):
    return Sample(False, None, switch, False, IDLE_COUNTS, stats)


def run(samples) -> tuple[list[dict], IntervalBuilder]:
    """Feed samples 1 ms apart (each read taking 10 µs); returns every record and the builder."""
    b = IntervalBuilder(max_span_ns=10**12)
    out = []
    for i, s in enumerate(samples):
        out += b.feed(i * MS, i * MS + 10_000, s)
    return out + b.finish(), b


def test_holder_changes_make_one_record_each():
    # GIVEN thread 11 holding for 3 samples, the GIL free for 2, thread 12 for 2
    recs, b = run([held(11), held(11), held(11), free(11), free(11), held(12, 12), held(12, 12)])
    gil = [r for r in recs if r["type"] == "gil"]
    # THEN three records, bounded by the reads that saw them
    assert [(r["state"], r["tid"], r["samples"]) for r in gil] == [("held", 11, 3), ("free", None, 2),
                                                                     ("held", 12, 2)]
    assert (gil[0]["start_ns"], gil[0]["end_ns"]) == (0, 2 * MS + 10_000)
    assert b.switches() == 2 and b.gil_records == 3


def test_hand_offs_between_samples_are_counted_not_invented():
    # GIVEN thread 11 seen in 3 samples while the interpreter counted 4 hand-offs in between
    recs, _ = run([held(11, switch=10), held(11, switch=12), held(11, switch=14)])
    # THEN one record, saying other threads held the GIL unseen (4 switches)
    assert [(r["tid"], r["switches"]) for r in recs] == [(11, 4)]


def test_a_failed_read_ends_every_record():
    recs, _ = run([held(11), None, held(11)])
    assert [(r["tid"], r["samples"]) for r in recs] == [(11, 1), (11, 1)]


def test_long_holds_are_cut_so_a_killed_capture_keeps_them():
    b = IntervalBuilder(max_span_ns=3 * MS)
    out = []
    for i in range(10):
        out += b.feed(i * MS, i * MS + 1, held(11))
    out += b.finish()
    assert [r["samples"] for r in out] == [3, 3, 3, 1]


@pytest.mark.parametrize("counts,gen", [((0, 4, 2), 0), ((7, 0, 3), 1), ((0, 0, 0), 2), ((35, 0, 0), 2),
                                        (None, None)])
def test_generation_from_counts_follows_the_interpreter(counts, gen):
    # count[0] moves with allocations during a collection: only count[1] and count[2] decide
    assert generation_from_counts(counts) == gen


def test_a_full_collection_is_named_by_the_stats():
    # GIVEN idle, then 3 samples collecting a gen-2 (counts zeroed), then idle with gen-2 stats +1
    seq = [held(11), held(11, collecting=True, counts=(0, 0, 0)), held(11, collecting=True, counts=(4, 0, 0)),
           held(11, collecting=True, counts=(9, 0, 0)), held(11, stats=(50, 5, 2))]
    recs, b = run(seq)
    gc = [r for r in recs if r["type"] == "gc"]
    # THEN one pause of 3 samples, generation 2, one collection, paid by thread 11
    assert gc == [{"type": "gc", "start_ns": 1 * MS, "end_ns": 3 * MS + 10_000, "samples": 3, "generation": 2,
                   "collections": 1, "tid": 11}]
    assert b.collections_seen_by_stats() == [0, 0, 1]


def test_unseen_short_collections_do_not_hide_the_long_one():
    # GIVEN a gen-0 collection that ran unseen between two samples, then a seen gen-2 one
    seq = [held(11, stats=(50, 5, 1)), held(11, collecting=True, counts=(0, 0, 0), stats=(51, 5, 1)),
           held(11, stats=(51, 5, 2))]
    recs, b = run(seq)
    gc = [r for r in recs if r["type"] == "gc"]
    # THEN the stats alone say "gen 0 and gen 2 ran"; the counts while collecting pick gen 2
    assert (gc[0]["generation"], gc[0]["collections"]) == (2, 2)
    assert b.collections_seen_by_stats() == [1, 0, 1]


def test_a_collection_cut_by_a_failed_read_keeps_the_counts_guess():
    recs, _ = run([held(11), held(11, collecting=True, counts=(3, 0, 4)), None])
    gc = [r for r in recs if r["type"] == "gc"]
    assert (gc[0]["generation"], gc[0]["collections"]) == (1, None)


def test_no_generation_when_counts_and_stats_are_unknown():
    seq = [Sample(True, 11, None, False, None, None), Sample(True, 11, None, True, None, None),
           Sample(True, 11, None, False, None, None)]
    recs, _ = run(seq)
    gc = [r for r in recs if r["type"] == "gc"]
    assert (gc[0]["generation"], gc[0]["collections"], gc[0]["samples"]) == (None, None, 1)


# ---- the stream, the parser, the queries -------------------------------------------------------

HEADER = {"format": "diag.pyruntime/1", "type": "header", "pid": 77, "python": "3.11.7",
          "method": "_PyRuntime symbol from libpython3.11.so.1.0 (.symtab); offsets table for 3.11",
          "rate_hz": 1000, "start_ns": 0, "unknown": []}


def stream_text(samples, end=True) -> str:
    recs, b = run(samples)
    lines = [json.dumps(HEADER)] + [json.dumps(r) for r in recs]
    if end:
        lines.append(json.dumps({"type": "end", "end_ns": len(samples) * MS, "samples": len(samples),
                                 "read_errors": 0, "gc_collections": b.collections_seen_by_stats(),
                                 "gil_switches": b.switches()}))
    return "\n".join(lines) + "\n"


def parse(text: str, path="pyruntime.jsonl") -> tuple[Dataset, ParseContext]:
    ctx = ParseContext(path=path)
    data = Dataset()
    collect_records(PyRuntimeParser().parse(io.StringIO(text), ctx), data)
    return data, ctx


SCENE = ([held(11)] * 4 + [held(11, collecting=True, counts=(0, 0, 0))] * 3 + [held(11, stats=(50, 5, 2))]
         + [free()] * 2 + [held(12, switch=11, stats=(50, 5, 2))] * 4)


def test_parser_round_trip_into_records_and_window():
    data, ctx = parse(stream_text(SCENE))
    assert ctx.warnings == []
    assert [(s.tid, s.held, s.samples, s.pid) for s in data.gil] == [(11, True, 8, 77), (None, False, 2, 77),
                                                                     (12, True, 4, 77)]
    assert data.gc_pauses == [GcPause(start_ns=4 * MS, end_ns=6 * MS + 10_000, generation=2, samples=3,
                                      collections=1, tid=11, pid=77)]
    (w,) = data.runtime_windows
    assert (w.pid, w.python, w.rate_hz, w.samples, w.gc_collections) == (77, "3.11.7", 1000, 14, (0, 0, 1))


def test_who_held_the_gil_and_was_the_gc_running():
    data, _ = parse(stream_text(SCENE))
    idx = data.runtime()
    # over the whole capture: 11 held 8 of 14 samples' worth, 12 held 4, 2 free
    w = idx.gil_window(0, 14 * MS)
    assert w.top() == 11
    assert w.by_tid[11] == pytest.approx(8 * MS, abs=MS) and w.by_tid[12] == pytest.approx(4 * MS, abs=MS)
    assert w.free_ns == pytest.approx(2 * MS, abs=MS)
    assert w.held_ns + w.free_ns + w.unseen_ns == 14 * MS
    # a window inside the second hold is all thread 12's
    assert idx.gil_window(11 * MS, 12 * MS).share(12) == 1.0
    assert idx.gil_at(12 * MS).tid == 12
    # the GC ran around 4-6 ms, not at 10-13 ms
    assert [p.generation for p in idx.gc_pauses_in(5 * MS, 5 * MS + 1)] == [2]
    assert idx.gc_running(3 * MS, 8 * MS) and not idx.gc_running(10 * MS, 13 * MS)
    assert idx.gc_ns(0, 14 * MS) == pytest.approx(3 * MS, abs=MS)
    # outside the sampled window nothing is claimed, and the index says it was not watching
    assert idx.gil_window(100 * MS, 101 * MS).unseen_ns == MS and not idx.sampled(100 * MS, 101 * MS)
    assert idx.sampled(0, MS)


def test_dataset_index_is_rebuilt_when_records_are_added():
    data, _ = parse(stream_text(SCENE))
    first = data.runtime()
    assert data.runtime() is first
    data.gil.append(GilSpan(tid=13, held=True, start_ns=20 * MS, end_ns=21 * MS, samples=2, pid=77))
    assert data.runtime().gil_window(20 * MS, 21 * MS).top() == 13


def test_a_capture_cut_by_sigkill_keeps_every_complete_record(tmp_path):
    # GIVEN a stream with no end line and a last line cut mid-record
    text = stream_text(SCENE, end=False)
    cut = text + '{"type":"gil","state":"held","tid":1'
    path = tmp_path / "pyruntime.jsonl"
    path.write_text(cut)
    # WHEN parsed as `diag replay` would (format detected from the header)
    parsed = parse_file(str(path))
    # THEN every complete record is there, the window ends at the last one, one warning says why
    assert parsed.info.format == "pyruntime-jsonl"
    assert len(parsed.data.gil) == 3 and len(parsed.data.gc_pauses) == 1
    (w,) = parsed.data.runtime_windows
    assert w.samples is None and w.end_ns == max(s.end_ns for s in parsed.data.gil)
    assert len(parsed.data.warnings) == 1 and "truncated" in parsed.data.warnings[0]


BAD_GIL = '{"type":"gil","state":"sleeping","tid":1,"start_ns":0,"end_ns":1,"samples":1}\n'


def test_a_bad_record_is_skipped_with_a_warning_naming_file_and_line(tmp_path):
    path = tmp_path / "pyruntime.jsonl"
    path.write_text(stream_text(SCENE).replace('{"type": "end"', BAD_GIL + '{"type": "end"'))
    parsed = parse_file(str(path))
    assert len(parsed.data.gil) == 3
    (warning,) = parsed.data.warnings
    assert f"{path}:" in warning and "state 'sleeping'" in warning


def test_malformed_stream_is_one_line_error_naming_the_file(tmp_path):
    path = tmp_path / "pyruntime.jsonl"
    path.write_text(json.dumps(HEADER) + "\n" + BAD_GIL * 20)
    with pytest.raises(ParseError) as e:
        parse_file(str(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_unknown_record_types_are_skipped_for_later_versions():
    text = stream_text(SCENE).replace('{"type": "end"', '{"type": "threads", "n": 3}\n{"type": "end"')
    data, ctx = parse(text)
    assert len(data.gil) == 3 and ctx.warnings == []


def test_window_without_records_or_header():
    data, ctx = parse(json.dumps({"type": "gil", "state": "free", "tid": None, "start_ns": 0, "end_ns": 1,
                                  "samples": 1}) + "\n")
    assert data.runtime_windows == [] and "no header" in ctx.warnings[0]
    assert isinstance(data.gil[0], GilSpan) and not isinstance(data.gil[0], RuntimeWindow)
