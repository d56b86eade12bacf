"""The rules whose cause is time in one part of a slow request: disk-sync, file-io, slow-upstream,
explicit-sleep, cpu-bound (synthetic requests; nothing runs)."""
from __future__ import annotations

import pytest
from synth import ctx, request, steady

from diag.analyze.rules import cpu_bound, disk_sync, explicit_sleep, file_io, slow_upstream

SLOW = range(100, 110)


@pytest.mark.parametrize("rule, family", [(disk_sync, "sync"), (file_io, "file"), (slow_upstream, "upstream"),
                                          (explicit_sleep, "sleep")])
def test_time_in_one_family_is_its_finding(rule, family):
    # GIVEN 100 fast requests and 10 slow ones whose time went to the family (25 of 30 ms)
    c = ctx(steady() + [request(i, 30, **{family: 25}) for i in SLOW])
    # WHEN the rule runs
    f = rule.check(c)
    # THEN it explains that share, at warning or above, with its own id
    assert f is not None and f.id == rule.ID
    assert f.share == pytest.approx(25 / 30, abs=0.01)
    assert f.severity in ("warning", "critical") and f.impact_ns == 10 * 25_000_000


@pytest.mark.parametrize("rule", [disk_sync, file_io, slow_upstream, explicit_sleep])
def test_a_family_below_the_minimum_share_is_not_a_finding(rule):
    family = {disk_sync: "sync", file_io: "file", slow_upstream: "upstream", explicit_sleep: "sleep"}[rule]
    c = ctx(steady() + [request(i, 30, **{family: 1}) for i in SLOW])     # 1 of 30 ms: 3 %
    assert rule.check(c) is None


def test_time_of_a_few_hundred_microseconds_is_info_whatever_its_share():
    c = ctx(steady(latency_ms=0.2) + [request(i, 0.5, sync=0.45) for i in SLOW])
    f = disk_sync.check(c)
    assert f is not None and f.share > 0.8 and f.severity == "info"


def test_cpu_bound_is_the_time_no_syscall_explains():
    c = ctx(steady() + [request(i, 40, socket=1) for i in SLOW])
    f = cpu_bound.check(c)
    assert f is not None and f.id == "cpu-bound" and f.share > 0.9 and f.severity in ("warning", "critical")


def test_cpu_bound_is_silent_when_syscalls_explain_the_time():
    c = ctx(steady() + [request(i, 40, sync=38) for i in SLOW])
    assert cpu_bound.check(c) is None


def test_no_requests_no_time_finding():
    assert all(r.check(ctx()) is None for r in (disk_sync, file_io, slow_upstream, explicit_sleep, cpu_bound))
