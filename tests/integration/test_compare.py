"""`diag compare`: two real scenario captures (healthy, then the disk-sync fault), side by side."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from diag import compare as cmp_mod

ROOT = Path(__file__).resolve().parents[2]
MS = 1_000_000


def _report(p99_ms: float, findings=(), families=None) -> dict:
    return {"schema": "diag.report/1", "target": {"comm": "app"}, "window": {"duration_s": 1.0},
            "counts": {"timed_syscalls": 1},
            "requests": {"count": 10, "latency": {"p50_ns": MS, "p90_ns": 2 * MS, "p99_ns": int(p99_ms * MS),
                                                  "max_ns": int(p99_ms * MS)}},
            "latency": {"syscalls": [], "families": families or {}},
            "findings": [{"id": i, "severity": "warning", "share": 0.5, "summary": i} for i in findings]}


def test_comparison_of_two_reports():
    base = _report(10, ["small-reads"], {"sync": {"count": 5, "total_ns": 10 * MS, "p99_ns": 2 * MS, "max_ns": 3 * MS}})
    cur = _report(30, ["disk-sync", "small-reads"],
                  {"sync": {"count": 50, "total_ns": 100 * MS, "p99_ns": 9 * MS, "max_ns": 20 * MS},
                   "futex": {"count": 1, "total_ns": 1, "p99_ns": 1, "max_ns": 1}})
    c = cmp_mod.compare(base, cur)
    [req, sysc] = c["latency"]
    assert req["name"] == "requests" and req["change"]["p99"] == pytest.approx(2.0)
    assert [f["name"] for f in c["families"]] == ["sync", "futex"]
    assert c["families"][0]["count"] == {"base": 5, "current": 50, "change": 9.0}
    assert c["families"][1]["count"]["base"] is None
    assert [f["id"] for f in c["findings"]["appeared"]] == ["disk-sync"]
    assert c["findings"]["disappeared"] == [] and c["findings"]["persisting"][0]["id"] == "small-reads"
    page = cmp_mod.render_html(c)
    assert "Appeared" in page and "disk-sync" in page and "+200%" in page


def test_hostile_strings_in_compare_html_are_escaped():
    base = _report(10, ["x"])
    base["findings"][0]["summary"] = "<script>alert(1)</script>"
    page = cmp_mod.render_html(cmp_mod.compare(base, _report(10), "<b>base</b>", "cur"))
    assert "<script>alert(1)" not in page and "<b>base</b>" not in page


def _capture(fault: str, tmp: Path) -> Path:
    from diag.examples.load import drive

    srv = subprocess.Popen([sys.executable, str(ROOT / "tests" / "scenarios" / "targets.py"), fault, "--dir", str(tmp)],
                           stdout=subprocess.PIPE, text=True)
    try:
        port = int(srv.stdout.readline().rsplit(":", 1)[1])
        load = threading.Thread(target=drive, kwargs=dict(host="127.0.0.1", port=port, requests=2000, seconds=5,
                                                          concurrency=4, rate=200), daemon=True)
        load.start()
        out = tmp / f"{fault}.diag"
        r = subprocess.run([sys.executable, "-m", "diag", "attach", str(srv.pid), "--duration", "3", "--collectors",
                            "ebpf,py-spy,process", "--out", str(out), "--quiet", "--json", str(tmp / f"{fault}.json")],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        load.join()
        return out
    finally:
        srv.terminate()
        srv.wait(10)


@pytest.fixture(scope="module")
def captures():
    if os.geteuid() != 0:
        pytest.skip("capturing the scenarios with eBPF needs root")
    tmp = Path(tempfile.mkdtemp(prefix="diag-compare-", dir="/var/tmp"))
    try:
        yield _capture("healthy", tmp), _capture("disk-sync", tmp)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def _compare(*args):
    return subprocess.run([sys.executable, "-m", "diag", "compare", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_compare_real_captures_flags_the_regression(captures, tmp_path):
    healthy, faulty = captures
    # WHEN the faulty capture is compared to the healthy baseline (a capture and a JSON report)
    r = _compare(healthy.with_suffix(".json"), faulty, "--html", tmp_path / "cmp.html", "--json", tmp_path / "cmp.json",
                 "--fail-on", "p99>+20%", "--fail-on", "finding:new")
    # THEN the p99 gate fails (exit 1), printed on its own line; finding:new fails with it when
    # the analysis ranked the fault at warning level (its own tests judge that)
    assert r.returncode == 1, r.stderr
    failed = [ln for ln in r.stderr.splitlines() if ln.startswith("diag: gate FAILED: ")]
    assert failed[0].startswith("diag: gate FAILED: p99>+20%: request p99: ")
    c = json.loads((tmp_path / "cmp.json").read_text())
    assert c["schema"] == "diag.compare/1"
    appeared = {f["id"]: f["severity"] for f in c["findings"]["appeared"]}
    assert (len(failed) == 2) == any(s in ("warning", "critical") for s in appeared.values())
    assert "disk-sync" in appeared or not c["findings"]["disappeared"]
    assert c["latency"][0]["name"] == "requests" and c["latency"][0]["change"]["p99"] > 0.2
    sync = next(f for f in c["families"] if f["name"] == "sync")
    assert (sync["count"]["current"] or 0) > (sync["count"]["base"] or 0)
    page = (tmp_path / "cmp.html").read_text()
    assert f"{len(failed)} of 2 gates failed" in page


@pytest.mark.slow
def test_compare_the_other_way_passes_the_gates(captures):
    healthy, faulty = captures
    r = _compare(faulty, healthy, "--fail-on", "p99>+20%", "--fail-on", "finding:new", "--quiet")
    assert r.returncode == 0, r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.startswith("diag: gate passed: ")]) == 2


def test_compare_rejects_a_json_file_that_is_not_a_report(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"hello": 1}')
    r = _compare(bad, bad)
    assert r.returncode == 2 and "not a diag JSON report" in r.stderr and len(r.stderr.strip().splitlines()) == 1
