"""Live capture: `diag attach PID` and `diag run -- CMD`, from target to capture to report.

Both end exactly as `diag replay CAPTURE` would: the capture is loaded back through
`diag.load.load_capture`, so a live report and its replay cannot disagree.
"""
from __future__ import annotations

import datetime as _dt
import mmap
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
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
from diag.collect.base import Target, Unavailable
from diag.collect.pyspy import _PY_EXE, is_python
from diag.collect.session import STOP_SIGNALS, SessionResult, StopFlag, run_capture
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


def attach(pid: int, opts: CaptureOptions) -> SessionResult:
    target = target_from_pid(pid, opts.follow)
    collectors = policy(parse_selection(opts.collectors), target, **_collector_opts(opts))
    writer = CaptureWriter(opts.out or default_out(target.comm, pid), target.to_json(), "attach")
    return _capture(target, writer, collectors, opts)


# Run by `diag run` in the process that becomes the command: it says it is held ("h" on the
# socket fd argv[1]), waits for "g", then execs the command (argv[4] is the resolved program,
# argv[5:] its argv) in the same process: same pid, same tgid, so collectors attached to the held
# pid see the command from its exec on. Any other outcome (diag died or gave up: EOF) exits 125
# without running the command.
# It is started isolated (`-I -S`: no cwd, script dir, PYTHONPATH, PYTHONHOME or user site on
# sys.path, no PYTHON* variable read) and imports builtin modules only (posix, _signal, sys: they
# cannot be shadowed by a project's `signal.py` or a PYTHONPATH copy). Before the exec it undoes
# what the interpreter changed in what a command inherits: SIGINT's handler (a default
# disposition; SIGINT is ignored while held, so a Ctrl-C of the terminal does not print a
# traceback of the holder: diag cancels it), the ignored SIGPIPE/SIGXFSZ (as subprocess does), and
# the C-locale coercion (PEP 538: an isolated interpreter reads no PYTHONCOERCECLOCALE and may set
# LC_CTYPE; argv[2] restores diag's own value, "-" for unset), and the signals diag catches but
# inherited ignored (argv[3]: their numbers, or "-"; `nohup diag run` keeps SIGHUP ignored in the
# command). The go socket is marked close-on-exec rather than closed: the command's own syscalls
# start at the exec (an eBPF capture would otherwise show a `close` of a socket in every report;
# the fcntl/ioctl that sets the flag is not recorded).
_HOLDER = r"""
import posix, _signal, sys
sigint = _signal.getsignal(_signal.SIGINT)
if sigint is _signal.default_int_handler:
    sigint = _signal.SIG_DFL
_signal.signal(_signal.SIGINT, _signal.SIG_IGN)
fd = int(sys.argv[1])
try:
    posix.write(fd, b"h")
    go = posix.read(fd, 1)
except OSError:
    go = b""
if go != b"g":
    posix._exit(125)
posix.set_inheritable(fd, False)
if sys.argv[2] == "-":
    posix.unsetenv("LC_CTYPE")
else:
    posix.putenv("LC_CTYPE", sys.argv[2][1:])
_signal.signal(_signal.SIGINT, sigint)
for name in ("SIGPIPE", "SIGXFSZ"):
    if hasattr(_signal, name):
        _signal.signal(getattr(_signal, name), _signal.SIG_DFL)
if sys.argv[3] != "-":
    for n in sys.argv[3].split(","):
        _signal.signal(int(n), _signal.SIG_IGN)
try:
    posix.execv(sys.argv[4], sys.argv[5:])
except OSError as e:
    posix.write(2, ("diag run: cannot execute %s: %s\n" % (sys.argv[5], e.strerror)).encode())
    posix._exit(127 if isinstance(e, FileNotFoundError) else 126)
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
# Stopping a released command when diag is interrupted: diag's signal is forwarded, then SIGTERM,
# then SIGKILL, each after this long without the command exiting (or at once on another signal).
FORWARD_WAIT_S = 10.0
TERM_WAIT_S = 5.0
KILL_WAIT_S = 30.0              # only a process stuck in the kernel (D state) outlives SIGKILL that long
TRACER_WAIT_S = 10.0            # the launched strace attaching to the command


class HeldCommand:
    """`diag run`'s command, started held before its exec (see _HOLDER) and released once the
    collectors that attach to a pid (eBPF, perf, the process sampler) are up. If diag dies or
    gives up while it is held, the command never runs."""

    def __init__(self, argv: list[str], cmd: list[str], ignored: list[int] | tuple = ()) -> None:
        """`ignored`: signals the command must start with ignored (diag catches them, but its own
        parent had them ignored: see _signals_to)."""
        self.argv = argv                   # what the holder execs: the command, or strace launching it
        self.released = False
        exe = argv[0] if "/" in argv[0] else (shutil.which(argv[0]) or argv[0])
        lc_ctype = os.environ.get("LC_CTYPE")
        ours, theirs = socket.socketpair()
        self.holder_argv = [sys.executable, "-I", "-S", "-c", _HOLDER, str(theirs.fileno()),
                            "-" if lc_ctype is None else "=" + lc_ctype,
                            ",".join(str(int(s)) for s in ignored) or "-", exe, *argv]
        try:
            self.proc = subprocess.Popen(self.holder_argv, pass_fds=(theirs.fileno(),))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        # what /proc/PID/cmdline shows before the command's own exec
        self._before_exec = [[os.fsencode(a) for a in self.holder_argv]]
        if argv != cmd:
            self._before_exec.append([os.fsencode(a) for a in argv])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_held(self, timeout_s: float = HOLD_READY_TIMEOUT_S, stopped=lambda: False) -> bool:
        """True once the holder says it is held (its own start-up is over); False if it does not
        (it died, or timeout_s passed) or once `stopped()` is true (diag was interrupted)."""
        deadline = time.monotonic() + timeout_s
        while not stopped():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(min(0.1, left))
            try:
                return self.sock.recv(1) == b"h"
            except socket.timeout:
                continue
            except OSError:
                return False
        return False

    def exec_state(self) -> tuple[bool | None, str]:
        """(True, exe name) once the process runs the command (its cmdline is no longer the
        holder's nor strace's), (False, exe name) before or while it cannot be told (an exec in
        progress, or a zombie, show an empty cmdline: Popen.poll tells the latter), (None, "")
        once it is gone."""
        if self.proc.poll() is not None:
            return None, ""
        try:
            with open(f"/proc/{self.pid}/cmdline", "rb") as f:
                now = f.read().split(b"\0")[:-1]
            exe = os.path.basename(os.readlink(f"/proc/{self.pid}/exe"))
        except OSError:                      # our child: a zombie until reaped, so this is transient
            return (None, "") if self.proc.poll() is not None else (False, "")
        return bool(now) and now not in self._before_exec, exe

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
            done, exe = self.exec_state()
            if done is None:
                break
            if done:
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

    def stop(self, first: signal.Signals, stop: StopFlag | None = None) -> tuple[int | None, str]:
        """Stop the released command: send `first`, then SIGTERM, then SIGKILL, each once the one
        before had FORWARD_WAIT_S / TERM_WAIT_S without effect (or at once when `stop` is set
        again: another Ctrl-C). Returns its exit status as a shell gives it (128+N when killed by
        signal N; None if it outlived even SIGKILL) and what was done, for one line."""
        plan = [(first, FORWARD_WAIT_S)]
        if first != signal.SIGTERM:
            plan.append((signal.SIGTERM, TERM_WAIT_S))
        plan.append((signal.SIGKILL, KILL_WAIT_S))
        sent = []
        for sig, wait_s in plan:
            if self.proc.poll() is not None:
                break
            seen = stop.count if stop is not None else 0
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                break
            sent.append(sig.name)
            deadline = time.monotonic() + wait_s
            while self.proc.poll() is None and time.monotonic() < deadline:
                if stop is not None and stop.count != seen and sig != signal.SIGKILL:
                    break
                try:
                    self.proc.wait(0.05)
                except subprocess.TimeoutExpired:
                    pass
        rc = shell_status(self.proc.poll())
        done = f"sent {', then '.join(sent)}" if sent else "it had exited"
        how = f"exit status {rc}" if rc is not None else "still running after SIGKILL"
        return rc, f"{done} ({how})"


def shell_status(returncode: int | None) -> int | None:
    """A Popen returncode as a shell reports it: 128+N when killed by signal N."""
    if returncode is None:
        return None
    return 128 - returncode if returncode < 0 else returncode


def _check_command(cmd0: str) -> str:
    """The errors the exec would give, given before anything starts (one line, exit 3); returns
    the program's path."""
    path = cmd0 if "/" in cmd0 else shutil.which(cmd0)
    if path is None or not os.path.exists(path):
        raise DiagError(f"diag run: command not found: {cmd0}", EXIT_NO_TARGET)
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise DiagError(f"diag run: permission denied executing {cmd0}", EXIT_NO_TARGET)
    return path


