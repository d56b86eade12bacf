"""`--otlp-endpoint`: the same summary to an OpenTelemetry Collector over OTLP/HTTP (protobuf).

Histograms are sent as base-2 exponential histograms built directly from the kernel's slots
(no re-observation of every request through the SDK's aggregation, which would cost a core at
100k requests/s): values are in seconds (the semantic conventions' unit for durations); each slot
goes to the exponential bucket of its midpoint at scale 3 (8 buckets per power of two), finer than
the probe's request slots (4 per power of two) and its call slots (1): a value is off by at most
its own slot's width. Cumulative temporality, from the agent's attach. Counters are cumulative sums.
Each dump's findings are log records (severity from the finding's), with the report's path.

Resource attributes: service.name (`--service-name`, else the target's command), process.pid,
process.executable.name, process.command, process.command_args, container.id (from the
target's cgroup), host.name. The endpoint and headers also come from the standard
OTEL_EXPORTER_OTLP_* variables (the exporter reads them); `--otlp-endpoint` is the base URL
(http://HOST:4318), to which /v1/metrics and /v1/logs are added.
"""
from __future__ import annotations

import math
import threading
import time

from diag.telemetry.summary import Slots, Summary, resource_for

SCALE = 3
SEVERITY = {"info": 9, "warning": 13, "critical": 17}      # OTel SeverityNumber INFO, WARN, ERROR


def exp_index(value_s: float, scale: int = SCALE) -> int:
    """The base-2 exponential bucket holding `value_s` (bucket i covers (base^i, base^(i+1)])."""
    return math.ceil(math.log2(value_s) * (1 << scale)) - 1


def exp_buckets(slots: Slots, scale: int = SCALE) -> tuple[int, list[int], int]:
    """(offset, counts, zero count) of the positive buckets for slots in ns."""
    idx: dict[int, int] = {}
    zero = 0
    for lo, hi, n in slots:
        mid = (lo + hi) / 2 / 1e9
        if mid <= 0:
            zero += n
            continue
        i = exp_index(mid, scale)
        idx[i] = idx.get(i, 0) + n
    if not idx:
        return 0, [], zero
    lo_i, hi_i = min(idx), max(idx)
    return lo_i, [idx.get(i, 0) for i in range(lo_i, hi_i + 1)], zero


def _endpoint(base: str | None, path: str) -> str | None:
    if not base:
        return None
    return base.rstrip("/") + path


class OtlpExporter:
    """Builds MetricsData from a Summary and sends it; sends log records for findings."""

    def __init__(self, endpoint: str | None, resource: dict) -> None:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
        from opentelemetry.sdk.resources import Resource

        self.resource_attrs = dict(resource)
        self.resource = Resource.create(self.resource_attrs)
        self.metrics = OTLPMetricExporter(endpoint=_endpoint(endpoint, "/v1/metrics"))
        self.logs = LoggerProvider(resource=self.resource)
        self.logs.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=_endpoint(endpoint, "/v1/logs"))))
        self.logger = self.logs.get_logger("diag")
        self.start_ns = time.time_ns()

    def set_resource(self, resource: dict) -> None:
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

        if resource == self.resource_attrs:
            return
        endpoint = getattr(self.metrics, "_endpoint", None)
        self.resource_attrs = dict(resource)
        self.resource = Resource.create(self.resource_attrs)
        log_ep = endpoint.rsplit("/v1/metrics", 1)[0] + "/v1/logs" if endpoint else None
        self.logs.shutdown()
        self.logs = LoggerProvider(resource=self.resource)
        self.logs.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=log_ep)))
        self.logger = self.logs.get_logger("diag")
        self.start_ns = time.time_ns()

    def metrics_data(self, s: Summary):
        from opentelemetry.sdk.metrics.export import (AggregationTemporality, Buckets, ExponentialHistogram,
                                                      ExponentialHistogramDataPoint, Metric, MetricsData,
                                                      NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum)
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        now = time.time_ns()
        cum = AggregationTemporality.CUMULATIVE

        def ehist(name: str, desc: str, series: dict[str, Slots], key: str, sums: dict[str, int] | None = None):
            points = []
            for label, slots in sorted(series.items()):
                if not slots:
                    continue
                offset, counts, zero = exp_buckets(slots)
                count = sum(n for _, _, n in slots)
                total = (sums or {}).get(label)
                total_s = total / 1e9 if total is not None else sum(n * (lo + hi) / 2 for lo, hi, n in slots) / 1e9
                points.append(ExponentialHistogramDataPoint(
                    attributes={key: label}, start_time_unix_nano=self.start_ns, time_unix_nano=now,
                    count=count, sum=total_s, scale=SCALE, zero_count=zero, positive=Buckets(offset, counts),
                    negative=Buckets(0, []), flags=0, min=min(lo for lo, _, _ in slots) / 1e9,
                    max=max(hi for _, hi, _ in slots) / 1e9))
            return Metric(name=name, description=desc, unit="s",
                          data=ExponentialHistogram(data_points=points, aggregation_temporality=cum))

        def counter(name: str, desc: str, values: dict[tuple, int], keys: tuple[str, ...]):
            pts = [NumberDataPoint(attributes=dict(zip(keys, k)), start_time_unix_nano=self.start_ns,
                                   time_unix_nano=now, value=int(v)) for k, v in sorted(values.items())]
            return Metric(name=name, description=desc, unit="1",
                          data=Sum(data_points=pts, aggregation_temporality=cum, is_monotonic=True))

        metrics = [m for m in (
            ehist("diag.request.duration", "Server requests of the target (in-kernel histogram, every request)",
                  s.requests, "latency"),
            ehist("diag.syscall.duration", "Per-call latency of the target's syscalls by family",
                  s.syscall_families, "syscall.family", s.syscall_sums_ns),
            ehist("diag.request.family.time", "Time a request's thread spent in each syscall family",
                  s.family_time, "syscall.family"),
            counter("diag.slow_calls", "Slow calls the probe recorded", {(): s.slow_calls}, ()),
            counter("diag.findings", "Findings fired", s.findings, ("finding", "severity")),
            counter("diag.triggers", "Dumps started, by trigger", {(k,): v for k, v in s.triggers.items()},
                    ("trigger",)),
        ) if m.data.data_points]                  # a metric without points is not sent
        scope = InstrumentationScope("diag", _version())
        return MetricsData(resource_metrics=[ResourceMetrics(
            resource=self.resource, scope_metrics=[ScopeMetrics(scope=scope, metrics=metrics, schema_url="")],
            schema_url="")])

    def send(self, s: Summary) -> bool:
        from opentelemetry.sdk.metrics.export import MetricExportResult

        return self.metrics.export(self.metrics_data(s)) == MetricExportResult.SUCCESS

    def finding_logs(self, findings: list[dict], report_path: str | None, trigger: str | None,
                     capture: str | None) -> None:
        from opentelemetry._logs import SeverityNumber

        for f in findings:
            sev = str(f.get("severity") or "info")
            attrs = {"diag.finding.id": str(f.get("id")), "diag.finding.severity": sev,
                     "diag.finding.share": float(f.get("share") or 0.0)}
            if report_path:
                attrs["diag.report.path"] = report_path
            if capture:
                attrs["diag.capture.path"] = capture
            if trigger:
                attrs["diag.trigger"] = trigger
            self.logger.emit(timestamp=time.time_ns(), body=f"{f.get('id')}: {f.get('summary') or ''}", attributes=attrs,
                             severity_number=SeverityNumber(SEVERITY.get(sev, 9)), severity_text=sev.upper(),
                             event_name="diag.finding")

    def shutdown(self) -> None:
        try:
            self.metrics.shutdown()
        finally:
            self.logs.shutdown()


