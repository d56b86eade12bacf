"""perf and py-spy run for real on known programs; their output parsed and checked against what
the programs did (pids, thread ids, CLOCK_MONOTONIC windows, call counts).

Needs root (perf system-wide tracepoints, ptrace for py-spy); each test skips with the reason
when its tool, privilege or kernel feature is missing.
"""
from __future__ import annotations

import functools
import json
import os
import queue
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from diag.model import StackSample
from diag.parse import parse_file
from diag.parse.base import ParseContext
from diag.parse.pyspy import (UNKNOWN_TID, ChrometraceParser, PyspyRawParser, SpeedscopeParser,
                              pthread_to_tid_map_from_dump)

pytestmark = [pytest.mark.root, pytest.mark.slow]

MONO = time.CLOCK_MONOTONIC
PERF = shutil.which("perf")
_VENV_PYSPY = Path(sys.executable).parent / "py-spy"
PYSPY = str(_VENV_PYSPY) if _VENV_PYSPY.exists() else shutil.which("py-spy")


def now() -> int:
    return time.clock_gettime_ns(MONO)


def write(tmp_path: Path, name: str, code: str) -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(code))
    return p


@functools.lru_cache(maxsize=None)
def perf_unavailable() -> str | None:
    """Why `perf record -- CMD` cannot run here, or None."""
    if PERF is None:
        return "perf is not installed (apt-get install linux-perf)"
    out = f"/tmp/diag-perf-probe-{os.getpid()}.data"
    try:
        r = subprocess.run([PERF, "record", "-q", "-e", "cpu-clock", "-o", out, "--", "true"],
                           capture_output=True, text=True, timeout=60)
    finally:
        if os.path.exists(out):
            os.unlink(out)
    if r.returncode != 0:
        first = (r.stderr.strip().splitlines() or ["no message"])[0]
        return f"perf record does not work here ({first}); needs root or kernel.perf_event_paranoid<=1"
    return None


def tracepoints_unavailable(*events: str) -> str | None:
    for base in ("/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"):
        if all(os.path.isdir(os.path.join(base, *e.split(":"))) for e in events):
            return None
    return (f"tracepoints {', '.join(events)} not available (mount -t tracefs tracefs /sys/kernel/tracing, "
            "kernel with CONFIG_FTRACE_SYSCALLS)")