_ENV_OPTS_WITH_ARG = frozenset({"-u", "-C", "--unset", "--chdir"})


def _env_program(args: list[str]) -> str | None:
    """The program `env ARGS` runs: past its options (-S, -i, -u NAME, ...) and NAME=VALUE."""
    i = 0
    while i < len(args):
        a = args[i]
        if a in _ENV_OPTS_WITH_ARG:
            i += 2
        elif a.startswith("-S") and len(a) > 2:     # -Sprog args: the split string glued to -S
            args = [*args[:i], *a[2:].split(), *args[i + 1:]]
        elif a.startswith("-") or "=" in a:
            i += 1
        else:
            return a
    return None


def python_verdict(path: str, depth: int = 0) -> tuple[bool | None, str]:
    """Whether the program at `path` is Python, from its first bytes: True; False when clearly not
    (a native program not named python and not linking libpython, or a script for another
    interpreter); None when it cannot be told (a shell script or an exec wrapper may exec Python).
    Plus what it is, for a message."""
    name = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        return None, f"{name} (unreadable: {e.strerror})"
    if head.startswith(b"\x7fELF"):
        names = {name, os.path.basename(os.path.realpath(path))}
        if any(_PY_EXE.search(n) for n in names):
            return True, f"the Python interpreter {name}"
        if names & (SHELLS | EXEC_WRAPPERS):
            return None, f"{name} (it may exec Python)"
        if _links_libpython(path):
            return None, f"{name} (it embeds Python)"
        return False, f"a native program ({name})"
    if head.startswith(b"#!"):
        words = head[2:].split(b"\n", 1)[0].decode(errors="replace").split()
        if not words:
            return None, f"{name} (an empty #! line)"
        interp = words[0]
        if os.path.basename(interp) == "env":
            prog = _env_program(words[1:])
            if prog is None:
                return None, f"{name} (#!{interp} without a program)"
            if _PY_EXE.search(prog):
                return True, f"a Python script ({name})"
            interp = prog if "/" in prog else (shutil.which(prog) or prog)
        if _PY_EXE.search(interp):
            return True, f"a Python script ({name})"
        if depth >= 4 or not os.path.isfile(interp):
            return None, f"{name} (a script run by {interp})"
        verdict, what = python_verdict(interp, depth + 1)
        return verdict, f"a script run by {os.path.basename(interp)} ({name})" if verdict is False else what
    return None, f"{name} (neither a native program nor a #! script)"


