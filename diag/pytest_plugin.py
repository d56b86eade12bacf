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
90 s; if diag exits before, or never gets there, the session stops with a one-line error. Only a
manifest written by the diag this session started counts (its capture started after the spawn,
on this boot): a capture directory left by an earlier session (same path; in a container pytest
may even have the same pid) is refused before anything starts, with a one-line error saying to
remove it or choose another `--diag-capture`. The summary names the report only when this
session wrote it. Ctrl-C while waiting stops diag before the session ends.

Limits: with pytest-xdist only the controller process is watched, not the workers; py-spy needs
permission to read the pytest process (root, CAP_SYS_PTRACE, or Yama ptrace_scope <= 1: the
plugin allows its own child with PR_SET_PTRACER), else its collector reports "unavailable" and
the report holds the process collector only.
"""
from __future__ import annotations

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
        self.spawned_monotonic_ns = 0      # read just before diag is spawned: its manifest starts later
        self.spawned_realtime_ns = 0
        self.prior_report: tuple | None = None   # the report file found at start, if any

    def start(self) -> None:
        _allow_child_ptrace()
        if os.path.lexists(self.capture) and (not os.path.isdir(self.capture) or os.listdir(self.capture)):
            # diag attach would refuse it too, after the session had started; say it here, in one line
            raise pytest.UsageError(f"diag: {self.capture} already exists (the capture of an earlier session?); "
                                    f"remove it, or pass --diag-capture DIR to keep the capture elsewhere")
        os.makedirs(os.path.dirname(self.capture) or ".", exist_ok=True)
        self.prior_report = _file_signature(self.report)
        cmd = [sys.executable, "-m", "diag", "attach", str(os.getpid()), "--duration", "0", "--collectors",
               self.collectors, "--out", self.capture, "--quiet", self.flag, self.report]
        for g in self.gates:
            cmd += ["--fail-on", g]
        self.spawned_monotonic_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        self.spawned_realtime_ns = time.time_ns()
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)   # our Ctrl-C is not its Ctrl-C
        try:
            self._wait_ready()
        except BaseException:
            # a failed start, or Ctrl-C while waiting (pytest_sessionfinish will not run): diag must
            # not stay attached to us after the session is gone
            self.stop()
            raise

    def _ready(self) -> bool:
        """The capture's manifest says every collector has started (eBPF compiled and attached,
        py-spy sampling): `clock.collectors_started_monotonic_ns`, written once they all have;
        and it is this session's capture: its pid is ours and it started after this session
        spawned diag, on this boot (a pid alone proves nothing: in a container pytest is pid 1
        every time)."""
        from diag.capture.bundle import is_ready, read_manifest

        manifest = read_manifest(self.capture)
        return manifest is not None and self._is_ours(manifest) and is_ready(manifest)

    def _is_ours(self, manifest: dict) -> bool:
        if (manifest.get("target") or {}).get("pid") != os.getpid():
            return False
        boot = (manifest.get("host") or {}).get("boot_id")
        if boot and _boot_id() and boot != _boot_id():
            return False                      # CLOCK_MONOTONIC of another boot is not comparable
        start = (manifest.get("clock") or {}).get("start") or {}
        try:
            return int(start["monotonic_ns"]) >= self.spawned_monotonic_ns > 0
        except (KeyError, TypeError, ValueError):
            return False

    def report_written(self) -> bool:
        """The report file was written by this session's diag: it is not the file that was there
        when the session started, and it was modified after diag was spawned."""
        sig = _file_signature(self.report)
        # mtimes come from the kernel's coarse clock, up to a tick behind time.time_ns(): allow 50 ms
        return sig is not None and sig != self.prior_report and sig[0] >= self.spawned_realtime_ns - 50_000_000

    def _wait_ready(self) -> None:
        """Block the session until the collectors run; a diag that exits or never gets there
        stops the session with a one-line error (a report of a session it did not see is no use)."""
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._ready():
            if self.proc.poll() is not None:
                raise pytest.UsageError(f"diag: the capture of the session did not start (diag attach exited with "
                                        f"{self.proc.returncode}): {self._log_tail()}")
            if time.monotonic() > deadline:       # start() stops diag
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
        """SIGINT: diag ends the capture and writes the report. If it does not end within 120 s,
        or the user interrupts the wait, its process group (diag and its collectors) is killed."""
        if self.proc is None or self.rc is not None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.rc = self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self._kill()
            self.rc = self.proc.wait()
        except BaseException:             # a second Ctrl-C while diag writes its report
            self._kill()
            self.rc = self.proc.wait()
            raise
        finally:
            try:
                with open(self.log, errors="replace") as f:
                    self.output = f.read()
            except OSError:
                pass

    def _kill(self) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)   # its own session and group (start_new_session)
        except OSError:
            self.proc.kill()


def _file_signature(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ino, st.st_size, st.st_ctime_ns)


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


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


def pytest_unconfigure(config) -> None:
    """The last hook pytest always calls: whatever ended the session early (Ctrl-C, an error in
    another plugin), diag does not outlive it."""
    s = getattr(config, "_diag_session", None)
    if s:
        s.stop()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    s = getattr(config, "_diag_session", None)
    if not s or s.rc is None:
        return
    tr = terminalreporter
    tr.section("diag")
    if s.report_written():
        tr.write_line(f"diag: report written to {s.report} (capture {s.capture})")
    else:
        tr.write_line(f"diag: no report was written (exit {s.rc}); see {s.log}", red=True)
    for line in s.output.splitlines():
        if line.startswith("diag: gate ") or line.startswith("diag: error"):
            tr.write_line(line, red="FAILED" in line or "error" in line)
