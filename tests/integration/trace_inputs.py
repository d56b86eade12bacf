"""Traces taken as a user takes them by hand, for the replay-inputs tests: strace, py-spy and perf
with their usual flags, run on a real server under real load, stopped as a user stops them.

Every function waits for states (requests answered since the tool started), never for a time,
except where the tool itself takes a duration (a Go CPU profile's `seconds=`).
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
from diag_run import ROOT
from servers import HttpLoad
from toolbox import require_tool, wait_until

TARGETS = os.path.join(ROOT, "tests", "scenarios", "targets.py")
GOSERVER = os.path.join(ROOT, "tests", "integration", "goserver", "main.go")


@contextmanager
def target(fault: str, workdir) -> tuple[subprocess.Popen, int]:
    """A scenario server (tests/scenarios/targets.py FAULT) on 127.0.0.1; always stopped."""
    p = subprocess.Popen([sys.executable, TARGETS, fault, "--port", "0", "--dir", str(workdir)],
                         stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = p.stdout.readline()
        assert line.startswith("listening on"), f"target {fault} did not start: {line!r}"
        yield p, int(line.rsplit(":", 1)[1])
    finally:
        _stop(p)


def _stop(p: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def _interrupt(p: subprocess.Popen, what: str) -> None:
    """Ctrl-C, as a user ends strace / py-spy / perf; they write their output and exit."""
    p.send_signal(signal.SIGINT)
    try:
        p.wait(60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)
        pytest.fail(f"{what} did not exit after SIGINT")


def wait_file(path, what: str) -> None:
    wait_until(lambda: os.path.exists(path) and os.path.getsize(path) > 0, f"{what} wrote {path}", 60)


def pyspy_path() -> str:
    return require_tool("py-spy")


def trace_by_hand(fault: str, workdir, strace_flags: list[str] | None = None, pyspy_flags: list[str] | None = None,
                  perf: str | None = None, requests: int = 150, rate: float = 46.0,
                  concurrency: int = 4) -> dict:
    """Run the FAULT server under keep-alive load; once its connections are open, start the tools
    asked for (strace -p with `strace_flags`, py-spy record -p with `pyspy_flags`, perf record -a
    with `perf` = "-g" or ""), wait until `requests` more requests were answered, stop them with
    Ctrl-C. Returns {tool: output path} and the server's pid."""
    out: dict = {}
    with target(fault, workdir) as (srv, port), HttpLoad(port, rate=rate, concurrency=concurrency) as load:
        t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        load.wait_answered_since(t0, 2 * concurrency)          # connections open before the tools
        procs = []
        if pyspy_flags is not None:
            path = pyspy_out = os.path.join(workdir, "app.pyspy" + (".json" if "raw" not in pyspy_flags else ".txt"))
            p = subprocess.Popen([pyspy_path(), "record", "--nonblocking", *pyspy_flags, "-o", path, "-p",
                                  str(srv.pid)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            # py-spy writes its file at the end: wait for its "Sampling process" announcement instead
            said = []
            for _ in range(50):
                line = p.stdout.readline()
                said.append(line)
                if not line or "Sampling process" in line:
                    break
            assert "Sampling process" in said[-1], f"py-spy did not start sampling: {''.join(said)[-500:]}"
            procs.append(("py-spy", p, None))
        if strace_flags is not None:
            strace = require_tool("strace")
            ff = "-ff" in strace_flags
            path = os.path.join(workdir, "app.strace")
            p = subprocess.Popen([strace, *strace_flags, "-o", path, "-p", str(srv.pid)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(("strace", p, path + "." + str(srv.pid) if ff else path))
        if perf is not None:
            perf_bin = require_tool("perf")
            data = os.path.join(workdir, "perf.data")
            p = subprocess.Popen([perf_bin, "record", "-a", *perf.split(), "-o", data],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(("perf", p, data))
        for name, p, path in procs:
            if path is not None:
                wait_file(path, name)
        t1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        load.wait_answered_since(t1, requests)
        for name, p, path in procs:
            _interrupt(p, name)
        out["pid"] = srv.pid
    for name, p, path in procs:
        if name == "py-spy":
            path = pyspy_out
            if p.returncode != 0 or not os.path.exists(path) or not os.path.getsize(path):
                pytest.fail(f"py-spy failed (exit {p.returncode}): {p.stdout.read()[-500:]}")
        out[name] = path
    if "perf" in out:
        txt = os.path.join(workdir, "app.perf.txt")
        fields = os.environ.get("DIAG_TEST_PERF_FIELDS")
        with open(txt, "w") as f:
            r = subprocess.run([shutil.which("perf"), "script", "-i", out["perf"]] + (["-F", fields] if fields else []),
                               stdout=f, stderr=subprocess.DEVNULL)
        assert r.returncode == 0
        out["perf"] = txt
    return out


def go_build(workdir) -> str:
    """Build tests/integration/goserver into `workdir` (never committed), or skip saying why."""
    go = shutil.which("go")
    if not go:
        pytest.skip("go is not installed (`make setup` installs golang-go as root)")
    exe = os.path.join(workdir, "goserver")
    env = dict(os.environ, GOCACHE=os.path.join(workdir, "gocache"), GOPATH=os.path.join(workdir, "gopath"),
               HOME=str(workdir), GO111MODULE="off", CGO_ENABLED="0")
    r = subprocess.run([go, "build", "-o", exe, GOSERVER], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return exe


@contextmanager
def go_server(exe: str, fault: str, workdir, wrap: list[str] | None = None):
    """The Go test server (optionally under `wrap`, e.g. perf trace -o FILE --); yields its port."""
    log = os.path.join(workdir, f"go-{fault}.out")
    with open(log, "w") as out:
        p = subprocess.Popen([*(wrap or []), exe, "-fault", fault, "-dir", str(workdir)], stdout=out,
                             stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: "listening on" in open(log).read() or p.poll() is not None, "the Go server listening", 60)
        line = open(log).read()
        assert "listening on" in line, f"go server did not start (exit {p.poll()})"
        yield p, int(line.split("listening on", 1)[1].split(":")[1].split()[0])
    finally:
        if wrap:
            # perf trace -- CMD: stop the server, perf trace then writes its output and exits
            for kid in _children(p.pid):
                os.kill(kid, signal.SIGINT)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                _stop(p, signal.SIGINT)
        else:
            _stop(p)


def _children(pid: int) -> list[int]:
    import psutil
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def fetch(port: int, path: str, to: str, timeout: float = 120.0) -> str:
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r, open(to, "wb") as f:
        f.write(r.read())
    return to


# ---- mutations: what a hand-made trace can look like after a bad copy, an editor, a crash -----------

def mutations(path: str, outdir, seed: int = 14, keep_lines: int = 4000) -> list[str]:
    """Variants of a trace file: cut mid-line, lines dropped, lines duplicated, lines swapped, bytes
    garbled, a binary chunk, an empty file, only the first line. At most `keep_lines` lines of the
    original are used, so a variant replays in a second."""
    rng = random.Random(seed)
    with open(path, "rb") as f:
        raw = f.read()
    if not raw:
        return []
    binary = raw[:2] == b"\x1f\x8b"
    base = os.path.basename(path)
    out = []

    def put(tag: str, data: bytes) -> None:
        p = os.path.join(outdir, f"{tag}-{base}")
        with open(p, "wb") as f:
            f.write(data)
        out.append(p)

    if binary:
        put("cut", raw[: len(raw) // 2])
        b = bytearray(raw)
        for _ in range(8):
            b[rng.randrange(len(b))] = rng.randrange(256)
        put("garbled", bytes(b))
        put("empty", b"")
        put("tail", raw[len(raw) // 3:])
        return out
    lines = raw.splitlines(keepends=True)[:keep_lines]
    text = b"".join(lines)
    put("cut", text[: rng.randrange(1, max(2, len(text)))])
    put("dropped", b"".join(ln for ln in lines if rng.random() > 0.2))
    put("duplicated", b"".join(ln * (2 if rng.random() < 0.2 else 1) for ln in lines))
    sw = lines[:]
    for _ in range(max(1, len(sw) // 10)):
        i, j = rng.randrange(len(sw)), rng.randrange(len(sw))
        sw[i], sw[j] = sw[j], sw[i]
    put("swapped", b"".join(sw))
    g = bytearray(text or b"\n")
    for _ in range(max(1, len(g) // 200)):
        g[rng.randrange(len(g))] = rng.choice(b"()<>=,\"\\ 0123456789x\n\x00\xff")
    put("garbled", bytes(g))
    put("binary", text[: len(text) // 2] + bytes(rng.randrange(256) for _ in range(512)) + text[len(text) // 2:])
    put("empty", b"")
    put("firstline", lines[0] if lines else b"")
    return out
