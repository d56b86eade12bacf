"""py-spy parsers: speedscope, chrometrace, raw (folded), and the dump tid map.

Files under tests/data/pyspy were recorded with tests/data/pyspy/capture.sh (py-spy 0.4.3):
prog.py runs busy_function in MainThread and in "busy-worker", and sleeper in "sleepy".
"""
from __future__ import annotations

import io
import json
import os
import re

import pytest

from diag.errors import EXIT_BAD_INPUT, ParseError
from diag.model import Frame, StackSample
from diag.parse import detect, parse_file
from diag.parse.base import ParseContext
from diag.parse.pyspy import (UNKNOWN_TID, ChrometraceParser, PyspyRawParser, SpeedscopeParser,
                              pthread_to_tid_map_from_dump)

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "pyspy")
PERF_DATA = os.path.join(os.path.dirname(__file__), "..", "data", "perf")
STRACE = ('1234  1700000000.123456 read(3, "", 4096) = 0 <0.000010>\n'
          '1234  1700000000.123500 write(1, "hi\\n", 3) = 3 <0.000004>\n'
          "1234  close(3)                          = 0\n")
PERF = ("python3 12345/12346 [001] 12345.678901234:     250000 cpu-clock:ppp: \n"
        "\tffffffff81234567 ext4_sync_file+0x1f ([kernel.kallsyms])\n\n")


def data(name: str) -> str:
    return os.path.join(DATA, name)


def head_of(name: str) -> str:
    with open(data(name)) as f:
        return f.read(64 * 1024)


def run(parser, text: str, **kw) -> tuple[list[StackSample], ParseContext]:
    ctx = ParseContext(path=kw.pop("path", "in.json"), **kw)
    return list(parser.parse(io.StringIO(text), ctx)), ctx


def run_file(parser, name: str, **kw) -> tuple[list[StackSample], ParseContext]:
    ctx = ParseContext(path=data(name), **kw)
    with open(data(name), newline="") as f:
        return list(parser.parse(f, ctx)), ctx


def leaf_names(samples) -> set[str]:
    return {s.frames[-1].function for s in samples if s.frames}


def os_tids_of_dump() -> dict[str, int]:
    """thread name -> OS tid, from the `py-spy dump` text (it prints OS tids)."""
    with open(data("dump.txt")) as f:
        return {m.group(2): int(m.group(1)) for m in re.finditer(r'^Thread (\d+) \([^)]*\): "([^"]*)"', f.read(), re.M)}


# ---- speedscope ---------------------------------------------------------------------------------------

def test_speedscope_threads_recorded():
    recs, ctx = run_file(SpeedscopeParser(), "speedscope_threads.json")
    assert ctx.warnings == []
    doc = json.load(open(data("speedscope_threads.json")))
    by_name = {}
    for s in recs:
        by_name.setdefault(s.thread_name, set()).add(s.tid)
    assert set(by_name) == {"MainThread", "busy-worker", "sleepy"}
    # profile names carry OS tids in decimal
    expected = {re.match(r'Thread (\d+) "(.*)"', p["name"]).group(2): int(re.match(r"Thread (\d+)", p["name"]).group(1))
                for p in doc["profiles"]}
    assert {k: v.pop() for k, v in by_name.items()} == expected
    # weights: one per recorded sample, merged per identical stack
    assert sum(s.weight for s in recs) == sum(len(p["samples"]) for p in doc["profiles"])
    assert all(s.ts_ns is None and s.on_cpu is None and s.source == "py-spy" for s in recs)
    # --threads pseudo frames are not frames; stacks are root first
    assert not any(f.function.startswith("thread (") for s in recs for f in s.frames)
    worker = [s for s in recs if s.thread_name == "busy-worker"]
    assert all(s.frames[0].function == "Thread._bootstrap" for s in worker)
    assert "busy_function" in {f.function for s in worker for f in s.frames}
    sleepy = [s for s in recs if s.thread_name == "sleepy"]
    assert leaf_names(sleepy) == {"sleeper"}
    f = next(f for s in worker for f in s.frames if f.function == "busy_function")
    assert f.file.endswith("prog.py") and isinstance(f.line, int) and f.module is None


