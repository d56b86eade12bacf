"""Small real servers, each with one injected latency fault from the finding taxonomy.

    python3 targets.py FAULT [--port 0] [--upstream PORT] [--dir DIR]

Prints `listening on 127.0.0.1:PORT` once ready. Every server answers `GET /` on 127.0.0.1 with a
small JSON body; the fault is the only thing wrong with it:

- healthy       threaded HTTP/1.1 keep-alive, buffered I/O: the control
- disk-sync     appends 64 KB and fsyncs the journal and its directory on every request (under a
                lock, as a journal that creates or renames segments does)
- file-io       reads a 4 MB file whose page cache was dropped, on every request
- small-reads   unbuffered request reading: the request line and headers arrive 1 byte per read
- small-writes  unbuffered response writing: headers and body in separate small writes (Nagle)
- cpu-bound     ~15 ms of pure-Python work per request
- cpu-threads   ~8 ms of pure-Python work per request, many concurrent threads (they queue on the
                GIL behind each other's request code: the handler is what to fix)
- gil-background cheap handlers, and a background thread spinning in pure Python (it holds the GIL)
- gc-pause      a large cyclic object graph; each request builds a tree of 3000 nodes kept for a
                while: full (gen-2) collections of ~600k objects every second or so, ~200 ms each
- lock-contention a global lock held across ~6 ms of CPU work
- lock-sleep    a global lock held across time.sleep(10 ms)
- explicit-sleep time.sleep(20 ms) in the handler
- slow-upstream  each request calls an upstream HTTP server that takes 20 ms (--upstream PORT)
- upstream      the slow upstream itself (used by slow-upstream)
- time-wait     HTTP/1.0: the server closes every connection after its response
- accept-backlog single-threaded, listen backlog 1, 40 ms of housekeeping after each connection
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer

BODY = json.dumps({"ok": True}).encode() + b"\n"


def spin(seconds: float) -> int:
    """Pure-Python CPU work (holds the GIL): `seconds` of this thread's CPU time, whatever else
    the machine runs."""
    end = time.thread_time() + seconds
    x = 0
    while time.thread_time() < end:
        for i in range(200):
            x += i * i
    return x


class Node:
    """A node of the gc-pause server's trees: parent and children refer to each other (cycles the
    collector must traverse)."""

    __slots__ = ("parent", "kids")

    def __init__(self, parent=None) -> None:
        self.parent = parent
        self.kids = []


def tree(n: int) -> Node:
    root = cur = Node()
    for i in range(n):
        k = Node(cur)
        cur.kids.append(k)
        if i % 8 == 7:
            cur = k
    return root


def spin_forever() -> None:
    """A background thread that never sleeps: pure Python, holding the GIL but for hand-offs."""
    x = 0
    while True:
        for i in range(1000):
            x += i * i


def make_handler(fault: str, args) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()
    recent: list = []
    if fault == "gc-pause":
        recent.append([tree(1000) for _ in range(600)])     # the long-lived graph: ~600k nodes
    if fault == "gil-background":
        threading.Thread(target=spin_forever, name="spinner", daemon=True).start()
    journal = open(os.path.join(args.dir, "journal.bin"), "wb") if fault == "disk-sync" else None
    # the directory's fsync too: on this VM's fast disk the file's alone (~0.4 ms) was no longer
    # than the holder's own work under the lock, and the fault ranked at info in 2 of 6 runs
    journal_dir = os.open(args.dir, os.O_RDONLY | os.O_DIRECTORY) if fault == "disk-sync" else None
    record = os.urandom(64 * 1024)
    big_path = os.path.join(args.dir, "big.bin")
    if fault == "file-io":
        with open(big_path, "wb") as f:
            f.write(os.urandom(4 * 1024 * 1024))
            f.flush()
            os.fsync(f.fileno())

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0" if fault in ("time-wait", "accept-backlog") else "HTTP/1.1"
        rbufsize = 0 if fault == "small-reads" else -1
        wbufsize = 0 if fault == "small-writes" else 64 * 1024

        def do_GET(self) -> None:
            if fault == "disk-sync":
                with lock:
                    journal.write(record)
                    journal.flush()
                    os.fsync(journal.fileno())
                    os.fsync(journal_dir)
            elif fault == "file-io":
                fd = os.open(big_path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    while os.read(fd, 1 << 20):
                        pass
                finally:
                    os.close(fd)
            elif fault == "cpu-bound":
                spin(0.015)
            elif fault == "cpu-threads":
                spin(0.008)
            elif fault == "lock-contention":
                with lock:
                    spin(0.006)
            elif fault == "lock-sleep":
                with lock:
                    time.sleep(0.01)
            elif fault == "gc-pause":
                recent.append(tree(3000))        # kept for the next 20 requests: promoted, then garbage
                del recent[1:-20]
            elif fault == "explicit-sleep":
                time.sleep(0.02)
            elif fault == "slow-upstream":
                c = http.client.HTTPConnection("127.0.0.1", args.upstream, timeout=5)
                c.request("GET", "/")
                c.getresponse().read()
                c.close()
            elif fault == "upstream":
                time.sleep(0.02)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if fault != "time-wait":        # without a length the client reads to EOF: the server
                self.send_header("Content-Length", str(len(BODY)))   # always closes first
            self.end_headers()
            self.wfile.write(BODY)

        def log_message(self, *a) -> None:
            pass

    return Handler


class BacklogServer(HTTPServer):
    """One thread, a listen backlog of 1, and housekeeping between connections: the accept queue
    overflows under concurrent connection attempts while each request itself is fast."""

    request_queue_size = 1

    def shutdown_request(self, request) -> None:
        super().shutdown_request(request)
        time.sleep(0.04)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("fault")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--upstream", type=int, default=0)
    ap.add_argument("--dir", default="/var/tmp")
    a = ap.parse_args()
    handler = make_handler(a.fault, a)
    if a.fault == "accept-backlog":
        srv = BacklogServer(("127.0.0.1", a.port), handler)
    else:
        srv = ThreadingHTTPServer(("127.0.0.1", a.port), handler)
        srv.daemon_threads = True
    srv.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    print(f"listening on 127.0.0.1:{srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
