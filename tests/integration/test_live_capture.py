"""`diag attach` and `diag run` on real servers on 127.0.0.1 under paced real load.

Each test checks the capture and the report against what the server is known to do, and that
the target is left running, answering, and untraced. No test waits for a time: each waits for a
state (collectors started, strace logging the target, N requests answered inside the capture,
collectors gone) and the load outlasts the capture, so a slow machine only makes them slower.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from other_user import run_as_nobody
from diag_run import collectors_started_ns, diag, diag_popen, load_json, stop_diag, strace_completed, strace_lines
from servers import example_server, http_ok, HttpLoad, redis_server
from toolbox import alive, all_tracers, procs_mentioning, require_root, require_tool, tracer_pid, wait_until

from diag.load import load_inputs

pytestmark = pytest.mark.slow


def _wait_ready(p: subprocess.Popen, cap) -> int:
    """Wait until the background `diag attach` has started every collector (the manifest's ready
    mark); returns that CLOCK_MONOTONIC mark in ns. Fails at once if diag exited instead."""
    wait_until(lambda: p.poll() is not None or collectors_started_ns(cap), "diag starting its collectors")
    if p.poll() is not None:
        err = p.communicate()[1] if p.stderr else ""
        pytest.fail(f"diag exited (code {p.returncode}) before its collectors started: {(err or '')[-2000:]}")
    return collectors_started_ns(cap)


def _strace_pid(cap) -> int:
    """The pid of the strace writing this capture's log (found by its command line), or 0."""
    import psutil
    out = str(cap / "streams" / "strace.txt")
    for pid in procs_mentioning(out):
        try:
            if os.path.basename(psutil.Process(pid).exe()) == "strace":
                return pid
        except psutil.Error:
            pass
    return 0


def _count_completed(path, syscall: str) -> int:
    """Calls of `syscall` that strace saw complete (a duration), counted on the raw log itself:
    complete lines plus `<... resumed>` halves; a call cut by the detach has no duration."""
    n = 0
    with open(path, errors="replace") as f:
        for line in f:
            done = " = " in line and line.rstrip().endswith(">") and "<unfinished" not in line
            if done and (f" {syscall}(" in line or f"<... {syscall} resumed>" in line):
                n += 1
    return n


def test_attach_threaded_http_server_finds_fsync(tmp_path):
    # GIVEN the journal server (fsync on every request) under a load that lasts until diag is done
    require_root()
    require_tool("strace")
    requests = 300
    with example_server("journal_server", "--journal", str(tmp_path / "j.bin")) as (srv, port), \
            HttpLoad(port, rate=150) as load:
        # WHEN diag attaches with strace, py-spy, perf and the process sampler, and is stopped
        # (Ctrl-C) once `requests` requests sent after all its collectors had started were answered:
        # the capture holds that much work however slow the machine is
        cap, rep = tmp_path / "c.diag", tmp_path / "r.json"
        p = diag_popen("attach", str(srv.pid), "--duration", "0", "--collectors", "strace,py-spy,perf,process",
                       "--out", str(cap), "--json", str(rep), "--quiet")
        try:
            ready = _wait_ready(p, cap)
            load.wait_answered_since(ready, requests)
        finally:
            _, err = stop_diag(p)
        # THEN the server still answers and nothing traces it any more
        assert p.returncode == 0, err
        assert http_ok(port)
        assert set(all_tracers(srv.pid).values()) == {0}
    report = load_json(rep)
    manifest = load_json(cap / "manifest.json")
    assert manifest["status"] == "complete"
    status = {k: v["status"] for k, v in manifest["collectors"].items()}
    assert status["strace"] == status["py-spy"] == status["process"] == "ok", status
    assert status["perf"] in ("ok", "degraded"), manifest["collectors"]["perf"]
    # the fsync counts in the report are the fsync lines strace wrote: at least one per request
    # answered while every collector ran (each fsyncs before answering)
    fsyncs = sum(row["count"] for row in report["latency"]["syscalls"] if row["name"] == "fsync")
    assert fsyncs == _count_completed(cap / "streams" / "strace.txt", "fsync") >= requests
    assert all(row["fd_kind"] == "file" for row in report["latency"]["syscalls"] if row["name"] == "fsync")
    # the journal server fsyncs under a lock; strace stretches the lock waits, so contention may
    # rank beside it (capped at info under strace); the default eBPF capture ranks disk-sync
    # first (tests/scenarios)
    ids = [f["id"] for f in report["findings"]]
    assert "disk-sync" in ids, ids
    # py-spy saw the handler's journal call on the server's threads
    data = load_inputs([str(cap)])
    frames = {f.function for s in data.samples if s.source == "py-spy" for f in s.frames}
    assert "Journal.append" in frames and any(f.endswith("Handler.do_GET") for f in frames), sorted(frames)
    server_tids = {e.tid for e in data.syscalls if e.name == "fsync"}
    assert server_tids & {s.tid for s in data.samples if s.source == "py-spy"}, "py-spy tids are not OS tids"