def _links_libpython(path: str) -> bool:
    """Whether a native program names libpython (linked) or Py_Initialize (embedded, static)."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return m.find(b"libpython") >= 0 or m.find(b"Py_Initialize") >= 0
    except (OSError, ValueError):
        return True                          # cannot tell: do not call it "not Python"


def _require_python(pyspy, cmd0: str, path: str, probe: Target) -> None:
    """py-spy is the only collector: fail before anything starts (the command never runs) when it
    cannot run here, or when the command is clearly not a Python program."""
    reason = pyspy.check(Target(pid=os.getpid(), cmdline=probe.cmdline, comm=probe.comm, is_python=True,
                                launched=True))
    if reason:
        raise DiagError(f"no collector could run here: py-spy: {reason} (run `diag doctor` for the fixes); "
                        f"{cmd0} was not run", EXIT_NO_COLLECTOR)
    verdict, what = python_verdict(path)
    if verdict is False:
        raise DiagError(f"no collector could run here: py-spy: not applicable: {cmd0} is {what}, not Python; "
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
    keeps the pid). py-spy attaches once the command has exec'd (it needs a running interpreter).

    Interrupted (SIGINT, SIGTERM, SIGHUP) before the release, the command never runs (exit 130).
    After the release, the capture ends, the signal is forwarded to the command (then SIGTERM,
    then SIGKILL, see HeldCommand.stop) and its status is returned, 130 if it was 0: an
    interrupted `diag run` never exits 0. An error after the release stops the command the same
    way (SIGTERM first), except when py-spy was the only collector and could not watch it: the
    command then runs to its end, unobserved, and diag exits 5 (it is not stopped midway).
    """
    if not cmd:
        raise DiagError("diag run: give the command after --, e.g. `diag run -- python3 server.py`")
    path = _check_command(cmd[0])
    name = os.path.basename(cmd[0])
    probe = Target(pid=os.getpid(), cmdline=cmd, comm=name, launched=True, follow_children=opts.follow)
    collectors = policy(parse_selection(opts.collectors), probe, **_collector_opts(opts))
    pyspy_only = [c.name for c in collectors] == ["py-spy"]
    if pyspy_only:
        _require_python(collectors[0], cmd[0], path, probe)
    writer = CaptureWriter(opts.out or default_out(name, None), {"cmdline": cmd, "comm": name}, "run")
    argv, after = cmd, []
    strace = next((c for c in collectors if c.name == "strace"), None)
    if strace is not None and strace.check(probe) is None:
        argv = _strace_launch_argv(strace, cmd, writer)
        collectors.remove(strace)
        after.append(_LaunchedStrace(strace))
    after += [c for c in collectors if c.name == "py-spy"]
    collectors = [c for c in collectors if c.name != "py-spy"]
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
                                is_python=bool(re.search(r"(^|/)python[\d.]*$", cmd[0])))
                writer.manifest["target"] = target.to_json()
                writer.save()
                for c in after:
                    if isinstance(c, _LaunchedStrace):
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
            _after_release_error(e, held, stop, cmd[0], pyspy_only)
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


