"""Live capture: `diag attach PID` and `diag run -- CMD`, from target to capture to report.

Both end exactly as `diag replay CAPTURE` would: the capture is loaded back through
`diag.load.load_capture`, so a live report and its replay cannot disagree.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import psutil
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from diag.analyze.context import fmt_ms
from diag.capture.bundle import CaptureWriter
from diag.capture.clock import monotonic_ns
from diag.collect import parse_selection, policy
from diag.collect.base import Target
from diag.collect.pyspy import is_python
from diag.collect.session import SessionResult, run_capture
from diag.errors import EXIT_INTERRUPTED, EXIT_NO_COLLECTOR, EXIT_NO_TARGET, DiagError


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
             alive=None, release=None, after_release: list | tuple = ()) -> SessionResult:
    console = Console(stderr=True)
    show = opts.live_view if opts.live_view is not None else console.is_terminal
    names = ", ".join(c.name for c in [*collectors, *after_release])
    held = " (held before its exec until the collectors attach)" if release is not None else ""
    console.print(f"diag: capturing pid {target.pid}{held} with {names} into {writer.root}", highlight=False)
    kw = {"release": release, "after_release": after_release}
    if show:
        with LiveView(console, target) as view:
            return run_capture(target, collectors, writer, opts.duration_s, alive, on_tick=view.tick, **kw)
    return run_capture(target, collectors, writer, opts.duration_s, alive, **kw)


def attach(pid: int, opts: CaptureOptions) -> SessionResult:
    target = target_from_pid(pid, opts.follow)
    collectors = policy(parse_selection(opts.collectors), target, **_collector_opts(opts))
    writer = CaptureWriter(opts.out or default_out(target.comm, pid), target.to_json(), "attach")
    return _capture(target, writer, collectors, opts)


# Run by `diag run` in the process that becomes the command: it says it is held ("h" on the
# socket fd argv[1]), waits for "g", then execs the command (argv[3:]) in the same process: same
# pid, same tgid, so collectors attached to the held pid see the command from its exec on. Any
# other outcome (diag died or gave up: EOF) exits 125 without running the command. Before the
# exec it undoes what the interpreter changed in what a command inherits: SIGINT's handler (a
# default disposition), the ignored SIGPIPE/SIGXFSZ (as subprocess does), and the C-locale
# coercion (PYTHONCOERCECLOCALE=0 is set for the holder only; argv[2] restores the user's value).
_HOLDER = r"""
import os, signal, sys
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
fd = int(sys.argv[1])
try:
    os.write(fd, b"h")
    go = os.read(fd, 1)
except OSError:
    go = b""
if go != b"g":
    os._exit(125)
os.close(fd)
if sys.argv[2] == "-":
    os.environ.pop("PYTHONCOERCECLOCALE", None)
else:
    os.environ["PYTHONCOERCECLOCALE"] = sys.argv[2][1:]
for name in ("SIGPIPE", "SIGXFSZ"):
    if hasattr(signal, name):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
try:
    os.execvp(sys.argv[3], sys.argv[3:])
except OSError as e:
    os.write(2, ("diag run: cannot execute %s: %s\n" % (sys.argv[3], e.strerror)).encode())
    os._exit(127 if isinstance(e, FileNotFoundError) else 126)
