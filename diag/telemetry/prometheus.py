"""`--metrics-port`: the watched target's histograms and counters as a Prometheus scrape endpoint.

Classic histograms with fixed buckets at powers of two nanoseconds (1 µs .. 34 s, in seconds):
the probe's log2 slots fall exactly on them, and its log-linear request slots nest inside them,
so every bucket count is exact (no re-observation of values). `_sum` is exact for syscall
families (the kernel sums durations) and estimated from slot midpoints for requests. Served by
prometheus-client's own HTTP server thread, on 127.0.0.1 unless `--metrics-addr` says otherwise.
"""
from __future__ import annotations

import threading

from diag.telemetry.summary import Slots, Summary

BOUNDS_NS = [1 << k for k in range(10, 36)]          # 1.02 µs .. 34.4 s


def buckets(slots: Slots) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs in seconds, +Inf last."""
    out = []
    for b in BOUNDS_NS:
        out.append((repr(b / 1e9), float(sum(n for lo, hi, n in slots if hi <= b))))
    out.append(("+Inf", float(sum(n for _, _, n in slots))))
    return out


def midpoint_sum_s(slots: Slots) -> float:
    return sum(n * (lo + hi) / 2 for lo, hi, n in slots) / 1e9


class _Collector:
    def __init__(self, sink: "PrometheusSink") -> None:
        self.sink = sink

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        s = self.sink.summary
        if s is None:
            return
        labels = self.sink.labels()
        keys = list(labels)
        h = HistogramMetricFamily("diag_request_duration_seconds", "Server requests of the watched target "
                                  "(in-kernel histogram, every request)", labels=keys + ["latency"])
        for which, slots in sorted(s.requests.items()):
            h.add_metric([*labels.values(), which], buckets(slots), midpoint_sum_s(slots))
        yield h
        h = HistogramMetricFamily("diag_syscall_duration_seconds", "Per-call latency of the target's "
                                  "syscalls, by family (in-kernel histogram)", labels=keys + ["family"])
        for fam, slots in sorted(s.syscall_families.items()):
            h.add_metric([*labels.values(), fam], buckets(slots), s.syscall_sums_ns.get(fam, 0) / 1e9)
        yield h
        h = HistogramMetricFamily("diag_request_family_time_seconds", "Time one request's thread spent in "
                                  "each syscall family (in-kernel histogram)", labels=keys + ["family"])
        for fam, slots in sorted(s.family_time.items()):
            h.add_metric([*labels.values(), fam], buckets(slots), midpoint_sum_s(slots))
        yield h
        c = CounterMetricFamily("diag_slow_calls", "Slow calls the probe recorded", labels=keys)
        c.add_metric(list(labels.values()), float(s.slow_calls))
        yield c
        c = CounterMetricFamily("diag_findings", "Findings in the watcher's dumps", labels=keys + ["finding", "severity"])
        for (fid, sev), n in sorted(s.findings.items()):
            c.add_metric([*labels.values(), fid, sev], float(n))
        yield c
        c = CounterMetricFamily("diag_triggers", "Dumps started, by trigger", labels=keys + ["trigger"])
        for t, n in sorted(s.triggers.items()):
            c.add_metric([*labels.values(), t], float(n))
        yield c
        c = CounterMetricFamily("diag_ring_dropped_segments", "Ring segments dropped to keep the ring "
                                "under --ring-mb", labels=keys)
        c.add_metric(list(labels.values()), float(s.ring_dropped_segments))
        yield c


class PrometheusSink:
    """A watcher sink (update / target / dump / close) serving the latest summary."""

    def __init__(self, port: int, addr: str = "127.0.0.1", service_name: str | None = None) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        self.summary: Summary | None = None
        self.resource: dict = {}
        self.service_name = service_name
        self.findings: dict = {}
        self.triggers: dict = {}
        self._lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        try:
            self.server, self.thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as e:
            from diag.errors import DiagError

            raise DiagError(f"--metrics-port {port}: cannot listen on {addr}:{port} ({e.strerror or e})") from None

    def labels(self) -> dict[str, str]:
        r = self.resource
        return {"service": str(r.get("service.name", "")), "pid": str(r.get("process.pid", ""))}

    def target(self, described: dict, spec: str) -> None:
        from diag.telemetry.summary import resource_for

        self.resource = resource_for(described, self.service_name)

    def update(self, stats: dict) -> None:
        from diag.telemetry.summary import from_stats

        s = from_stats(stats, self.resource)
        s.findings, s.triggers = self.findings, self.triggers
        self.summary = s

    def dump(self, trigger: str, result, findings: list[dict]) -> None:
        self.triggers[trigger] = self.triggers.get(trigger, 0) + 1
        for f in findings:
            key = (f["id"], f.get("severity") or "info")
            self.findings[key] = self.findings.get(key, 0) + 1

    def close(self) -> None:
        try:
            self.server.shutdown()
        except Exception:
            pass
