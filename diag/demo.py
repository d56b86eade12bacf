"""`make demo`: the main job on a bundled target, end to end, in about 15 seconds.

Starts the example journal server (a threaded HTTP server that fsyncs a journal on every
request: latency with a known cause) on 127.0.0.1, drives a bounded load at it, runs
`diag attach` on it as a user would, and writes the capture and reports under --out.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time

from diag.examples.load import drive


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out")
    ap.add_argument("--duration", type=float, default=6.0)
    # 120 req/s: at 200 the 2-core reference VM ran out of CPU (server threads, load generator and
    # the collectors), lock holders waited for a CPU and the fault came out first in 9 runs of 10
    ap.add_argument("--rate", type=float, default=120.0, help="requests per second of the load")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    capture = os.path.join(a.out, "demo.diag")
    shutil.rmtree(capture, ignore_errors=True)
    journal = os.path.join(os.path.abspath(a.out), "demo-journal.bin")   # on disk, not tmpfs
    server = subprocess.Popen([sys.executable, "-m", "diag.examples.journal_server", "--journal", journal],
                              stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline() if server.stdout else ""
        if not line.startswith("listening on"):
            print("demo: the example server did not start", file=sys.stderr)
            return 1
        port = int(line.rsplit(":", 1)[1])
        print(f"demo: example journal server pid {server.pid} on 127.0.0.1:{port}; load {a.rate:.0f} req/s "
              f"until the capture ends", flush=True)
        # the server is already serving when diag attaches, as a production one is; the load goes
        # on until the capture ends, however long the eBPF probe takes to compile on a busy machine
        done = threading.Event()
        load = threading.Thread(target=drive, kwargs=dict(host="127.0.0.1", port=port, requests=10**9,
                                                          seconds=120.0, concurrency=4, rate=a.rate, stop=done),
                                daemon=True)
        load.start()
        time.sleep(1.0)
        rc = subprocess.call([sys.executable, "-m", "diag", "attach", str(server.pid), "--duration",
                              str(a.duration), "--out", capture, "--json", os.path.join(a.out, "report.json")])
        done.set()
        load.join()
        print(f"\ndemo: capture {capture}, JSON report {a.out}/report.json; "
              f"replay it with: .venv/bin/diag replay {capture}")
        return rc
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    sys.exit(main())
