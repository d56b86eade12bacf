"""Benchmark targets (servers on 127.0.0.1) and their closed-loop load generators (wrk,
redis-benchmark), each pinned to its own core.

Every load is bounded: wrk runs for a fixed number of seconds; redis-benchmark for a fixed request
count sized from the expected rate (so a heavily traced redis does not run for minutes), with a
hard timeout on both. The load generator's CPU is read from wait4() (its rusage): the in-kernel
programs of an eBPF observer run on the generator's syscalls too.

Pinning (`taskset`): on 2 cores the target runs on CPU 0 and the load generator on CPU 1, the
observer floats. Unpinned, the scheduler moves the three around and the same run differs by tens
of percent; pinned, the target's core is the bottleneck, so throughput tracks the target's own
CPU per request, which is what an observer changes.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import psutil

HOST = "127.0.0.1"
WRK_THREADS, WRK_CONNS = 2, 8
REDIS_CLIENTS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Pinning:
    """Which CPUs (a taskset list) the target and the load generator run on; None: anywhere."""

    target: str | None = None
    load: str | None = None

    @staticmethod
    def default() -> "Pinning":
        n = os.cpu_count() or 1
        if n < 2 or not shutil.which("taskset"):
            return Pinning()
        half = n // 2
        return Pinning(target=",".join(map(str, range(half))) if half > 1 else "0",
                       load=",".join(map(str, range(half, n))) if n - half > 1 else str(half))

    def wrap(self, argv: list[str], which: str) -> list[str]:
        cpus = self.target if which == "target" else self.load
        return ["taskset", "-c", cpus, *argv] if cpus else list(argv)

    def describe(self) -> str:
        if not (self.target or self.load):
            return "not pinned: target, load generator and observer share every core"
        return (f"target on CPU {self.target}, load generator on CPU {self.load} (taskset); the observer's "
                f"processes are not pinned")


PIN = Pinning()          # set by bench.run before the targets start


def run_measured(cmd: list[str], timeout: float) -> tuple[int | None, str, float]:
    """Run a command to its end: (exit code or None on timeout, stdout, its CPU seconds from
    wait4, children included)."""
    import tempfile

    with tempfile.TemporaryFile() as out:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                p.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                p.kill()
                p.wait()
                return None, "", 0.0
            time.sleep(0.02)
        out.seek(0)
        return p.returncode, out.read().decode(errors="replace"), ru.ru_utime + ru.ru_stime


@dataclass
class LoadResult:
    ok: bool
    rps: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    elapsed_s: float = 0.0
    errors: int = 0
    note: str = ""
    cmd: list[str] = field(default_factory=list)
    load_cpu_s: float = 0.0          # the load generator's CPU (user + system) over the run


@dataclass
class Target:
    name: str            # short id used on the command line and in tables
    label: str           # table label
    kind: str            # "http" | "redis"
    argv: list[str]
    python: bool = True
    proc: subprocess.Popen | None = None
    port: int = 0
    cleanup_paths: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        if self.kind == "redis":
            self.port = free_port()
            argv = PIN.wrap(self.argv + ["--port", str(self.port)], "target")
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    socket.create_connection((HOST, self.port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            else:
                raise RuntimeError(f"{self.name}: redis-server did not listen on {self.port}")
        else:
            self.proc = subprocess.Popen(PIN.wrap(self.argv, "target"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True, start_new_session=True)
            line = self.proc.stdout.readline() if self.proc.stdout else ""
            if not line.startswith("listening on"):
                self.stop()
                raise RuntimeError(f"{self.name}: server did not start ({line!r})")
            self.port = int(line.rsplit(":", 1)[1])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def traced(self) -> bool:
        """True while some tracer is still attached to the target (it must never be)."""
        try:
            for t in os.listdir(f"/proc/{self.pid}/task"):
                with open(f"/proc/{self.pid}/task/{t}/status") as f:
                    for line in f:
                        if line.startswith("TracerPid:") and int(line.split()[1]) != 0:
                            return True
        except OSError:
            return False
        return False

    def cpu_s(self) -> float:
        try:
            t = psutil.Process(self.pid).cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        for p in self.cleanup_paths:
            try:
                os.unlink(p)
            except OSError:
                pass

    def load(self, duration_s: float, expected_rps: float | None = None) -> LoadResult:
        if self.kind == "redis":
            return redis_load(self.port, duration_s, expected_rps)
        return wrk_load(self.port, duration_s)


def make_targets(names: list[str]) -> list[Target]:
    py = sys.executable
    journal_dir = "/var/tmp"          # on disk (ext4/virtio here), never tmpfs: fsync must reach the device
    out = []
    for n in names:
        if n == "py-threaded":
            out.append(Target(n, "threaded Python HTTP (journal_server --fault none)", "http",
                              [py, "-m", "diag.examples.journal_server", "--fault", "none"]))
        elif n == "py-fsync":
            j = os.path.join(journal_dir, f"diag-bench-journal-{os.getpid()}.bin")
            out.append(Target(n, "Python HTTP + fsync per request (journal_server --fault fsync "
                                 "--compact-every 0, journal in /var/tmp)", "http",
                              [py, "-m", "diag.examples.journal_server", "--fault", "fsync", "--compact-every", "0",
                               "--journal", j], cleanup_paths=[j]))
        elif n == "asyncio":
            out.append(Target(n, "asyncio HTTP (asyncio_server --fault none)", "http",
                              [py, "-m", "diag.examples.asyncio_server", "--fault", "none"]))
        elif n == "redis":
            exe = shutil.which("redis-server") or "redis-server"
            out.append(Target(n, "redis-server (native; --save '' --appendonly no)", "redis",
                              [exe, "--save", "", "--appendonly", "no", "--bind", HOST, "--protected-mode", "yes"],
                              python=False))
        else:
            raise SystemExit(f"unknown target {n!r}: choose from py-threaded, py-fsync, asyncio, redis")
    return out


ALL_TARGETS = ("py-threaded", "py-fsync", "asyncio", "redis")

# ---------------------------------------------------------------------------------------------
# wrk

_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk_cmd(port: int, duration_s: float) -> list[str]:
    return ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNS}", f"-d{duration_s:g}s", "--latency", "--timeout", "5s",
            f"http://{HOST}:{port}/"]


def parse_wrk(text: str) -> LoadResult:
    m_rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    m_p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    m_n = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    if not (m_rps and m_p99 and m_n):
        return LoadResult(False, note="wrk output not understood: " + " ".join(text.split())[:200])
    errors = 0
    m_err = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m_err:
        errors += sum(int(x) for x in m_err.groups())
    m_non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m_non2xx:
        errors += int(m_non2xx.group(1))
    el = float(m_n.group(2)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m_n.group(3)]
    return LoadResult(True, rps=float(m_rps.group(1)), p99_ms=float(m_p99.group(1)) * _UNIT[m_p99.group(2)],
                      requests=int(m_n.group(1)), elapsed_s=el, errors=errors)


def wrk_load(port: int, duration_s: float) -> LoadResult:
    cmd = PIN.wrap(wrk_cmd(port, duration_s), "load")
    rc, text, cpu = run_measured(cmd, duration_s + 30)
    if rc is None:
        return LoadResult(False, note="wrk timed out", cmd=cmd)
    res = parse_wrk(text)
    res.cmd, res.load_cpu_s = cmd, cpu
    return res


# ---------------------------------------------------------------------------------------------
# redis-benchmark

def redis_cmd(port: int, n: int) -> list[str]:
    return ["redis-benchmark", "-h", HOST, "-p", str(port), "-c", str(REDIS_CLIENTS), "-t", "get", "-n", str(n),
            "--csv"]


def parse_redis_csv(text: str) -> tuple[float, float] | None:
    for line in text.splitlines():
        parts = [p.strip('"') for p in line.strip().split(",")]
        if len(parts) >= 7 and parts[0] == "GET":
            try:
                return float(parts[1]), float(parts[6])
            except ValueError:
                return None
    return None


def redis_load(port: int, duration_s: float, expected_rps: float | None) -> LoadResult:
    """GETs from 8 clients; the request count is the expected rate times the duration (bounded
    to [2k, 2M]), so every run lasts about `duration_s` whatever the tracer does to the rate."""
    n = int(max(2000, min(2_000_000, (expected_rps or 80_000) * duration_s)))
    cmd = PIN.wrap(redis_cmd(port, n), "load")
    t0 = time.monotonic()
    rc, text, cpu = run_measured(cmd, max(30.0, duration_s * 8))
    if rc is None:
        return LoadResult(False, note=f"redis-benchmark -n {n} timed out", cmd=cmd)
    el = time.monotonic() - t0
    parsed = parse_redis_csv(text)
    if parsed is None:
        return LoadResult(False, note="redis-benchmark output not understood: " + " ".join(text.split())[:200],
                          cmd=cmd)
    rps, p99 = parsed
    return LoadResult(True, rps=rps, p99_ms=p99, requests=n, elapsed_s=n / rps if rps else el, cmd=cmd,
                      load_cpu_s=cpu)
