"""The strace collector: every traced syscall of the target with its duration.

Settings and why:
- `-f`: all threads (with -p, strace attaches every existing thread) and, with --follow, children;
- `-ttt` with ns precision and `-T` with ns precision: wall-clock start and duration of each call
  (the capture's clock pair puts them on CLOCK_MONOTONIC);
- `-s 0`: no buffer contents. Payloads may hold secrets; `--strace-payload N` opts in;
- `-y`: the fd's path or socket endpoint, so fd kinds are known for fds opened before the attach;
- `-e trace=`: only the syscalls the decision rules need (see `TRACED`). strace stops the target
  on every traced syscall; the fewer, the cheaper;
- `--seccomp-bpf` when strace launches the command (`diag run`): untraced syscalls then do not
  stop the target at all. It is ignored with -p, so attach mode cannot use it.
On SIGTERM strace detaches from every thread and exits; if diag dies, PDEATHSIG delivers it.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time

from diag.capture.bundle import CaptureWriter
from diag.capture.clock import monotonic_ns
from diag.collect.base import (FAILED, OK, CollectorStats, SubprocessCollector, Target, Unavailable, tool_path,
                               wait_for)

TRACED = ("accept,accept4,read,readv,pread64,recvfrom,recvmsg,write,writev,pwrite64,sendto,sendmsg,sendfile,"
          "fsync,fdatasync,sync_file_range,epoll_wait,epoll_pwait,poll,ppoll,select,pselect6,connect,close,"
          "shutdown,futex,nanosleep,clock_nanosleep,socket,socketpair,openat,open,creat,pipe,pipe2,dup,dup2,"
          "dup3,eventfd2,epoll_create1,clone,clone3,fork,vfork")
_DURATION_TAIL = re.compile(rb"(?:^|\s|\])(\w+)\(.*<(\d+\.\d+)>$")


def tracer_of(pid: int) -> int | None:
    """The pid tracing `pid` (0: none), from /proc/PID/status; None when `pid` does not exist."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def ptrace_blocker(pid: int) -> str | None:
    """Why ptrace-attaching to `pid` would fail here, or None."""
    tracer = tracer_of(pid)
    if tracer is None:
        return f"pid {pid} does not exist"
    if tracer:
        return f"pid {pid} is already traced by pid {tracer} (a thread has one tracer)"
    try:
        scope = int(open("/proc/sys/kernel/yama/ptrace_scope").read())
    except OSError:
        scope = 0
    if os.geteuid() != 0:
        if scope >= 2:
            return ("kernel.yama.ptrace_scope=%d allows only root to attach: run diag with sudo, or "
                    "`sudo sysctl kernel.yama.ptrace_scope=1`" % scope)
        try:
            owner = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            return f"pid {pid} does not exist"
        if owner != os.geteuid():
            return f"pid {pid} belongs to uid {owner}: run diag as that user or with sudo"
        if scope == 1:
            return ("kernel.yama.ptrace_scope=1 allows attaching only to descendants: run diag with sudo, "
                    "or use `diag run -- CMD`")
    elif scope == 3:
        return "kernel.yama.ptrace_scope=3 forbids all ptrace attach, even as root (reboot to change it)"
    return None


