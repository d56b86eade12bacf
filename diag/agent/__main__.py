"""`python -m diag.agent --pid PID --out streams/ebpf.jsonl`: the eBPF agent's command line.

`--segment-dir DIR` instead of `--out` (diag watch): the same stream cut into a bounded ring of time
segments (diag/agent/segments.py), SIGUSR1 closes the current segment, `--stats FILE` adds the
cumulative histograms every second. Without these options the agent behaves exactly as before.

Exit codes: 0 a complete stream, 2 the probe could not be compiled or attached (one line on stderr
says why), 3 `bcc` cannot be imported.
"""
from __future__ import annotations

import argparse
import signal
import sys

from diag.agent.export_policy import DEFAULT_BUDGET


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="diag.agent", description="diag's eBPF agent")
    p.add_argument("--pid", type=int, action="append", default=[], help="target tgid (repeatable)")
    p.add_argument("--follow", action="store_true", help="also trace every process under the targets, "
                                                         "now and forked during the capture")
    p.add_argument("--slow-ns", type=int, default=1_000_000, help="record calls at least this slow (0: all)")
    p.add_argument("--wake-min-ns", type=int, default=100_000,
                   help="record who woke a target thread blocked at least this long")
    p.add_argument("--runq-min-ns", type=int, default=100_000,
                   help="record a target thread's wait for a CPU of at least this long")
    p.add_argument("--out", required=False, default=None, help="the stream's main file (ebpf.jsonl); "
                                                               "the binary record files go beside it")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds")
    p.add_argument("--progress", default=None, help="JSON progress file rewritten every second")
    p.add_argument("--ringbuf-pages", type=int, default=256, help="slow-call ring size in pages (power of 2)")
    p.add_argument("--request-pages", type=int, default=1024, help="request ring size in pages (power of 2)")
    p.add_argument("--sched-pages", type=int, default=512, help="wakeup/runq ring size in pages (power of 2)")
    p.add_argument("--no-requests", action="store_true", help="no in-kernel request summarizer")
    p.add_argument("--requests", choices=("sampled", "all"), default="sampled",
                   help="export every request, or (default) every request while the rate is under "
                        "--export-budget per second, else the slow tail and exemplars")
    p.add_argument("--export-budget", type=int, default=DEFAULT_BUDGET, help="request records per second")
    p.add_argument("--slow-request-ns", type=int, default=0, help="always export requests at least this slow")
    p.add_argument("--no-accept-queue", action="store_true", help="do not measure accept-queue waits")
    p.add_argument("--stack-entries", type=int, default=16384, help="kernel stack map size")
    p.add_argument("--probe", default=None, help="probe C source (default probes/diag_probe.c)")
    p.add_argument("--floor", action="store_true", help="every program returns at once: the kernel's own "
                                                        "price of the attached programs (bench)")
    p.add_argument("--keep-running", action="store_true", help="do not stop when every target has exited")
    p.add_argument("--dump-probe", action="store_true", help="print the probe source with its cflags, exit")
    # segment mode (diag watch): the stream as a bounded ring of time segments (diag/agent/segments.py)
    p.add_argument("--segment-dir", default=None, help="write the stream as a ring of time segments in this "
                                                       "directory instead of --out")
    p.add_argument("--segment-seconds", type=float, default=5.0, help="segment mode: seconds per segment")
    p.add_argument("--ring-bytes", type=int, default=64 << 20, help="segment mode: the ring's bound on disk")
    p.add_argument("--segment-generation", type=int, default=1, help="segment mode: this run's generation "
                                                                     "(a restarted agent takes the next)")
    p.add_argument("--stats", default=None, help="segment mode: JSON file of the cumulative in-kernel "
                                                 "histograms and counters, rewritten every second")
    a = p.parse_args(argv)
    for name in ("ringbuf_pages", "request_pages", "sched_pages"):
        v = getattr(a, name)
        if v <= 0 or v & (v - 1):
            p.error(f"--{name.replace('_', '-')} must be a power of two")
    if not a.pid and not a.dump_probe:
        p.error("give at least one --pid")
    if not a.out and not a.dump_probe and not a.segment_dir:
        p.error("give --out (or --segment-dir)")
    if a.segment_dir and a.out:
        p.error("give --out or --segment-dir, not both")
    if a.segment_dir:
        from diag.agent.segments import MIN_RING_BYTES

        if a.ring_bytes < MIN_RING_BYTES:
            p.error(f"--ring-bytes must be at least {MIN_RING_BYTES}")
        if a.segment_seconds <= 0:
            p.error("--segment-seconds must be positive")
    elif a.stats:
        p.error("--stats needs --segment-dir")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from diag.agent import build, header
    from diag.agent.agent import Agent, log

    if args.dump_probe:
        sys.stdout.write(build.dump(args, header.load()))
        return 0
    if args.segment_dir:
        from diag.agent.segments import SegmentAgent

        agent = SegmentAgent(args)
    else:
        agent = Agent(args)

    def on_signal(signum, frame):
        agent.stop_reason = signal.Signals(signum).name

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        import bcc  # noqa: F401
    except Exception as e:
        log(f"error: cannot import bcc ({e}): install python3-bpfcc")
        return 3
    try:
        return agent.run()
    except Exception as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        log(f"error: {msg[:300]}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
