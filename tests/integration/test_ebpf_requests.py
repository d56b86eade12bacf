"""The eBPF probe's in-kernel request summarizer, loaded for real on live HTTP servers.

Real threaded servers on 127.0.0.1 under a bounded keep-alive load from a real client: the agent
must emit one record per request the client made, with the bytes the client sent and got, a
latency inside the client's, and the handler's time in the right syscall family.
"""
from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import defaultdict

import pytest

from diag.capture.bundle import CaptureWriter
from diag.collect.base import Target
from diag.collect.ebpf import EbpfCollector
from diag.examples.load import drive
from diag.model import Request, SyscallEvent
from diag.resources import package_root
from ebpf_helpers import EBPF_MARKS, WORKDIR, start_agent, stop_agent

pytestmark = [pytest.mark.slow, *EBPF_MARKS]


# --- helpers ------------------------------------------------------------------------------------

def start_server(argv: list[str]) -> tuple[subprocess.Popen, int]:
    """A server process that prints 'listening on 127.0.0.1:PORT' when ready."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(package_root())))
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        pytest.fail(f"server did not start: {line!r} {proc.stderr.read()}")
    return proc, int(line.rsplit(":", 1)[1])


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def exchange_sizes(port: int) -> tuple[int, int]:
    """Bytes of one GET as diag.examples.load sends it (http.client) and of the server's answer."""
    class Recording(http.client.HTTPConnection):
        sent = b""

        def send(self, data):
            self.sent += data

    c = Recording("127.0.0.1", port)
    c.connect = lambda: None
    c.request("GET", "/")
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(c.sent)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head, body = buf.split(b"\r\n\r\n", 1)
        length = next(int(h.split(b":", 1)[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
        while len(body) < length:
            body += s.recv(65536)
    return len(c.sent), len(head) + 4 + length


def pct(xs: list, q: float):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def requests_of(recs) -> list[Request]:
    return sorted((r for r in recs if isinstance(r, Request)), key=lambda r: r.start_ns)


def check_connections(reqs: list[Request]) -> None:
    """Per connection: seq 0, 1, 2... in time order, requests never overlap."""
    by_conn = defaultdict(list)
    for r in reqs:
        by_conn[(r.pid, r.fd, r.conn_start_ns)].append(r)
    for conn, rs in by_conn.items():
        assert [r.seq for r in rs] == list(range(len(rs))), conn
        for a, b in zip(rs, rs[1:]):
            assert a.end_ns <= b.start_ns, (a, b)


def check_inside(r: Request) -> None:
    assert r.start_ns <= r.first_write_ns <= r.end_ns
    if r.conn_start_ns is not None:
        assert r.conn_start_ns <= r.start_ns
    # one thread read and wrote: the time it spent in syscalls lies inside the request. Known
    # overshoot, not yet explained: once in ~2 CI runs the family sums of a request that waited
    # for a CPU exceeded its latency by 0.67 ms (53.4 ms request: upstream 50.3 ms, runq 2.9 ms;
    # README, Known limits); a double count of a whole call would exceed it by far more
    assert sum(v for _, v in r.family_ns) <= r.latency_ns + 1_000_000, r


# --- tests --------------------------------------------------------------------------------------

N = 300


def test_threaded_server_one_record_per_request(tmp_path):
    srv, port = start_server([sys.executable, "-m", "diag.examples.journal_server", "--fault", "none",
                              "--port", "0"])
    try:
        req_size, resp_size = exchange_sizes(port)
        out = tmp_path / "ebpf.jsonl"
        agent = start_agent(srv.pid, out)
        load = drive("127.0.0.1", port, requests=N, seconds=60, concurrency=4)
        time.sleep(0.2)                          # the server reads the clients' EOFs
        lines, recs, ctx, _ = stop_agent(agent, out)
    finally:
        stop_server(srv)
    assert load.sent == N and load.errors == 0 and len(load.latencies_s) == N
    header, lost, end = lines[0], lines[-2], lines[-1]
    assert header["requests"] is True
    assert lost["lost_requests"] == 0 and lost["conn_map_errors"] == 0 and lost["count"] == 0
    reqs = requests_of(recs)
    print(f"client: {N} requests; agent: {len(reqs)} records, inflight {end['inflight']}, "
          f"at stop {end['requests_at_stop']}, abandoned {end['abandoned']}; "
          f"request {req_size} B, response {resp_size} B")
    assert len(reqs) + end["inflight"] == N and end["inflight"] == 0
    assert end["requests"] == len(reqs) == end["requests_emitted"] + end["requests_at_stop"]
    assert all((r.bytes_in, r.bytes_out) == (req_size, resp_size) for r in reqs), \
        {(r.bytes_in, r.bytes_out) for r in reqs}
    assert all(r.reads == 1 and r.writes == 1 and r.write_tid is None and r.source == "ebpf" for r in reqs)
    assert len({r.conn_start_ns for r in reqs}) == 4 and None not in {r.conn_start_ns for r in reqs}
    check_connections(reqs)
    for r in reqs:
        check_inside(r)
        assert dict(r.family_ns).get("socket", 0) > 0          # the response write
    # each server latency lies inside its client's: the sorted distributions are ordered pointwise
    server = sorted(r.latency_ns for r in reqs)
    client = sorted(int(s * 1e9) for s in load.latencies_s)
    print("latency µs p50/p90/max: server %.0f/%.0f/%.0f client %.0f/%.0f/%.0f" % (
        pct(server, .5) / 1e3, pct(server, .9) / 1e3, server[-1] / 1e3,
        pct(client, .5) / 1e3, pct(client, .9) / 1e3, client[-1] / 1e3))
    assert all(s <= c for s, c in zip(server, client))
    # accept is emitted whatever its duration (threshold 0 for connection events)
    accepts = [e for e in recs if isinstance(e, SyscallEvent) and e.name in ("accept", "accept4") and e.ret >= 0]
    assert len(accepts) == 4
    assert {e.ret for e in accepts} == {r.fd for r in reqs}
    assert not [w for w in ctx.warnings if "lost" in w]


def test_fsync_time_shows_in_the_sync_family(tmp_path):
    journal = f"{WORKDIR}/diag-req-test-{os.getpid()}.bin"
    srv, port = start_server([sys.executable, "-m", "diag.examples.journal_server", "--fault", "fsync",
                              "--journal", journal, "--compact-every", "25", "--port", "0"])
    n = 100
    try:
        out = tmp_path / "ebpf.jsonl"
        agent = start_agent(srv.pid, out)
        load = drive("127.0.0.1", port, requests=n, seconds=120, concurrency=4)
        time.sleep(0.2)
        lines, recs, _, _ = stop_agent(agent, out)
    finally:
        stop_server(srv)
    assert load.errors == 0 and len(load.latencies_s) == n
    reqs = requests_of(recs)
    assert len(reqs) + lines[-1]["inflight"] == n
    fam = [dict(r.family_ns) for r in reqs]
    assert all(f.get("sync", 0) > 0 for f in fam), fam
    for r in reqs:
        check_inside(r)
    # every fsync of the target happened on a request path: the requests account for all of them
    fsync_total = sum(e["total_ns"] for e in lines if e.get("type") == "aggregate" and e["name"] == "fsync")
    sync_total = sum(f["sync"] for f in fam)
    share = [f["sync"] / r.latency_ns for f, r in zip(fam, reqs)]
    print("fsync: aggregate %.1f ms, in requests %.1f ms; sync share of latency median %.2f; "
          "futex (journal lock) in %d requests, total %.1f ms; p50 latency %.2f ms" % (
              fsync_total / 1e6, sync_total / 1e6, pct(share, .5), sum(1 for f in fam if f.get("futex")),
              sum(f.get("futex", 0) for f in fam) / 1e6, pct([r.latency_ns for r in reqs], .5) / 1e6))
    assert sync_total == fsync_total
    assert sorted(r.latency_ns for r in reqs)[n // 2] <= sorted(load.latencies_s)[n // 2] * 1e9


# The upstream's delay: large against what a busy machine adds to a request (runq, GIL waits),
# so the margins below come from the signal, not from a quiet machine.
UPSTREAM_DELAY_MS = 50
UPSTREAM = """
import socket, sys, threading, time
# speaks first (a greeting, like SMTP or MySQL), then answers each query after DELAY_MS
lst = socket.socket(); lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(("127.0.0.1", 0)); lst.listen(64)
print(f"listening on 127.0.0.1:{lst.getsockname()[1]}", flush=True)
def serve(c):
    with c:
        c.sendall(b"HELLO\\n")
        f = c.makefile("rb")
        for line in f:
            time.sleep(%d / 1000)
            c.sendall(b"ANSWER " + line)
while True:
    c, _ = lst.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
""" % UPSTREAM_DELAY_MS

FRONT = """
import socket, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
UP = ("127.0.0.1", int(sys.argv[1]))
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 65536
    def do_GET(self):
        with socket.create_connection(UP) as s:       # a new outbound connection per request
            f = s.makefile("rb")
            assert f.readline() == b"HELLO\\n"         # the target reads first on it
            s.sendall(b"Q\\n")
            body = f.readline()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
srv.daemon_threads = True
print(f"listening on 127.0.0.1:{srv.server_address[1]}", flush=True)
try:
    srv.serve_forever()
except KeyboardInterrupt:
    pass
"""


def test_upstream_time_and_outbound_sockets_open_no_requests(tmp_path):
    up, up_port = start_server([sys.executable, "-c", textwrap.dedent(UPSTREAM)])
    front, port = start_server([sys.executable, "-c", textwrap.dedent(FRONT), str(up_port)])
    n = 60
    try:
        out = tmp_path / "ebpf.jsonl"
        agent = start_agent(front.pid, out)
        load = drive("127.0.0.1", port, requests=n, seconds=60, concurrency=2)
        time.sleep(0.2)
        lines, recs, _, _ = stop_agent(agent, out)
    finally:
        stop_server(front)
        stop_server(up)
    assert load.errors == 0 and len(load.latencies_s) == n
    reqs = requests_of(recs)
    # only the client's requests: the outbound connections (read first, after connect) open none
    assert len(reqs) + lines[-1]["inflight"] == n and lines[-1]["inflight"] == 0
    assert len({r.fd for r in reqs}) <= 2
    upstream = [dict(r.family_ns).get("upstream", 0) for r in reqs]
    runq = [dict(r.family_ns).get("runq", 0) for r in reqs]
    futex = [dict(r.family_ns).get("futex", 0) for r in reqs]
    for r in reqs:
        check_inside(r)
    delay = UPSTREAM_DELAY_MS * 1_000_000
    share = sum(upstream) / sum(r.latency_ns - q for r, q in zip(reqs, runq))
    print("upstream per request: min %.2f ms median %.2f ms; latency median %.2f ms; runq median %.2f ms; "
          "upstream share of the time on a CPU or in a syscall %.2f" % (
              min(upstream) / 1e6, pct(upstream, .5) / 1e6, pct([r.latency_ns for r in reqs], .5) / 1e6,
              pct(runq, .5) / 1e6, share))
    # The upstream answers DELAY after it has read the query. The target waits for it in the
    # upstream family, except for what a busy machine takes out of that window: waiting for a
    # CPU (runq: the answer may arrive while the thread waits for one) or for the GIL after its
    # send (futex). What is left uncovered is a few µs of Python between send and recv: the
    # margin (a fifth of the delay) is there for it, not for the noise.
    assert all(u + q + f >= delay * 4 // 5 for u, q, f in zip(upstream, runq, futex)), \
        sorted(zip(upstream, runq, futex))[:5]
    assert pct(upstream, .5) >= delay // 2
    # the time the request did not spend waiting for a CPU is mostly the upstream's
    assert share > 0.5
    # connect is emitted for every call (threshold 0): one per request
    connects = [e for e in recs if isinstance(e, SyscallEvent) and e.name == "connect"]
    assert len(connects) == n


def test_connection_older_than_the_attach(tmp_path):
    """A keep-alive connection opened before the attach: the agent learns from /proc/PID/net/tcp
    that the target accepted it, so it is server-side although the first call the probe sees on it
    is a write (the exit of the read pending at the attach is not traced: that request is lost)."""
    srv, port = start_server([sys.executable, "-m", "diag.examples.journal_server", "--fault", "none",
                              "--port", "0"])
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/")
        conn.getresponse().read()
        out = tmp_path / "ebpf.jsonl"
        agent = start_agent(srv.pid, out)
        for _ in range(50):
            conn.request("GET", "/")
            conn.getresponse().read()
        time.sleep(0.2)
        lines, recs, _, _ = stop_agent(agent, out)        # the connection is still open: drained at stop
        conn.close()
    finally:
        stop_server(srv)
    reqs = requests_of(recs)
    # the handler thread was blocked in recv when the probe attached: its first request is missed
    assert 49 <= len(reqs) <= 50, len(reqs)
    assert lines[-1]["requests_at_stop"] == 1
    assert all((r.reads, r.writes) == (1, 1) for r in reqs)
    assert all(r.conn_start_ns is None for r in reqs)
    check_connections(reqs)


def test_no_requests_flag(tmp_path):
    srv, port = start_server([sys.executable, "-m", "diag.examples.journal_server", "--fault", "none",
                              "--port", "0"])
    try:
        out = tmp_path / "ebpf.jsonl"
        agent = start_agent(srv.pid, out, "--no-requests")
        load = drive("127.0.0.1", port, requests=50, seconds=30, concurrency=2)
        lines, recs, _, _ = stop_agent(agent, out)
    finally:
        stop_server(srv)
    assert load.errors == 0
    assert lines[0]["requests"] is False
    assert not [r for r in recs if isinstance(r, Request)]
    assert "requests" not in lines[-1] and "lost_requests" not in lines[-2]
    # without the summarizer, fast accepts are not emitted (only calls slower than --slow-ns)
    assert all(e.dur_ns >= 1_000_000 for e in recs if isinstance(e, SyscallEvent))


def test_collector_reports_requests(tmp_path):
    srv, port = start_server([sys.executable, "-m", "diag.examples.journal_server", "--fault", "none",
                              "--port", "0"])
    try:
        writer = CaptureWriter(tmp_path / "cap.diag", target={"pid": srv.pid}, mode="attach")
        c = EbpfCollector()
        c.start(Target(pid=srv.pid), writer)
        assert writer.manifest["collectors"]["ebpf"]["settings"]["requests"] is True
        load = drive("127.0.0.1", port, requests=40, seconds=30, concurrency=2)
        time.sleep(0.2)
        c.stop()
    finally:
        stop_server(srv)
    entry = writer.manifest["collectors"]["ebpf"]
    assert load.errors == 0
    assert entry["status"] == "ok" and entry["requests"] == 40 and entry["lost_requests"] == 0
    assert entry["inflight"] == 0
