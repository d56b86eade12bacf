"""What diag exports to an observability backend, independent of the backend: cumulative histograms
and counters of one watched target, from the agent's stats (watch) or from a capture (attach, run).

    request duration           the probe's log-linear histogram of every request (server-side and
                               client-visible): exact counts, slots of 19 % at most
    syscall duration by family the per-call latency histograms of the traced syscalls (log2 slots),
                               summed per family (sync, read, write...), with their exact sums
    request time by family     per request, the time its thread spent in each family (log2 slots)
    slow calls                 calls the probe recorded (at least --ebpf-slow, or always-recorded)
    findings                   how many times each finding fired in a dump or a capture

Slots are (lower ns, upper ns, count). The backends turn them into their own histograms
(diag/telemetry/prometheus.py: classic buckets at powers of two; otlp.py: base-2 exponential).
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field

from diag.capture.ebpf_stream import loglinear_lower
from diag.syscalls import family

Slots = list[tuple[int, int, int]]


@dataclass
class Summary:
    resource: dict = field(default_factory=dict)
    requests: dict[str, Slots] = field(default_factory=dict)          # "server" / "client"
    syscall_families: dict[str, Slots] = field(default_factory=dict)
    syscall_sums_ns: dict[str, int] = field(default_factory=dict)
    family_time: dict[str, Slots] = field(default_factory=dict)
    slow_calls: int = 0
    findings: dict[tuple[str, str], int] = field(default_factory=dict)   # (id, severity) -> count
    triggers: dict[str, int] = field(default_factory=dict)
    ring_dropped_segments: int = 0
    start_unix_ns: int = 0


def _log2(pairs) -> Slots:
    return [(int(lo), max(int(lo) * 2, 2), int(n)) for lo, n in sorted(pairs or ()) if int(n) > 0]


def _req(pairs, sub_bits: int) -> Slots:
    return [(loglinear_lower(int(s), sub_bits), loglinear_lower(int(s) + 1, sub_bits), int(n))
            for s, n in sorted(pairs or ()) if int(n) > 0]


def _add(into: dict[int, list[int]], slots: Slots) -> None:
    for lo, hi, n in slots:
        cell = into.setdefault(lo, [hi, 0])
        cell[1] += n


def _slots(d: dict[int, list[int]]) -> Slots:
    return [(lo, hi, n) for lo, (hi, n) in sorted(d.items())]


def resource_for(target: dict, service_name: str | None) -> dict:
    """OpenTelemetry resource attributes of a target (semantic conventions' names)."""
    argv = target.get("cmdline") or []
    r = {"service.name": service_name or target.get("comm") or "diag-target",
         "host.name": socket.gethostname(), "telemetry.sdk.name": "diag"}
    if target.get("pid"):
        r["process.pid"] = int(target["pid"])
    if target.get("comm"):
        r["process.executable.name"] = str(target["comm"])
    if argv:
        r["process.command"] = str(argv[0])
        r["process.command_args"] = [str(a) for a in argv[:32]]
    if target.get("container_id"):
        r["container.id"] = str(target["container_id"])
    return r


def from_stats(stats: dict, resource: dict) -> Summary:
    """From the agent's cumulative stats file (diag/agent/segments.py)."""
    s = Summary(resource=dict(resource))
    req = stats.get("requests") or {}
    sub = int(req.get("sub_bits") or 2)
    for which in ("server", "client"):
        if req.get(which):
            s.requests[which] = _req(req[which], sub)
    fams: dict[str, dict[int, list[int]]] = {}
    for name, c in (stats.get("syscalls") or {}).items():
        fam = family(name)
        _add(fams.setdefault(fam, {}), _log2(c.get("hist")))
        s.syscall_sums_ns[fam] = s.syscall_sums_ns.get(fam, 0) + int(c.get("total_ns") or 0)
    s.syscall_families = {f: _slots(d) for f, d in sorted(fams.items())}
    s.family_time = {f: _log2(p) for f, p in sorted((stats.get("family_time") or {}).items())}
    s.slow_calls = int((stats.get("records") or {}).get("calls") or 0)
    s.ring_dropped_segments = int(((stats.get("ring") or {}).get("dropped") or {}).get("segments") or 0)
    return s


def from_capture(path: str, resource: dict) -> Summary | None:
    """From a capture's eBPF stream (its end records: the in-kernel aggregates and histograms of the
    whole capture); None when the capture has no eBPF stream."""
    main = os.path.join(path, "streams", "ebpf.jsonl")
    if not os.path.isfile(main):
        return None
    s = Summary(resource=dict(resource))
    fams: dict[str, dict[int, list[int]]] = {}
    with open(main, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            t = obj.get("type") if isinstance(obj, dict) else None
            if t == "request_hist":
                s.requests[str(obj["latency"])] = _req(obj.get("slots"), int(obj.get("sub_bits") or 2))
            elif t == "aggregate":
                fam = family(str(obj["name"]))
                _add(fams.setdefault(fam, {}), _log2(obj.get("hist")))
                s.syscall_sums_ns[fam] = s.syscall_sums_ns.get(fam, 0) + int(obj.get("total_ns") or 0)
            elif t == "family_hist":
                s.family_time = {k: _log2(v) for k, v in sorted((obj.get("families") or {}).items())}
            elif t == "end":
                s.slow_calls = int(obj.get("events") or 0)
    s.syscall_families = {f: _slots(d) for f, d in sorted(fams.items())}
    return s


def add_findings(s: Summary, findings: list[dict]) -> None:
    for f in findings:
        key = (str(f.get("id")), str(f.get("severity") or "info"))
        s.findings[key] = s.findings.get(key, 0) + 1
