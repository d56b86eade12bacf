"""A bounded HTTP load generator for loopback targets: fixed request count and time limit.

Keep-alive connections from a few threads; never more than `requests` requests, never longer
than `seconds`. Used by the demo and tests where wrk is not wanted (latency per request kept).
"""
from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    sent: int = 0
    errors: int = 0
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0


def drive(host: str, port: int, requests: int = 2000, seconds: float = 10.0, concurrency: int = 4,
          path: str = "/", rate: float | None = None, stop: threading.Event | None = None) -> LoadResult:
    """Send at most `requests` GETs within `seconds`, optionally paced to `rate` req/s in all, and
    stop early once `stop` is set."""
    assert host.startswith("127.") or host in ("localhost", "::1"), "load goes to loopback only"
    res = LoadResult()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    t0 = time.monotonic()
    interval = concurrency / rate if rate else 0.0

    def worker() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        nxt = time.monotonic()
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            with lock:
                if res.sent >= requests:
                    break
                res.sent += 1
            if interval:
                nxt += interval
                delay = nxt - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            s = time.monotonic()
            try:
                conn.request("GET", path)
                conn.getresponse().read()
                with lock:
                    res.latencies_s.append(time.monotonic() - s)
            except (OSError, http.client.HTTPException):
                with lock:
                    res.errors += 1
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 10)
    res.elapsed_s = time.monotonic() - t0
    return res