def test_attach_asyncio_server_sees_the_blocked_loop(tmp_path):
    require_root()
    require_tool("strace")
    every, requests = 20, 60
    with example_server("asyncio_server", "--fault", "block", "--every", str(every), "--block-ms", "30") \
            as (srv, port), HttpLoad(port, rate=100) as load:
        cap, rep = tmp_path / "c.diag", tmp_path / "r.json"
        p = diag_popen("attach", str(srv.pid), "--duration", "0", "--collectors", "strace,process", "--out", str(cap),
                       "--json", str(rep), "--quiet")
        try:
            ready = _wait_ready(p, cap)
            # the loop numbers requests as it serves them, one at a time, and sleeps in every
            # `every`-th: `requests` answered after the mark took >= requests // every sleeps
            load.wait_answered_since(ready, requests)
        finally:
            _, err = stop_diag(p)
        assert p.returncode == 0, err
        assert http_ok(port) and tracer_pid(srv.pid) == 0
    report = load_json(rep)
    by = {(x["name"], x["fd_kind"]): x for x in report["latency"]["syscalls"]}
    # one event-loop thread: epoll_wait and the 30 ms sleeps are on the same tid
    sleeps = [x for k, x in by.items() if k[0] == "clock_nanosleep"]
    assert sleeps and sum(x["count"] for x in sleeps) >= requests // every, sleeps
    assert sleeps[0]["p50_ns"] >= 29_000_000, sleeps
    assert any(k[0] in ("epoll_wait", "epoll_pwait") for k in by)
    data = load_inputs([str(cap)])
    assert {e.tid for e in data.syscalls if e.name == "clock_nanosleep"} == \
        {e.tid for e in data.syscalls if e.name.startswith("epoll_")} == {srv.pid}


def test_attach_native_redis_server(tmp_path):
    require_root()
    bench = require_tool("redis-benchmark")
    require_tool("strace")
    n = 3000
    with redis_server() as (srv, port):
        cap, rep = tmp_path / "c.diag", tmp_path / "r.json"
        p = diag_popen("attach", str(srv.pid), "--duration", "0", "--collectors", "strace,py-spy,process",
                       "--out", str(cap), "--json", str(rep), "--quiet")
        try:
            _wait_ready(p, cap)
            # strace logged a call of redis' main thread (it serves every client; its event loop
            # wakes at least every 100 ms): from here on every read it makes is traced
            wait_until(lambda: strace_lines(cap / "streams" / "strace.txt", srv.pid),
                       "strace logging redis' main thread")
            b = subprocess.run([bench, "-p", str(port), "-n", str(n), "-c", "4", "-q", "-t", "set,get"],
                               capture_output=True, text=True, timeout=600)
        finally:
            _, err = stop_diag(p)       # Ctrl-C once the benchmark is done: it ran inside the capture
        assert p.returncode == 0, err
        assert b.returncode == 0, b.stdout + b.stderr
        assert tracer_pid(srv.pid) == 0
    manifest = load_json(cap / "manifest.json")
    assert manifest["collectors"]["py-spy"]["status"] == "not-applicable"
    report = load_json(rep)
    socket_rows = {x["name"] for x in report["latency"]["syscalls"] if x["fd_kind"] == "socket"}
    assert {"read", "write"} <= socket_rows or {"read", "writev"} <= socket_rows, socket_rows
    reads = sum(x["count"] for x in report["latency"]["syscalls"] if x["name"] == "read" and x["fd_kind"] == "socket")
    # redis-benchmark waits for each reply before it sends the client's next request (no -P), so
    # every one of the 2 * n requests (n SETs, n GETs) took at least one read of its own
    print(f"\n{reads} socket reads for {2 * n} requests")
    assert reads >= 2 * n