def _after_release_error(e: BaseException, held: HeldCommand, stop: StopFlag, cmd0: str, pyspy_only: bool) -> None:
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
    if no_collector and pyspy_only:
        # py-spy could not watch a command it could not rule out before the release (a shell
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
    session's interface: it "starts" right after the release, once the command is seen traced."""

    runs_from_release = True               # already tracing once released: started even if diag was stopped

    def __init__(self, strace) -> None:
        self.inner = strace
        self.name = strace.name
        self.held: HeldCommand | None = None
        self.pid = 0

    def check(self, target: Target) -> str | None:
        return None

    def start(self, target: Target, writer: CaptureWriter) -> None:
        self.pid = target.pid
        self.inner.started_ns = monotonic_ns()
        if self.held is not None:
            self.inner.target_proc = self.held.proc
        why = self._not_tracing()
        if why:
            raise Unavailable(why)
        self.inner._register(writer, seccomp=True)

    def _not_tracing(self) -> str | None:
        """Why the command is not traced, or None. strace -D attaches to the held process before
        it execs the command; if that failed (ptrace forbidden: Yama, a container, a tracer
        already there) strace says so on the command's stderr and the command runs untraced. So
        once the command has exec'd its TracerPid must be set (waits TRACER_WAIT_S at most for the
        exec). A command already gone cannot be checked: what strace wrote is the evidence."""
        from diag.collect.strace import tracer_of

        deadline = time.monotonic() + TRACER_WAIT_S
        while True:
            done, exe = self.held.exec_state() if self.held is not None else (True, "")
            tracer = tracer_of(self.pid)     # read after the exec state: an attach precedes the exec
            if tracer:
                return None
            if done is None or tracer is None:
                return None
            if done:
                return (f"strace is not tracing pid {self.pid} ({exe}): it could not attach (ptrace refused: "
                        f"Yama, a container, or another tracer; strace's message is on the command's stderr)")
            if time.monotonic() >= deadline:
                return f"strace had not attached to pid {self.pid} {TRACER_WAIT_S:.0f} s after the release"
            time.sleep(0.005)

    def stats(self):
        return self.inner.stats()

    def stop(self) -> None:
        """Detach strace if the capture ends before the command: SIGTERM its tracer."""
        from diag.collect.strace import tracer_of

        tracer = tracer_of(self.pid) if self.pid else None
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


__all__ = ["attach", "run", "CaptureOptions", "report_for", "python_verdict", "shell_status"]
