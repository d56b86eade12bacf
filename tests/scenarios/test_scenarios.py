"""The scenario suite: real servers with one injected fault each, plus healthy controls, under a
bounded real load on 127.0.0.1; `diag attach` must rank the injected fault first, and report no
warning on the healthy controls.

`make scenarios` runs three rounds (DIAG_SCENARIO_ROUNDS=3) and prints the score table;
`make test` runs one. DIAG_SCENARIO_COLLECTORS overrides the collectors (default: auto).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace

import pytest
from conftest import SCORES
from toolbox import free_port, listening, require_tool, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
from diag.capture.bundle import wait_ready  # noqa: E402
from diag.examples.load import drive  # noqa: E402

ROUNDS = int(os.environ.get("DIAG_SCENARIO_ROUNDS", "1"))
COLLECTORS = os.environ.get("DIAG_SCENARIO_COLLECTORS", "auto")
CAPTURE_S = 4.0

pytestmark = [pytest.mark.slow]


@dataclass
class Scenario:
    name: str
    expected: str | None               # finding id ranked first; None: a healthy control
    kind: str = "python"               # python | redis
    concurrency: int = 4
    rate: float | None = 150.0         # requests/s in all; None: closed loop
    fault: str | None = None           # targets.py fault (defaults to the name)
    redis_args: tuple[str, ...] = ()
    notes: str = ""
    extra: dict = field(default_factory=dict)
    python: str = "debian"             # the interpreter of a Python target (INTERPRETERS)

    @property
    def id(self) -> str:
        return self.name if self.python == "debian" else f"{self.name}@{self.python}"


# Python targets of the cross-thread scenarios run under both kinds of interpreter: Debian's
# (stripped: the runtime sampler finds _PyRuntime in .dynsym) and one built with symbols (pyenv)
INTERPRETERS = {"debian": "/usr/bin/python3", "pyenv": "/root/.pyenv/versions/3.11.7/bin/python3.11"}
BOTH_INTERPRETERS = ("healthy-threaded", "disk-sync", "cpu-threads", "gil-background", "gc-pause", "lock-contention",
                     "lock-sleep", "healthy-asyncio")


SCENARIOS = [
    Scenario("healthy-threaded", None, fault="healthy"),
    Scenario("disk-sync", "disk-sync", concurrency=6),
    Scenario("file-io", "file-io", concurrency=2, rate=40),
    # a request line of ~1.5 KB (a long query string, as a cookie or a token makes it): read a
    # byte at a time, the fault costs every request ~1500 syscalls
    Scenario("small-reads", "small-reads", rate=60, extra={"path": "/?q=" + "a" * 1500}),
    Scenario("small-writes", "small-writes", rate=None),
    Scenario("cpu-bound", "cpu-bound", concurrency=1, rate=30),
    Scenario("cpu-threads", "cpu-bound", concurrency=6, rate=None),
    Scenario("gil-background", "gil-contention", concurrency=4, rate=100),
    Scenario("gc-pause", "gc-pause", concurrency=4, rate=100),
    Scenario("lock-contention", "lock-contention", concurrency=8, rate=None),
    Scenario("lock-sleep", "explicit-sleep", concurrency=4, rate=60),
    Scenario("explicit-sleep", "explicit-sleep", rate=100),
    Scenario("slow-upstream", "slow-upstream", rate=100),
    Scenario("time-wait", "time-wait", rate=300),
    Scenario("accept-backlog", "accept-backlog", concurrency=32, rate=None),
    Scenario("healthy-asyncio", None, kind="asyncio"),
    Scenario("event-loop-blocked", "event-loop-blocked", kind="asyncio", rate=100),
    Scenario("healthy-redis", None, kind="redis"),
    Scenario("disk-sync-redis", "disk-sync", kind="redis",
             redis_args=("--appendonly", "yes", "--appendfsync", "always")),
]
SCENARIOS += [replace(sc, python="pyenv") for sc in SCENARIOS if sc.name in BOTH_INTERPRETERS]


def _wait_line(p: subprocess.Popen) -> int:
    line = p.stdout.readline()
    assert line.startswith("listening on"), f"target did not start: {line!r}"
    return int(line.rsplit(":", 1)[1])


@contextmanager
def _proc(argv: list[str], **kw):
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, **kw)
    try:
        yield p
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def python_of(sc: Scenario) -> str:
    exe = INTERPRETERS[sc.python]
    if not os.access(exe, os.X_OK):
        pytest.skip(f"{sc.python} interpreter {exe} is not on this machine")
    return exe


@contextmanager
def start_target(sc: Scenario, tmp):
    with ExitStack() as st:
        if sc.kind == "redis":
            exe = require_tool("redis-server")
            port = free_port()
            p = st.enter_context(_proc([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                        "--dir", str(tmp), *(sc.redis_args or ("--appendonly", "no"))]))
            wait_until(lambda: p.poll() is not None or listening(port, 0.2), f"redis-server listening on {port}", 30)
            yield p, port
            return
        if sc.kind == "asyncio":
            argv = [python_of(sc), "-m", "diag.examples.asyncio_server", "--fault",
                    "block" if sc.expected else "none", "--every", "20", "--block-ms", "30"]
            p = st.enter_context(_proc(argv, cwd=ROOT))
            yield p, _wait_line(p)
            return
        fault = sc.fault or sc.name
        extra = []
        if fault == "slow-upstream":
            up = st.enter_context(_proc([python_of(sc), os.path.join(HERE, "targets.py"), "upstream", "--dir",
                                         str(tmp)]))
            extra = ["--upstream", str(_wait_line(up))]
        p = st.enter_context(_proc([python_of(sc), os.path.join(HERE, "targets.py"), fault, "--dir", str(tmp),
                                    *extra]))
        yield p, _wait_line(p)


def start_load(sc: Scenario, port: int, seconds: float, stop: threading.Event) -> threading.Thread:
    if sc.kind == "redis":
        bench = require_tool("redis-benchmark")
        # SETs (what an AOF fsyncs), in short bounded batches until the time is up: a single long
        # run may finish before the capture window on a fast disk, or outlive it on a slow one
        argv = [bench, "-p", str(port), "-n", "5000", "-c", "8", "-q", "-t", "set"]

        def run():
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and not stop.is_set():
                subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        t = threading.Thread(target=run, daemon=True)
    else:
        n = int((sc.rate or 400) * seconds) + 50
        t = threading.Thread(target=drive, kwargs=dict(host="127.0.0.1", port=port, requests=n, seconds=seconds,
                                                       concurrency=sc.concurrency, rate=sc.rate, stop=stop,
                                                       path=sc.extra.get("path", "/")),
                             daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("round_", range(1, ROUNDS + 1), ids=lambda r: f"round{r}")
@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda s: s.id)
def test_scenario(sc: Scenario, round_: int, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("diag attach to another process needs root here (ptrace / eBPF)")
    # tmp_path may be tmpfs, where fsync and dropped page caches cost nothing: use the disk
    work = f"/var/tmp/diag-scenario-{sc.name}-{sc.python}-{os.getpid()}"
    os.makedirs(work, exist_ok=True)
    try:
        with start_target(sc, work) as (proc, port):
            # the server is already serving when diag attaches (connections open, as in production),
            # and the load goes on until the capture has ended, however long the probe took to compile
            done = threading.Event()
            load = start_load(sc, port, 120.0, done)
            time.sleep(1.0)
            rep = tmp_path / "report.json"
            cap = tmp_path / "c.diag"
            t0 = time.monotonic()
            diag = subprocess.Popen([sys.executable, "-m", "diag", "attach", str(proc.pid), "--duration",
                                     str(CAPTURE_S), "--collectors", COLLECTORS, "--out", str(cap), "--json", str(rep),
                                     "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
            ready = wait_ready(cap, lambda: diag.poll() is None)
            out, err = diag.communicate(timeout=120)
            seconds = time.monotonic() - t0
            done.set()
            load.join(30)
            assert ready and diag.returncode == 0, err
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = json.loads(rep.read_text())
    findings = report["findings"]
    bad = [f for f in findings if f["severity"] in ("warning", "critical")]
    top = findings[0] if findings else None
    if sc.expected is None:
        passed = not bad
    else:
        passed = top is not None and top["id"] == sc.expected and top["severity"] in ("warning", "critical")
    SCORES.append({"scenario": sc.id, "round": round_, "expected": sc.expected,
                   "got": top["id"] if top else None, "severity": top["severity"] if top else None,
                   "share": top["share"] if top else 0.0, "seconds": seconds, "pass": passed})
    summary = [(f["rank"], f["id"], f["severity"], f["share"]) for f in findings]
    assert passed, f"{sc.name}: expected {sc.expected or 'no warning'}, got {summary}"
    # the replay of the same capture says the same
    r = subprocess.run([sys.executable, "-m", "diag", "replay", str(tmp_path / "c.diag"), "--json",
                        str(tmp_path / "replay.json"), "--quiet"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    again = json.loads((tmp_path / "replay.json").read_text())["findings"]
    assert [(f["id"], f["severity"], f["share"]) for f in again] == [(f["id"], f["severity"], f["share"])
                                                                       for f in findings]