class StraceCollector(SubprocessCollector):
    name = "strace"

    def __init__(self, trace: str = TRACED, payload_bytes: int = 0) -> None:
        super().__init__()
        self.trace = trace
        self.payload_bytes = payload_bytes
        self._tail_pos = 0
        self._events = 0
        self._slowest: list[tuple[str, int]] = []

    def check(self, target: Target) -> str | None:
        if not tool_path("strace"):
            return "strace is not installed: sudo apt-get install strace"
        if target.launched:
            return None
        return ptrace_blocker(target.pid)

    def argv(self, out: str, seccomp: bool) -> list[str]:
        a = [tool_path("strace") or "strace", "-f", "-qq", "--absolute-timestamps=format:unix,precision:ns",
             "--syscall-times=ns", "-s", str(self.payload_bytes), "-y", "-e", f"trace={self.trace}", "-o", out]
        if seccomp:
            a.append("--seccomp-bpf")
        return a

    def launch_command(self, cmd: list[str], writer: CaptureWriter) -> list[str]:
        """What the held command execs under `diag run` (strace -D --seccomp-bpf ... -- CMD): -D
        keeps the command in the process strace was started as, so the pid stays the held one."""
        argv = self.argv(str(writer.stream_path("strace.txt")), seccomp=True)
        argv[1:1] = ["-D"]
        self.writer = writer
        self.stderr_path = writer.root / "logs" / "strace.stderr"
        self.stderr_path.parent.mkdir(exist_ok=True)
        return [*argv, "--", *cmd]

    def start(self, target: Target, writer: CaptureWriter) -> None:
        out = str(writer.stream_path("strace.txt"))
        # -f follows forks from now on; the members already forked are attached one by one
        argv = self.argv(out, seccomp=False)
        for pid in sorted(target.pids()):
            argv += ["-p", str(pid)]
        self.spawn(argv, writer)
        # strace writes nothing until the first traced call; it is attached when the target's
        # TracerPid names it (or it died, and says why on stderr).
        attached = wait_for(lambda: not self.alive() or tracer_of(target.pid) == self.proc.pid, 5.0)
        if not self.alive() or not attached:
            self.terminate()
            writer.set_collector(self.name, status=FAILED, reason=self.stderr_tail() or "strace did not attach")
            raise Unavailable(f"strace could not attach to pid {target.pid}: {self.stderr_tail() or 'timeout'}")
        self.register(writer, seccomp=False)

    def launch(self, cmd: list[str], writer: CaptureWriter) -> subprocess.Popen:
        """`diag run`: strace launches the command (-D keeps the command our direct child, so its
        exit code and pid are ours; --seccomp-bpf lets untraced calls run unstopped)."""
        out = str(writer.stream_path("strace.txt"))
        argv = self.argv(out, seccomp=True)
        argv[1:1] = ["-D"]
        argv += ["--", *cmd]
        self.writer = writer
        self.stderr_path = writer.root / "logs" / "strace.stderr"
        self.stderr_path.parent.mkdir(exist_ok=True)
        from diag.capture.clock import monotonic_ns

        self.started_ns = monotonic_ns()
        proc = subprocess.Popen(argv, stdin=None, stdout=None, stderr=None)
        self.target_proc = proc
        self.register(writer, seccomp=True)
        return proc

    def register(self, writer: CaptureWriter, seccomp: bool) -> None:
        writer.set_collector(self.name, status=OK, stream="strace.txt", format="strace",
                             started_monotonic_ns=self.started_ns,
                             settings={"trace": self.trace, "payload_bytes": self.payload_bytes,
                                       "seccomp_bpf": seccomp, "timestamps": "unix ns", "fd_paths": True})

    def stats(self) -> CollectorStats:
        """Events so far and the slowest calls, from the new tail of strace's output."""
        if self.writer is None:
            return CollectorStats()
        path = self.writer.stream_path("strace.txt")
        try:
            with open(path, "rb") as f:
                f.seek(self._tail_pos)
                chunk = f.read(4 << 20)
        except OSError:
            chunk = b""
        cut = chunk.rfind(b"\n") + 1
        self._tail_pos += cut
        for line in chunk[:cut].splitlines():
            self._events += 1
            m = _DURATION_TAIL.search(line)
            if m:
                self._slowest.append((m.group(1).decode(), int(float(m.group(2)) * 1e9)))
        self._slowest = sorted(self._slowest, key=lambda x: -x[1])[:5]
        running = self.alive() or (hasattr(self, "target_proc") and self.target_proc.poll() is None)
        return CollectorStats(events=self._events, running=running, slowest=list(self._slowest))

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.terminate()
        st = self.stats()
        if self.writer:
            self.writer.set_collector(self.name, events=st.events)


class LaunchedStrace:
    """Adapts a strace that launches the command (the holder execs it at the release) to the
    session's interface: it "starts" right after the release, once the command is seen traced."""

    runs_from_release = True               # already tracing once released: started even if diag was stopped

    def __init__(self, strace) -> None:
        self.inner = strace
        self.name = strace.name
        self.held = None                   # diag.launch.HeldCommand, set by `diag run`
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
        self.inner.register(writer, seccomp=True)

    def _not_tracing(self) -> str | None:
        """Why the command is not traced, or None. strace -D attaches to the held process before
        it execs the command; if that failed (ptrace forbidden: Yama, a container, a tracer
        already there) strace says so on the command's stderr and the command runs untraced. So
        once the command has exec'd its TracerPid must be set (waits TRACER_WAIT_S at most for the
        exec). A command already gone cannot be checked: what strace wrote is the evidence."""
        from diag.launch import TRACER_WAIT_S

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
