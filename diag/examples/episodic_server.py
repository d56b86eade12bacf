"""A threaded HTTP server whose fault comes and goes: fsync under a lock while it is switched on.

For `diag watch`: a server that is fine, then slow for a while, then fine again, as production
servers are. SIGUSR1 switches the fault on, SIGUSR2 off (a test drives the episodes and knows
exactly when each began). While on, every request appends a record (`--record-kb`, 512 by
default) to a journal and fsyncs it (and its directory) under the journal's lock, so concurrent requests queue
behind each other's fsync: the demo server's fault, heavier.

    python3 -m diag.examples.episodic_server --port 8080 --journal /var/tmp/episodic.bin
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_JOURNAL = 64 * 1024 * 1024


class Fault:
    def __init__(self, path: str, record_kb: int) -> None:
        self.on = False
        self.f = open(path, "wb")
        self.dir = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
        self.lock = threading.Lock()
        self.record = os.urandom(record_kb * 1024)

    def maybe_sync(self) -> None:
        if not self.on:
            return
        with self.lock:
            if self.f.tell() > MAX_JOURNAL:
                # wrap around in place: truncating a file whose pages were just synced waits
                # ~15 ms for the filesystem's journal in ftruncate, a call the probe does not
                # time (its waits would read as the holder's "other work", not the fault)
                self.f.seek(0)
            self.f.write(self.record)
            self.f.flush()
            os.fsync(self.f.fileno())
            # and the directory, as the demo's journal: the file's fsync alone is short on a fast
            # disk, and the holder's CPU work and CPU waits under the lock then outweigh it
            os.fsync(self.dir)


def make_handler(fault: Fault):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        wbufsize = 64 * 1024           # headers and body in one write (no Nagle stall)

        def do_GET(self) -> None:
            fault.maybe_sync()
            body = b'{"ok": true}\n'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    return Handler


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--journal", default="/var/tmp/diag-episodic-journal.bin")
    ap.add_argument("--record-kb", type=int, default=512)
    ap.add_argument("--fault-on", action="store_true", help="start with the fault switched on")
    a = ap.parse_args(argv)
    fault = Fault(a.journal, a.record_kb)
    fault.on = a.fault_on

    def switch(signum, frame):
        fault.on = signum == signal.SIGUSR1

    signal.signal(signal.SIGUSR1, switch)
    signal.signal(signal.SIGUSR2, switch)
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(0))
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), make_handler(fault))
    srv.daemon_threads = True
    print(f"listening on 127.0.0.1:{srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        fault.f.close()
        try:
            os.unlink(a.journal)
        except OSError:
            pass


if __name__ == "__main__":
    main()
