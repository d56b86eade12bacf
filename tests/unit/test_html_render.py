"""The HTML and Markdown renderers on the same inputs: empty, partial, full, hostile, large."""
from __future__ import annotations

import base64
import copy
import hashlib
import re

import pytest

from diag.analyze.report import build_report
from diag.model import Dataset
from diag.render import html, markdown

MS = 1_000_000
T0 = 1_000_000_000_000
PAYLOADS = ['<script>alert(1)</script>', '"><img src=x onerror=alert(2)>', "'><svg onload=alert(3)>",
            '</script><script>alert(4)</script>', '<!--', ']]>{{7*7}}']
SECTIONS = ["verdict", "findings", "matrix", "latency", "timelines", "flames", "collectors", "environment"]


def full_report() -> dict:
    frames = ["main (app.py:1)", "handle (app.py:10)", "journal.append (app.py:40)", "fsync [kernel]"]
    stacks = [{"frames": frames[:k], "count": 10 * k} for k in range(1, 5)]
    calls = [{"name": n, "family": f, "pid": 1, "tid": 7, "start_ns": T0 + i * 2 * MS, "dur_ns": MS, "fd": 3,
              "fd_kind": "file", "bytes": 4096, "ret": 4096, "errno": None, "source": "ebpf"}
             for i, (n, f) in enumerate([("read", "read"), ("fsync", "sync"), ("write", "write")])]
    calls[1]["dur_ns"] = 3 * MS
    samples = [{"ts_ns": T0 + i * MS, "source": "py-spy", "on_cpu": True, "dur_ns": None, "frames": frames[:3]}
               for i in range(5)]
    samples.append({"ts_ns": T0 + 2 * MS, "source": "ebpf", "on_cpu": False, "dur_ns": MS, "frames": frames[2:]})
    req = {"start_ns": T0, "end_ns": T0 + 6 * MS, "latency_ns": 6 * MS, "tid": 7, "pid": 1, "fd": 9,
           "bytes_in": 80, "bytes_out": 120, "breakdown": {"sync": 4 * MS, "user": MS}}
    return {
        "schema": "diag.report/1", "tool": {"name": "diag", "version": "0.1.0"},
        "target": {"pid": 1, "comm": "app", "cmdline": ["python3", "app.py", "--port", "8080"]},
        "host": {"kernel": "6.1.0", "hostname": "h", "cpus": 4, "os": "Linux", "machine": "x86_64"},
        "window": {"start_ns": T0, "end_ns": T0 + 5_000 * MS, "duration_s": 5.0},
        "collectors": {"ebpf": {"status": "ok", "events": 100, "lost": 3, "reason": None, "format": "ebpf-jsonl",
                                "settings": {"slow_ns": MS, "tracepoints": ["a", "b"]}},
                       "strace": {"status": "unavailable", "events": 0, "lost": 0, "reason": "not installed",
                                  "settings": {}}},
        "alignment": {"error_ns": 2 * MS, "note": "aligned within ±2 ms",
                      "streams": [{"stream": "ebpf", "format": "ebpf-jsonl", "clock": "monotonic", "aligned": True,
                                   "offset_ns": 0, "uncertainty_ns": 0}]},
        "counts": {"syscalls": 3, "timed_syscalls": 3, "stack_samples": 100, "snapshots": 0, "threads": 1},
        "latency": {"syscalls": [{"name": "fsync", "fd_kind": "file", "family": "sync", "count": 10,
                                  "total_ns": 40 * MS, "p50_ns": 2 * MS, "p90_ns": 5 * MS, "p99_ns": 9 * MS,
                                  "max_ns": 12 * MS, "errors": 0, "approx": True}],
                    "families": {"sync": {"count": 10, "total_ns": 40 * MS, "p50_ns": 2 * MS, "p90_ns": 5 * MS,
                                          "p99_ns": 9 * MS, "max_ns": 12 * MS, "approx": True},
                                 "read": {"count": 50, "total_ns": 5 * MS, "p50_ns": 20_000, "p90_ns": 90_000,
                                          "p99_ns": 400_000, "max_ns": MS}}},
        "slowest": calls[1:2], "slowest_waits": [],
        "spikes": [{"start_ns": T0, "end_ns": T0 + 6 * MS, "calls": 1, "total_ns": MS, "worst": calls[1]}],
        "requests": {"count": 200, "slow_threshold_ns": 5 * MS, "slow_count": 2, "slow_total_ns": 12 * MS,
                     "latency": {"p50_ns": MS, "p90_ns": 3 * MS, "p99_ns": 6 * MS, "max_ns": 7 * MS},
                     "histogram": [[2 ** k * 1000, 10 + k] for k in range(8, 13)],
                     "breakdown": {"sync": 8 * MS, "user": 2 * MS}, "slowest": [req]},
        "timelines": [{"tid": 7, "start_ns": T0 - MS, "end_ns": T0 + 8 * MS, "request": req, "syscalls": calls,
                       "samples": samples}],
        "flame": {"all": {"total": 100, "dropped": 0, "stacks": stacks},
                  "slow": {"total": 40, "dropped": 5, "stacks": stacks[2:]}},
        "matrix": [{"id": "io-path", "observation": "one syscall ≈ the spike", "status": "triggered",
                    "evidence": ["fsync of 12 ms"], "look_first": "the I/O path", "source": "syscalls",
                    "findings": ["disk-sync"]}],
        "findings": [{"id": "disk-sync", "rank": 1, "severity": "warning", "share": 0.66, "impact_ns": 8 * MS,
                      "summary": "fsync on the request path",
                      "evidence": [{"source": "ebpf", "text": "fsync 12 ms", "window": {"start_ns": T0, "end_ns": T0 + MS}}],
                      "recommendation": "Move fsync off the request path."}],
        "warnings": ["a warning"],
    }


