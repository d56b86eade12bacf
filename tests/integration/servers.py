"""Real servers on 127.0.0.1 for the integration tests (the bundled examples, redis) and a paced
HTTP load that outlasts whatever it brackets."""
from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager

import pytest
from diag_run import ROOT
from toolbox import free_port, require_tool, wait_until


@contextmanager
def example_server(module: str, *args: str, cwd: str | None = None):
    """Start `python -m diag.examples.MODULE ARGS` and yield (Popen, port); always stopped."""
    p = subprocess.Popen([sys.executable, "-m", f"diag.examples.{module}", *args], stdout=subprocess.PIPE,
                         text=True, cwd=cwd or ROOT)
    try:
        line = p.stdout.readline()
        assert line.startswith("listening on"), f"server did not start: {line!r}"
        yield p, int(line.rsplit(":", 1)[1])
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def _redis_answers(port: int) -> bool:
    """Whether a redis server on `port` answers PING with +PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), 2) as c:
            c.settimeout(5)
            c.sendall(b"PING\r\n")
            return c.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server(ready_timeout_s: float = 60.0):
    """Start redis-server on a free loopback port and yield (Popen, port) once it answers PING;
    fails (with redis' own output) when it never does, skips when redis-server is not installed."""
    exe = require_tool("redis-server")
    log = tempfile.TemporaryFile()
    p = None
    try:
        for attempt in range(3):        # the free port may be taken between probe and bind: retry
            port = free_port()
            log.seek(0)
            log.truncate()
            p = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                  "no", "--daemonize", "no", "--logfile", ""], stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + ready_timeout_s
            while p.poll() is None and time.monotonic() < deadline and not _redis_answers(port):
                time.sleep(0.05)
            if p.poll() is None and _redis_answers(port):
                break
            if p.poll() is None:
                p.kill()
                p.wait(10)
                pytest.fail(f"redis-server did not answer PING on port {port} within {ready_timeout_s:.0f} s")
            p.wait(10)
        else:
            log.seek(0)
            pytest.fail(f"redis-server exited at start (exit {p.returncode}): "
                        f"{log.read().decode(errors='replace')[-2000:]}")
        yield p, port
    finally:
        log.close()
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def http_ok(port: int) -> bool:
    import http.client
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/")
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except OSError:
        return False


class HttpLoad:
    """Paced GETs to 127.0.0.1:`port` on keep-alive connections from `concurrency` threads, from
    start until stop(): a load that outlasts whatever it brackets, whatever the machine's speed.
    Records the CLOCK_MONOTONIC send time of every answered request, so a test can wait for
    "N requests sent after X were answered" instead of sleeping.

        with HttpLoad(port, rate=150) as load:
            ...
            load.wait_answered_since(t_ns, 100)
    """

    def __init__(self, port: int, rate: float = 150.0, concurrency: int = 4, path: str = "/",
                 timeout_s: float = 30.0) -> None:
        self.port, self.rate, self.concurrency, self.path, self.timeout_s = port, rate, concurrency, path, timeout_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.sent_ns: list[int] = []          # send time of each answered request
        self.errors = 0
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> "HttpLoad":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(self.concurrency)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s + 10)

    def _worker(self) -> None:
        import http.client
        interval = self.concurrency / self.rate
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout_s)
        nxt = time.monotonic()
        while not self._stop.is_set():
            nxt += interval
            delay = nxt - time.monotonic()
            if delay > 0:
                if self._stop.wait(delay):
                    break
            else:
                nxt = time.monotonic()        # late (a loaded machine): go on at the rate, no burst
            sent = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout_s)
            with self._lock:
                if ok:
                    self.sent_ns.append(sent)
                else:
                    self.errors += 1
        conn.close()

    def answered_since(self, t_ns: int) -> int:
        """Requests sent at or after CLOCK_MONOTONIC `t_ns` and answered (200) so far."""
        with self._lock:
            return sum(1 for s in self.sent_ns if s >= t_ns)

    def wait_answered_since(self, t_ns: int, n: int, timeout_s: float = 300.0) -> int:
        """Wait until `n` requests sent at or after `t_ns` were answered; returns how many were."""
        return wait_until(lambda: self.answered_since(t_ns) >= n and self.answered_since(t_ns),
                          lambda: (f"{n} requests sent after the mark answered (got {self.answered_since(t_ns)}, "
                                   f"{self.errors} errors)"), timeout_s)
