"""What the inputs cannot show: the report's `limits`, one sentence per blind spot.

A diagnosis from one stream (perf alone, a py-spy file, strace without -y) is still worth having,
but a reader must know which causes it could not have seen, so that "no finding" is never read as
"no problem".
"""
from __future__ import annotations

from diag.model import Clock, Dataset
from diag.syscalls import FdKind, family


def limits(data: Dataset, requests_found: bool) -> list[str]:
    out: list[str] = []
    calls = data.syscalls
    # strace without -T still times the calls it printed in two halves (unfinished/resumed)
    untimed = sum(s.meta.get("complete_calls_without_duration", 0) for s in data.streams)
    timed = any(e.dur_ns is not None for e in calls) or bool(data.aggregates)
    samples = [s for s in data.samples if s.source != "ebpf"]
    if not calls and not data.aggregates and not data.requests:
        out.append("no syscall stream (strace -f -ttt -T -yy, perf trace, or diag's eBPF): request latency and the "
                   "time requests wait (disk sync, locks, sleeps, upstream calls, the network) cannot be measured; "
                   "findings say where the CPU goes, not what requests waited for")
    elif not timed or untimed >= 0.1 * len(calls):
        out.append(f"{untimed:,} of {len(calls):,} syscalls without a duration (strace without -T): only calls "
                   "printed in two halves (unfinished/resumed) are timed, from their stamps")
    elif not requests_found and not data.requests:
        io = [e for e in calls if family(e.name) in ("read", "write")]
        unknown = sum(1 for e in io if e.fd_kind is FdKind.UNKNOWN)
        if io and unknown / len(io) >= 0.5:
            out.append(f"{unknown:,} of {len(io):,} reads/writes are on fds whose kind the trace never showed "
                       "(opened before it began, no -y): requests on them cannot be rebuilt; trace with strace -yy")
        else:
            out.append("no server requests found in the syscalls (no socket reads followed by writes): findings "
                       "cannot be weighed by request latency")
    if not samples:
        out.append("no stack samples (py-spy, perf -g, Go pprof): the code behind the time cannot be named")
    else:
        untimed = sum(s.weight for s in samples if s.ts_ns is None)
        if untimed and untimed == sum(s.weight for s in samples) and (calls or data.requests):
            out.append("stack samples carry no timestamps (py-spy raw/speedscope, pprof): they describe the whole "
                       "capture, never one slow request (record py-spy with -f chrometrace)")
        if all(s.source == "perf" for s in samples) and any(
                f.function.startswith("_PyEval_EvalFrame") for s in samples[:5000] for f in s.frames):
            out.append("perf sees the Python interpreter's C functions, not the Python functions it runs: add "
                       "py-spy (record --threads -f chrometrace), or run Python 3.12+ with -X perf")
        if all(s.source == "py-spy" for s in samples) and not any(f.module for s in samples for f in s.frames):
            out.append("Python frames only: native code, the kernel and the interpreter's collector are not seen "
                       "(perf -g, or py-spy --native)")
    if (requests_found or data.requests) and any(s.source == "pprof" and any(f.function.startswith("runtime.")
                                                                             for f in s.frames) for s in samples):
        out.append("a Go server: goroutines move between OS threads, so a request's calls may run on threads "
                   "other than the one that read it; per-request breakdowns by thread are approximate (the "
                   "syscall tables and the profile are not)")
    apart = [s.name for s in data.streams if s.side_by_side]
    if apart:
        out.append("not on the others' clock: " + ", ".join(apart) + " (analysed side by side; --offset FILE=+S "
                   "aligns it)")
    if any(s.clock is Clock.RELATIVE and s.format == "strace" for s in data.streams) and len(data.streams) > 1:
        out.append("strace with relative stamps (-r, or -t/-tt without --date): only aligned by activity or --offset")
    return out