def poison(obj, depth=0):
    keep = {"schema", "severity", "status", "family", "fd_kind", "source"}
    if isinstance(obj, dict):
        return {(k + PAYLOADS[i % len(PAYLOADS)] if depth and k not in keep and obj is not None and k.isalpha()
                 and k in ("sync", "read", "user", "ebpf", "strace") else k):
                (v if k in keep else poison(v, depth + 1)) for i, (k, v) in enumerate(obj.items())}
    if isinstance(obj, list):
        return [poison(v, depth + 1) for v in obj]
    if isinstance(obj, str):
        return obj + PAYLOADS[len(obj) % len(PAYLOADS)]
    return obj


def test_empty_dataset_renders_every_section_with_an_empty_state():
    out = html.render(build_report(Dataset()))
    assert "Nothing to diagnose" in out and "No finding fired." in out and "No stack samples" in out
    for s in SECTIONS:
        assert f'id="{s}"' in out
    assert out.count("<script>") == 1 and "d3js.org" not in out   # no flame graph: no d3


@pytest.mark.parametrize("keys", [[], ["schema"], ["findings"], ["latency", "window"], ["timelines", "spikes"],
                                  ["flame"], ["requests"]])
def test_partial_reports_render(keys):
    full = full_report()
    out = html.render({k: full[k] for k in keys})
    assert out.startswith("<!DOCTYPE html>") and out.rstrip().endswith("</html>")


def test_full_report_sections_in_order_with_requests_and_both_flames():
    out = html.render(full_report())
    pos = [out.index(f'id="{s}"') for s in SECTIONS]
    assert pos == sorted(pos)
    assert "WARNING: disk-sync explains 66% of the time" in out
    assert 'id="flame-slow"' in out and 'id="flame-all"' in out
    assert "Stacks during slow requests" in out and "Whole capture" in out
    assert "Slow request 1: 6.0 ms on tid 7" in out
    assert "off-CPU kernel stack (ebpf), blocked 1.0 ms" in out
    assert "py-spy frames of tid 7" in out
    assert "200 requests, 2 slower than 5.0 ms" in out
    assert "6.1.0" in out and "python3 app.py --port 8080" in out and "slow_ns=1000000" in out
    assert 'class="lost"' in out     # lost events stand out


def test_only_the_whole_capture_flame_without_slow_stacks():
    r = full_report()
    del r["flame"]["slow"]
    out = html.render(r)
    assert 'id="flame-all"' in out and 'id="flame-slow"' not in out
    assert "the whole-capture flame graph only" in out


def test_every_target_string_is_escaped():
    out = html.render(poison(full_report()))
    for p in PAYLOADS[:4]:
        assert p not in out, p
    assert "<img" not in out and "<svg onload" not in out
    # the data block cannot be closed early: < > & are \u-escaped by |tojson
    data = re.search(r'<script type="application/json" id="diag-data">(.*?)</script>', out, re.S).group(1)
    assert "<" not in data and "\\u003cscript\\u003e" in data
    # and the escaped text is there for the reader
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out


def test_csp_allows_exactly_our_inline_scripts_and_no_network():
    out = html.render(full_report())
    import html as _html

    csp = _html.unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', out).group(1))
    assert "default-src 'none'" in csp and "connect-src" not in csp
    scripts = re.findall(r"<script>(.*?)</script>", out, re.S)
    assert len(scripts) == 3
    for s in scripts:
        h = base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()
        assert f"'sha256-{h}'" in csp
    assert not re.search(r'(src|href)="(https?:)?//', out)


def test_output_is_deterministic():
    assert html.render(full_report()) == html.render(copy.deepcopy(full_report()))


def test_a_busy_capture_stays_under_2_mb():
    # GIVEN the largest report the analysis emits: 400 stacks of 40 frames (all + slow), 3 timelines
    # of 300 syscalls and 300 samples, 60 syscall rows
    r = full_report()
    frames = [f"module_{d}.function_{d} (/srv/app/package/module_{d}.py:{d * 10})" for d in range(40)]
    stacks = [{"frames": frames[: 10 + k % 30] + [f"leaf_{k}"], "count": 1000 - k} for k in range(400)]
    r["flame"] = {"all": {"total": 10**6, "dropped": 5000, "stacks": stacks},
                  "slow": {"total": 10**5, "dropped": 500, "stacks": stacks}}
    tl = r["timelines"][0]
    tl["syscalls"] = [dict(tl["syscalls"][0], start_ns=T0 + i * 10_000) for i in range(300)]
    tl["samples"] = [dict(tl["samples"][0], ts_ns=T0 + i * 10_000, frames=frames) for i in range(300)]
    r["timelines"] = [tl] * 3
    r["latency"]["syscalls"] = r["latency"]["syscalls"] * 60
    out = html.render(r)
    assert len(out.encode()) < 2_000_000, len(out.encode())


def test_markdown_summary_is_short_and_escaped():
    md = markdown.render(poison(full_report()))
    assert md.startswith("### diag: WARNING: disk-sync") and len(md.splitlines()) < 40
    # Code spans show their content verbatim (CommonMark): raw markup may only appear inside them
    outside = re.sub(r"`[^`]*`", "", md)
    assert "<script>" not in outside and "<img" not in outside and "<svg" not in outside
    plain = markdown.render(full_report())
    assert "| 200 | 1.0 ms | 3.0 ms | 6.0 ms | 7.0 ms | 2 |" in plain
    assert markdown.render(build_report(Dataset())).startswith("### diag: Nothing to diagnose")
