"""Launching a command held before its exec, for `diag run`.

The command is started as a small holder process (an isolated interpreter importing only
builtins) that waits for a go byte and then execs the command in the same process: the pid the
collectors attach to before the release is the command's pid after it, so they see it from its
first syscall. This module owns the holder, its release and stop (signal forwarding and
escalation, exit status as a shell gives it), the checks made before anything starts (the
command exists and is executable) and the judgement whether a command is Python (for py-spy).
"""
from __future__ import annotations

import mmap
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from diag.collect.targets import PYTHON_EXE
from diag.collect.session import StopFlag
from diag.errors import EXIT_NO_TARGET, DiagError


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


def check_command(cmd0: str) -> str:
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
        if any(PYTHON_EXE.search(n) for n in names):
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
            if PYTHON_EXE.search(prog):
                return True, f"a Python script ({name})"
            interp = prog if "/" in prog else (shutil.which(prog) or prog)
        if PYTHON_EXE.search(interp):
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
