"""Time alignment of strace, perf and py-spy against a marker made at a known CLOCK_MONOTONIC time.

The target sleeps (off CPU, no traced calls), then at a time T it records itself, it makes a
marker syscall (fdatasync: traced by strace) and spins in a function named `marker_spin` for
300 ms (seen by perf's cpu-clock samples and py-spy's stacks). Each stream's first sight of the
marker, put on CLOCK_MONOTONIC by diag, is compared with T; the measured error is printed.
"""
from __future__ import annotations

import json
import sys

import pytest
from servers import diag, require_root, require_tool

from diag.load import load_inputs

pytestmark = pytest.mark.slow

MARKER_PROGRAM = r'''
import json, os, sys, time
mono = lambda: time.clock_gettime_ns(time.CLOCK_MONOTONIC)
def marker_spin(until):
    x = 0
    while mono() < until:
        x += 1
    return x
f = open(sys.argv[2], "wb")
time.sleep(2.0)                 # let every collector attach; the thread is off CPU meanwhile
marks = []
for i in range(3):
    before = mono()
    os.fdatasync(f.fileno())
    after = mono()
    marker_spin(after + 300_000_000)
    returned = mono()               # the spin really ends here (the thread may be preempted in it)
    marks.append({"before": before, "after": after, "returned": returned,
                  "tid": __import__("threading").get_native_id()})
    time.sleep(0.7)
json.dump(marks, open(sys.argv[1], "w"))
'''


def test_streams_align_on_the_marker(tmp_path):
    require_root()
    require_tool("strace")
    require_tool("perf")
    require_tool("py-spy")
    prog, marks_path = tmp_path / "marker.py", tmp_path / "marks.json"
    prog.write_text(MARKER_PROGRAM)
    cap = tmp_path / "c.diag"
    r = diag("run", "--collectors", "strace,perf,py-spy", "--out", str(cap), "--quiet", "--",
             sys.executable, str(prog), str(marks_path), str(tmp_path / "sync.bin"))
    assert r.returncode == 0, r.stderr
    marks = json.loads(marks_path.read_text())
    data = load_inputs([str(cap)])
    tid = marks[0]["tid"]

    errors: dict[str, list[float]] = {"strace": [], "perf": [], "py-spy": []}
    syncs = sorted(e.start_ns for e in data.syscalls if e.name == "fdatasync" and e.tid == tid)
    assert len(syncs) == 3, syncs
    strace_outside = []
    for m, start in zip(marks, syncs):
        # strace stamps the call at its entry stop, while the target waits: the stamp must fall
        # inside [before, after] (the target's own readings around the call), within the clock
        # conversion error; how far after `before` it lands is scheduling and is only printed
        errors["strace"].append((start - m["before"]) / 1e6)
        strace_outside.append(max(m["before"] - start, start - m["after"], 0) / 1e6)
    # Samplers see the spin [after, returned] (300 ms) only at their sample times: the first sight
    # of it comes up to one period (10 ms) late, more if the sampler waits for a CPU on a busy
    # machine; that delay is scheduling, not alignment, and is printed, not asserted. Asserted:
    # - perf stamps samples in the kernel as they happen: every sample of the marker thread near
    #   the marker lies inside [before, returned] (the fdatasync's own CPU time included);
    # - py-spy's stamps are late, never early (see diag/align.py): no sample of marker_spin is
    #   stamped before the spin started, and every one lies before the next marker (0.7 s later);
    #   how late they come is printed (measured up to 3.2 ms; the report promises 5 ms).
    late: dict[str, list[float]] = {"perf": [], "py-spy": []}
    early: dict[str, list[float]] = {"perf": [], "py-spy": []}
    for source in ("perf", "py-spy"):
        samples = sorted((s for s in data.samples if s.source == source and s.tid == tid and s.ts_ns is not None),
                         key=lambda s: s.ts_ns)
        in_spin = [s.ts_ns for s in samples if source == "perf" or any(f.function == "marker_spin" for f in s.frames)]
        assert in_spin, f"{source} saw no sample of the marker thread"
        for m in marks:
            t0 = m["before"] if source == "perf" else m["after"]
            t1 = m["returned"]
            near = [t for t in in_spin if t0 - 100_000_000 <= t <= t1 + 100_000_000]
            assert near, f"{source}: no sample near the marker at {t0}"
            errors[source].append((near[0] - m["after"]) / 1e6)
            late[source].append((near[-1] - t1) / 1e6)
            early[source].append((t0 - near[0]) / 1e6)
            if source == "py-spy":
                nxt = min((x["before"] for x in marks if x["before"] > t1), default=t1 + 700_000_000)
                assert all(t < nxt for t in near), f"py-spy sample of one marker stamped after the next one began"
    print("\nalignment vs marker (ms, stream time - true time):")
    print("  strace  call start - true start:   " + "  ".join(f"{x:+7.3f}" for x in errors["strace"]))
    for k in ("perf", "py-spy"):
        print(f"  {k:7s} first sight - spin start:   " + "  ".join(f"{x:+7.3f}" for x in errors[k]))
        print(f"  {k:7s} last sight - spin end:      " + "  ".join(f"{x:+7.3f}" for x in late[k]))
    report_error = None
    from diag.align import alignment_summary
    report_error = alignment_summary(data)["error_ns"]
    print(f"  report promises ±{(report_error or 0) / 1e6:.3f} ms")
    # strace: each stamp inside the call's [before, after] within half a millisecond
    assert max(strace_outside) <= 0.5, (strace_outside, errors)
    assert report_error is not None, "py-spy stream not anchored to CLOCK_MONOTONIC"
    # no sampler places the spin before it started; perf never after it ended
    assert max(early["perf"]) <= 0.5 and max(early["py-spy"]) <= 0.5, (early, errors)
    assert max(late["perf"]) <= 0.5, (late, errors)
