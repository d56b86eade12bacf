"""A threaded HTTP server that journals every request with fsync: the demo's known latency fault.

Each POST/GET appends a 64 KB record to a journal file and fsyncs it (and its directory) before answering
(durability on the request path, the source document's worked example), under the journal's
lock, as journals do: concurrent requests queue behind each other's fsync. `--compact-every N`
also rewrites a 4 MB block every N requests (off by default). `--fault none` turns journaling
off: the healthy control.

    python3 -m diag.examples.journal_server --port 8080 --journal /var/tmp/journal.bin
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RECORD = 64 * 1024
COMPACT = 4 * 1024 * 1024
MAX_JOURNAL = 256 * 1024 * 1024   # a demo never wraps (an overwrite in place syncs no metadata)


class Journal:
    def __init__(self, path: str) -> None:
        self.f = open(path, "wb")
        self.dir = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
        self.lock = threading.Lock()
        self.n = 0
        self.record = os.urandom(RECORD)
        self.block = os.urandom(COMPACT)

    def append(self, compact_every: int) -> None:
        with self.lock:
            self.n += 1
            if self.f.tell() > MAX_JOURNAL:
                # wrap around in place: a truncate of pages just synced waits ~15 ms for the
                # filesystem's journal in ftruncate, a call the probe does not time (the holder's
                # "other work" then), which is not the fault this demo shows
                self.f.seek(0)
            self.f.write(self.record)
            if compact_every and self.n % compact_every == 0:
                self.f.write(self.block)
            self.f.flush()
            os.fsync(self.f.fileno())
            # and its directory, as a journal that creates or renames segments does: on a fast
            # disk the file's fsync alone (~0.4 ms) is no longer than the rest of the critical section
            os.fsync(self.dir)


def make_handler(journal: Journal | None, compact_every: int):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Buffered output: headers and body leave in one write (flushed by the base class after
        # each request). Unbuffered, they leave in two small writes and meet Nagle + delayed ACK:
        # a 40 ms stall that would be a second fault in the demo.
        wbufsize = 64 * 1024

        def do_GET(self) -> None:
            if journal is not None:
                journal.append(compact_every)
            body = b'{"ok": true}\n'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, *args) -> None:   # quiet: the demo prints the report, not access logs
            pass

    return Handler


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--journal", default="/var/tmp/diag-demo-journal.bin")
    ap.add_argument("--fault", choices=("fsync", "none"), default="fsync")
    ap.add_argument("--compact-every", type=int, default=0)
    a = ap.parse_args(argv)
    journal = Journal(a.journal) if a.fault == "fsync" else None
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), make_handler(journal, a.compact_every))
    srv.daemon_threads = True
    print(f"listening on 127.0.0.1:{srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if journal is not None:
            journal.f.close()
            try:
                os.unlink(a.journal)
            except OSError:
                pass
        sys.exit(0)


if __name__ == "__main__":
    main()
