"""pytest plugin: `pytest --diag-report=FILE` runs the test session under diagnosis.

At session start a `diag attach` child is pointed at the pytest process itself (collectors that
can watch their own parent: `process` and non-blocking `py-spy` by default; `ebpf` as root); at
session end it is stopped with SIGINT, and it writes the report. The renderer is chosen by FILE's
extension: .html (self-contained report), .json (diag.report/1), .md (summary); the capture is
kept beside it (FILE's stem + `.diag`) or where `--diag-capture` says.

`--diag-fail-on EXPR` (repeatable) makes the session fail (exit 1) when a gate fails, exactly as
`diag run --fail-on`.

The session starts its tests once the capture's manifest says every collector has started
(`clock.collectors_started_monotonic_ns`: eBPF compiled and attached, py-spy sampling), at most
90 s; if diag exits before, or never gets there, the session stops with a one-line error.

Limits: with pytest-xdist only the controller process is watched, not the workers; py-spy needs
permission to read the pytest process (root, CAP_SYS_PTRACE, or Yama ptrace_scope <= 1: the
plugin allows its own child with PR_SET_PTRACER), else its collector reports "unavailable" and
the report holds the process collector only.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

_FLAG_BY_EXT = {".html": "--html", ".htm": "--html", ".json": "--json", ".md": "--markdown"}
PR_SET_PTRACER = 0x59616D61
PR_SET_PTRACER_ANY = -1
# eBPF may take 30 s to compile and attach on a loaded machine, py-spy 10 s to start sampling.
READY_TIMEOUT_S = 90.0


def pytest_addoption(parser) -> None:
    g = parser.getgroup("diag", "syscall-level latency diagnosis of the test session")
    g.addoption("--diag-report", metavar="FILE", default=None,
                help="Diagnose the test session and write the report to FILE (.html, .json or .md).")
    g.addoption("--diag-collectors", metavar="LIST", default="process,py-spy",
                help="Collectors to run on the session (default: process,py-spy).")
    g.addoption("--diag-capture", metavar="DIR", default=None,
                help="Where to keep the capture (default: beside the report, FILE's stem + .diag).")
    g.addoption("--diag-fail-on", metavar="EXPR", action="append", default=[],
                help="Fail the session when this gate fails (e.g. 'p99>50ms', 'severity>=warning').")


def _allow_child_ptrace() -> None:
    """Under Yama ptrace_scope 1 a child may not read its parent: let it (Linux only, best effort)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PTRACER, ctypes.c_ulong(PR_SET_PTRACER_ANY & 0xFFFFFFFFFFFFFFFF), 0, 0, 0)
    except Exception:
        pass


class DiagSession:
    def __init__(self, config) -> None:
        self.config = config
        self.report = os.path.abspath(config.getoption("diag_report"))
        ext = os.path.splitext(self.report)[1].lower()
        if ext not in _FLAG_BY_EXT:
            raise pytest.UsageError(f"--diag-report {self.report}: use a file ending in .html, .json or .md")
        self.flag = _FLAG_BY_EXT[ext]
        self.capture = os.path.abspath(config.getoption("diag_capture")
                                       or os.path.splitext(self.report)[0] + ".diag")
        self.collectors = config.getoption("diag_collectors")
        self.gates = list(config.getoption("diag_fail_on") or [])
        from diag import gates

        try:
            gates.parse_all(self.gates)
        except Exception as e:
            raise pytest.UsageError(str(e))
        self.proc: subprocess.Popen | None = None
        self.log = self.capture + ".log"
        self.rc: int | None = None
        self.output = ""

    def start(self) -> None:
        _allow_child_ptrace()
        os.makedirs(os.path.dirname(self.capture) or ".", exist_ok=True)
        cmd = [sys.executable, "-m", "diag", "attach", str(os.getpid()), "--duration", "0", "--collectors",
               self.collectors, "--out", self.capture, "--quiet", self.flag, self.report]
        for g in self.gates:
            cmd += ["--fail-on", g]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)   # our Ctrl-C is not its Ctrl-C
        self._wait_ready()

    def _ready(self) -> bool:
        """The capture's manifest says every collector has started (eBPF compiled and attached,
        py-spy sampling): `clock.collectors_started_monotonic_ns`, written once they all have;
        and it is this session's capture (not one left in --diag-capture by an earlier one)."""
        try:
            with open(os.path.join(self.capture, "manifest.json")) as f:
                manifest = json.load(f)       # rewritten atomically: always whole
        except (OSError, ValueError):
            return False
        return ((manifest.get("target") or {}).get("pid") == os.getpid()
                and bool((manifest.get("clock") or {}).get("collectors_started_monotonic_ns")))

    def _wait_ready(self) -> None:
        """Block the session until the collectors run; a diag that exits or never gets there
        stops the session with a one-line error (a report of a session it did not see is no use)."""
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._ready():
            if self.proc.poll() is not None:
                raise pytest.UsageError(f"diag: the capture of the session did not start (diag attach exited with "
                                        f"{self.proc.returncode}): {self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise pytest.UsageError(f"diag: the collectors did not start within {READY_TIMEOUT_S:.0f} s; "
                                        f"see {self.log}: {self._log_tail()}")
            time.sleep(0.05)

    def _log_tail(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                lines = [ln.strip() for ln in f if ln.strip()]
        except OSError:
            return "(no log)"
        errors = [ln for ln in lines if ln.startswith("diag: error")]
        return (errors or lines or ["(empty log)"])[-1]

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.rc = self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.rc = self.proc.wait()
        with open(self.log) as f:
            self.output = f.read()


def pytest_configure(config) -> None:
    if config.getoption("diag_report", None) and not hasattr(config, "workerinput"):
        config._diag_session = DiagSession(config)   # noqa: SLF001 (pytest's own convention)


def pytest_sessionstart(session) -> None:
    s = getattr(session.config, "_diag_session", None)
    if s:
        s.start()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus) -> None:
    s = getattr(session.config, "_diag_session", None)
    if not s:
        return
    s.stop()
    if s.rc == 1 and s.gates and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    s = getattr(config, "_diag_session", None)
    if not s or s.rc is None:
        return
    tr = terminalreporter
    tr.section("diag")
    if os.path.exists(s.report):
        tr.write_line(f"diag: report written to {s.report} (capture {s.capture})")
    else:
        tr.write_line(f"diag: no report was written (exit {s.rc}); see {s.log}", red=True)
    for line in s.output.splitlines():
        if line.startswith("diag: gate ") or line.startswith("diag: error"):
            tr.write_line(line, red="FAILED" in line or "error" in line)