def test_run_passes_exit_code_and_traces_the_command(tmp_path):
    require_tool("strace")
    prog = tmp_path / "p.py"
    prog.write_text("import os\nf = open(%r, 'wb')\nfor i in range(10):\n    f.write(b'x' * 4096); f.flush(); "
                    "os.fsync(f.fileno())\nraise SystemExit(3)\n" % str(tmp_path / "out.bin"))
    cap, rep = tmp_path / "c.diag", tmp_path / "r.json"
    r = diag("run", "--collectors", "strace,process", "--out", str(cap), "--json", str(rep), "--quiet", "--",
             sys.executable, str(prog))
    assert r.returncode == 3, r.stderr
    report = load_json(rep)
    fs = [x for x in report["latency"]["syscalls"] if x["name"] == "fsync"]
    assert fs and fs[0]["count"] == 10 and fs[0]["fd_kind"] == "file"
    strace = load_json(cap / "manifest.json")["collectors"]["strace"]
    assert strace["status"] == "ok" and strace["settings"]["seccomp_bpf"] is True, strace


def test_sigkill_of_diag_leaves_the_target_untraced_and_serving(tmp_path):
    require_root()
    require_tool("strace")
    with example_server("journal_server", "--journal", str(tmp_path / "j.bin")) as (srv, port), \
            HttpLoad(port, rate=100) as load:
        cap = tmp_path / "c.diag"
        p = diag_popen("attach", str(srv.pid), "--duration", "600", "--collectors", "strace,py-spy,process",
                       "--out", str(cap), "--quiet", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ready = _wait_ready(p, cap)
            assert tracer_pid(srv.pid) == _strace_pid(cap), "strace is not the target's tracer"
            # the capture has content: requests served while every collector ran, calls logged
            load.wait_answered_since(ready, 20)
            wait_until(lambda: strace_completed(cap / "streams" / "strace.txt"), "strace logging a completed call")
        finally:
            # WHEN diag is killed without any chance to clean up
            p.kill()
            p.wait(60)
        killed = time.monotonic()
        # THEN no thread of the target stays traced (PDEATHSIG detaches strace), and it answers
        wait_until(lambda: set(all_tracers(srv.pid).values()) == {0},
                   lambda: f"every thread untraced after SIGKILL (tracers {all_tracers(srv.pid)})")
        print(f"\nuntraced {time.monotonic() - killed:.2f}s after SIGKILL")
        assert srv.poll() is None and http_ok(port)
    # AND once the collectors have gone (py-spy writes its file on the death signal, strace
    # flushes), the partial capture is replayable
    wait_until(lambda: not procs_mentioning(str(cap)),
               lambda: f"the collectors exiting after SIGKILL (left: {procs_mentioning(str(cap))})")
    m = load_json(cap / "manifest.json")
    assert m["status"] == "running"
    r = diag("replay", str(cap), "--json", str(tmp_path / "r.json"), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "interrupted" in r.stderr
    assert load_json(tmp_path / "r.json")["counts"]["syscalls"] > 0


def test_sigint_ends_the_capture_cleanly_with_a_report(tmp_path):
    require_root()
    require_tool("strace")
    with example_server("journal_server", "--journal", str(tmp_path / "j.bin")) as (srv, port), \
            HttpLoad(port, rate=100):
        cap, rep = tmp_path / "c.diag", tmp_path / "r.json"
        p = diag_popen("attach", str(srv.pid), "--duration", "0", "--collectors", "strace,process", "--out", str(cap),
                       "--json", str(rep), "--quiet")
        try:
            _wait_ready(p, cap)
            # strace is the tracer and has logged a completed call of the server
            assert tracer_pid(srv.pid) == _strace_pid(cap), "strace is not the target's tracer"
            wait_until(lambda: strace_completed(cap / "streams" / "strace.txt"), "strace logging a completed call")
        finally:
            _, err = stop_diag(p)          # SIGINT, as Ctrl-C sends
        assert p.returncode == 0, err
        assert tracer_pid(srv.pid) == 0 and http_ok(port)
    m = load_json(cap / "manifest.json")
    assert m["status"] == "complete" and m["end_reason"] == "SIGINT"
    assert load_json(rep)["counts"]["syscalls"] > 0


def test_attach_to_a_dead_pid_is_one_line_exit_3():
    p = subprocess.Popen(["true"])
    p.wait()
    r = diag("attach", str(p.pid), "--duration", "1")
    assert r.returncode == 3
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr and r.stderr.count("\n") == 1


TARGET_EXITING = """\
import os, sys, time
go, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
give_up = time.monotonic() + 600          # never outlive a failed test for long
while not os.path.exists(go):
    if time.monotonic() > give_up:
        sys.exit(9)
    time.sleep(0.01)
for i in range(n):
    os.write(fd, b".")
"""


def test_target_exiting_mid_capture_ends_it_with_what_was_seen(tmp_path):
    require_root()
    require_tool("strace")
    # the target idles (sleeping: traced calls) until the test creates the go file, then makes
    # exactly `n` writes to its file and exits
    n = 25
    prog, go, data = tmp_path / "p.py", tmp_path / "go", tmp_path / "data.bin"
    prog.write_text(TARGET_EXITING)
    target = subprocess.Popen([sys.executable, str(prog), str(go), str(data), str(n)], stdout=subprocess.DEVNULL)
    cap, rep = tmp_path / "c.diag", tmp_path / "r.json"
    p = diag_popen("attach", str(target.pid), "--duration", "600", "--collectors", "strace,process", "--out",
                   str(cap), "--json", str(rep), "--quiet")
    try:
        _wait_ready(p, cap)
        # strace is the tracer and has logged one of the target's calls: from here on every call
        # of the (single-threaded) target is traced
        assert tracer_pid(target.pid) == _strace_pid(cap), "strace is not the target's tracer"
        wait_until(lambda: strace_completed(cap / "streams" / "strace.txt"), "strace logging a call of the target")
        go.touch()
        assert target.wait(120) == 0
        out, err = p.communicate(timeout=120)
    finally:
        if target.poll() is None:
            target.kill()
        if p.poll() is None:
            stop_diag(p)
    assert p.returncode == 0, err
    assert data.stat().st_size == n
    m = load_json(cap / "manifest.json")
    assert m["status"] == "complete" and m["end_reason"] == "target-exited"
    writes = [x for x in load_json(rep)["latency"]["syscalls"] if x["name"] == "write"]
    assert [(x["count"], x["fd_kind"]) for x in writes] == [(n, "file")], writes


def test_doctor_as_root_and_unprivileged():
    r = diag("doctor", "--json")
    assert r.returncode == 0, r.stderr
    checks = {c["collector"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["process"]["ok"]
    if os.geteuid() == 0 and os.path.exists("/usr/bin/strace"):
        assert checks["strace"]["ok"]
    if not checks["perf counters"]["ok"]:
        assert "not supported" in checks["perf counters"]["detail"]
    # simulated unprivileged run: the same command as user nobody (a staged copy of diag: the
    # checkout may be unreadable to nobody)
    r = run_as_nobody(["-m", "diag", "doctor", "--json"])
    assert r.returncode == 0, r.stderr
    u = {c["collector"]: c for c in json.loads(r.stdout)["checks"]}
    print("\nunprivileged doctor:", {k: (v["ok"], v["detail"][:80]) for k, v in u.items()})
    assert not u["ebpf"]["ok"] and "root" in u["ebpf"]["detail"]
    assert not u["perf"]["ok"] and "perf_event_paranoid" in u["perf"]["detail"]
    assert u["process"]["ok"]


SPIN_UNTIL_SAMPLED = """\
#!/usr/bin/env python3
import json, sys, time
def sampling(manifest):
    try:
        with open(manifest) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return False
    return bool(m["clock"].get("collectors_started_monotonic_ns")) or \\
        (m["collectors"].get("py-spy") or {}).get("status") == "ok"
def shebang_spin(manifest):
    give_up = time.monotonic() + 60        # bounds a failed test, never the thing tested
    until, x = None, 0
    while True:
        for _ in range(20000):
            x += 1
        if until is None:
            if sampling(manifest):
                until = time.thread_time() + 0.5
            elif time.monotonic() > give_up:
                sys.exit(9)
        elif time.thread_time() >= until:
            return
shebang_spin(sys.argv[1])
"""


def test_run_samples_a_script_started_through_env(tmp_path):
    """`diag run -- ./app.py` with `#!/usr/bin/env python3`: the command is `env` for a moment
    after its exec; py-spy must still find Python and sample the script's own function. The
    script spins until the capture's manifest says py-spy is sampling, then 0.5 s of CPU more."""
    require_root()
    require_tool("py-spy")
    app = tmp_path / "app.py"
    app.write_text(SPIN_UNTIL_SAMPLED)
    app.chmod(0o755)
    cap = tmp_path / "c.diag"
    r = diag("run", "--collectors", "py-spy,process", "--out", str(cap), "--quiet", "--", str(app),
             str(cap / "manifest.json"))
    assert r.returncode != 9, f"py-spy never said it was sampling within 60 s: {r.stderr[-2000:]}"
    assert r.returncode == 0, r.stderr
    manifest = json.loads((cap / "manifest.json").read_text())
    assert manifest["collectors"]["py-spy"]["status"] not in ("not-applicable", "failed"), manifest["collectors"]["py-spy"]
    data = load_inputs([str(cap)])
    assert any(f.function == "shebang_spin" for s in data.samples for f in s.frames), "py-spy never sampled the script"


# ---- diag run: what happens to the command when diag is interrupted, fails, or cannot watch it ----

STOPPABLE = """\
import signal, sys, time
ready, mode = sys.argv[1], sys.argv[2]
if mode == "exit0":
    signal.signal(signal.SIGINT, lambda *a: sys.exit(0))
elif mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(ready, "w").close()
give_up = time.monotonic() + 600          # never outlive a failed test for long
while time.monotonic() < give_up:
    time.sleep(0.05)
sys.exit(9)
"""


@pytest.mark.parametrize("sig, mode, expected", [
    ("SIGTERM", "default", 128 + 15),      # killed by the forwarded SIGTERM: 143, as a shell says
    ("SIGINT", "exit0", 130),              # exits 0 on the forwarded SIGINT: still never 0
    ("SIGTERM", "ignore-term", 128 + 9),   # ignores it: SIGKILL after the bounded wait
])
def test_run_interrupted_stops_the_command_and_never_exits_0(tmp_path, sig, mode, expected):
    import signal
    # GIVEN `diag run` watching a command that runs until stopped
    prog, ready = tmp_path / "p.py", tmp_path / "ready"
    prog.write_text(STOPPABLE)
    cap, rep = tmp_path / "c.diag", tmp_path / "r.json"
    d = diag_popen("run", "--collectors", "process", "--out", str(cap), "--json", str(rep), "--quiet", "--",
                   sys.executable, str(prog), str(ready), mode)
    try:
        wait_until(lambda: d.poll() is not None or (ready.exists() and collectors_started_ns(cap)),
                   "the command running under a ready capture")
        assert d.poll() is None, d.communicate()[1]
        pid = load_json(cap / "manifest.json")["target"]["pid"]
        # WHEN diag is interrupted (a cancelled CI job)
        d.send_signal(getattr(signal, sig))
        out, err = d.communicate(timeout=120)
    finally:
        if d.poll() is None:
            d.kill()
            d.wait()
    # THEN the command was stopped too, diag says so in one line and exits with the command's
    # status as a shell gives it, never 0; the capture ended normally, with its report
    assert d.returncode == expected, err
    assert not alive(pid)
    assert f"diag run: {sig}: the capture ended; {sys.executable} (pid {pid}): sent {sig}" in err, err
    assert "Traceback" not in err
    m = load_json(cap / "manifest.json")
    assert m["status"] == "complete" and m["end_reason"] == sig, m
    assert load_json(rep)["counts"] is not None


SHADOWS = ("signal", "os", "posix", "_signal", "sys", "encodings")


def _env0(stdout: bytes) -> set[bytes]:
    return set(x for x in stdout.split(b"\0") if x)


def test_run_holder_ignores_the_projects_modules_and_python_variables(tmp_path):
    """The holder is `python -I -S` importing builtins only: a project's `signal.py`/`os.py` in
    the cwd, a PYTHONPATH copy, or a PYTHONHOME of another interpreter cannot break it, and the
    command gets them unchanged."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    for d in (tmp_path, shadow):
        for mod in SHADOWS:
            (d / f"{mod}.py").write_text(f"raise ImportError('shadowed {mod} imported from {d}')\n")
    home = tmp_path / "other-python-home"          # no stdlib there: an interpreter using it dies
    home.mkdir()
    env = {**os.environ, "PYTHONPATH": str(shadow), "PYTHONHOME": str(home), "LC_ALL": "C.UTF-8"}
    # diag itself runs isolated (-I): only the holder it starts is under test
    r = subprocess.run([sys.executable, "-I", "-m", "diag", "run", "--collectors", "process", "--out",
                        str(tmp_path / "c.diag"), "--quiet", "--", "env", "-0"],
                       cwd=tmp_path, env=env, capture_output=True, timeout=120)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, err
    assert "shadowed" not in err and "Traceback" not in err and "Fatal Python error" not in err, err
    base = subprocess.run(["env", "-0"], cwd=tmp_path, env=env, capture_output=True, timeout=60)
    assert _env0(r.stdout) == _env0(base.stdout)


def test_run_gives_the_command_diags_environment_and_signal_dispositions(tmp_path):
    """Nothing of the holder's interpreter leaks into the command: in the C locale an isolated
    interpreter coerces LC_CTYPE (PEP 538), Python ignores SIGPIPE/SIGXFSZ and handles SIGINT."""
    env = {k: v for k, v in os.environ.items() if k not in ("LC_ALL", "LC_CTYPE", "LANG", "LANGUAGE")}
    env["PYTHONCOERCECLOCALE"] = "0"      # diag's own interpreter must not coerce: only the holder's is tested
    r = diag("run", "--collectors", "process", "--out", str(tmp_path / "e.diag"), "--quiet", "--", "env", "-0",
             env=env)
    assert r.returncode == 0, r.stderr
    base = subprocess.run(["env", "-0"], env=env, capture_output=True, text=True, timeout=60)
    assert _env0(r.stdout.encode()) == _env0(base.stdout.encode())
    assert "LC_CTYPE" not in r.stdout
    r = diag("run", "--collectors", "process", "--out", str(tmp_path / "s.diag"), "--quiet", "--", "cat",
             "/proc/self/status", env=env)
    assert r.returncode == 0, r.stderr
    base = subprocess.run(["cat", "/proc/self/status"], env=env, capture_output=True, text=True, timeout=60)

    def dispositions(status: str) -> dict:
        return {k: v for k, v in (ln.split(":", 1) for ln in status.splitlines() if ":" in ln)
                if k in ("SigBlk", "SigIgn", "SigCgt")}
    assert dispositions(r.stdout) == dispositions(base.stdout)


def test_run_records_strace_failed_when_it_is_not_tracing_the_command(tmp_path):
    """strace -D attaches before the command's exec; when that fails (ptrace refused) the command
    runs untraced. Here the holder execs the command itself, as after a failed attach: the launched
    strace must be recorded failed, and with no other collector the capture is an error (exit 5)."""
    from diag.capture.bundle import CaptureWriter
    from diag.collect.base import Target
    from diag.collect.session import run_capture
    from diag.collect.strace import LaunchedStrace, StraceCollector
    from diag.errors import EXIT_NO_COLLECTOR, DiagError
    from diag.launch import HeldCommand

    cmd = [sys.executable, "-c", "import time; time.sleep(600)"]
    writer = CaptureWriter(str(tmp_path / "c.diag"), {"cmdline": cmd}, "run")
    strace = StraceCollector()
    strace.launch_command(cmd, writer)
    launched = LaunchedStrace(strace)
    held = HeldCommand(cmd, cmd)           # the command itself, with no strace in between
    try:
        assert held.wait_held()
        launched.held = held
        with pytest.raises(DiagError) as e:
            run_capture(Target(pid=held.pid, cmdline=cmd, launched=True), [], writer, None,
                        target_alive=lambda: held.proc.poll() is None, release=held.release,
                        after_release=[launched])
        assert e.value.exit_code == EXIT_NO_COLLECTOR
        assert held.released and held.proc.poll() is None      # released, running, untraced
    finally:
        if held.released:
            held.stop(__import__("signal").SIGKILL)
        else:
            held.cancel()
    entry = load_json(tmp_path / "c.diag" / "manifest.json")["collectors"]["strace"]
    assert entry["status"] == "failed" and "strace is not tracing" in entry["reason"], entry
    assert "\n" not in entry["reason"]


NOT_PYTHON = {
    "native": None,
    "perl-via-env-S": "#!/usr/bin/env -S perl -w\nopen(my $f, '>', $ARGV[0]) or die;\n",
}


@pytest.mark.parametrize("kind", sorted(NOT_PYTHON))
def test_run_pyspy_only_refuses_a_command_that_is_not_python_before_it_runs(tmp_path, kind):
    require_tool("py-spy")
    marker, cap = tmp_path / "ran", tmp_path / "c.diag"
    if NOT_PYTHON[kind] is None:
        cmd = ["touch", str(marker)]
    else:
        require_tool("perl")
        script = tmp_path / "tool.pl"
        script.write_text(NOT_PYTHON[kind])
        script.chmod(0o755)
        cmd = [str(script), str(marker)]
    r = diag("run", "--collectors", "py-spy", "--out", str(cap), "--quiet", "--", *cmd)
    assert r.returncode == 5, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "not Python; it was not run" in r.stderr, r.stderr
    assert not marker.exists() and not cap.exists()


UNCERTAIN = """\
#!/bin/sh
touch "$1"
n=0
while [ ! -e "$2" ] && [ $n -lt 12000 ]; do sleep 0.05; n=$((n + 1)); done
touch "$3"
exit 7
"""


def test_run_pyspy_only_lets_a_released_command_it_cannot_watch_finish(tmp_path):
    """A shell script may exec Python, so py-spy alone cannot refuse it before it runs; once
    py-spy finds it is not Python, the script is already running: it is let run to its end
    (never stopped midway), a warning says it is unobserved, and diag exits 5."""
    require_tool("py-spy")
    script, started, go, done = tmp_path / "migrate.sh", tmp_path / "started", tmp_path / "go", tmp_path / "done"
    script.write_text(UNCERTAIN)
    script.chmod(0o755)
    cap = tmp_path / "c.diag"
    d = diag_popen("run", "--collectors", "py-spy", "--out", str(cap), "--quiet", "--", str(script), str(started),
                   str(go), str(done))
    try:
        def decided():
            try:
                return (load_json(cap / "manifest.json")["collectors"].get("py-spy") or {}).get("status")
            except (OSError, ValueError, KeyError):
                return None
        # WHEN py-spy has decided it cannot watch the (running) script
        status = wait_until(lambda: d.poll() is not None or decided(), "py-spy deciding on the script")
        assert d.poll() is None, d.communicate()[1]
        assert status == "not-applicable" and started.exists()
        # THEN diag still waits for the script, which finishes its work
        go.touch()
        out, err = d.communicate(timeout=120)
    finally:
        if d.poll() is None:
            d.kill()
            d.wait()
    assert d.returncode == 5, err
    assert done.exists()
    assert "diag: warning: no collector could run here: py-spy: not applicable" in err, err
    assert f"diag run: {script} ran to its end unobserved (exit status 7)" in err, err
    assert "Traceback" not in err


def test_run_holder_leaves_no_socket_close_in_the_report(tmp_path):
    """The holder's go socket is close-on-exec, not closed: the command's first syscalls are its own."""
    require_root()
    cap, rep = tmp_path / "c.diag", tmp_path / "r.json"
    r = diag("run", "--collectors", "ebpf,process", "--ebpf-slow", "0", "--out", str(cap), "--json", str(rep), "--quiet",
             "--", "true", timeout=300)
    entry = load_json(cap / "manifest.json")["collectors"].get("ebpf") or {}
    if entry.get("status") != "ok":
        pytest.skip(f"eBPF could not run here: {entry}")
    assert r.returncode == 0, r.stderr
    rows = [(x["name"], x["fd_kind"]) for x in load_json(rep)["latency"]["syscalls"]]
    assert ("close", "socket") not in rows, rows


# ---- the session itself, with collectors that fail or signal while they start (real signals) ----

class _Fake:
    """A collector whose start() sends diag (this process) a real SIGINT, waits until the
    capture's handler has seen it, then works or fails."""

    def __init__(self, name: str, fails: bool, flag) -> None:
        self.name, self.fails, self.flag = name, fails, flag

    def check(self, target):
        return None

    def start(self, target, writer):
        import signal

        from diag.collect.base import Unavailable
        os.kill(os.getpid(), signal.SIGINT)
        assert self.flag.event.wait(60), "the capture's SIGINT handler never ran"
        if self.fails:
            raise Unavailable(f"{self.name} failed")

    def stats(self):
        from diag.collect.base import CollectorStats
        return CollectorStats()

    def stop(self):
        pass


def _session(tmp_path, fails: bool, release=None):
    """run_capture (in this, the main thread: real signal handlers) with one _Fake collector."""
    import threading

    from diag.capture.bundle import CaptureWriter
    from diag.collect.base import Target
    from diag.collect.session import StopFlag, run_capture
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    stop = StopFlag()
    writer = CaptureWriter(str(tmp_path / "c.diag"), {"cmdline": ["x"]}, "run" if release else "attach")
    target = Target(pid=os.getpid(), cmdline=["x"], launched=release is not None)
    return lambda: run_capture(target, [_Fake("a", fails, stop)], writer, None, release=release, stop=stop)


@pytest.mark.parametrize("held", [False, True])
def test_no_collector_is_an_error_even_when_a_signal_came_while_they_started(tmp_path, held):
    from diag.errors import EXIT_NO_COLLECTOR, DiagError
    released = []
    go = _session(tmp_path, fails=True, release=(lambda: released.append(1)) if held else None)
    with pytest.raises(DiagError) as e:
        go()
    assert e.value.exit_code == EXIT_NO_COLLECTOR and "a failed" in str(e.value)
    assert not released
    assert load_json(tmp_path / "c.diag" / "manifest.json")["status"] == "failed"


def test_a_command_interrupted_before_its_release_is_an_interrupted_capture(tmp_path):
    released = []
    go = _session(tmp_path, fails=False, release=lambda: released.append(1))
    result = go()
    assert not released and result.status == "interrupted" and result.reason == "SIGINT"
    m = load_json(tmp_path / "c.diag" / "manifest.json")
    assert m["status"] == "interrupted" and m["end_reason"] == "SIGINT"
    assert not m["clock"].get("collectors_started_monotonic_ns"), m["clock"]


def test_run_cleans_up_when_the_holder_cannot_be_started(tmp_path, monkeypatch):
    import errno

    from diag import live
    from diag.errors import EXIT_NO_TARGET, DiagError

    def no_fork(*a, **kw):
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    fds = sorted(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(live.subprocess, "Popen", no_fork)
    with pytest.raises(DiagError) as e:
        live.run(["true"], live.CaptureOptions(out=str(tmp_path / "c.diag"), collectors="process", live_view=False))
    assert e.value.exit_code == EXIT_NO_TARGET
    assert str(e.value).startswith("diag run: could not start true: Resource temporarily unavailable")
    assert "\n" not in str(e.value)
    assert sorted(os.listdir("/proc/self/fd")) == fds, "a socket of the holder leaked"
    assert load_json(tmp_path / "c.diag" / "manifest.json")["status"] == "failed"
