"""The CPython runtime sampler on real interpreters: the GIL holder and GC pauses it reports
against what the target itself knows (its own thread ids, its own gc.callbacks timings).

Run on every CPython 3.8-3.13 found here: Debian's stripped /usr/bin/python3 (_PyRuntime only in
.dynsym) and pyenv's builds with symbols (3.8-3.10 exercise the pthread -> tid calibration, 3.13
the debug offsets). Nothing waits for a time: each test waits for states (the target's ready
line, N samples read, the target's own report). Numbers are printed (pytest -s) for the record.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from pyruntime_helpers import (GC_TARGET, SPINNER, TWO_SPINNERS, Interp, Sampling, read_json_line, supported_params,
                               target, unsupported_params)
from diag_run import ROOT
from toolbox import wait_until

from diag.collect.base import Target
from diag.collect.pyruntime import PyRuntimeCollector
from diag.load import load_inputs

pytestmark = pytest.mark.slow
RATE_HZ = 200
PERIOD_NS = 1_000_000_000 // RATE_HZ
# a graph this large takes 40-200 ms per full collection here: most are many periods long
GC_NODES, GC_ROUNDS = 1_000_000, 4


@pytest.mark.parametrize("interp", supported_params())
def test_the_spinning_thread_is_named_as_the_gil_holder(interp: Interp, tmp_path):
    # GIVEN a target whose background thread spins in pure Python while its main thread sleeps
    with target(interp.exe, SPINNER) as p:
        tids = read_json_line(p)
        s = Sampling(p.pid, tmp_path, RATE_HZ)
        # WHEN the sampler has read 300 samples (1.5 s at 200 Hz)
        s.start()
        wait_until(lambda: s.samples >= 300 or not s.collector.stats().running, "300 samples read")
        data = s.stop()
    # THEN the capture loads cleanly and most samples name the spinner's OS tid as the holder
    assert data.warnings == []
    (window,) = data.runtime_windows
    by_tid: dict = {}
    for span in data.gil:
        key = span.tid if span.held else "free"
        by_tid[key] = by_tid.get(key, 0) + span.samples
    total = sum(by_tid.values())
    share = by_tid.get(tids["spinner"], 0) / total
    print(f"\n{interp.label} ({window.python}): {share:.1%} of {total} samples name the spinner "
          f"{tids['spinner']}; others {({k: v for k, v in by_tid.items() if k != tids['spinner']})}; "
          f"read errors {window.read_errors}; method: {window.method}")
    assert total == window.samples >= 300
    assert share >= 0.8, by_tid
    assert not set(by_tid) - {tids["spinner"], tids["main"], "free", None}, f"unknown thread ids: {by_tid}"
    assert window.read_errors == 0
    # and the query helper agrees over the sampled window
    w = data.runtime().gil_window(window.start_ns, window.end_ns)
    assert w.top() == tids["spinner"] and w.share(tids["spinner"]) >= 0.8


@pytest.mark.parametrize("interp", supported_params())
def test_two_spinning_threads_share_the_gil_and_the_hand_offs_are_counted(interp: Interp, tmp_path):
    # GIVEN two threads spinning in pure Python (the GIL changes hands every switch interval)
    with target(interp.exe, TWO_SPINNERS) as p:
        tids = read_json_line(p)
        s = Sampling(p.pid, tmp_path, RATE_HZ)
        s.start()
        wait_until(lambda: s.samples >= 400, "400 samples read")
        data = s.stop()
    # THEN both are named as holders, each in a good part of the samples, and the interpreter's
    # own count of hand-offs shows many more than the changes the samples saw
    (window,) = data.runtime_windows
    counts = {t: sum(sp.samples for sp in data.gil if sp.held and sp.tid == t) for t in tids["spinners"]}
    holders = [sp.tid for sp in sorted(data.gil, key=lambda sp: sp.start_ns) if sp.held]
    changes = sum(1 for a, b in zip(holders, holders[1:]) if a != b)     # each needs >= 1 hand-off
    print(f"\n{interp.label}: samples per spinner {counts} of {window.samples}; GIL switches counted "
          f"{window.gil_switches}, holder changes seen {changes}")
    assert all(n >= 0.15 * window.samples for n in counts.values()), counts
    assert window.gil_switches is not None and window.gil_switches >= changes > 0


@pytest.mark.parametrize("interp", supported_params())
def test_full_collections_are_seen_as_gc_pauses(interp: Interp, tmp_path):
    # GIVEN a target holding a large cyclic graph, its automatic GC off, timing its own collections
    with target(interp.exe, GC_TARGET, str(GC_NODES), str(GC_ROUNDS)) as p:
        read_json_line(p)
        s = Sampling(p.pid, tmp_path, RATE_HZ)
        s.start()
        wait_until(lambda: s.samples >= 20, "the sampler reading")
        # WHEN it runs gc.collect(2) a few times while sampled, and reports its own intervals
        p.stdin.write("go\n")
        p.stdin.flush()
        runs = read_json_line(p)
        after = s.samples
        wait_until(lambda: s.samples >= after + 10, "samples after the last collection")
        data = s.stop()
    assert data.warnings == []
    (window,) = data.runtime_windows
    pauses = sorted(data.gc_pauses, key=lambda g: g.start_ns)
    long_runs = [r for r in runs if r["end_ns"] - r["start_ns"] > 3 * PERIOD_NS]
    durations = ", ".join(f"{(r['end_ns'] - r['start_ns']) / 1e6:.0f}" for r in runs)
    print(f"\n{interp.label} ({window.python}): target's collections (ms) {durations}; pauses seen "
          f"{[(round((g.end_ns - g.start_ns) / 1e6), g.samples, g.generation) for g in pauses]}; "
          f"stats counted {window.gc_collections}")
    # THEN the graph made collections long enough to test (else the test would prove nothing)
    assert len(long_runs) >= 2, f"collections too short to test: {durations} ms"
    # every collection longer than 3 periods overlaps a pause seen, of generation 2
    for r in long_runs:
        seen = [g for g in pauses if g.start_ns <= r["end_ns"] and g.end_ns >= r["start_ns"]]
        assert len(seen) == 1, (r, pauses)
        assert seen[0].generation == 2 and seen[0].collections == 1, seen[0]
        assert seen[0].tid == p.pid                     # the main thread collected
    # no pause is claimed where the target ran no collection (automatic GC is off)
    for g in pauses:
        assert any(g.start_ns <= r["end_ns"] and g.end_ns >= r["start_ns"] for r in runs), g
    # the interpreter's own stats counted each collection
    assert window.gc_collections is not None and window.gc_collections[2] == len(runs)
    assert data.runtime().gc_running(long_runs[0]["start_ns"], long_runs[0]["end_ns"])


def test_sampler_cost_at_the_default_rate(tmp_path):
    """Not a timing assertion: the CPU the sampler thread used is printed for the record and
    stored in the manifest; the test checks it is recorded and that the default rate is 200 Hz."""
    interp = next((p.values[0] for p in supported_params() if p.id == "pyenv-3.11.7"), None)
    exe = interp.exe if interp is not None and os.access(interp.exe, os.X_OK) else "/usr/bin/python3"
    with target(exe, SPINNER) as p:
        read_json_line(p)
        s = Sampling(p.pid, tmp_path)           # the default rate
        s.start()
        wait_until(lambda: s.samples >= 1000, "1000 samples read")
        s.stop()
        c = s.collector
    assert c.rate_hz == 200
    cost = c.observer_cost()
    assert cost["cpu_s_capture"] > 0 and "cores" in cost
    print(f"\nsampler at {c.rate_hz} Hz on {exe}: {cost['cpu_s_capture'] * 1e6 / c.samples:.0f} µs CPU per sample, "
          f"{cost['cores']:.2%} of one core over {c.wall_s:.2f} s ({c.samples} samples, {c.late} late)")


def test_target_exiting_mid_capture_ends_the_stream_cleanly(tmp_path):
    # GIVEN a sampled target
    with target("/usr/bin/python3", SPINNER) as p:
        read_json_line(p)
        s = Sampling(p.pid, tmp_path)
        s.start()
        wait_until(lambda: s.samples >= 50, "50 samples read")
        # WHEN it is killed while sampled
        p.kill()
        p.wait()
        wait_until(lambda: not s.collector.stats().running, "the sampler noticing the exit")
        data = s.stop()
    # THEN the sampler ended by itself, said why, and the stream is complete and loads
    assert s.collector.ended == "the target exited"
    assert data.warnings == [] and data.gil and data.runtime_windows[0].samples >= 50
    lines = (tmp_path / "c.diag" / "streams" / "pyruntime.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["ended"] == "the target exited"


@pytest.mark.parametrize("interp", unsupported_params())
def test_unsupported_interpreter_is_refused_with_the_reason(interp: Interp):
    with target(interp.exe, "import sys, time; print('{}', flush=True); time.sleep(600)") as p:
        read_json_line(p)
        reason = PyRuntimeCollector().check(Target(pid=p.pid, is_python=True))
    assert reason is not None and "3.8-3.13" in reason, reason
    assert not reason.startswith("not applicable")      # a Python diag cannot read: "unavailable"


def test_non_python_target_is_not_applicable():
    p = subprocess.Popen(["sleep", "600"])
    try:
        reason = PyRuntimeCollector().check(Target(pid=p.pid))
    finally:
        p.kill()
        p.wait()
    assert reason is not None and reason.startswith("not applicable"), reason


def _diag(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diag", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def test_diag_attach_writes_the_stream_and_replay_loads_it(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("diag attach of another process's memory: run as root")
    # GIVEN a Python target with a spinning thread
    with target("/root/.pyenv/versions/3.11.7/bin/python3.11" if os.access(
            "/root/.pyenv/versions/3.11.7/bin/python3.11", os.X_OK) else "/usr/bin/python3", SPINNER) as p:
        tids = read_json_line(p)
        cap = tmp_path / "c.diag"
        # WHEN `diag attach PID --collectors pyruntime,process --duration 2` runs
        r = _diag("attach", str(p.pid), "--collectors", "pyruntime,process", "--duration", "2", "--out", str(cap),
                  "--quiet")
        assert r.returncode == 0, r.stderr
    # THEN the capture holds the stream, registered in the manifest
    manifest = json.loads((cap / "manifest.json").read_text())
    entry = manifest["collectors"]["pyruntime"]
    assert (entry["status"], entry["stream"], entry["format"]) == ("ok", "streams/pyruntime.jsonl", "pyruntime-jsonl")
    assert entry["events"] > 0 and entry["observer"]["cpu_s_capture"] > 0
    # AND `diag replay` of it runs without a warning, and the loader yields the records
    rep = tmp_path / "r.json"
    r = _diag("replay", str(cap), "--json", str(rep), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr.lower(), r.stderr
    data = load_inputs([str(cap)])
    assert data.warnings == []
    assert data.runtime_windows and data.runtime().gil_window(
        data.runtime_windows[0].start_ns, data.runtime_windows[0].end_ns).top() == tids["spinner"]


def test_sigkill_of_diag_leaves_a_replayable_stream(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("diag attach of another process's memory: run as root")
    with target("/usr/bin/python3", SPINNER) as p:
        read_json_line(p)
        cap = tmp_path / "c.diag"
        d = subprocess.Popen([sys.executable, "-m", "diag", "attach", str(p.pid), "--collectors", "pyruntime",
                              "--duration", "0", "--out", str(cap), "--quiet"], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        stream = cap / "streams" / "pyruntime.jsonl"
        try:
            # WHEN diag is killed once a record beyond the header is on disk (a hold cut at 1 s)
            wait_until(lambda: d.poll() is not None or (stream.exists() and '"type":"gil",' in stream.read_text()),
                       "a GIL record flushed")
            assert d.poll() is None, d.stderr.read()
            d.send_signal(signal.SIGKILL)
            d.wait(30)
        finally:
            if d.poll() is None:
                d.kill()
                d.wait(30)
        # THEN the capture replays up to its last line: records, a window, only the "interrupted" warning
        data = load_inputs([str(cap)])
    assert data.gil and data.runtime_windows and data.runtime_windows[0].samples is None
    assert all("interrupted" in w or "truncated" in w for w in data.warnings), data.warnings


# The command spins in a thread until the sampler's stream names that thread as the GIL holder
# (a state, not a time), then exits 3.
RUN_COMMAND = r"""
import json, os, sys, threading
stream = os.path.join(sys.argv[1], "streams", "pyruntime.jsonl")
me = {}
def spin():
    me["tid"] = threading.get_native_id()
    needle = '"tid":%d' % me["tid"]
    n = 0
    while True:
        n += 1
        if n % 200000 == 0:
            try:
                with open(stream) as f:
                    if needle in f.read():
                        return
            except OSError:
                pass
t = threading.Thread(target=spin)
t.start()
t.join()
print(json.dumps({"pid": os.getpid(), "spinner": me["tid"]}), flush=True)
sys.exit(3)
"""


@pytest.mark.parametrize("interp", [p for p in supported_params() if p.id in ("pyenv-3.12.1", "debian-python3")])
def test_diag_run_samples_the_command_not_the_holder(interp: Interp, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("diag run with a memory reader: run as root")
    # GIVEN `diag run --collectors pyruntime` of a Python command (pyenv's maps libpython only
    # after its exec: the collector must wait for it, and must not read diag's own holder)
    cap = tmp_path / "c.diag"
    r = _diag("run", "--collectors", "pyruntime", "--duration", "0", "--out", str(cap), "--quiet", "--",
              interp.exe, "-c", RUN_COMMAND, str(cap), timeout=300)
    # THEN the command saw itself named (it exits only then), diag passed its exit code through
    assert r.returncode == 3, r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    data = load_inputs([str(cap)])
    assert data.warnings == []
    (window,) = data.runtime_windows
    assert window.pid == info["pid"]
    assert interp.version()[:2] == tuple(int(x) for x in window.python.split(".")[:2])
    assert any(s.held and s.tid == info["spinner"] for s in data.gil)
