"""Fleet export against real backends: a Prometheus server scraping `--metrics-port`, an OpenTelemetry
Collector receiving OTLP and writing it with its file exporter, and the systemd unit."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from ebpf_helpers import EBPF_MARKS, WORKDIR
from diag_run import ROOT, diag
from servers import example_server, HttpLoad
from toolbox import free_port, listening, wait_until
from watch_helpers import WatchProc

pytestmark = [*EBPF_MARKS, pytest.mark.slow]


def http_get(url: str, timeout: float = 5.0) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read()
    except OSError:
        return None


def test_prometheus_scrapes_the_latency_histogram(tmp_path):
    prom = shutil.which("prometheus")
    if not prom:
        pytest.skip("prometheus is not installed (`make setup` installs Debian's prometheus package as root)")
    pytest.importorskip("prometheus_client", reason="diag[export] is not installed (make setup installs it)")
    mport, pport = free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: diag\n    static_configs: [{{targets: ['127.0.0.1:{mport}']}}]\n")
    with example_server("episodic_server", "--journal", f"{WORKDIR}/diag-prom-{os.getpid()}.bin") as (srv, port), \
            HttpLoad(port, rate=100, concurrency=2), \
            WatchProc(str(srv.pid), "--out", str(tmp_path / "w"), "--metrics-port", str(mport)) as w:
        w.wait("watching")
        p = subprocess.Popen([prom, f"--config.file={tmp_path / 'prometheus.yml'}",
                              f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{pport}"],
                             stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"))
        try:
            def query(q: str):
                body = http_get(f"http://127.0.0.1:{pport}/api/v1/query?" + urllib.parse.urlencode({"query": q}))
                if not body:
                    return None
                res = json.loads(body).get("data", {}).get("result") or []
                return res or None

            # THEN the request histogram, read back through Prometheus' own API
            res = wait_until(lambda: query('diag_request_duration_seconds_count{latency="server"} > 50'),
                             "Prometheus holding the scraped request histogram", 120, 0.5)
            assert res[0]["metric"]["pid"] == str(srv.pid)
            q = wait_until(lambda: query('histogram_quantile(0.5, sum by (le) (diag_request_duration_seconds_bucket'
                                         '{latency="server"}))'), "a quantile over the buckets", 60, 0.5)
            p50 = float(q[0]["value"][1])
            assert 0 < p50 < 1.0, p50
            fam = wait_until(lambda: query('diag_syscall_duration_seconds_count{family="read"}'),
                             "the per-family syscall histogram", 60, 0.5)
            print(f"\nPrometheus: {res[0]['value'][1]} requests, p50 {p50 * 1e3:.2f} ms, "
                  f"{fam[0]['value'][1]} read calls")
        finally:
            p.terminate()
            p.wait(30)


class Collector:
    """An OTLP/HTTP receiver that is not diag: the OpenTelemetry Collector built by
    contrib/otelcol/build.sh (its file exporter writes what it received as OTLP JSON) or, where it
    cannot be built (no Go module proxy), Rotel from contrib/otelcol/rotel.sh (it prints what it
    received in the Collector's debug-exporter format). Either decodes the protobuf itself."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.sink = tmp / "otel.jsonl"
        self.log = tmp / "receiver.log"
        reasons = []
        for script in ("build.sh", "rotel.sh"):
            r = subprocess.run(["bash", os.path.join(ROOT, "contrib", "otelcol", script)], capture_output=True,
                               text=True, timeout=2400)
            if r.returncode == 0 and r.stdout.strip():
                self.kind = "otelcol" if script == "build.sh" else "rotel"
                self.binary = r.stdout.strip().splitlines()[-1]
                break
            reasons.append(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"{script} failed")
        else:
            pytest.skip("no OTLP receiver: " + "; ".join(reasons))
        if self.kind == "otelcol":
            (tmp / "otelcol.yaml").write_text(f"""
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{self.port}
exporters:
  file:
    path: {self.sink}
    flush_interval: 100ms
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    metrics: {{receivers: [otlp], exporters: [file]}}
    logs: {{receivers: [otlp], exporters: [file]}}
""")
            argv = [self.binary, f"--config={tmp / 'otelcol.yaml'}"]
        else:
            argv = [self.binary, "start", "--otlp-http-endpoint", f"127.0.0.1:{self.port}",
                    "--otlp-grpc-endpoint", f"127.0.0.1:{free_port()}", "--exporter", "blackhole",
                    "--debug-log", "metrics", "--debug-log", "logs", "--debug-log-verbosity", "detailed"]
        self.out = open(self.log, "wb")
        self.p = subprocess.Popen(argv, stdout=self.out, stderr=subprocess.STDOUT)
        wait_until(lambda: self.p.poll() is not None or listening(self.port), f"{self.kind} listening", 60)
        assert self.p.poll() is None, self.log.read_text()[-2000:]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.p.terminate()
        try:
            self.p.wait(30)
        except subprocess.TimeoutExpired:
            self.p.kill()
        self.out.close()

    # what it received: [(resource attributes, point)] / [log attributes], values as plain strings
    def metric_points(self, name: str) -> list[tuple[dict, dict]]:
        return self._json_points(name) if self.kind == "otelcol" else self._debug_points(name)

    def finding_logs(self) -> list[dict]:
        return self._json_logs() if self.kind == "otelcol" else self._debug_logs()

    def _json(self) -> list[dict]:
        out = []
        for line in (self.sink.read_text().splitlines() if self.sink.exists() else ()):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    @staticmethod
    def _val(v: dict) -> str:
        return str(next(iter(v.values()))) if isinstance(v, dict) and v else str(v)

    def _json_points(self, name):
        out = []
        for obj in self._json():
            for rm in obj.get("resourceMetrics") or ():
                res = {a["key"]: self._val(a["value"]) for a in (rm.get("resource") or {}).get("attributes") or ()}
                for sm in rm.get("scopeMetrics") or ():
                    for m in sm.get("metrics") or ():
                        if m.get("name") == name and "exponentialHistogram" in m:
                            for dp in m["exponentialHistogram"].get("dataPoints") or ():
                                out.append((res, {"attributes": {a["key"]: self._val(a["value"])
                                                                 for a in dp.get("attributes") or ()},
                                                  "count": int(dp.get("count") or 0),
                                                  "buckets": [int(x) for x in (dp.get("positive") or {})
                                                              .get("bucketCounts") or ()]}))
        return out

    def _json_logs(self):
        out = []
        for obj in self._json():
            for rl in obj.get("resourceLogs") or ():
                for sl in rl.get("scopeLogs") or ():
                    for lr in sl.get("logRecords") or ():
                        attrs = {a["key"]: self._val(a["value"]) for a in lr.get("attributes") or ()}
                        if "diag.finding.id" in attrs:
                            out.append(attrs)
        return out

    def _debug_blocks(self, head: str) -> list[str]:
        import re
        text = re.sub(r"\x1b\[[0-9;]*m", "", self.log.read_text(errors="replace"))
        return [head + b for b in text.split(head)[1:]]

    @staticmethod
    def _attrs(lines: list[str]) -> dict:
        import re
        out = {}
        for line in lines:
            m = re.match(r"\s*-> ([\w.]+): \w+\((.*)\)\s*$", line)
            if m:
                out[m.group(1)] = m.group(2)
        return out

    def _debug_points(self, name):
        import re
        out = []
        for block in self._debug_blocks("ResourceMetrics #"):
            lines = block.splitlines()
            i_scope = next((i for i, x in enumerate(lines) if x.startswith("ScopeMetrics #")), len(lines))
            res = self._attrs(lines[:i_scope])
            for metric in block.split("Metric #")[1:]:
                if f"-> Name: {name}\n" not in metric or "DataType: ExponentialHistogram" not in metric:
                    continue
                for dp in metric.split("ExponentialHistogramDataPoints #")[1:]:
                    dl = dp.splitlines()
                    attrs = self._attrs(dl[: next((i for i, x in enumerate(dl) if x.startswith("StartTimestamp")),
                                                  len(dl))])
                    count = int(re.search(r"^Count: (\d+)", dp, re.M).group(1))
                    buckets = [int(x) for x in re.findall(r"^Bucket \(.*\], Count: (\d+)", dp, re.M)]
                    out.append((res, {"attributes": attrs, "count": count, "buckets": buckets}))
        return out

    def _debug_logs(self):
        out = []
        for block in self._debug_blocks("LogRecord #"):
            lines = block.split("ResourceLog #")[0].splitlines()
            i = next((k for k, x in enumerate(lines) if x.startswith("Attributes:")), None)
            if i is None:
                continue
            attrs = self._attrs(lines[i + 1:])
            if "diag.finding.id" in attrs:
                out.append(attrs)
        return out


def test_an_opentelemetry_receiver_gets_histograms_and_findings(tmp_path):
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="diag[export] is not installed")
    col = Collector(tmp_path)
    try:
        endpoint = col.endpoint
        with example_server("episodic_server", "--fault-on", "--record-kb", "256",
                            "--journal", f"{WORKDIR}/diag-otel-{os.getpid()}.bin") as (srv, port), \
                HttpLoad(port, rate=100, concurrency=4), \
                WatchProc(str(srv.pid), "--out", str(tmp_path / "w"), "--otlp-endpoint", endpoint,
                          "--otlp-interval", "1", "--service-name", "journal", "--after", "2") as w:
            w.wait("watching")
            wait_until(lambda: col.metric_points("diag.request.duration"),
                       f"an exponential histogram at {col.kind}", 120, 0.5)
            # a dump asked from another shell, and its findings as log records
            r = diag("watch", "--dump", "--out", str(tmp_path / "w"))
            assert r.returncode == 0, r.stderr
            cap = w.wait("capture")
            logs = wait_until(col.finding_logs, f"finding log records at {col.kind}", 60, 0.5)
        pts = col.metric_points("diag.request.duration")
        res, dp = [x for x in pts if x[1]["attributes"].get("latency") == "server"][-1]
        assert res["service.name"] == "journal" and int(res["process.pid"]) == srv.pid
        assert "process.command" in res
        assert dp["count"] > 0 and sum(dp["buckets"]) == dp["count"]
        fams = {d["attributes"].get("syscall.family") for _, d in col.metric_points("diag.syscall.duration")}
        assert "sync" in fams, fams
        ids = {a["diag.finding.id"] for a in logs}
        assert "disk-sync" in ids, ids
        assert any(a.get("diag.report.path") == cap["report"] for a in logs), logs
        print(f"\n{col.kind}: {len(pts)} request-duration points, last count {dp['count']}; findings {sorted(ids)}")
        # attach exports the same summary once
        with example_server("episodic_server", "--fault-on", "--record-kb", "256",
                            "--journal", f"{WORKDIR}/diag-otel2-{os.getpid()}.bin") as (srv2, port2), \
                HttpLoad(port2, rate=100, concurrency=4):
            r = diag("attach", str(srv2.pid), "-d", "4", "--collectors", "ebpf", "--quiet", "--out",
                     str(tmp_path / "a.diag"), "--otlp-endpoint", endpoint, "--service-name", "attach-once")
            assert r.returncode == 0, r.stderr
            assert "OTLP summary sent" in r.stderr
        got = wait_until(lambda: [r_ for r_, _ in col.metric_points("diag.request.duration")
                                  if r_.get("service.name") == "attach-once"],
                         "attach's export at the receiver", 60, 0.5)
        assert int(got[0]["process.pid"]) == srv2.pid
    finally:
        col.stop()


