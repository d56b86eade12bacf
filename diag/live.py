"""Live capture: `diag attach PID` and `diag run -- CMD`, from target to capture to report.

Both end exactly as `diag replay CAPTURE` would: the capture is loaded back through
`diag.load.load_capture`, so a live report and its replay cannot disagree.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import subprocess
from dataclasses import dataclass

import psutil
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from diag.analyze.context import fmt_ms
from diag.capture.bundle import CaptureWriter
from diag.collect import parse_selection, policy
from diag.collect.base import Target
from diag.collect.pyspy import is_python
from diag.collect.session import SessionResult, run_capture
from diag.errors import EXIT_NO_TARGET, DiagError


@dataclass
class CaptureOptions:
    duration_s: float | None = 10.0
    out: str | None = None
    collectors: str = "auto"
    follow: bool = False
    strace_payload: int = 0
    pyspy_rate: int = 100
    ebpf_slow_ns: int = 1_000_000
    live_view: bool | None = None       # None: when stderr is a terminal


def target_from_pid(pid: int, follow: bool = False) -> Target:
    try:
        p = psutil.Process(pid)
        cmdline, comm = p.cmdline(), p.name()
        if p.status() == psutil.STATUS_ZOMBIE:
            raise psutil.NoSuchProcess(pid)
    except psutil.NoSuchProcess:
        raise DiagError(f"pid {pid} does not exist (or has exited): check it with `ps -p {pid}`", EXIT_NO_TARGET)
    except psutil.AccessDenied:
        raise DiagError(f"pid {pid}: permission denied reading /proc/{pid}: run diag as its user or with sudo",
                        EXIT_NO_TARGET)
    return Target(pid=pid, cmdline=cmdline, comm=comm, is_python=is_python(pid), follow_children=follow)


def default_out(comm: str, pid: int | None) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", comm)[:32] or "target"
    return f"diag-{safe}-{pid or 'run'}-{stamp}.diag"


class LiveView:
    """The rich view shown while capturing: time, per-collector events/s and lost, slowest calls."""

    def __init__(self, console: Console, target: Target) -> None:
        self.console = console
        self.target = target
        self.last: dict[str, tuple[float, int]] = {}
        self.live = Live(console=console, refresh_per_second=4, transient=True)

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        return self.live.__exit__(*exc)

    def tick(self, state: dict) -> None:
        el, dur = state["elapsed_s"], state["duration_s"]
        head = Text(f"diag: capturing pid {self.target.pid} ({self.target.comm})  {el:5.1f} s")
        head.append(f" / {dur:.0f} s" if dur else " (Ctrl-C to stop)")
        t = Table(box=None, pad_edge=False)
        for col in ("collector", "events", "events/s", "lost", "note"):
            t.add_column(col)
        slow: list[tuple[str, int]] = []
        for name, st in state["collectors"].items():
            prev_t, prev_n = self.last.get(name, (0.0, 0))
            rate = (st.events - prev_n) / max(1e-3, el - prev_t)
            self.last[name] = (el, st.events)
            t.add_row(name, f"{st.events:,}", f"{rate:,.0f}", str(st.lost), Text(st.note))
            slow.extend(st.slowest)
        parts = [head, t]
        if slow:
            slow.sort(key=lambda x: -x[1])
            parts.append(Text("slowest so far: " + ", ".join(f"{n} {fmt_ms(d)}" for n, d in slow[:5])))
        self.live.update(Group(*parts))


def _collector_opts(opts: CaptureOptions) -> dict:
    return {"strace_payload": opts.strace_payload, "pyspy_rate": opts.pyspy_rate, "ebpf_slow_ns": opts.ebpf_slow_ns}


def _capture(target: Target, writer: CaptureWriter, collectors: list, opts: CaptureOptions,
             alive=None) -> SessionResult:
    console = Console(stderr=True)
    show = opts.live_view if opts.live_view is not None else console.is_terminal
    names = ", ".join(c.name for c in collectors)
    console.print(f"diag: capturing pid {target.pid} with {names} into {writer.root}", highlight=False)
    if show:
        with LiveView(console, target) as view:
            return run_capture(target, collectors, writer, opts.duration_s, alive, on_tick=view.tick)
    return run_capture(target, collectors, writer, opts.duration_s, alive)


def attach(pid: int, opts: CaptureOptions) -> SessionResult:
    target = target_from_pid(pid, opts.follow)
    collectors = policy(parse_selection(opts.collectors), target, **_collector_opts(opts))
    writer = CaptureWriter(opts.out or default_out(target.comm, pid), target.to_json(), "attach")
    return _capture(target, writer, collectors, opts)


def run(cmd: list[str], opts: CaptureOptions) -> tuple[SessionResult, int | None]:
    """Launch `cmd` under diagnosis; returns the session and the command's exit code."""
    if not cmd:
        raise DiagError("diag run: give the command after --, e.g. `diag run -- python3 server.py`")
    name = os.path.basename(cmd[0])
    writer = CaptureWriter(opts.out or default_out(name, None), {"cmdline": cmd, "comm": name}, "run")
    probe = Target(pid=os.getpid(), cmdline=cmd, comm=name, launched=True, follow_children=opts.follow)
    collectors = policy(parse_selection(opts.collectors), probe, **_collector_opts(opts))
    strace = next((c for c in collectors if c.name == "strace"), None)
    try:
        if strace is not None and strace.check(probe) is None:
            proc = strace.launch(cmd, writer)
            collectors.remove(strace)
            collectors.append(_LaunchedStrace(strace))
        else:
            proc = subprocess.Popen(cmd)
    except FileNotFoundError:
        writer.finish("failed")
        raise DiagError(f"diag run: command not found: {cmd[0]}", EXIT_NO_TARGET)
    except PermissionError:
        writer.finish("failed")
        raise DiagError(f"diag run: permission denied executing {cmd[0]}", EXIT_NO_TARGET)
    target = Target(pid=proc.pid, cmdline=cmd, comm=name, launched=True, follow_children=opts.follow,
                    is_python=bool(re.search(r"(^|/)python[\d.]*$", cmd[0])))
    writer.manifest["target"] = target.to_json()
    writer.save()
    # A command that outlives a --duration window keeps running, untraced; its exit code is then
    # unknown to us (None).
    result = _capture(target, writer, collectors, opts, alive=lambda: proc.poll() is None)
    rc = proc.wait() if result.status == "target-exited" else proc.poll()
    return result, rc


class _LaunchedStrace:
    """Adapts a strace that launched the command (already running) to the session's interface."""

    def __init__(self, strace) -> None:
        self.inner = strace
        self.name = strace.name

    def check(self, target: Target) -> str | None:
        return None

    def start(self, target: Target, writer: CaptureWriter) -> None:
        self.pid = target.pid

    def stats(self):
        return self.inner.stats()

    def stop(self) -> None:
        """Detach strace if the capture ends before the command: SIGTERM its tracer."""
        import signal

        from diag.collect.strace import tracer_of

        tracer = tracer_of(self.pid)
        if tracer:
            try:
                os.kill(tracer, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self.inner._stopped = True
        st = self.inner.stats()
        if self.inner.writer:
            self.inner.writer.set_collector(self.name, events=st.events)


def report_for(capture: str, slow_ns: int | None = None) -> dict:
    from diag.analyze.report import build_report
    from diag.load import load_capture

    return build_report(load_capture(capture), slow_ns=slow_ns)


__all__ = ["attach", "run", "CaptureOptions", "report_for"]