def need_perf(*tracepoints: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("perf tracepoints and call chains need root")
    reason = perf_unavailable() or (tracepoints_unavailable(*tracepoints) if tracepoints else None)
    if reason:
        pytest.skip(reason)


def bpf_hiding(*tracepoints: str) -> str | None:
    """Why perf may not see these tracepoints fire right now, or None: a BPF program attached to
    one of them through a perf event (BCC's attach_tracepoint; diag's own eBPF agent, another
    test's or a benchmark's) runs before perf's own events there, and when it returns 0 the kernel
    drops the perf samples of that tracepoint for everyone (perf_trace_run_bpf_submit)."""
    names = {t.split(":", 1)[1] for t in tracepoints}
    bpftool = shutil.which("bpftool") or next((p for p in ("/usr/sbin/bpftool", "/sbin/bpftool")
                                               if os.access(p, os.X_OK)), None)
    if bpftool:
        r = subprocess.run([bpftool, "-j", "perf", "show"], capture_output=True, text=True, timeout=60)
        try:
            attached = json.loads(r.stdout or "[]") if r.returncode == 0 else []
        except ValueError:
            attached = []
        hit = [a for a in attached if a.get("tracepoint") in names]
        if hit:
            users = sorted({a.get("pid") for a in hit})
            which = [t for t in tracepoints if t.split(":", 1)[1] in {a.get("tracepoint") for a in hit}]
            return (f"BPF programs of pid(s) {users} are attached to {', '.join(which)}: the kernel drops "
                    "perf's own samples of a tracepoint whose BPF program returns 0")
        if r.returncode == 0:
            return None
    # no bpftool: any process holding a tracepoint BPF program (prog_type 5) may be the cause
    users = []
    for fdinfo in Path("/proc").glob("[0-9]*/fdinfo/*"):
        try:
            if os.readlink(str(fdinfo).replace("/fdinfo/", "/fd/")) == "anon_inode:bpf-prog" and \
                    "prog_type:\t5\n" in fdinfo.read_text():
                users.append(int(fdinfo.parts[2]))
        except (OSError, ValueError):
            pass
    if users:
        return (f"pid(s) {sorted(set(users))} hold tracepoint BPF programs (no bpftool to tell which tracepoints): "
                "the kernel drops perf's own samples of a tracepoint whose BPF program returns 0")
    return None


class BpfWatch:
    """Watches, for as long as the block runs, whether a BPF program hides these tracepoints from
    perf (see bpf_hiding): `reason` is the first such finding, or None. Another tool's agent may
    attach and detach while perf records, so one look before and one after are not enough."""

    def __init__(self, *tracepoints: str, interval_s: float = 0.05) -> None:
        self.tracepoints, self.interval_s = tracepoints, interval_s
        self.reason: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _look(self) -> None:
        if self.reason is None:
            self.reason = bpf_hiding(*self.tracepoints)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._look()

    def __enter__(self) -> "BpfWatch":
        self._look()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(120)
        self._look()


def perf_record(tmp_path: Path, events: list[str], cmd: list[str], *extra: str) -> Path:
    data = tmp_path / "perf.data"
    args = [PERF, "record", "-q", "-k", "CLOCK_MONOTONIC", *extra]
    for e in events:
        args += ["-e", e]
    r = subprocess.run([*args, "-o", str(data), "--", *cmd], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return data


def perf_script(data: Path, out: Path, *fields: str) -> Path:
    with open(out, "w") as f:
        r = subprocess.run([PERF, "script", "--ns", *fields, "-i", str(data)], stdout=f,
                           stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out


# ---- perf --------------------------------------------------------------------------------------------

BUSY = """
    import json, os, sys, time
    def diag_busy_spin(cpu_seconds):
        # spins until this thread has had `cpu_seconds` of CPU, however long that takes on a
        # loaded machine (time.monotonic() in the loop keeps it in user space; the CPU clock,
        # a real syscall, is read once per 10k turns)
        end = time.thread_time() + cpu_seconds
        n = 0
        while True:
            for _ in range(10000):
                n += 1
                time.monotonic()
            if time.thread_time() >= end:
                return n
    diag_busy_spin(1.0)
    json.dump({"pid": os.getpid(), "cpu_s": time.process_time()}, open(sys.argv[1], "w"))
"""


def test_perf_cpu_clock_call_chains(tmp_path):
    need_perf()
    prog = write(tmp_path, "busy.py", BUSY)
    infofile = tmp_path / "info.json"
    t0 = now()
    data = perf_record(tmp_path, ["cpu-clock"], [sys.executable, str(prog), str(infofile)], "-g", "-F", "999")
    t1 = now()
    info = json.loads(infofile.read_text())
    pid, cpu_s = info["pid"], info["cpu_s"]
    out = perf_script(data, tmp_path / "out.txt", "-F", "+pid")
    ps = parse_file(str(out))
    assert ps.info.format == "perf-script" and ps.data.warnings == []
    samples = ps.data.samples
    mine = [s for s in samples if s.pid == pid]
    # cpu-clock fires per ~1 ms (1/999 s) of the task's own CPU time, so the count follows the CPU
    # the program had (>= 1 s by construction, measured by itself), not the wall time it took;
    # one thread cannot run longer than the wall time of the run
    wall_s = (t1 - t0) / 1e9
    print(f"\n{len(mine)} samples for {cpu_s:.2f} s CPU in {wall_s:.2f} s wall")
    assert cpu_s >= 1.0
    assert 0.6 * 999 * cpu_s <= len(mine) <= 1.2 * 999 * wall_s, (len(mine), cpu_s, wall_s)
    assert all(s.on_cpu is True and s.source == "perf" and s.tid == pid for s in mine)
    assert {s.thread_name for s in mine} & {"python3", "python", os.path.basename(sys.executable)}
    # every sample of the run lies in the CLOCK_MONOTONIC window measured around it
    assert all(t0 <= s.ts_ns <= t1 for s in samples), (t0, min(s.ts_ns for s in samples), max(s.ts_ns for s in samples), t1)
    # the interpreter is on the stacks; kernel frames, when present, are the leaf end (root first)
    exe = os.path.realpath(sys.executable)
    assert sum(any(f.module and (f.module == exe or "python" in f.module) for f in s.frames) for s in mine) > len(mine) / 2
    mixed = [s for s in mine if any(f.module == "[kernel.kallsyms]" for f in s.frames)
             and any(f.module and f.module != "[kernel.kallsyms]" for f in s.frames)]
    for s in mixed:
        kinds = [f.module == "[kernel.kallsyms]" for f in s.frames if f.module]
        assert kinds == sorted(kinds), [f.label() for f in s.frames]
    # the default `perf script --ns` (tid only, no pid) gives the same samples
    plain = parse_file(str(perf_script(data, tmp_path / "plain.txt")))
    assert sorted((s.tid, s.ts_ns) for s in plain.data.samples) == sorted((s.tid, s.ts_ns) for s in samples)


FSYNC = """
    import os, sys
    path = os.path.join(sys.argv[2], f"diag-fsync-{os.getpid()}.bin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    open(sys.argv[1], "w").write(f"{os.getpid()} {fd}")
    for i in range(10):
        os.write(fd, b"x" * 4096)
        os.fsync(fd)
    os.close(fd)
    os.unlink(path)
"""


@pytest.mark.parametrize("events", [
    ["syscalls:sys_enter_fsync", "syscalls:sys_exit_fsync"],
    ["raw_syscalls:sys_enter", "raw_syscalls:sys_exit"],
    ["raw_syscalls:sys_enter", "raw_syscalls:sys_exit", "syscalls:sys_enter_fsync", "syscalls:sys_exit_fsync"],
], ids=["syscalls", "raw_syscalls", "both"])
def test_perf_fsync_tracepoints(tmp_path, events):
    need_perf(*events)
    prog = write(tmp_path, "fs.py", FSYNC)
    info = tmp_path / "info"
    t0 = now()
    # on the root filesystem, not a tmpfs, so each fsync reaches the disk
    workdir = "/var/tmp" if os.access("/var/tmp", os.W_OK) else str(tmp_path)
    hidden = bpf_hiding(*events)
    if hidden:
        pytest.skip(f"perf cannot see these tracepoints now: {hidden}")
    with BpfWatch(*events) as watch:
        data = perf_record(tmp_path, events, [sys.executable, str(prog), str(info), workdir], "-g")
    t1 = now()
    if watch.reason:       # a BPF program came (and maybe went) while perf recorded: samples missing
        pytest.skip(f"perf could not see these tracepoints during the recording: {watch.reason}")
    pid, fd = map(int, info.read_text().split())
    ps = parse_file(str(perf_script(data, tmp_path / "out.txt", "-F", "+pid,+ip,+sym,+dso")))
    fsyncs = [e for e in ps.data.syscalls if e.name == "fsync" and e.pid == pid]
    assert len(fsyncs) == 10, [(e.name, e.start_ns) for e in ps.data.syscalls if e.pid == pid][-30:]
    assert all(e.fd == fd and e.ret == 0 and e.errno is None and e.tid == pid and e.source == "perf" for e in fsyncs)
    assert all(e.dur_ns is not None and e.dur_ns >= 0 and t0 <= e.start_ns and e.end_ns <= t1 for e in fsyncs)
    starts = [e.start_ns for e in fsyncs]
    assert starts == sorted(starts)
    for a, b in zip(fsyncs, fsyncs[1:]):
        assert a.end_ns <= b.start_ns
    if "raw_syscalls:sys_enter" in events:
        writes = [e for e in ps.data.syscalls if e.name == "write" and e.pid == pid and e.fd == fd]
        assert len(writes) == 10 and all(e.nbytes == 4096 for e in writes)
    if "syscalls:sys_enter_fsync" in events:
        # tracepoint samples with call chains: the fsync libc wrapper is the user-space leaf
        stacks = [s for s in ps.data.samples if s.pid == pid]
        assert stacks and all(s.on_cpu is None for s in stacks)
        assert any("fsync" in f.function for s in stacks for f in s.frames)


# ---- py-spy --------------------------------------------------------------------------------------------

PROG = """
    import time
    M = time.CLOCK_MONOTONIC
    first_ns = time.clock_gettime_ns(M)     # the program's first statement
    import json, os, sys, threading
    spans = {}
    go = threading.Event()
    def diag_busy_function(d):
        t0 = time.clock_gettime_ns(M)
        end = time.monotonic() + d
        n = 0
        while time.monotonic() < end:
            n += 1
        spans[threading.current_thread().name] = (t0, time.clock_gettime_ns(M))
    def diag_sleeper(d):
        time.sleep(d)
    def after_go(f, d):
        go.wait()
        f(d)
    ts = [threading.Thread(target=after_go, args=(diag_busy_function, 1.0), name="busy-worker"),
          threading.Thread(target=after_go, args=(diag_sleeper, 1.0), name="sleepy")]
    for t in ts:
        t.start()
    print("ready", flush=True)            # every thread exists and waits for the test to say go
    sys.stdin.readline()                  # (once py-spy samples, or after its dump)
    go.set()
    diag_busy_function(0.5)
    for t in ts:
        t.join()
    allt = ts + [threading.main_thread()]
    json.dump({"pid": os.getpid(), "native": {t.name: t.native_id for t in allt}, "first_ns": first_ns,
               "ident": {t.name: t.ident for t in allt}, "spans": spans}, open(sys.argv[1], "w"))
"""


@functools.lru_cache(maxsize=None)
def pyspy_unavailable() -> str | None:
    if PYSPY is None:
        return "py-spy is not installed (pip install py-spy)"
    r = subprocess.run([PYSPY, "record", "-r", "10", "-d", "1", "-f", "raw", "-o", "/dev/null", "--",
                        sys.executable, "-c", "import time; time.sleep(0.5)"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        msg = (r.stderr.strip() or r.stdout.strip()).splitlines()
        return f"py-spy cannot sample here ({msg[-1] if msg else 'no message'}); needs ptrace (root or CAP_SYS_PTRACE)"
    return None


def need_pyspy() -> None:
    reason = pyspy_unavailable()
    if reason:
        pytest.skip(reason)


def pyspy_record(tmp_path: Path, fmt: str, *flags: str) -> tuple[Path, dict, int, int, int]:
    """`py-spy record` of PROG; says go to the program once py-spy announced that it samples and the
    program's threads exist. Returns (output, the program's info, launch, announce seen, end) (ns)."""
    ext = "txt" if fmt == "raw" else "json"
    out = tmp_path / f"out.{ext}"
    info = tmp_path / "info.json"
    prog = write(tmp_path, "prog.py", PROG)
    lines: queue.Queue = queue.Queue()
    with open(tmp_path / "py-spy.stderr", "w+") as err:
        t_launch = now()
        # the program inherits py-spy's stdin and stdout: both speak on the same pipe
        p = subprocess.Popen([PYSPY, "record", "-f", fmt, "-r", "100", *flags, "-o", str(out), "--",
                              sys.executable, str(prog), str(info)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=err, text=True)

        def read() -> None:
            for x in iter(p.stdout.readline, ""):
                lines.put(x)
            lines.put(None)
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        seen, announced, said = set(), None, []
        try:
            while seen != {"sampling", "ready"}:
                line = lines.get(timeout=120)
                if line is None:
                    break
                said.append(line)
                if "Sampling process" in line and announced is None:
                    seen.add("sampling")
                    announced = now()
                elif line.strip() == "ready":
                    seen.add("ready")
            assert seen == {"sampling", "ready"}, "".join(said)
            p.stdin.write("go\n")
            p.stdin.close()
            rc = p.wait(120)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        t_end = now()
        reader.join(60)
        err.seek(0)
        assert rc == 0, "".join(said) + err.read()
    return out, json.loads(info.read_text()), t_launch, announced, t_end


@pytest.mark.parametrize("fmt", ["speedscope", "raw", "chrometrace"])
@pytest.mark.parametrize("threads", [False, True], ids=["plain", "threads-idle"])
def test_pyspy_record_formats(tmp_path, fmt, threads):
    need_pyspy()
    flags = ("--threads", "--idle") if threads else ()
    out, info, t_launch, announced, t_end = pyspy_record(tmp_path, fmt, *flags)
    parser = {"speedscope": SpeedscopeParser, "raw": PyspyRawParser, "chrometrace": ChrometraceParser}[fmt]()
    ctx = ParseContext(path=str(out), offset_ns=t_launch)
    ps = parse_file(str(out), ctx)
    assert ps.info.format == parser.format
    samples: list[StackSample] = ps.data.samples
    assert samples and all(s.source == "py-spy" and s.on_cpu is None for s in samples)
    assert any(f.function == "diag_busy_function" and f.file and f.file.endswith("prog.py") and f.line
               for s in samples for f in s.frames)
    native, ident = info["native"], info["ident"]
    tids = {s.tid for s in samples}
    busy_tids = {s.tid for s in samples if any(f.function == "diag_busy_function" for f in s.frames)}

    if fmt == "raw" and not threads:
        assert tids == {UNKNOWN_TID}
    elif fmt == "chrometrace" and not threads:
        # pthread ids (threading.get_ident()), with one warning...
        assert tids <= set(ident.values()) and {ident["busy-worker"], ident["MainThread"]} <= tids
        assert any("pthread" in w for w in ps.data.warnings)
        # ...which a pthread -> OS tid map turns into OS tids
        mapped = parse_file(str(out), ParseContext(path=str(out), tid_map={v: native[k] for k, v in ident.items()}))
        assert {s.tid for s in mapped.data.samples} <= set(native.values()) and not mapped.data.warnings
    else:
        # speedscope (always) and raw/chrometrace with --threads: OS tids
        assert tids <= set(native.values())
        assert {native["busy-worker"], native["MainThread"]} <= busy_tids
        if threads:          # --idle: the sleeping thread is sampled too
            assert tids == set(native.values())
            # names are looked up by py-spy at each sample and may be missing from some
            named = [s for s in samples if s.thread_name is not None]
            assert named and all(s.tid == native[s.thread_name] for s in named)
            sleepy = [s for s in samples if s.tid == native["sleepy"]]
            assert any(f.function == "diag_sleeper" for s in sleepy for f in s.frames)
    if fmt != "chrometrace":
        assert all(s.ts_ns is None for s in samples)
        return

    # chrometrace: µs from py-spy's start, anchored here at py-spy's launch time
    assert all(t_launch <= s.ts_ns <= t_end for s in samples)
    # stamps are taken when py-spy processes a sample, so never before the sample, from a clock
    # py-spy starts after its launch: they are early by that start-up, which is at most the
    # program's own start-up, launch to first statement (py-spy makes its recorder right after it
    # spawns the program, before it even waits for the interpreter), and surely at most launch to
    # the "Sampling process" line we saw (printed after the recorder is made)
    early = max(info["first_ns"], announced) - t_launch
    assert early > 0
    for tid in tids:
        ts = [s.ts_ns for s in samples if s.tid == tid]
        assert ts == sorted(ts) and len(ts) == len(set(ts))
    # each busy-worker sample showing diag_busy_function is stamped no earlier than the span the
    # thread measured itself began, less that start-up. How late after the span a stamp may come is
    # py-spy's hand-off from sampling to stamping (scheduling): printed, bounded only by the end of
    # the run (asserted above for every sample)
    worker = native["busy-worker"] if threads else ident["busy-worker"]
    b0, b1 = info["spans"]["busy-worker"]
    hits = [s.ts_ns for s in samples if s.tid == worker and s.frames[-1].function == "diag_busy_function"]
    assert hits
    print(f"\nstart-up: first statement {(info['first_ns'] - t_launch) / 1e6:.1f} ms, announce seen "
          f"{(announced - t_launch) / 1e6:.1f} ms; hits at {[round((t - b0) / 1e6, 1) for t in hits]} ms of the "
          f"{(b1 - b0) / 1e6:.0f} ms span; latest {(max(hits) - b1) / 1e6:+.1f} ms after its end")
    assert all(b0 - early <= t for t in hits), ([(t - b0) / 1e6 for t in hits], early / 1e6)


def test_pyspy_dump_json_maps_pthread_ids_to_os_tids(tmp_path):
    need_pyspy()
    prog = write(tmp_path, "prog.py", PROG)
    info = tmp_path / "info.json"
    p = subprocess.Popen([sys.executable, str(prog), str(info), "wait"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        # the program says ready once its threads exist; they wait for our go (after the dumps)
        assert p.stdout.readline() == "ready\n"
        r = subprocess.run([PYSPY, "dump", "--json", "--pid", str(p.pid)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        text_dump = subprocess.run([PYSPY, "dump", "--pid", str(p.pid)], capture_output=True, text=True, timeout=60).stdout
    finally:
        p.communicate("go\n", timeout=60)
    info_d = json.loads(info.read_text())
    m = pthread_to_tid_map_from_dump(r.stdout)
    expected = {info_d["ident"][name]: info_d["native"][name] for name in ("MainThread", "busy-worker", "sleepy")}
    assert m == expected
    assert pthread_to_tid_map_from_dump(text_dump) == {}
    for tid in expected.values():        # the text dump names threads by OS tid
        assert f"Thread {tid} " in text_dump
