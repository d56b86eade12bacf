"""Installed like a user installs it: a built wheel (not editable) in a fresh venv, run from elsewhere.

The checkout's `.venv` holds an editable install that reads probes/ and reports/ from the
repository; a wheel must carry them as package data. This builds the wheel from a copy of the
sources, installs it into a new venv (with system site-packages, as the README says, so the
distribution's python3-bpfcc imports) and runs `diag replay --html` and `diag doctor` from a
directory that is not the checkout. The eBPF agent's fallback interpreter (/usr/bin/python3 with
the installed package on PYTHONPATH) is run too: it must find the probe inside the wheel.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
# What a wheel is built from (the sdist's content); nothing from .venv, out/ or tests/.
SOURCES = ("diag", "probes", "reports", "setup.py", "pyproject.toml", "README.md")
NO_NETWORK = ("NewConnectionError", "Temporary failure in name resolution", "No matching distribution",
              "Could not find a version", "Network is unreachable", "ProxyError")

pytestmark = pytest.mark.slow


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env={**env, **kw.pop("env", {})},
                          timeout=kw.pop("timeout", 600), **kw)


def _pip(args: list, what: str) -> subprocess.CompletedProcess:
    r = _run(args)
    if r.returncode != 0:
        out = r.stdout + r.stderr
        if any(s in out for s in NO_NETWORK):
            pytest.skip(f"{what} needs the package index, unreachable here: {out.strip().splitlines()[-1][:200]}")
        raise AssertionError(f"{what} failed:\n{out[-3000:]}")
    return r


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> tuple[Path, Path]:
    """(the built wheel, a fresh venv with it installed)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in SOURCES:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(p, src / name)
    _pip([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", base / "dist", src], "building the wheel")
    wheel = next((base / "dist").glob("diag-*.whl"))
    system_python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else os.path.realpath(sys.executable)
    venv = base / "venv"
    r = _run([system_python, "-m", "venv", "--system-site-packages", venv])
    assert r.returncode == 0, r.stderr
    _pip([venv / "bin" / "python", "-m", "pip", "install", "-q", wheel], "installing the wheel's dependencies")
    return wheel, venv


def test_wheel_carries_probes_and_report_assets(wheel_venv):
    wheel, _ = wheel_venv
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("diag/probes/diag_probe.c", "diag/probes/diag_events.h",
                     "diag/reports/templates/report.html.j2", "diag/reports/static/report.css",
                     "diag/reports/static/report.js", "diag/reports/static/vendor/d3.min.js",
                     "diag/resources.py", "diag/agent/__main__.py"):
        assert required in names, f"{required} missing from {wheel.name}"
    assert not any("__pycache__" in n or n.startswith(("tests/", "probes/", "reports/")) for n in names)


def test_installed_wheel_replays_to_html_and_runs_doctor(wheel_venv, tmp_path):
    _, venv = wheel_venv
    diag = venv / "bin" / "diag"
    # GIVEN the installed package, run from a directory that is not the checkout
    r = _run([venv / "bin" / "python", "-c", "import json, diag, diag.resources as r; "
              "print(json.dumps([diag.__file__, str(r.probe_dir()), str(r.reports_dir())]))"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    module, probes, reports = json.loads(r.stdout)
    site = str(venv / "lib")
    assert all(p.startswith(site) for p in (module, probes, reports)), (module, probes, reports)
    # WHEN it replays a real strace log to an HTML report
    html = tmp_path / "report.html"
    r = _run([diag, "replay", "--quiet", "--html", html, DATA / "strace" / "threads_yy.log"], cwd=tmp_path)
    # THEN the report is written whole, with its inline assets
    assert r.returncode == 0, r.stderr
    text = html.read_text()
    assert text.startswith("<!DOCTYPE html>") and "Content-Security-Policy" in text and "</html>" in text
    assert "threads_yy.log" in text
    # AND doctor runs, finds the report assets inside the installed package, and says what can run
    r = _run([diag, "doctor", "--json"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    checks = {c["collector"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["process"]["ok"]
    assert checks["html report"]["ok"] and reports in checks["html report"]["detail"]
    print("\ninstalled doctor:", {k: (v["ok"], v["detail"][:70]) for k, v in checks.items()})


def test_ebpf_agent_fallback_finds_the_probe_in_the_wheel(wheel_venv, tmp_path):
    """The agent command the collector builds when the venv's python cannot import bcc: the system
    python with the installed package on PYTHONPATH. --dump-probe builds the probe text and cflags
    (no bcc, no root needed) from the probe the package located."""
    _, venv = wheel_venv
    if not os.path.exists("/usr/bin/python3"):
        pytest.skip("no /usr/bin/python3: the agent's fallback interpreter")
    code = ("import json, sys; from pathlib import Path; from diag.collect import ebpf; "
            "from diag.collect.base import Target; ebpf._bcc_python_cache[sys.executable] = False; "
            "print(json.dumps(ebpf.EbpfCollector().argv(Target(pid=1), Path('o.jsonl'), Path('p.json'))))")
    r = _run([venv / "bin" / "python", "-c", code], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    argv = json.loads(r.stdout)
    assert argv[0] == "/usr/bin/env" and argv[1].startswith("PYTHONPATH=") and argv[2] == "/usr/bin/python3"
    assert argv[1].split("=", 1)[1].split(os.pathsep)[0].startswith(str(venv / "lib"))
    r = _run([*argv, "--dump-probe"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "int diag_sys_exit(" in r.stdout
    incdir = next(c for c in r.stdout.splitlines()[0].split() if c.startswith("-I"))[2:]
    assert incdir.startswith(str(venv / "lib")) and incdir.endswith("diag/probes"), incdir


def test_installed_wheel_attaches_with_ebpf(wheel_venv, tmp_path):
    """The probe compiled from the wheel's copy, by the installed agent, on a real process."""
    _, venv = wheel_venv
    diag = venv / "bin" / "diag"
    r = _run([diag, "doctor", "--json"], cwd=tmp_path)
    ebpf = next(c for c in json.loads(r.stdout)["checks"] if c["collector"] == "ebpf")
    if not ebpf["ok"]:
        pytest.skip(f"eBPF cannot run here: {ebpf['detail']}")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        r = _run([diag, "attach", sleeper.pid, "--collectors", "ebpf", "--duration", "1", "--quiet",
                  "--out", tmp_path / "cap.diag", "--json", tmp_path / "r.json"], cwd=tmp_path, timeout=120)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert r.returncode == 0, r.stderr
    collectors = json.loads((tmp_path / "r.json").read_text())["collectors"]
    assert collectors["ebpf"]["status"] == "ok", collectors["ebpf"]
