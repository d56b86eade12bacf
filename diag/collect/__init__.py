"""Collectors, one module each behind the interface of collect/base.py, and the default policy.

Default policy (`--collectors auto`), from the overhead measured on the reference machine
(bench/RESULTS.md): the eBPF collector is the syscall source when it can run. It is not free
(about 0.2 µs per syscall of every process in the kernel, one record per request; 1.2-1.5x the
target's CPU per request on the fastest targets) but it is the only source that sees every call
without stopping the target: strace stops the target on every traced call (4x-25x slower when
attached to a busy server, filtered or not), so in attach mode it runs only when eBPF cannot.
py-spy runs non-blocking on Python targets (blocking cost 44 % of a threaded server's
throughput); perf samples system-wide at 99 Hz (within noise); the process sampler always runs.
The CPython runtime sampler (`pyruntime`: GIL holder and GC state read from the target's memory,
200 Hz) runs on CPython targets: it costs 1-2 % of one of diag's cores and nothing in the
target (no ptrace stop, no injected code); on other targets it reports "not applicable".

Rates (the constants below; bench/RESULTS.md "Collector defaults" has the numbers). py-spy's own
CPU grows with the rate and with the target's threads: over four bench runs, at 100 Hz it used
3.0-4.4 % of a core on the one-thread asyncio server and 6.9-10 % on the 9-thread server, at 50 Hz
2.2-2.5 % and 4.5-5.6 %; 50 Hz keeps the one-thread server, the kind that reaches 100k requests/s,
within issue 12's 3 % budget, at the price of half the Python stacks (0.25-1 per 5-20 ms slow
request instead of 0.5-2); the 9-thread server would need 20 Hz (0.1-0.4). The others stay:
pyruntime at 200 Hz used 1.8-2.4 % (1-4 GIL readings per slow request), the process sampler at
0.5 s about 1 %, and perf's own process nothing measurable (its sampling runs in the kernel; 49 Hz
or no call graph saved nothing the bench could tell from noise, and no call graph loses every
frame above the leaf).
"""
from __future__ import annotations

from diag.errors import DiagError

NAMES = ("ebpf", "strace", "perf", "py-spy", "pyruntime", "process")
PYSPY_RATE_HZ = 50
PERF_FREQUENCY_HZ = 99
PROCESS_INTERVAL_S = 0.5
PYRUNTIME_RATE_HZ = 200
# Collectors that need the target's Python interpreter running: under `diag run` they start
# after the command's exec (before it, the pid is diag's holder, itself a Python interpreter).
AFTER_EXEC = ("py-spy", "pyruntime")


def make(name: str, **opts):
    if name == "strace":
        from diag.collect.strace import StraceCollector

        return StraceCollector(payload_bytes=opts.get("strace_payload", 0))
    if name == "perf":
        from diag.collect.perf import PerfCollector

        return PerfCollector(frequency=opts.get("perf_frequency", PERF_FREQUENCY_HZ), callgraph=opts.get("perf_callgraph", "fp"))
    if name == "py-spy":
        from diag.collect.pyspy import PyspyCollector

        return PyspyCollector(rate=opts.get("pyspy_rate", PYSPY_RATE_HZ), native=opts.get("pyspy_native", False))
    if name == "pyruntime":
        from diag.collect.pyruntime import PyRuntimeTree

        return PyRuntimeTree(rate_hz=opts.get("pyruntime_rate", PYRUNTIME_RATE_HZ))
    if name == "process":
        from diag.collect.process import ProcessSampler

        return ProcessSampler(interval_s=opts.get("process_interval", PROCESS_INTERVAL_S))
    if name == "ebpf":
        from diag.collect.ebpf import EbpfCollector

        return EbpfCollector(slow_ns=opts.get("ebpf_slow_ns", 1_000_000))
    raise DiagError(f"--collectors: unknown collector {name!r}; choose from {', '.join(NAMES)} or auto")


def parse_selection(value: str) -> list[str] | None:
    """'auto' -> None (policy decides); 'ebpf,py-spy' -> the list, validated."""
    v = value.strip().lower()
    if v in ("", "auto", "default"):
        return None
    names = [n.strip() for n in v.split(",") if n.strip()]
    for n in names:
        if n not in NAMES:
            raise DiagError(f"--collectors: unknown collector {n!r}; choose from {', '.join(NAMES)} or auto")
    return list(dict.fromkeys(names))


def ebpf_available(target) -> str | None:
    """None when the eBPF collector can run; else why not."""
    try:
        c = make("ebpf")
    except ImportError as e:  # the module itself is missing (partial install)
        return f"eBPF collector not installed: {e}"
    return c.check(target)


def policy(selection: list[str] | None, target, **opts) -> list:
    """The collectors to run, in start order (the cheapest and least intrusive first)."""
    if selection is None:
        names = ["process", "perf", "py-spy", "pyruntime"]
        if ebpf_available(target) is None:
            names.insert(1, "ebpf")
        else:
            names.insert(1, "strace")
    else:
        order = {n: i for i, n in enumerate(("process", "ebpf", "strace", "perf", "py-spy", "pyruntime"))}
        names = sorted(selection, key=order.__getitem__)
    return [make(n, **opts) for n in names]
