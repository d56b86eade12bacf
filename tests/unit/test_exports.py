"""Exports: Perfetto/Chrome trace JSON validated against the trace-event format, speedscope against
its file-format schema rules, folded stacks; on a synthetic Dataset and on a real scenario capture."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from diag.analyze.report import build_report
from diag.export import export, format_for
from diag.errors import DiagError
from diag.model import Dataset, Frame, ProcessSnapshot, StackSample, SyscallEvent
from diag.syscalls import FdKind

ROOT = Path(__file__).resolve().parents[2]
MS = 1_000_000
T0 = 5_000_000_000


# ------------------------------------------------------------------ validators (the formats' rules)

PHASE_KEYS = {"X": {"name", "ph", "ts", "dur", "pid", "tid"}, "i": {"name", "ph", "ts", "pid", "tid", "s"},
              "b": {"name", "ph", "ts", "pid", "tid", "id", "cat"}, "e": {"name", "ph", "ts", "pid", "tid", "id", "cat"},
              "C": {"name", "ph", "ts", "pid", "args"}, "M": {"name", "ph", "pid", "args"}}


def validate_trace_events(doc: dict) -> dict:
    """The JSON Object Format of the Trace Event Format (the format ui.perfetto.dev imports)."""
    assert isinstance(doc, dict) and isinstance(doc["traceEvents"], list)
    assert doc.get("displayTimeUnit") in (None, "ms", "ns")
    counts: dict[str, int] = {}
    for ev in doc["traceEvents"]:
        ph = ev["ph"]
        assert ph in PHASE_KEYS, ev
        missing = PHASE_KEYS[ph] - set(ev)
        assert not missing, (missing, ev)
        assert isinstance(ev["pid"], int) and isinstance(ev.get("tid", 0), int) and not isinstance(ev["pid"], bool)
        assert isinstance(ev["name"], str) and ev["name"]
        if ph != "M":
            assert isinstance(ev["ts"], (int, float)) and ev["ts"] >= 0
        if ph == "X":
            assert isinstance(ev["dur"], (int, float)) and ev["dur"] >= 0
        if ph == "i":
            assert ev["s"] in ("g", "p", "t")
        if ph == "M":
            assert ev["name"] in ("process_name", "thread_name", "process_sort_index", "thread_sort_index")
            assert isinstance(ev["args"].get("name", ""), str)
        if ph == "C":
            assert ev["args"] and all(isinstance(v, (int, float)) for v in ev["args"].values())
        if "args" in ev:
            assert isinstance(ev["args"], dict)
        counts[ph] = counts.get(ph, 0) + 1
    # Complete events on one thread must nest (Perfetto drops improperly nested slices).
    by_thread: dict[tuple, list] = {}
    for ev in doc["traceEvents"]:
        if ev["ph"] == "X":
            by_thread.setdefault((ev["pid"], ev["tid"]), []).append((ev["ts"], ev["ts"] + ev["dur"]))
    for slices in by_thread.values():
        stack: list[float] = []
        for start, end in sorted(slices, key=lambda s: (s[0], -s[1])):
            while stack and stack[-1] <= start + 1e-9:
                stack.pop()
            assert not stack or end <= stack[-1] + 1e-6, "slices overlap without nesting"
            stack.append(end)
    # async begin/end pairs match
    opened = {}
    for ev in doc["traceEvents"]:
        if ev["ph"] == "b":
            opened[(ev["cat"], ev["id"])] = ev["ts"]
        elif ev["ph"] == "e":
            assert ev["ts"] >= opened.pop((ev["cat"], ev["id"]))
    assert not opened
    return counts


def validate_speedscope(doc: dict) -> None:
    """The rules of https://www.speedscope.app/file-format-schema.json (v0.x): required keys, enums,
    frame indices in range, one weight per sample."""
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    frames = doc["shared"]["frames"]
    for f in frames:
        assert isinstance(f["name"], str)
        assert set(f) <= {"name", "file", "line", "col"}
        assert "line" not in f or isinstance(f["line"], int)
    assert isinstance(doc["profiles"], list)
    for p in doc["profiles"]:
        assert p["type"] == "sampled" and isinstance(p["name"], str)
        assert p["unit"] in ("none", "nanoseconds", "microseconds", "milliseconds", "seconds", "bytes")
        assert isinstance(p["startValue"], (int, float)) and isinstance(p["endValue"], (int, float))
        assert len(p["samples"]) == len(p["weights"])
        assert all(isinstance(w, (int, float)) and w >= 0 for w in p["weights"])
        assert all(0 <= i < len(frames) for s in p["samples"] for i in s)
        assert p["endValue"] - p["startValue"] == sum(p["weights"])
    assert 0 <= doc.get("activeProfileIndex", 0) < max(len(doc["profiles"]), 1)


def validate_folded(text: str) -> int:
    total = 0
    for line in text.splitlines():
        stack, n = line.rsplit(" ", 1)
        assert stack and int(n) > 0 and "\n" not in stack
        total += int(n)
    return total


# ------------------------------------------------------------------ synthetic dataset

def dataset() -> Dataset:
    py = (Frame("main", "app.py", 1), Frame("handle; odd", "app.py", 10), Frame("<script>x</script>", "a\nb.py", 3))
    kern = (Frame("__x64_sys_fsync", module="kernel"), Frame("io_schedule", module="kernel"))
    d = Dataset(manifest={"target": {"pid": 10, "comm": "app"}})
    d.syscalls += [
        SyscallEvent(10, 11, "read", T0, 2 * MS, ret=100, fd=4, fd_kind=FdKind.SOCKET, nbytes=100, source="ebpf"),
        SyscallEvent(10, 11, "fsync", T0 + 3 * MS, 5 * MS, ret=0, fd=5, fd_kind=FdKind.FILE, source="ebpf"),
        SyscallEvent(10, 11, "fsync", T0 + 4 * MS, 6 * MS, ret=0, fd=5, fd_kind=FdKind.FILE, source="strace"),
        SyscallEvent(10, 12, "futex", T0, None, source="strace"),
    ]
    d.samples += [StackSample(11, T0 + i * MS, py, on_cpu=True, pid=10) for i in range(5)]
    d.samples += [StackSample(11, T0 + 3 * MS, kern, on_cpu=False, source="ebpf", pid=10, dur_ns=5 * MS)]
    d.samples += [StackSample(12, None, py[:2], weight=7)]
    d.snapshots += [ProcessSnapshot(T0, 10, 1.0, 0.5, 10, 2, 8, 3, rss_bytes=50 * 2**20)]
    return d


def test_perfetto_export_is_a_valid_trace_event_file():
    d = dataset()
    doc = json.loads(export(d, build_report(d), "perfetto"))
    counts = validate_trace_events(doc)
    assert counts["X"] == 3 and counts["C"] == 1 and counts["M"] == 2   # the process and its thread
    slices = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert slices[0]["ts"] == T0 / 1000 and slices[0]["dur"] == 2000.0     # µs
    assert doc["metadata"]["clipped_syscalls"] == 1                        # the overlapping strace copy
    samples = [e for e in doc["traceEvents"] if e["ph"] == "i" and e["s"] == "t"]
    assert len(samples) == 6 and samples[0]["args"]["stack"][-1].startswith("<script>")
    names = {e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names == {"tid 11"}   # tid 12 has neither timed calls nor timed samples


def test_perfetto_export_carries_requests_and_findings_from_the_report():
    d = dataset()
    rep = build_report(d)
    rep["requests"] = {"count": 1, "slowest": [{"start_ns": T0 + MS, "end_ns": T0 + 9 * MS, "latency_ns": 8 * MS,
                                                "tid": 11, "pid": 10, "fd": 4}]}
    rep["findings"] = [{"id": "disk-sync", "severity": "warning", "share": 0.5, "summary": "s", "recommendation": "r",
                        "evidence": [{"source": "ebpf", "text": "t", "window": {"start_ns": T0 + 3 * MS,
                                                                               "end_ns": T0 + 8 * MS}}]}]
    doc = json.loads(export(d, rep, "perfetto"))
    counts = validate_trace_events(doc)
    assert counts["b"] == counts["e"] == 1
    [marker] = [e for e in doc["traceEvents"] if e["ph"] == "i" and e["s"] == "g"]
    assert marker["name"].startswith("finding: disk-sync") and marker["ts"] == (T0 + 3 * MS) / 1000


def test_speedscope_export_follows_the_schema_rules():
    d = dataset()
    doc = json.loads(export(d, build_report(d), "speedscope"))
    validate_speedscope(doc)
    by_name = {p["name"]: p for p in doc["profiles"]}
    off = next(p for n, p in by_name.items() if "off-CPU" in n)
    assert off["unit"] == "nanoseconds" and off["weights"] == [5 * MS]
    assert any(p["weights"] == [7] for p in doc["profiles"])   # a folded sample keeps its weight


def test_folded_export():
    text = export(dataset(), {}, "folded")
    assert validate_folded(text) == 13
    # heaviest first; `;` inside a name and newlines cannot break the format
    assert text.splitlines() == ["main (app.py:1);handle: odd (app.py:10) 7",
                                 "main (app.py:1);handle: odd (app.py:10);<script>x</script> (a b.py:3) 5",
                                 "__x64_sys_fsync [kernel];io_schedule [kernel] 1"]


def test_empty_dataset_exports():
    d = Dataset()
    validate_trace_events(json.loads(export(d, build_report(d), "perfetto")))
    validate_speedscope(json.loads(export(d, build_report(d), "speedscope")))
    assert export(d, {}, "folded") == ""


@pytest.mark.parametrize("path,fmt", [("t.json", "perfetto"), ("t.perfetto.json", "perfetto"),
                                      ("x.speedscope.json", "speedscope"), ("s.folded", "folded"), ("s.txt", "folded")])
def test_format_follows_the_output_extension(path, fmt):
    assert format_for(path, None) == fmt


def test_unknown_format_is_a_one_line_error():
    with pytest.raises(DiagError):
        format_for("x.bin", None)
    with pytest.raises(DiagError):
        format_for(None, "pprof")


# ------------------------------------------------------------------ a real scenario capture

@pytest.fixture(scope="module")
def disk_sync_capture():
    if os.geteuid() != 0:
        pytest.skip("capturing a scenario with eBPF needs root")
    from diag.examples.load import drive

    tmp = Path(tempfile.mkdtemp(prefix="diag-export-", dir="/var/tmp"))
    srv = subprocess.Popen([sys.executable, str(ROOT / "tests" / "scenarios" / "targets.py"), "disk-sync", "--dir",
                            str(tmp)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(srv.stdout.readline().rsplit(":", 1)[1])
        load = threading.Thread(target=drive, kwargs=dict(host="127.0.0.1", port=port, requests=2000, seconds=5,
                                                          concurrency=4, rate=200), daemon=True)
        load.start()
        r = subprocess.run([sys.executable, "-m", "diag", "attach", str(srv.pid), "--duration", "3", "--collectors",
                            "ebpf,py-spy,process", "--out", str(tmp / "cap.diag"), "--quiet"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        load.join()
        yield tmp / "cap.diag"
    finally:
        srv.terminate()
        srv.wait(10)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_exports_of_a_real_scenario_capture_validate(disk_sync_capture, tmp_path):
    outs = {}
    for name, fmt in (("trace.json", None), ("s.speedscope.json", None), ("s.folded", "folded")):
        args = [sys.executable, "-m", "diag", "export", str(disk_sync_capture), "-o", str(tmp_path / name)]
        r = subprocess.run(args + (["--format", fmt] if fmt else []), cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        outs[name] = (tmp_path / name).read_text()
    trace = json.loads(outs["trace.json"])
    counts = validate_trace_events(trace)
    assert counts["X"] > 100 and counts.get("i", 0) > 10 and counts.get("b", 0) > 10   # syscalls, samples, requests
    assert any(e["name"].startswith("finding: disk-sync") for e in trace["traceEvents"] if e["ph"] == "i")
    assert any(e["name"] == "fsync" for e in trace["traceEvents"] if e["ph"] == "X")
    validate_speedscope(json.loads(outs["s.speedscope.json"]))
    assert validate_folded(outs["s.folded"]) > 50
