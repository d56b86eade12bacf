"""Live capture: `diag attach PID` and `diag run -- CMD`, from target to capture to report.

Both end exactly as `diag replay CAPTURE` would: the capture is loaded back through
`diag.load.load_capture`, so a live report and its replay cannot disagree.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console

from diag.capture.bundle import CaptureWriter
from diag.collect import AFTER_EXEC, PYRUNTIME_RATE_HZ, PYSPY_RATE_HZ, parse_selection, policy
from diag.collect.base import Target
from diag.collect.session import STOP_SIGNALS, SessionResult, StopFlag, run_capture
from diag.collect.strace import LaunchedStrace
from diag.collect.targets import check_owner, resolve, user_name
from diag.errors import EXIT_INTERRUPTED, EXIT_NO_COLLECTOR, EXIT_NO_TARGET, DiagError
from diag.launch import HeldCommand, check_command, python_verdict, shell_status
from diag.render.live_view import LiveView


@dataclass
class CaptureOptions:
    duration_s: float | None = 10.0
    out: str | None = None
    collectors: str = "auto"
    follow: bool = True
    strace_payload: int = 0
    redact: bool = True                 # secrets of the command line (diag.redact) in manifest and report
    pyspy_rate: int = PYSPY_RATE_HZ
    pyruntime_rate: int = PYRUNTIME_RATE_HZ
    ebpf_slow_ns: int = 1_000_000
    live_view: bool | None = None       # None: when stderr is a terminal


def default_out(comm: str, pid: int | None) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", comm)[:32] or "target"
    return f"diag-{safe}-{pid or 'run'}-{stamp}.diag"


def _collector_opts(opts: CaptureOptions) -> dict:
    return {"strace_payload": opts.strace_payload, "pyspy_rate": opts.pyspy_rate, "ebpf_slow_ns": opts.ebpf_slow_ns,
            "pyruntime_rate": opts.pyruntime_rate}


def _capture(target: Target, writer: CaptureWriter, collectors: list, opts: CaptureOptions,
             alive=None, release=None, after_release: list | tuple = (), stop: StopFlag | None = None) -> SessionResult:
    console = Console(stderr=True)
    show = opts.live_view if opts.live_view is not None else console.is_terminal
    names = ", ".join(c.name for c in [*collectors, *after_release])
    held = " (held before its exec until the collectors attach)" if release is not None else ""
    console.print(f"diag: capturing pid {target.pid}{held} with {names} into {writer.root}", highlight=False)
    kw = {"release": release, "after_release": after_release, "stop": stop}
    if show:
        with LiveView(console, target) as view:
            return run_capture(target, collectors, writer, opts.duration_s, alive, on_tick=view.tick, **kw)
    return run_capture(target, collectors, writer, opts.duration_s, alive, **kw)


def attach(pid: int | None, opts: CaptureOptions, port: int | None = None, name: str | None = None) -> SessionResult:
    """Attach to a pid, the process listening on `port` or the one `name` matches, and (unless
    opts.follow is off) every process under it."""
    target = resolve(pid, port, name, opts.follow)
    check_owner(target)
    collectors = policy(parse_selection(opts.collectors), target, **_collector_opts(opts))
    writer = CaptureWriter(opts.out or default_out(target.comm, target.pid), target.to_json(), "attach",
                           redact=opts.redact)
    return _capture(target, writer, collectors, opts)


def _require_python(collectors: list, cmd0: str, path: str, probe: Target) -> None:
    """Only collectors of a Python interpreter (py-spy, pyruntime) were asked for: fail before
    anything starts (the command never runs) when none can run here (each checked on diag's own
    interpreter), or when the command is clearly not a Python program."""
    me = Target(pid=os.getpid(), cmdline=probe.cmdline, comm=probe.comm, is_python=True, launched=True)
    reasons = {c.name: c.check(me) for c in collectors}
    if all(reasons.values()):
        why = "; ".join(f"{name}: {reason}" for name, reason in reasons.items())
        raise DiagError(f"no collector could run here: {why} (run `diag doctor` for the fixes); "
                        f"{cmd0} was not run", EXIT_NO_COLLECTOR)
    verdict, what = python_verdict(path)
    if verdict is False:
        names = " and ".join(reasons)
        raise DiagError(f"no collector could run here: {names}: not applicable: {cmd0} is {what}, not Python; "
                        f"it was not run (observe it with --collectors auto, strace or process)", EXIT_NO_COLLECTOR)


@contextmanager
def _signals_to(stop: StopFlag):
    """While diag runs a command, SIGINT/SIGTERM/SIGHUP only set `stop` (the capture installs the
    same kind of handler on the same flag): diag decides what happens to the command, and a
    signal landing between two steps is not lost. Yields those of them diag inherited ignored
    (`nohup`, a background job's SIGINT): the command must inherit them ignored too."""
    def handler(signum, frame):
        stop.set(signal.Signals(signum).name)

    previous = {}
    for s in STOP_SIGNALS:
        try:
            previous[s] = signal.signal(s, handler)
        except ValueError:                   # not the main thread (tests)
            pass
    try:
        yield [s for s, h in previous.items() if h is signal.SIG_IGN]
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _signal_named(name: str) -> signal.Signals:
    try:
        return signal.Signals[name]
    except KeyError:
        return signal.SIGTERM


def run(cmd: list[str], opts: CaptureOptions) -> tuple[SessionResult, int | None]:
    """Launch `cmd` under diagnosis; returns the session and the exit status diag should give:
    the command's own (as a shell gives it: 128+N when killed by signal N), or None when the
    command outlived a --duration window (it keeps running, untraced; not waited for).

    The command is started held before its exec (same pid before and after it): the collectors
    that attach to a pid start first, then it is released, so they see it from its first syscall.
    With strace it is strace that the holder execs (`strace -D --seccomp-bpf -- CMD`: the command
    keeps the pid). py-spy and pyruntime attach once the command has exec'd (they need its
    running interpreter).

    Interrupted (SIGINT, SIGTERM, SIGHUP) before the release, the command never runs (exit 130).
    After the release, the capture ends, the signal is forwarded to the command (then SIGTERM,
    then SIGKILL, see HeldCommand.stop) and its status is returned, 130 if it was 0: an
    interrupted `diag run` never exits 0. An error after the release stops the command the same
    way (SIGTERM first), except when only Python collectors (py-spy, pyruntime) were asked for and
    none could watch it: the command then runs to its end, unobserved, and diag exits 5 (it is not
    stopped midway).
    """
    if not cmd:
        raise DiagError("diag run: give the command after --, e.g. `diag run -- python3 server.py`")
    path = check_command(cmd[0])
    name = os.path.basename(cmd[0])
    probe = Target(pid=os.getpid(), cmdline=cmd, comm=name, launched=True, follow_children=opts.follow)
    collectors = policy(parse_selection(opts.collectors), probe, **_collector_opts(opts))
    python_only = bool(collectors) and all(c.name in AFTER_EXEC for c in collectors)
    if python_only:
        _require_python(collectors, cmd[0], path, probe)
    me = os.geteuid()
    writer = CaptureWriter(opts.out or default_out(name, None), {"cmdline": cmd, "comm": name, "uid": me,
                                                                  "user": user_name(me)}, "run", redact=opts.redact)
    argv, after = cmd, []
    strace = next((c for c in collectors if c.name == "strace"), None)
    if strace is not None and strace.check(probe) is None:
        argv = strace.launch_command(cmd, writer)
        collectors.remove(strace)
        after.append(LaunchedStrace(strace))
    after += [c for c in collectors if c.name in AFTER_EXEC]
    collectors = [c for c in collectors if c.name not in AFTER_EXEC]
    stop = StopFlag()
    with _signals_to(stop) as ignored:
        try:
            held = HeldCommand(argv, cmd, ignored)
        except (OSError, subprocess.SubprocessError) as e:
            writer.finish("failed")
            raise DiagError(f"diag run: could not start {cmd[0]}: {getattr(e, 'strerror', None) or e} "
                            f"(capture {writer.root})", EXIT_NO_TARGET)
        result = None
        try:
            if held.wait_held(stopped=stop.event.is_set):
                target = Target(pid=held.pid, cmdline=cmd, comm=name, launched=True, follow_children=opts.follow,
                                is_python=bool(re.search(r"(^|/)python[\d.]*$", cmd[0])), uid=me, user=user_name(me))
                writer.set_target(target.to_json())
                for c in after:
                    if isinstance(c, LaunchedStrace):
                        c.held = held
                result = _capture(target, writer, collectors, opts, alive=lambda: held.proc.poll() is None,
                                  release=held.release, after_release=after, stop=stop)
            elif not stop.event.is_set():
                rc = held.proc.poll()
                raise DiagError(f"diag run: could not start {cmd[0]} (holder "
                                f"{'exited with ' + str(rc) if rc is not None else 'did not answer'})",
                                EXIT_NO_TARGET)
        except BaseException as e:
            if not held.released:
                held.cancel()
                if writer.manifest["status"] == "running":
                    writer.finish("failed")
                raise
            _after_release_error(e, held, stop, cmd[0], python_only)
            raise
        if not held.released:
            held.cancel()
            if writer.manifest["status"] != "interrupted":
                writer.manifest["end_reason"] = stop.reason or "interrupted"
                writer.finish("interrupted")
            raise DiagError(f"diag run: interrupted while the collectors started; {cmd[0]} was not run "
                            f"(capture {writer.root})", EXIT_INTERRUPTED)
        if result.status == "interrupted":
            # diag was told to stop while it watched the command: the command stops too
            rc, done = held.stop(_signal_named(stop.reason), stop)
            _say(f"diag run: {stop.reason}: the capture ended; {cmd[0]} (pid {held.pid}): {done}")
        elif result.status == "target-exited":
            rc = shell_status(held.proc.wait())
        else:
            # the --duration window ended first: the command keeps running, untraced, unwaited
            rc = shell_status(held.proc.poll())
        if stop.event.is_set():
            rc = rc or EXIT_INTERRUPTED           # an interrupted `diag run` never exits 0
        return result, rc


def _after_release_error(e: BaseException, held: HeldCommand, stop: StopFlag, cmd0: str, python_only: bool) -> None:
    """The capture of a released command failed (`e`): never leave the command running unwatched.
    Stops it (HeldCommand.stop) and lets the caller re-raise `e`, or raises what replaces it."""
    no_collector = isinstance(e, DiagError) and e.exit_code == EXIT_NO_COLLECTOR
    if stop.event.is_set():
        rc, done = held.stop(_signal_named(stop.reason), stop)
        if no_collector:
            raise DiagError(f"diag run: interrupted ({stop.reason}) before any collector watched {cmd0} "
                            f"(pid {held.pid}): {done}", rc or EXIT_INTERRUPTED) from None
        _say(f"diag run: {stop.reason}: {cmd0} (pid {held.pid}): {done}")
        return
    if no_collector and python_only:
        # py-spy/pyruntime could not watch a command not ruled out before the release (a shell
        # script may exec Python): stopping it midway could do more harm (a half-done migration)
        # than letting it finish unobserved
        _say(f"diag: warning: {e}; {cmd0} (pid {held.pid}) is already running: it runs to its end, "
             f"unobserved, rather than be stopped midway")
        while held.proc.poll() is None:
            if stop.event.wait(0.1):
                rc, done = held.stop(_signal_named(stop.reason), stop)
                raise DiagError(f"diag run: interrupted ({stop.reason}) while {cmd0} ran unobserved "
                                f"(pid {held.pid}): {done}", rc or EXIT_INTERRUPTED) from None
        rc = shell_status(held.proc.returncode)
        raise DiagError(f"diag run: {cmd0} ran to its end unobserved (exit status {rc}): no collector could "
                        f"watch it", EXIT_NO_COLLECTOR) from None
    rc, done = held.stop(signal.SIGTERM, stop)
    if no_collector:                         # released, but nothing could watch it: it does not run unseen
        raise DiagError(f"{e}; {cmd0} (pid {held.pid}) was stopped at once: {done}", EXIT_NO_COLLECTOR) from None
    _say(f"diag run: the capture failed; {cmd0} (pid {held.pid}): {done}")


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def report_for(capture: str, slow_ns: int | None = None, redact: bool = True) -> dict:
    from diag.analyze.report import build_report
    from diag.load import load_capture

    return build_report(load_capture(capture), slow_ns=slow_ns, redact=redact)


__all__ = ["attach", "run", "CaptureOptions", "report_for", "python_verdict", "shell_status"]
