"""`python -m bench.collector_host --pid PID --collectors ebpf,py-spy --pyspy-rate 50 --out DIR`:
diag's own collectors with settings the CLI does not expose, for the collector-defaults study.

It is `diag attach`'s capture (the same collector classes built by `diag.collect.make`, the same
session: started together, stopped in reverse order on SIGINT) without the analysis and report
that follow it; the study measures what a collector costs while it captures, and the analysis
runs after the load in every mode alike. The process sampler and pyruntime run as threads of
this process, as they do inside diag.
"""
from __future__ import annotations

import argparse
import sys

from diag.capture.bundle import CaptureWriter
from diag.collect import parse_selection, policy
from diag.collect.session import run_capture
from diag.collect.targets import resolve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.collector_host", description=__doc__.splitlines()[0])
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--collectors", required=True, help="comma list, as diag attach --collectors")
    p.add_argument("--out", required=True, help="capture directory")
    p.add_argument("--pyspy-rate", type=int, default=100)
    p.add_argument("--perf-frequency", type=int, default=99)
    p.add_argument("--perf-callgraph", choices=("fp", "none"), default="fp")
    p.add_argument("--process-interval", type=float, default=0.5)
    p.add_argument("--pyruntime-rate", type=int, default=200)
    a = p.parse_args(argv)
    target = resolve(a.pid, None, None, True)
    opts = {"pyspy_rate": a.pyspy_rate, "perf_frequency": a.perf_frequency, "perf_callgraph": a.perf_callgraph,
            "process_interval": a.process_interval, "pyruntime_rate": a.pyruntime_rate}
    collectors = policy(parse_selection(a.collectors), target, **opts)    # diag's start order
    writer = CaptureWriter(a.out, target.to_json(), "attach")
    result = run_capture(target, collectors, writer, None)
    print(f"collector_host: {result.status}; started {','.join(result.started)}; skipped {result.skipped}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