def test_the_systemd_unit_runs_the_watcher(tmp_path):
    if not os.path.isdir("/run/systemd/system"):
        try:
            init = Path("/proc/1/comm").read_text().strip()
        except OSError:
            init = "unknown"
        pytest.skip(f"PID 1 is not systemd here (it is {init!r}): systemd-run cannot start the unit")
    unit = (Path(ROOT) / "contrib" / "diag-watch.service").read_text()
    with example_server("episodic_server", "--journal", f"{WORKDIR}/diag-unit-{os.getpid()}.bin") as (srv, port):
        name = f"diag-watch-test-{os.getpid()}@{port}.service"
        text = unit.replace("/usr/local/bin/diag", f"{os.path.dirname(os.sys.executable)}/diag")
        Path(f"/run/systemd/system/{name.split('@')[0]}@.service").write_text(text)
        try:
            subprocess.run(["systemctl", "daemon-reload"], check=True)
            subprocess.run(["systemctl", "start", name], check=True)
            wait_until(lambda: b'"event": "watching"' in subprocess.run(
                ["journalctl", "-u", name, "-o", "cat", "--no-pager"], capture_output=True).stdout,
                "the unit's watching event in the journal", 120)
        finally:
            subprocess.run(["systemctl", "stop", name])
            os.unlink(f"/run/systemd/system/{name.split('@')[0]}@.service")
            subprocess.run(["systemctl", "daemon-reload"])