def test_speedscope_without_threads_flag():
    recs, ctx = run_file(SpeedscopeParser(), "speedscope.json", pid=77)
    assert ctx.warnings == []
    assert len({s.tid for s in recs}) == 2 and all(s.tid > 0 for s in recs)
    assert {s.pid for s in recs} == {77}
    assert "busy_function" in {f.function for s in recs for f in s.frames}


def _speedscope(profiles, frames=None) -> str:
    frames = frames if frames is not None else [
        {"name": "main", "file": "/app/x.py", "line": 3, "col": None},
        {"name": "work", "file": "/app/x.py", "line": 9, "col": None},
        {"name": "deflate", "file": "/usr/lib/libz.so.1.2.13", "line": 0, "col": None},
        {"name": 'thread (4806): worker', "file": "", "line": 0, "col": None},
    ]
    return json.dumps({"$schema": "https://www.speedscope.app/file-format-schema.json",
                       "profiles": profiles, "shared": {"frames": frames}, "exporter": "py-spy@0.4.3"})


def _profile(name, samples, w=0.01):
    return {"type": "sampled", "name": name, "unit": "seconds", "startValue": 0.0,
            "endValue": len(samples) * w, "samples": samples, "weights": [w] * len(samples)}


def test_speedscope_merges_identical_stacks_and_reads_native_frames():
    text = _speedscope([_profile('Process 10 Thread 11 "MainThread"', [[0, 1], [0, 1, 2], [0, 1], [0, 1]])])
    recs, ctx = run(SpeedscopeParser(), text)
    assert [(s.frames[-1].function, s.weight) for s in recs] == [("work", 3), ("deflate", 1)]
    assert {(s.pid, s.tid, s.thread_name) for s in recs} == {(10, 11, "MainThread")}
    assert recs[1].frames[-1] == Frame(function="deflate", module="/usr/lib/libz.so.1.2.13")
    assert recs[0].frames == (Frame("main", "/app/x.py", 3), Frame("work", "/app/x.py", 9))


def test_speedscope_pseudo_thread_frame_and_empty_name():
    text = _speedscope([_profile('Thread 4806 ""', [[3, 0, 1]])])
    (s,), _ = run(SpeedscopeParser(), text)
    assert (s.tid, s.thread_name, [f.function for f in s.frames]) == (4806, "worker", ["main", "work"])
    (s,), _ = run(SpeedscopeParser(), _speedscope([_profile('Thread 4806 ""', [[0]])]))
    assert s.thread_name is None


def test_speedscope_sample_with_only_the_pseudo_frame_is_skipped():
    recs, _ = run(SpeedscopeParser(), _speedscope([_profile('Thread 4806 "worker"', [[3], [3, 0], []])]))
    assert [(s.tid, s.weight, [f.function for f in s.frames]) for s in recs] == [(4806, 1, ["main"])]


def test_speedscope_pthread_ids_are_mapped_or_warned():
    text = _speedscope([_profile('Thread 0x7F95F4A40640 "w"', [[0, 1]])])
    (s,), ctx = run(SpeedscopeParser(), text, tid_map={0x7F95F4A40640: 321})
    assert s.tid == 321 and ctx.warnings == []
    (s,), ctx = run(SpeedscopeParser(), text)
    assert s.tid == 0x7F95F4A40640
    assert len(ctx.warnings) == 1 and "pthread" in ctx.warnings[0]


def test_speedscope_foreign_profile_name_and_evented_profiles():
    text = _speedscope([_profile("some other tool", [[0]]),
                        {"type": "evented", "name": "x", "unit": "none", "startValue": 0, "endValue": 1, "events": []}])
    (s,), ctx = run(SpeedscopeParser(), text)
    assert s.tid == UNKNOWN_TID
    assert any("names no thread id" in w for w in ctx.warnings)
    assert any("evented" in w for w in ctx.warnings)


