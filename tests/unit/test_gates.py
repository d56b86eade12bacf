"""`--fail-on` gates: the grammar, what each gate reads, both outcomes, and the CLI's exit codes."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from diag import gates
from diag.errors import DiagError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FSYNC_TRACE = os.path.join(ROOT, "tests", "data", "perf", "fsync_tracepoints.txt")

MS = 1_000_000


def report(requests: dict | None = None, findings=(), rows=None, families=None) -> dict:
    rows = rows if rows is not None else [
        {"name": "fsync", "family": "sync", "fd_kind": "file", "count": 10, "p50_ns": 2 * MS, "p90_ns": 5 * MS,
         "p99_ns": 30 * MS, "max_ns": 40 * MS},
        {"name": "epoll_wait", "family": "poll", "fd_kind": "unknown", "count": 10, "p50_ns": 400 * MS,
         "p90_ns": 500 * MS, "p99_ns": 900 * MS, "max_ns": 1000 * MS},
        {"name": "wait4", "family": "other", "fd_kind": "unknown", "count": 1, "p50_ns": 9000 * MS,
         "p90_ns": 9000 * MS, "p99_ns": 9000 * MS, "max_ns": 9000 * MS},
        {"name": "recvfrom", "family": "read", "fd_kind": "socket", "count": 100, "p50_ns": 1 * MS,
         "p90_ns": 3 * MS, "p99_ns": 12 * MS, "max_ns": 60 * MS},
    ]
    return {"schema": "diag.report/1", "requests": requests,
            "latency": {"syscalls": rows, "families": families if families is not None else {
                "sync": {"count": 10, "p50_ns": 2 * MS, "p90_ns": 5 * MS, "p99_ns": 30 * MS, "max_ns": 40 * MS}}},
            "findings": [{"id": i, "severity": s, "share": 0.5, "summary": f"{i} summary"} for i, s in findings]}


REQS = {"count": 100, "latency": {"p50_ns": 3 * MS, "p90_ns": 20 * MS, "p99_ns": 80 * MS, "max_ns": 200 * MS}}


@pytest.mark.parametrize("expr,kind,metric,value", [
    ("p99>50ms", "latency", "p99", 50 * MS), ("p50 > 5ms", "latency", "p50", 5 * MS),
    ("max>1s", "latency", "max", 1_000_000_000), ("P90>=250us", "latency", "p90", 250_000),
    ("p99>20", "latency", "p99", 20 * MS), ("sync.p99>10ms", "latency", "p99", 10 * MS),
])
def test_latency_gates_parse(expr, kind, metric, value):
    g = gates.parse(expr)
    assert (g.kind, g.metric, g.value_ns, g.change) == (kind, metric, value, False)


def test_finding_severity_and_change_gates_parse():
    assert gates.parse("finding:disk-sync").finding == "disk-sync"
    g = gates.parse("severity>=warning")
    assert (g.kind, g.op, g.level) == ("severity", ">=", "warning")
    g = gates.parse("p99>+20%")
    assert g.change and g.percent == 20.0
    g = gates.parse("p50>+2ms")
    assert g.change and g.value_ns == 2 * MS and g.percent is None


@pytest.mark.parametrize("bad", ["p99", "p98>5ms", "p99>fast", "p99>20%", "severity>=bad", "finding:", "latency"])
def test_bad_gates_are_one_line_errors_naming_the_gate(bad):
    with pytest.raises(DiagError) as e:
        gates.parse(bad)
    assert repr(bad) in str(e.value) and "\n" not in str(e.value) and e.value.exit_code == 2


def test_latency_gate_reads_requests_when_present():
    # GIVEN a report with requests (p99 80 ms) and syscalls (worst work p99 30 ms)
    [fail] = gates.evaluate([gates.parse("p99>50ms")], report(REQS))
    [ok] = gates.evaluate([gates.parse("p99>100ms")], report(REQS))
    assert fail.failed and "request p99 = 80.0 ms" in fail.detail
    assert not ok.failed


def test_latency_gate_without_requests_reads_the_worst_work_syscall():
    # The waits (epoll_wait 900 ms, wait4 9 s) are left out: the worst work p99 is fsync's 30 ms.
    [r] = gates.evaluate([gates.parse("p99>50ms")], report())
    assert not r.failed and "fsync" in r.detail and "30.0 ms" in r.detail
    [r] = gates.evaluate([gates.parse("p99>25ms")], report())
    assert r.failed
    [r] = gates.evaluate([gates.parse("max>50ms")], report())   # recvfrom's max 60 ms
    assert r.failed and "recvfrom" in r.detail


def test_subject_gates_read_a_family_or_a_syscall():
    [fam] = gates.evaluate([gates.parse("sync.p99>10ms")], report(REQS))
    [name] = gates.evaluate([gates.parse("recvfrom.max<=60ms")], report(REQS))
    [never] = gates.evaluate([gates.parse("connect.p99>1ms")], report(REQS))
    [blind] = gates.evaluate([gates.parse("connect.p99>1ms")], report(REQS, rows=[], families={}))
    assert fam.failed and "sync family" in fam.detail
    assert name.failed
    assert not never.failed and "no connect calls" in never.detail      # never called: 0
    assert blind.failed and "not measurable" in blind.detail             # nothing timed at all


def test_a_latency_gate_with_nothing_to_measure_fails():
    [r] = gates.evaluate([gates.parse("p99>50ms")], report(rows=[], families={}))
    assert r.failed and "not measurable" in r.detail


def test_finding_and_severity_gates_both_outcomes():
    rep = report(findings=[("disk-sync", "warning"), ("small-reads", "info")])
    res = gates.evaluate(gates.parse_all(["finding:disk-sync", "finding:gc-pause", "severity>=warning",
                                          "severity>=critical", "severity==info"]), rep)
    assert [r.failed for r in res] == [True, False, True, False, True]
    assert "disk-sync (warning" in res[0].detail


def test_change_gates_need_a_baseline_and_compare_against_it():
    [r] = gates.evaluate([gates.parse("p99>+20%")], report(REQS))
    assert r.failed and "baseline" in r.detail
    base = report(dict(REQS, latency=dict(REQS["latency"], p99_ns=60 * MS, p50_ns=2 * MS)))
    cur = report(REQS, findings=[("disk-sync", "warning"), ("gil-contention", "info")])
    res = gates.evaluate_compare(gates.parse_all(["p99>+20%", "p99>+50%", "p50>+500us", "p50>+2ms",
                                                  "finding:new", "p99>50ms"]), base, cur)
    # p99 60 -> 80 ms is +33%; p50 2 -> 3 ms is +1 ms
    assert [r.failed for r in res] == [True, False, True, False, True, True]
    assert "+33.3%" in res[0].detail and res[4].detail == "appeared: disk-sync (warning)"


def test_cli_exit_codes_for_both_outcomes_with_every_gate_printed():
    # GIVEN a real perf trace of fsync calls (417 µs worst)
    def run(*gate_args):
        return subprocess.run([sys.executable, "-m", "diag", "replay", FSYNC_TRACE, "--quiet", *gate_args],
                              capture_output=True, text=True, cwd=ROOT)

    ok = run("--fail-on", "sync.max>100ms", "--fail-on", "severity>=critical")
    bad = run("--fail-on", "sync.max>100us", "--fail-on", "p99>100ms")
    typo = run("--fail-on", "p99>fast")
    assert ok.returncode == 0, ok.stderr
    assert [ln for ln in ok.stderr.splitlines() if ln.startswith("diag: gate passed: ")] and "FAILED" not in ok.stderr
    assert bad.returncode == 1
    failed = [ln for ln in bad.stderr.splitlines() if ln.startswith("diag: gate FAILED: ")]
    assert len(failed) == 1 and failed[0].startswith("diag: gate FAILED: sync.max>100us: sync family max = 417 µs")
    assert typo.returncode == 2 and "p99>fast" in typo.stderr
