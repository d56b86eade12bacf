"""The documented CI example, run for real: the same commands as the workflow in README.md (or
docs/ci.md), against a faulty load test (the gate fails: exit 1) and a healthy one (exit 0).
Also the pytest plugin (`pytest --diag-report=FILE`) on a real pytest session.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def _doc_with_example() -> str:
    for p in (ROOT / "README.md", ROOT / "docs" / "ci.md"):
        if p.exists() and re.search(r"```yaml.*?diag run.*?```", p.read_text(), re.S):
            return p.read_text()
    pytest.fail("no CI workflow example (a ```yaml block running `diag run`) in README.md or docs/ci.md")


def _workflow_commands(doc: str) -> tuple[str, str]:
    """The `diag run` command and the job-summary command of the documented workflow."""
    block = re.search(r"```yaml\n(.*?diag run.*?)```", doc, re.S).group(1)
    runs = re.findall(r"run: \|\n((?:\s{10}.*\n)+)", block)
    diag_cmd = next(r for r in runs if "diag run" in r)
    diag_cmd = re.sub(r"\\\n\s*", "", diag_cmd).strip()
    summary = next(line.split("run:", 1)[1].strip() for line in block.splitlines()
                   if "run:" in line and "GITHUB_STEP_SUMMARY" in line)
    # The workflow runs as a normal user with sudo; the tests run as root (or skip eBPF).
    diag_cmd = re.sub(r"^sudo .*?env \"PATH=\$PATH\" ", "", diag_cmd)
    return diag_cmd, summary


def _loadtest_source(doc: str) -> str:
    return re.search(r"```python\n(# loadtest\.py\n.*?)```", doc, re.S).group(1)


@pytest.fixture
def workdir():
    # On disk (not tmpfs): fsync must really wait for the device, as in CI.
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="ci-example-", dir="/var/tmp"))
    yield d
    import shutil

    shutil.rmtree(d, ignore_errors=True)


def _run_example(workdir: Path, fault: str) -> tuple[subprocess.CompletedProcess, str]:
    doc = _doc_with_example()
    cmd, summary = _workflow_commands(doc)
    (workdir / "loadtest.py").write_text(_loadtest_source(doc))
    if fault == "none":
        cmd = cmd.replace("python loadtest.py", "python loadtest.py --fault none")
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}", PYTHONPATH=str(ROOT),
               GITHUB_STEP_SUMMARY=str(workdir / "step-summary.md"))
    r = subprocess.run(["bash", "-c", cmd], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    subprocess.run(["bash", "-c", summary], cwd=workdir, env=env, check=True)
    return r, cmd


def _require_syscall_collector(report: dict) -> None:
    ok = [n for n in ("ebpf", "strace", "perf") if (report["collectors"].get(n) or {}).get("status") == "ok"]
    if not ok:
        pytest.skip(f"no syscall collector could run here: {report['collectors']}")


@pytest.mark.slow
def test_ci_example_fails_the_job_on_the_faulty_server(workdir):
    # GIVEN the documented workflow and a load test whose server fsyncs on the request path
    # WHEN its commands run
    r, cmd = _run_example(workdir, "fsync")
    report = json.loads((workdir / "diag-report.json").read_text())
    _require_syscall_collector(report)
    # THEN the job fails with exit 1, the failing gate printed on its own line
    assert r.returncode == 1, (cmd, r.returncode, r.stderr[-3000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("diag: gate FAILED: ")]
    assert any(ln.startswith("diag: gate FAILED: sync.p99>1ms: sync family p99 = ") for ln in lines), r.stderr[-3000:]
    # the finding gate follows the analysis: it fails exactly when disk-sync was reported
    fired = any(f["id"] == "disk-sync" for f in report["findings"])
    assert fired == any("finding:disk-sync" in ln for ln in lines)
    # and the artifacts are there: a self-contained HTML report under 2 MB, the job summary
    html = (workdir / "diag-report.html").read_text()
    assert 10_000 < len(html.encode()) < 2_000_000
    assert "fsync" in html and "http://" not in html.split("<script>", 1)[0]
    summary = (workdir / "step-summary.md").read_text()
    assert "`sync.p99>1ms`" in summary and "❌ failed" in summary


@pytest.mark.slow
def test_ci_example_passes_the_job_on_the_healthy_server(workdir):
    # GIVEN the same workflow, the server without the fsync fault
    r, cmd = _run_example(workdir, "none")
    report = json.loads((workdir / "diag-report.json").read_text())
    _require_syscall_collector(report)
    # THEN every gate passes and the load test's own exit code (0) goes through
    assert r.returncode == 0, (cmd, r.returncode, r.stderr[-3000:])
    assert not [ln for ln in r.stderr.splitlines() if "gate FAILED" in ln]
    assert len([ln for ln in r.stderr.splitlines() if ln.startswith("diag: gate passed: ")]) == 3
    assert (workdir / "diag-report.html").exists()
    assert "✅ passed" in (workdir / "step-summary.md").read_text()


PYTEST_LOAD_TEST = '''
import os, time

def test_journal_writes_with_fsync(tmp_path):
    fd = os.open(os.environ["DIAG_TEST_JOURNAL"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    end = time.monotonic() + 2.5
    while time.monotonic() < end:
        os.write(fd, b"x" * 65536)
        os.fsync(fd)
    os.close(fd)

def test_cpu():
    t = 0
    for i in range(2_000_000):
        t += i * i
    assert t
'''


@pytest.mark.slow
@pytest.mark.parametrize("gate,expected_rc", [("sync.p99>10s", 0), ("sync.max>1us", 1)])
def test_pytest_plugin_diagnoses_the_session(workdir, gate, expected_rc):
    # GIVEN a pytest load test
    if os.geteuid() != 0:
        pytest.skip("the sync gates need eBPF on the session (root)")
    (workdir / "test_load.py").write_text(PYTEST_LOAD_TEST)
    report = workdir / "session.html"
    env = dict(os.environ, PYTHONPATH=str(ROOT), DIAG_TEST_JOURNAL=str(workdir / "journal.bin"))
    # WHEN the session runs under diagnosis
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(workdir / "test_load.py"),
                        f"--diag-report={report}", "--diag-collectors=ebpf,py-spy,process",
                        f"--diag-fail-on={gate}", "--rootdir", str(workdir)],
                       cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    # THEN the tests pass, the report is written, and the gate decides the exit code
    assert "2 passed" in r.stdout, r.stdout[-3000:]
    assert report.exists(), r.stdout[-3000:] + (workdir / "session.diag.log").read_text()[-3000:]
    assert r.returncode == expected_rc, r.stdout[-3000:]
    assert f"diag: gate {'FAILED' if expected_rc else 'passed'}: {gate}" in r.stdout
    js = subprocess.run([sys.executable, "-m", "diag", "replay", str(workdir / "session.diag"), "--json", "-"],
                        capture_output=True, text=True, cwd=ROOT)
    data = json.loads(js.stdout)
    assert data["target"]["pid"] and data["collectors"]["process"]["status"] == "ok"
    assert data["latency"]["families"].get("sync", {}).get("count", 0) > 10
    frames = {f for st in data["flame"]["all"]["stacks"] for f in st["frames"]}
    assert any("test_cpu" in f or "test_journal_writes_with_fsync" in f for f in frames)


@pytest.mark.parametrize("gate,expected", [("severity>=critical", 3), ("p99>1ms", 1)])
def test_run_passes_the_command_exit_code_unless_a_gate_fails(tmp_path, gate, expected):
    # GIVEN a command that exits 3 and does no I/O worth measuring
    # WHEN it runs under diag with a gate that passes (no critical finding) or fails (nothing measurable)
    r = subprocess.run([sys.executable, "-m", "diag", "run", "--collectors", "process", "--out", str(tmp_path / "c"),
                        "--quiet", "--markdown", str(tmp_path / "s.md"), "--fail-on", gate, "--",
                        "sh", "-c", "sleep 0.3; exit 3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    # THEN the command's code goes through, unless the gate failed: then 1
    assert r.returncode == expected, r.stderr
    assert (tmp_path / "s.md").exists()
    if expected == 1:
        assert "diag: gate FAILED: p99>1ms: not measurable" in r.stderr