@pytest.mark.parametrize("text, what", [
    ("[1, 2]", "profiles"),
    ('{"profiles": 3, "shared": {"frames": []}}', "profiles"),
    ('{"profiles": [], "shared": {}}', "shared.frames"),
    (_speedscope([_profile('Thread 1 "x"', [[0, 99]])]), "samples[0]"),
    (_speedscope([{"type": "sampled", "name": 'Thread 1 "x"', "samples": [[0]], "weights": []}]), "equal length"),
    (_speedscope([_profile('Thread 1 "x"', [[0]])], frames=[{"file": "x"}]), "frames[0]"),
])
def test_speedscope_wrong_shape(text, what):
    with pytest.raises(ParseError) as ei:
        run(SpeedscopeParser(), text, path="ss.json")
    assert ei.value.exit_code == EXIT_BAD_INPUT and str(ei.value).startswith("ss.json: ") and what in str(ei.value)


def test_speedscope_invalid_truncated_empty_json():
    full = open(data("speedscope.json")).read()
    with pytest.raises(ParseError, match=r"^ss\.json:1: truncated JSON"):
        run(SpeedscopeParser(), full[: len(full) // 2], path="ss.json")
    with pytest.raises(ParseError, match=r"^ss\.json:1: truncated JSON"):
        run(SpeedscopeParser(), full.rstrip()[:-1], path="ss.json")
    with pytest.raises(ParseError, match=r"^ss\.json:2: invalid JSON"):
        run(SpeedscopeParser(), '{"profiles": [],\n "shared": nope}', path="ss.json")
    with pytest.raises(ParseError, match="empty"):
        run(SpeedscopeParser(), "  \n", path="ss.json")


# ---- chrometrace ----------------------------------------------------------------------------------------

def _ev(ph, name, ts, tid=7, pid=5, filename="/app/x.py", line=1):
    return {"args": {"filename": filename, "line": line}, "cat": "py-spy", "name": name, "ph": ph,
            "pid": pid, "tid": tid, "ts": ts}


def test_chrometrace_replays_stack_changes_into_samples():
    events = [
        _ev("B", "main", 10), _ev("B", "a", 10, line=2),             # sample 1: main;a
        _ev("B", "other", 12, tid=8),                                 # another thread
        _ev("E", "a", 20, line=2), _ev("B", "b", 20, line=4),        # sample 2: main;b
        _ev("E", "main", 30, line=1),                                 # malformed order? no: see below
    ]
    # py-spy closes leaf first: b then main; write that, plus the final close of thread 8
    events[-1:] = [_ev("B", "c", 30, line=5),                        # sample 3: main;b;c
                   _ev("E", "c", 900, line=5), _ev("E", "b", 900, line=4), _ev("E", "main", 900),
                   _ev("E", "other", 900, tid=8)]
    recs, ctx = run(ChrometraceParser(), json.dumps(events), offset_ns=1_000_000_000, tid_map={7: 70, 8: 80})
    got = [(s.tid, s.ts_ns, [f.function for f in s.frames]) for s in recs]
    assert sorted(got) == [
        (70, 1_000_010_000, ["main", "a"]),
        (70, 1_000_020_000, ["main", "b"]),
        (70, 1_000_030_000, ["main", "b", "c"]),
        (80, 1_000_012_000, ["other"]),
    ]
    assert ctx.warnings == []
    assert recs[0].frames[1] == Frame("a", "/app/x.py", 2) and recs[0].pid == 5 and recs[0].on_cpu is None


def test_chrometrace_line_change_in_same_function_is_a_new_sample():
    events = [_ev("B", "f", 1, line=1), _ev("E", "f", 2, line=1), _ev("B", "f", 2, line=2), _ev("E", "f", 3, line=2)]
    recs, _ = run(ChrometraceParser(), json.dumps(events), tid_map={7: 7})
    assert [(s.ts_ns, s.frames[0].line) for s in recs] == [(1000, 1), (2000, 2)]


def test_chrometrace_complete_events_and_trace_events_object():
    doc = {"traceEvents": [
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": 7, "args": {"name": "x"}},
        {"name": "main", "ph": "X", "ts": 0, "dur": 100, "pid": 1, "tid": 7, "args": {"filename": "x.py", "line": 1}},
        {"name": "g", "ph": "X", "ts": 40, "dur": 20, "pid": 1, "tid": 7, "args": {"filename": "x.py", "line": 2}},
    ]}
    recs, _ = run(ChrometraceParser(), json.dumps(doc), tid_map={7: 7})
    assert [(s.ts_ns, [f.function for f in s.frames]) for s in recs] == [
        (0, ["main"]), (40_000, ["main", "g"]), (60_000, ["main"])]


def test_chrometrace_mismatched_end_warns():
    events = [_ev("B", "main", 1), _ev("B", "a", 1), _ev("E", "main", 2), _ev("B", "z", 3), _ev("E", "z", 4)]
    recs, ctx = run(ChrometraceParser(), json.dumps(events), tid_map={7: 7})
    assert [[f.function for f in s.frames] for s in recs] == [["main", "a"], ["z"]]
    assert any("did not close the innermost" in w for w in ctx.warnings)


def naive_replay(events) -> dict[tuple[int, int], list[str]]:
    """(pthread id, ts) -> Python frame names after that timestamp's events, when there are any."""
    stacks: dict[int, list[str]] = {}
    out = {}
    for e in events:
        st = stacks.setdefault(e["tid"], [])
        if e["ph"] == "B":
            st.append(e["name"])
        else:
            assert st.pop() == e["name"]          # py-spy closes the innermost frame first
        names = [n for n in st if not n.startswith("thread (")]
        if names:
            out[(e["tid"], e["ts"])] = names
        else:
            out.pop((e["tid"], e["ts"]), None)
    return out


def test_chrometrace_recorded_with_threads():
    recs, ctx = run_file(ChrometraceParser(), "chrometrace_threads.json")
    assert ctx.warnings == []
    events = json.load(open(data("chrometrace_threads.json")))
    names = {s.thread_name for s in recs}
    assert names == {"MainThread", "busy-worker", "sleepy"}
    # OS tids come from the `thread (N): name` pseudo frames, not the pthread `tid` field
    pseudo = {int(m.group(1)): m.group(2) for e in events for m in [re.match(r"thread \((\d+)\): (.*)", e["name"])] if m}
    assert {(s.tid, s.thread_name) for s in recs} == set(pseudo.items())
    assert not ({e["tid"] for e in events} & {s.tid for s in recs})
    assert not any(f.function.startswith("thread (") for s in recs for f in s.frames)
    # one sample per (thread, timestamp) whose stack holds a Python frame; times increase per thread
    assert len(recs) == len(naive_replay(events)) >= 10
    for tid in {s.tid for s in recs}:
        ts = [s.ts_ns for s in recs if s.tid == tid]
        assert ts == sorted(ts) and len(set(ts)) == len(ts)
    assert all(s.frames for s in recs)
    expected = sorted(naive_replay(events).items())
    assert sorted(([f.function for f in s.frames] for s in recs)) == sorted(v for _, v in expected)
    assert "busy_function" in {f.function for s in recs if s.thread_name == "busy-worker" for f in s.frames}


def test_chrometrace_recorded_without_threads_uses_pthread_ids():
    recs, ctx = run_file(ChrometraceParser(), "chrometrace.json")
    events = json.load(open(data("chrometrace.json")))
    pthreads = {e["tid"] for e in events}
    assert {s.tid for s in recs} == pthreads and all(s.thread_name is None for s in recs)
    assert len(recs) == len(naive_replay(events))
    assert len(ctx.warnings) == 1 and "pthread ids" in ctx.warnings[0]
    assert "busy_function" in {f.function for s in recs for f in s.frames}
    assert all(s.ts_ns <= max(e["ts"] for e in events) * 1000 for s in recs)
    # with a map (as the live collector builds from `py-spy dump --json`): OS tids, no warning
    tid_map = {p: 1000 + i for i, p in enumerate(sorted(pthreads))}
    recs, ctx = run_file(ChrometraceParser(), "chrometrace.json", tid_map=tid_map)
    assert {s.tid for s in recs} == set(tid_map.values()) and ctx.warnings == []


@pytest.mark.parametrize("text, what", [
    ('{"foo": 1}', "list of trace events"),
    ("[1]", "event 0"),
    ('[{"ph": "B", "name": "x", "tid": 1}]', "event 0"),
    ('[{"ph": "B", "name": "x", "tid": "a", "ts": 1}]', "event 0"),
    ('[{"ph": "X", "name": "x", "tid": 1, "ts": 1}]', "dur"),
])
def test_chrometrace_wrong_shape(text, what):
    with pytest.raises(ParseError) as ei:
        run(ChrometraceParser(), text, path="ct.json")
    assert ei.value.exit_code == 2 and str(ei.value).startswith("ct.json: ") and what in str(ei.value)


def test_chrometrace_invalid_truncated_empty():
    full = open(data("chrometrace_threads.json")).read()
    for cut in (len(full) // 3, len(full) - 3):
        with pytest.raises(ParseError, match=r"^ct\.json:1: truncated JSON"):
            run(ChrometraceParser(), full[:cut], path="ct.json")
    with pytest.raises(ParseError, match=r"^ct\.json:1: invalid JSON"):
        run(ChrometraceParser(), "[{'ph': 'B'}]", path="ct.json")
    with pytest.raises(ParseError, match="empty"):
        run(ChrometraceParser(), "", path="ct.json")
    recs, ctx = run(ChrometraceParser(), "[]\n")
    assert recs == [] and ctx.warnings == []


# ---- raw (folded) ---------------------------------------------------------------------------------------

def test_raw_with_threads_recorded():
    recs, ctx = run_file(PyspyRawParser(), "raw_threads.txt")
    assert ctx.warnings == []
    dump_like = {}
    for s in recs:
        dump_like.setdefault(s.thread_name, set()).add(s.tid)
    assert set(dump_like) == {"MainThread", "busy-worker", "sleepy"}
    assert all(len(v) == 1 for v in dump_like.values())
    with open(data("raw_threads.txt")) as f:
        total = sum(int(line.rsplit(" ", 1)[1]) for line in f)
    assert sum(s.weight for s in recs) == total
    assert all(s.ts_ns is None and s.on_cpu is None for s in recs)
    worker = [s for s in recs if s.thread_name == "busy-worker"]
    assert worker[0].frames[0] == Frame("Thread._bootstrap", "threading.py", 1002)
    assert "busy_function" in {f.function for s in worker for f in s.frames}


def test_raw_without_threads_is_tid_unknown():
    recs, ctx = run_file(PyspyRawParser(), "raw.txt", pid=9)
    assert {s.tid for s in recs} == {UNKNOWN_TID} and {s.pid for s in recs} == {9}
    assert len(ctx.warnings) == 1 and "--threads" in ctx.warnings[0]


def test_raw_native_frames():
    recs, ctx = run_file(PyspyRawParser(), "raw_native.txt")
    frames = {f for s in recs for f in s.frames}
    assert Frame("deflate", module="libz.so.1.2.13") in frames
    assert Frame("zlib_compress_impl", "zlibmodule.c", 374) in frames
    assert Frame("crunch", "nat.py", 5) in frames
    assert any(f.module == "libc.so.6" and f.function.startswith("0x") for f in frames)


def test_raw_subprocesses_hex_ids_and_generic_folded():
    text = ('process 10:"python3 -m app";process 11:"python3 worker.py";thread (0x7F00AA): w;f (x.py:1);g (x.py) 3\n'
            "a;b;c 12\n")
    recs, ctx = run(PyspyRawParser(), text, tid_map={0x7F00AA: 12})
    a, b = recs
    assert (a.pid, a.tid, a.thread_name, a.weight) == (11, 12, "w", 3)
    assert a.frames == (Frame("f", "x.py", 1), Frame("g", "x.py"))
    assert (b.tid, [f.function for f in b.frames], b.weight) == (UNKNOWN_TID, ["a", "b", "c"], 12)


def test_raw_samples_without_frames_are_skipped():
    # real py-spy output: a sample taken before the interpreter ran any frame is written as ` 1`
    text = (" 1\n"
            "<module> (iprog.py:19);diag_busy_function (iprog.py:8) 23\n"
            "thread (9635): MainThread 2\n"
            "thread (9635): MainThread;<module> (prog.py:16) 4\n")
    assert PyspyRawParser().sniff(text, "x")
    recs, ctx = run(PyspyRawParser(), text)
    assert [(s.tid, s.weight, len(s.frames)) for s in recs] == [(UNKNOWN_TID, 23, 2), (9635, 4, 1)]
    assert not any("unparseable" in w for w in ctx.warnings)


def test_raw_malformed_truncated_empty():
    good = "thread (5): M;f (x.py:1) 3\n"
    with pytest.raises(ParseError) as ei:
        run(PyspyRawParser(), good + "".join(f"not folded {i} x\n" for i in range(20)), path="r.txt")
    assert ei.value.exit_code == 2 and str(ei.value).startswith("r.txt:2:")
    recs, ctx = run(PyspyRawParser(), good + "junk\n" + good, path="r.txt")
    assert len(recs) == 2 and any(w.startswith("r.txt:2: skipped 1") for w in ctx.warnings)
    recs, ctx = run(PyspyRawParser(), good + "thread (5): M;f (x.py:1) 4", path="r.txt")
    assert [s.weight for s in recs] == [3] and any("r.txt:2: file is truncated" in w for w in ctx.warnings)
    recs, ctx = run(PyspyRawParser(), "")
    assert recs == [] and ctx.warnings == []


# ---- sniffing -------------------------------------------------------------------------------------------

FILES = {"speedscope.json": "pyspy-speedscope", "speedscope_threads.json": "pyspy-speedscope",
         "chrometrace.json": "pyspy-chrometrace", "chrometrace_threads.json": "pyspy-chrometrace",
         "raw.txt": "pyspy-raw", "raw_threads.txt": "pyspy-raw", "raw_native.txt": "pyspy-raw"}


@pytest.mark.parametrize("name, fmt", sorted(FILES.items()))
def test_each_parser_claims_only_its_own_files(name, fmt):
    head = head_of(name)
    claims = {p.format for p in (SpeedscopeParser(), ChrometraceParser(), PyspyRawParser()) if p.sniff(head, name)}
    assert claims == {fmt}
    assert detect(data(name)).format == fmt
    assert parse_file(data(name)).info.records > 0


@pytest.mark.parametrize("head", [
    STRACE,
    PERF,
    "hello world\nthe answer is 42\n",
    "total 12\n",                                 # a single token and a count: not clearly folded
    "x = 1\ny = 2\n",
    '{"ts": 1, "pid": 2}\n',
    "[]\n",
    "",
])
def test_sniffers_reject_other_text(head):
    for p in (SpeedscopeParser(), ChrometraceParser(), PyspyRawParser()):
        assert not p.sniff(head, "x"), (p.format, head)


def test_sniffers_reject_perf_files_and_dumps():
    for path in [os.path.join(PERF_DATA, n) for n in os.listdir(PERF_DATA) if n.endswith(".txt")] + \
            [data("dump.txt"), data("dump.json")]:
        with open(path) as f:
            head = f.read(64 * 1024)
        for p in (SpeedscopeParser(), ChrometraceParser(), PyspyRawParser()):
            assert not p.sniff(head, path), (p.format, path)


# ---- py-spy dump -> tid map ------------------------------------------------------------------------------

def test_pthread_to_tid_map_from_json_dump():
    with open(data("dump.json")) as f:
        text = f.read()
    m = pthread_to_tid_map_from_dump(text)
    doc = json.loads(text)
    assert m == {t["thread_id"]: t["os_thread_id"] for t in doc}
    assert len(m) == 3 and all(k > 2**32 for k in m)          # pthread ids are addresses
    # the OS tids are the ones the text dump prints
    assert set(m.values()) == set(os_tids_of_dump().values())
    assert pthread_to_tid_map_from_dump(text + "\n" + text) == m
    assert pthread_to_tid_map_from_dump(open(data("dump.txt")).read()) == {}
    assert pthread_to_tid_map_from_dump("") == {}
    assert pthread_to_tid_map_from_dump('[{"thread_id": 5, "os_thread_id": null}]') == {}