def _version() -> str:
    from diag import __version__

    return __version__


class OtlpSink:
    """A watcher sink: exports the latest summary every `interval_s` from a thread of its own, and
    each dump's findings as log records at once."""

    def __init__(self, endpoint: str | None, service_name: str | None, interval_s: float = 10.0) -> None:
        self.endpoint = endpoint
        self.service_name = service_name
        self.interval_s = interval_s
        self.exporter: OtlpExporter | None = None
        self.resource: dict = {}
        self.stats: dict | None = None
        self.findings: dict = {}
        self.triggers: dict = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.sent = 0
        self.failed = 0
        self.thread = threading.Thread(target=self._run, name="diag-otlp", daemon=True)
        self.thread.start()

    def target(self, described: dict, spec: str) -> None:
        with self._lock:
            self.resource = resource_for(described, self.service_name)
            if self.exporter is None:
                self.exporter = OtlpExporter(self.endpoint, self.resource)
            else:
                self.exporter.set_resource(self.resource)

    def update(self, stats: dict) -> None:
        self.stats = stats

    def _summary(self) -> Summary | None:
        from diag.telemetry.summary import from_stats

        if self.stats is None:
            return None
        s = from_stats(self.stats, self.resource)
        s.findings, s.triggers = dict(self.findings), dict(self.triggers)
        return s

    def _export(self) -> None:
        with self._lock:
            s = self._summary()
            if s is None or self.exporter is None:
                return
            if self.exporter.send(s):
                self.sent += 1
            else:
                self.failed += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._export()
            except Exception:
                self.failed += 1

    def dump(self, trigger: str, result, findings: list[dict]) -> None:
        self.triggers[trigger] = self.triggers.get(trigger, 0) + 1
        for f in findings:
            key = (f["id"], f.get("severity") or "info")
            self.findings[key] = self.findings.get(key, 0) + 1
        if self.exporter is not None:
            self.exporter.finding_logs(findings, str(result.json_path) if result.json_path else None, trigger,
                                       str(result.capture))
        self._export()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        try:
            self._export()
        finally:
            if self.exporter is not None:
                self.exporter.shutdown()


def export_once(capture: str, report: dict, endpoint: str | None, service_name: str | None,
                report_path: str | None = None) -> bool:
    """`diag attach/run --otlp-endpoint`: the capture's summary and its findings, sent once."""
    from diag.telemetry.summary import add_findings, from_capture

    target = dict((report.get("target") or {}))
    resource = resource_for(target, service_name)
    s = from_capture(capture, resource) or Summary(resource=resource)
    add_findings(s, report.get("findings") or [])
    exp = OtlpExporter(endpoint, resource)
    try:
        ok = exp.send(s)
        exp.finding_logs(report.get("findings") or [], report_path, None, capture)
        return ok
    finally:
        exp.shutdown()