"""
HOLD_READY_TIMEOUT_S = 60.0     # the holder is a bare interpreter start; generous for loaded machines
EXEC_TIMEOUT_S = 10.0
# Programs that exec their argument in the same process: a script whose shebang is
# `#!/usr/bin/env python3` is `env` for a moment after its exec, then Python (or, with pyenv,
# env -> a bash shim -> Python). py-spy decides whether the target is Python when it starts, so
# the release waits past these; past shells for SHELL_EXEC_WAIT_S only, since a shell still
# running then is the user's command itself (`diag run -- sh -c ...`).
EXEC_WRAPPERS = frozenset({"env", "nice", "ionice", "taskset", "chrt", "stdbuf", "numactl", "setpriv", "prlimit"})
SHELLS = frozenset({"sh", "bash", "dash", "zsh"})
SHELL_EXEC_WAIT_S = 1.0


class HeldCommand:
    """`diag run`'s command, started held before its exec (see _HOLDER) and released once the
    collectors that attach to a pid (eBPF, perf, the process sampler) are up. If diag dies or
    gives up while it is held, the command never runs."""

    def __init__(self, argv: list[str], cmd: list[str]) -> None:
        self.argv = argv                   # what the holder execs: the command, or strace launching it
        ours, theirs = socket.socketpair()
        env = dict(os.environ, PYTHONCOERCECLOCALE="0")
        user = os.environ.get("PYTHONCOERCECLOCALE")
        self.holder_argv = [sys.executable, "-S", "-c", _HOLDER, str(theirs.fileno()),
                            "-" if user is None else "=" + user, *argv]
        try:
            self.proc = subprocess.Popen(self.holder_argv, pass_fds=(theirs.fileno(),), env=env)
        finally:
            theirs.close()
        self.sock = ours
        self.released = False
        # what /proc/PID/cmdline shows before the command's own exec
        self._before_exec = [[os.fsencode(a) for a in self.holder_argv]]
        if argv != cmd:
            self._before_exec.append([os.fsencode(a) for a in argv])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_held(self, timeout_s: float = HOLD_READY_TIMEOUT_S) -> bool:
        """True once the holder says it is held (its own start-up is over)."""
        self.sock.settimeout(timeout_s)
        try:
            return self.sock.recv(1) == b"h"
        except OSError:
            return False

    def release(self) -> None:
        """Let the command exec, and wait (bounded) until it has: collectors started after this
        (py-spy) must find the command, not the holder."""
        self.released = True
        try:
            self.sock.sendall(b"g")
        except OSError:
            pass                             # the holder is gone: the capture sees the target exit
        finally:
            self.sock.close()
        released_at = time.monotonic()
        deadline = released_at + EXEC_TIMEOUT_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with open(f"/proc/{self.pid}/cmdline", "rb") as f:
                    now = f.read().split(b"\0")[:-1]
                exe = os.path.basename(os.readlink(f"/proc/{self.pid}/exe"))
            except OSError:
                break
            if now and now not in self._before_exec:
                if exe in EXEC_WRAPPERS:
                    pass
                elif exe in SHELLS and time.monotonic() - released_at < SHELL_EXEC_WAIT_S:
                    pass
                else:
                    break
            time.sleep(0.002)

    def cancel(self) -> None:
        """The command must not run: end the holder (it has not exec'd) and reap it."""
        try:
            self.sock.close()                # EOF: the holder exits by itself...
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.kill()                 # ...and is killed in case it has not read it yet
        self.proc.wait()

    def terminate(self) -> None:
        """Stop the released command (SIGTERM, then SIGKILL after 5 s)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _check_command(cmd0: str) -> None:
    """The errors the exec would give, given before anything starts (one line, exit 3)."""
    path = cmd0 if "/" in cmd0 else shutil.which(cmd0)
    if path is None or not os.path.exists(path):
        raise DiagError(f"diag run: command not found: {cmd0}", EXIT_NO_TARGET)
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise DiagError(f"diag run: permission denied executing {cmd0}", EXIT_NO_TARGET)


def run(cmd: list[str], opts: CaptureOptions) -> tuple[SessionResult, int | None]:
    """Launch `cmd` under diagnosis; returns the session and the command's exit code.

    The command is started held before its exec (same pid before and after it): the collectors
    that attach to a pid start first, then it is released, so they see it from its first syscall.
    With strace it is strace that the holder execs (`strace -D --seccomp-bpf -- CMD`: the command
    keeps the pid). py-spy attaches once the command has exec'd (it needs a running interpreter).
    """
    if not cmd:
        raise DiagError("diag run: give the command after --, e.g. `diag run -- python3 server.py`")
    _check_command(cmd[0])
    name = os.path.basename(cmd[0])
    writer = CaptureWriter(opts.out or default_out(name, None), {"cmdline": cmd, "comm": name}, "run")
    probe = Target(pid=os.getpid(), cmdline=cmd, comm=name, launched=True, follow_children=opts.follow)
    collectors = policy(parse_selection(opts.collectors), probe, **_collector_opts(opts))
    argv, after = cmd, []
    strace = next((c for c in collectors if c.name == "strace"), None)
    if strace is not None and strace.check(probe) is None:
        argv = _strace_launch_argv(strace, cmd, writer)
        collectors.remove(strace)
        after.append(_LaunchedStrace(strace))
    after += [c for c in collectors if c.name == "py-spy"]
    collectors = [c for c in collectors if c.name != "py-spy"]
    held = HeldCommand(argv, cmd)
    try:
        if not held.wait_held():
            rc = held.proc.poll()
            raise DiagError(f"diag run: could not start {cmd[0]} (holder "
                            f"{'exited with ' + str(rc) if rc is not None else 'did not answer'})", EXIT_NO_TARGET)
        target = Target(pid=held.pid, cmdline=cmd, comm=name, launched=True, follow_children=opts.follow,
                        is_python=bool(re.search(r"(^|/)python[\d.]*$", cmd[0])))
        writer.manifest["target"] = target.to_json()
        writer.save()
        for c in after:
            if isinstance(c, _LaunchedStrace):
                c.proc = held.proc
        # A command that outlives a --duration window keeps running, untraced; its exit code is
        # then unknown to us (None).
        result = _capture(target, writer, collectors, opts, alive=lambda: held.proc.poll() is None,
                          release=held.release, after_release=after)
    except BaseException as e:
        if not held.released:
            held.cancel()
        elif isinstance(e, DiagError) and e.exit_code == EXIT_NO_COLLECTOR:
            held.terminate()             # released, but nothing could watch it: it does not run unseen
        raise
    if not held.released:
        held.cancel()
        if writer.manifest["status"] == "running":
            writer.finish("interrupted")
        raise DiagError(f"diag run: interrupted while the collectors started; {cmd[0]} was not run "
                        f"(capture {writer.root})", EXIT_INTERRUPTED)
    rc = held.proc.wait() if result.status == "target-exited" else held.proc.poll()
    return result, rc


def _strace_launch_argv(strace, cmd: list[str], writer: CaptureWriter) -> list[str]:
    """What StraceCollector.launch runs (strace -D --seccomp-bpf ... -- CMD), for the holder to exec:
    -D keeps the command in the process strace was started as, so the pid stays the held one."""
    argv = strace.argv(str(writer.stream_path("strace.txt")), seccomp=True)
    argv[1:1] = ["-D"]
    strace.writer = writer
    strace.stderr_path = writer.root / "logs" / "strace.stderr"
    strace.stderr_path.parent.mkdir(exist_ok=True)
    return [*argv, "--", *cmd]


class _LaunchedStrace:
    """Adapts a strace that launches the command (the holder execs it at the release) to the
    session's interface: it "starts" right after the release."""

    def __init__(self, strace) -> None:
        self.inner = strace
        self.name = strace.name
        self.proc: subprocess.Popen | None = None

    def check(self, target: Target) -> str | None:
        return None

    def start(self, target: Target, writer: CaptureWriter) -> None:
        self.pid = target.pid
        self.inner.started_ns = monotonic_ns()
        self.inner.target_proc = self.proc
        self.inner._register(writer, seccomp=True)

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
