"""What diag exports (diag/telemetry/): the kernel's slots as Prometheus buckets and OTLP
exponential buckets, from the watcher's stats and from a capture."""
from __future__ import annotations

import math

import pytest

from diag.errors import DiagError
from diag.telemetry import prometheus, require, summary

MS = 1_000_000


def stats():
    return {"ts_ns": 1, "agent_pid": 5, "records": {"calls": 12},
            "requests": {"sub_bits": 2, "server": [[80, 5], [81, 2]], "client": [[80, 7]]},
            "syscalls": {"fsync": {"count": 3, "total_ns": 9 * MS, "hist": [[2097152, 3]]},
                         "fdatasync": {"count": 1, "total_ns": 1 * MS, "hist": [[524288, 1]]},
                         "read": {"count": 4, "total_ns": 4000, "hist": [[512, 4]]}},
            "family_time": {"sync": [[2097152, 4]]}, "ring": {"dropped": {"segments": 2}}}


def test_stats_become_family_histograms_with_exact_sums():
    s = summary.from_stats(stats(), {"service.name": "svc"})
    assert s.syscall_families["sync"] == [(524288, 1048576, 1), (2097152, 4194304, 3)]
    assert s.syscall_sums_ns["sync"] == 10 * MS
    assert s.requests["server"][0][2] == 5 and s.slow_calls == 12 and s.ring_dropped_segments == 2


def test_prometheus_buckets_are_exact_at_powers_of_two():
    s = summary.from_stats(stats(), {})
    b = dict(prometheus.buckets(s.syscall_families["sync"]))
    assert b[repr((1 << 20) / 1e9)] == 1          # the 0.5-1 ms call
    assert b[repr((1 << 22) / 1e9)] == 4          # all four
    assert b["+Inf"] == 4
    # request slots (log-linear, 4 per power of two) nest inside the same boundaries
    rb = prometheus.buckets(s.requests["server"])
    assert rb[-1] == ("+Inf", 7.0)
    assert all(a[1] <= b_[1] for a, b_ in zip(rb, rb[1:]))


def test_otlp_exponential_buckets_hold_every_count_near_its_value():
    otlp = pytest.importorskip("diag.telemetry.otlp")
    slots = [(2 * MS, 4 * MS, 3), (20 * MS, 24 * MS, 2)]
    offset, counts, zero = otlp.exp_buckets(slots)
    assert sum(counts) == 5 and zero == 0
    base = 2 ** (2 ** -otlp.SCALE)
    for lo, hi, n in slots:
        i = otlp.exp_index((lo + hi) / 2 / 1e9)
        assert counts[i - offset] >= n
        # bucket i is (base^i, base^(i+1)]: the slot's midpoint is inside
        assert base ** i < (lo + hi) / 2 / 1e9 <= base ** (i + 1) * (1 + 1e-12)


def test_otlp_metrics_data_carries_resource_and_exponential_histograms():
    otlp = pytest.importorskip("diag.telemetry.otlp")
    res = summary.resource_for({"pid": 42, "comm": "redis-server", "cmdline": ["redis-server", "--port", "1"],
                                "container_id": "a" * 64}, None)
    assert res["service.name"] == "redis-server" and res["process.pid"] == 42 and res["container.id"] == "a" * 64
    exp = otlp.OtlpExporter("http://127.0.0.1:9", res)       # never sent in this test
    try:
        s = summary.from_stats(stats(), res)
        s.findings[("disk-sync", "warning")] = 1
        md = exp.metrics_data(s)
    finally:
        exp.shutdown()
    rm = md.resource_metrics[0]
    assert rm.resource.attributes["process.pid"] == 42
    metrics = {m.name: m for m in rm.scope_metrics[0].metrics}
    dp = metrics["diag.request.duration"].data.data_points
    assert {p.attributes["latency"] for p in dp} == {"server", "client"}
    assert all(p.scale == otlp.SCALE and p.count == sum(p.positive.bucket_counts) for p in dp)
    sync = next(p for p in metrics["diag.syscall.duration"].data.data_points if p.attributes["syscall.family"] == "sync")
    assert math.isclose(sync.sum, 0.010)
    f = metrics["diag.findings"].data.data_points[0]
    assert f.attributes == {"finding": "disk-sync", "severity": "warning"} and f.value == 1


def test_a_flag_whose_library_is_missing_is_one_line_exit_2():
    with pytest.raises(DiagError) as e:
        require("--metrics-port", ("no_such_module_diag_test",))
    assert e.value.exit_code == 2 and "pip install 'diag[export]'" in str(e.value) and "\n" not in str(e.value)
