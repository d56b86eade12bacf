"""Whole services: a pre-fork master and its workers, a recycled worker, a process in its own pid
namespace, the accept queue a client waits in (issue: whole services).

Real gunicorn (the test extras install it), real load on 127.0.0.1, `diag attach` as a user runs
it: to the master, by --port or --name.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from contextlib import contextmanager

import psutil
import pytest
from diag_run import ROOT, collectors_started_ns, diag, diag_popen, load_json
from servers import HttpLoad
from toolbox import free_port, listening, require_root, wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]

APP = textwrap.dedent('''
    import os, threading
    lock = threading.Lock()
    fd = os.open(os.environ["JOURNAL"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    REC = os.urandom(64 * 1024)

    def app(environ, start_response):
        with lock:                     # a journal append made durable on every request
            os.write(fd, REC)
            os.fsync(fd)
        body = b'{"ok": true}\\n'
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
''')


def gunicorn() -> str:
    exe = shutil.which("gunicorn") or os.path.join(os.path.dirname(sys.executable), "gunicorn")
    if not os.path.exists(exe):
        pytest.skip("gunicorn is not installed (pip install -e '.[test]' installs it)")
    return exe


@contextmanager
def gunicorn_server(tmp_path, *args: str):
    """A gunicorn master with workers serving APP on a free port; yields (master Popen, port)."""
    require_root()
    exe = gunicorn()
    (tmp_path / "app.py").write_text(APP)
    port = free_port()
    # the journal on the disk (tmp_path may be tmpfs, where fsync costs nothing)
    journal = f"/var/tmp/diag-services-{os.getpid()}-{port}.bin"
    p = subprocess.Popen([exe, "-b", f"127.0.0.1:{port}", "--log-level", "warning", *args, "app:app"],
                         cwd=tmp_path, env=dict(os.environ, JOURNAL=journal), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: p.poll() is not None or listening(port), "gunicorn listening", 60)
        assert p.poll() is None, p.stderr.read()
        yield p, port
    finally:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if os.path.exists(journal):
            os.unlink(journal)


def attach_under_load(tmp_path, port: int, *args: str, seconds: float = 4.0, rate: float = 160.0,
                      concurrency: int = 4) -> tuple[dict, dict]:
    """`diag attach ARGS` for `seconds` while HttpLoad runs (started once diag is ready); returns
    (report, manifest). Each client thread sends every concurrency/rate s (25 ms): far from the
    40 ms of a delayed ACK, which a gap between requests on a connection would mimic."""
    cap, rep = tmp_path / "c.diag", tmp_path / "r.json"
    d = diag_popen("attach", *args, "--duration", str(seconds), "--out", str(cap), "--json", str(rep), "--quiet")
    wait_until(lambda: d.poll() is not None or collectors_started_ns(cap), "collectors started", 120)
    with HttpLoad(port, rate=rate, concurrency=concurrency) as load:
        out, err = d.communicate(timeout=180)
    assert d.returncode == 0, err[-3000:]
    assert load.errors == 0 or len(load.sent_ns) > 50 * load.errors
    return load_json(rep), load_json(cap / "manifest.json")


@pytest.mark.parametrize("workers", [["-w", "3"], ["-w", "2", "--threads", "4", "-k", "gthread"]],
                         ids=["sync", "gthread"])
def test_attach_to_the_master_finds_the_workers_fsync(tmp_path, workers):
    # GIVEN gunicorn: a master and its workers, each request fsyncs a journal
    with gunicorn_server(tmp_path, *workers) as (master, port):
        # WHEN diag attaches to the process listening on the port (the master: the workers share
        # its listening socket)
        report, manifest = attach_under_load(tmp_path, port, "--port", str(port))
    # THEN the whole tree was watched: the master and every worker, with their roles
    procs = manifest["target"]["processes"]
    roles = {p["pid"]: p["role"] for p in procs}
    assert manifest["target"]["pid"] == master.pid and roles[master.pid] == "master", procs
    nworkers = int(workers[1])
    assert sum(1 for r in roles.values() if r == "worker") == nworkers, procs
    # and the fault is ranked first, named with the workers it was seen in
    top = report["findings"][0]
    assert top["id"] == "disk-sync" and top["severity"] in ("warning", "critical"), report["findings"]
    seen = [e["text"] for e in top["evidence"] if e["text"].startswith("seen in ")]
    # the slow requests (the 10 slowest) may miss a worker: 2 of 3 sync workers were seen, and with
    # gthread keep-alive connections stay on the worker that accepted them (10 of 10 on one of 2);
    # that every worker was followed is checked on the per-process view below
    assert seen and re.fullmatch(rf"seen in [1-{nworkers}] of {nworkers} workers serving requests \(pid [\d, ]+\)",
                                 seen[0]), seen
    served = {r["pid"] for r in report["requests"]["slowest"]}
    assert served <= {p for p, r in roles.items() if r == "worker"}
    # and the report's per-process view: the master serves none, the workers all of them
    per = {p["pid"]: p for p in report["requests"]["by_process"]}
    assert per[master.pid]["role"] == "master" and per[master.pid]["requests"] == 0, per
    assert all(per[p]["requests"] > 0 for p, r in roles.items() if r == "worker"), per


def test_a_worker_recycled_mid_capture_is_picked_up(tmp_path):
    # GIVEN workers that gunicorn replaces after 40 requests each
    with gunicorn_server(tmp_path, "-w", "2", "--max-requests", "40") as (master, port):
        report, manifest = attach_under_load(tmp_path, port, str(master.pid), rate=80, seconds=4.0)
    # THEN the capture went on through the recycling: workers that were born during it are
    # members, and served requests the probe saw
    procs = manifest["target"]["processes"]
    workers = [p for p in procs if p["role"] == "worker"]
    start = manifest["clock"]["collectors_started_monotonic_ns"]
    late = [p for p in workers if p["first_seen_ns"] > start]
    assert len(workers) > 2 and late, procs
    assert manifest["collectors"]["ebpf"]["status"] == "ok"
    from diag.load import load_capture

    data = load_capture(manifest_path_to_capture(tmp_path))
    pids = {r.pid for r in data.requests}
    assert pids & {p["pid"] for p in late}, (pids, late)
    assert report["requests"]["count"] >= 200


def manifest_path_to_capture(tmp_path) -> str:
    return str(tmp_path / "c.diag")


ACCEPT_LOOP = textwrap.dedent('''
    import socket, sys, time
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)                      # a tiny backlog
    print("listening on 127.0.0.1:%d" % srv.getsockname()[1], flush=True)
    while True:
        c, _ = srv.accept()            # one connection at a time, and housekeeping after each
        c.recv(4096)
        c.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 3\\r\\n\\r\\nok\\n")
        c.close()
        time.sleep(0.02)
''')


def test_serial_accept_loop_with_a_tiny_backlog_ranks_accept_backlog_by_time(tmp_path):
    require_root()
    srv = subprocess.Popen([sys.executable, "-c", ACCEPT_LOOP], stdout=subprocess.PIPE, text=True)
    try:
        port = int(srv.stdout.readline().rsplit(":", 1)[1])
        cap, rep = tmp_path / "c.diag", tmp_path / "r.json"
        d = diag_popen("attach", str(srv.pid), "--duration", "4", "--out", str(cap), "--json", str(rep), "--quiet")
        wait_until(lambda: d.poll() is not None or collectors_started_ns(cap), "collectors started", 120)
        # many connections at once: 32 clients, each a new connection per request
        with HttpLoad(port, rate=400, concurrency=32, timeout_s=10) as load:
            out, err = d.communicate(timeout=180)
        assert d.returncode == 0, err[-3000:]
    finally:
        srv.terminate()
        srv.wait(10)
    report = load_json(rep)
    # THEN the clients' wait in the queue was measured, and the finding ranks by that time
    aq = report["requests"]["accept_queue"]
    assert report["requests"]["latency_kind"] == "client-visible" and aq["connections"] > 0 and aq["max_ns"] > 0, aq
    top = report["findings"][0]
    assert top["id"] == "accept-backlog" and top["severity"] in ("warning", "critical") and top["impact_ns"] > 0, \
        report["findings"]
    assert any("accept queue" in e["text"] for e in top["evidence"]), top["evidence"]
    print(f"accept queue: {aq}; finding share {top['share']:.0%}; load errors {load.errors}")


def test_findings_without_time_rank_after_findings_with_time(tmp_path):
    # GIVEN the scenario suite's rule, on a server that closes every connection (TIME_WAIT piles up)
    require_root()
    srv = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "scenarios", "targets.py"), "time-wait",
                            "--dir", str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(srv.stdout.readline().rsplit(":", 1)[1])
        cap, rep = tmp_path / "c.diag", tmp_path / "r.json"
        d = diag_popen("attach", str(srv.pid), "--duration", "4", "--out", str(cap), "--json", str(rep), "--quiet")
        wait_until(lambda: d.poll() is not None or collectors_started_ns(cap), "collectors started", 120)
        with HttpLoad(port, rate=300, concurrency=4):
            out, err = d.communicate(timeout=180)
        assert d.returncode == 0, err[-3000:]
    finally:
        srv.terminate()
        srv.wait(10)
    findings = load_json(rep)["findings"]
    tw = [f for f in findings if f["id"] == "time-wait"]
    assert tw, findings
    # THEN TIME_WAIT is reported with the set-up time it explains (0 when none), and no finding
    # without time ranks above one with time, nor is more than info
    ranks = [(f["impact_ns"] > 0, f["severity"]) for f in findings]
    assert all(not (a[0] is False and b[0] is True) for a, b in zip(ranks, ranks[1:])), ranks
    assert all(sev == "info" for has_time, sev in ranks if not has_time), ranks
    print("time-wait:", tw[0]["summary"], tw[0]["impact_ns"])


def test_attach_by_name_is_refused_when_ambiguous(tmp_path):
    # GIVEN two unrelated processes with the same name
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "diag-twin-marker"])
             for _ in range(2)]
    try:
        r = diag("attach", "--name", "diag-twin-marker", "--duration", "1")
    finally:
        for p in procs:
            p.kill()
            p.wait()
    # THEN one line naming both candidates, exit 2
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert all(str(p.pid) in r.stderr for p in procs), r.stderr


PIDNS_SERVER = textwrap.dedent('''
    import os, sys, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        wbufsize = 65536               # headers and body in one write (no Nagle stall)
        def do_GET(self):
            os.write(fd, b"x" * 65536); os.fsync(fd)
            self.send_response(200); self.send_header("Content-Length", "3"); self.end_headers()
            self.wfile.write(b"ok\\n")
        def log_message(self, *a): pass
    s = ThreadingHTTPServer(("127.0.0.1", 0), H)
    print("listening on 127.0.0.1:%d pid %d" % (s.server_address[1], os.getpid()), flush=True)
    s.serve_forever()
''')


def test_a_process_in_its_own_pid_namespace(tmp_path):
    # GIVEN a server in a new pid namespace (as in a container: it is pid 1 there)
    require_root()
    unshare = shutil.which("unshare")
    if not unshare:
        pytest.skip("unshare (util-linux) is not installed")
    journal = f"/var/tmp/diag-pidns-{os.getpid()}.bin"
    srv = subprocess.Popen([unshare, "--fork", "--kill-child", "--pid", "--mount-proc", sys.executable, "-c", PIDNS_SERVER, journal],
                           stdout=subprocess.PIPE, text=True)
    try:
        line = srv.stdout.readline()
        if not line.startswith("listening"):
            pytest.skip(f"no pid namespace here: {line!r}")
        port, inner = int(line.split()[2].rsplit(":", 1)[1]), int(line.split()[4])
        # WHEN diag attaches by port, from the host
        report, manifest = attach_under_load(tmp_path, port, "--port", str(port), rate=80, concurrency=4)
    finally:
        # SIGKILL to the server itself: as pid 1 of its namespace it ignores every other signal,
        # and neither unshare's SIGKILL nor --kill-child's death signal reaches it
        try:
            for child in psutil.Process(srv.pid).children(recursive=True):
                child.kill()
        except psutil.Error:
            pass
        srv.kill()
        srv.wait(10)
        if os.path.exists(journal):
            os.unlink(journal)
    # THEN the process is found, shown with the pid its namespace gives it, and diagnosed
    members = manifest["target"]["processes"]
    server = [m for m in members if m.get("ns_pid") == inner]
    assert inner == 1 and server, members
    top = report["findings"][0]
    assert top["id"] == "disk-sync", report["findings"]
