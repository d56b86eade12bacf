"""Which process(es) to watch: a pid, the process listening on a port, or the one a name matches,
with the tree of processes under it (a pre-fork master and its workers).

Most services are not one process: gunicorn, uWSGI, celery and `uvicorn --workers` run a master
and forked workers, nginx and postgres do the same natively. A target is the root of such a tree;
`ProcessTree` keeps every member seen during the capture (workers recycled mid-capture included)
with the role its place in the tree suggests, and the pid each has in its own pid namespace.
"""
from __future__ import annotations

import fnmatch
import os
import pwd
import re
import time
from dataclasses import dataclass, field

import psutil

from diag.collect.base import Target
from diag.errors import EXIT_BAD_INPUT, EXIT_NO_PRIVILEGE, EXIT_NO_TARGET, DiagError

PYTHON_EXE = re.compile(r"(^|/)(python|pypy)[\d.]*[a-z]?$")


def is_python(pid: int) -> bool:
    """Whether the process runs a Python interpreter (its exe, or libpython mapped)."""
    try:
        p = psutil.Process(pid)
        if PYTHON_EXE.search(p.exe() or ""):
            return True
        for m in p.memory_maps(grouped=True):
            if "libpython" in os.path.basename(m.path):
                return True
    except (psutil.Error, OSError):
        return False
    return False


def target_from_pid(pid: int, follow: bool = True) -> Target:
    try:
        p = psutil.Process(pid)
        cmdline, comm = p.cmdline(), p.name()
        uids = p.uids()
        if p.status() == psutil.STATUS_ZOMBIE:
            raise psutil.NoSuchProcess(pid)
    except psutil.NoSuchProcess:
        raise DiagError(f"pid {pid} does not exist (or has exited): check it with `ps -p {pid}`", EXIT_NO_TARGET)
    except psutil.AccessDenied:
        raise DiagError(f"pid {pid}: permission denied reading /proc/{pid}: run diag as its user or with sudo",
                        EXIT_NO_TARGET)
    return Target(pid=pid, cmdline=cmdline, comm=comm, is_python=is_python(pid), follow_children=follow,
                  uid=uids.real, user=user_name(uids.real))


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_owner(target: Target) -> None:
    """Only root attaches to another user's process. The tools may be able to (CAP_SYS_PTRACE, a
    permissive ptrace_scope, /proc readable by all), but what a capture holds about the target
    (command line, files, peers, stacks) is that user's: reading it is root's call. The
    effective uid counts too: a setuid program runs with its owner's rights."""
    me = os.geteuid()
    if me == 0 or target.uid is None:
        return
    try:
        euid = psutil.Process(target.pid).uids().effective
    except psutil.Error:
        euid = target.uid
    if target.uid != me or euid != me:
        owner = target.user if target.uid != me else user_name(euid)
        raise DiagError(f"pid {target.pid} ({target.comm}) belongs to user {owner}, not to {user_name(me)}: "
                        f"only root attaches to another user's process: run diag with sudo", EXIT_NO_PRIVILEGE)


def root_pids(pids) -> list[int]:
    """The members of `pids` whose parent is not among them: the roots of the trees they form
    (a pre-fork master and its workers all hold the listening socket: the master is the root)."""
    chosen = set(pids)
    roots = []
    for pid in sorted(chosen):
        try:
            ppid = psutil.Process(pid).ppid()
        except psutil.Error:
            continue
        if ppid not in chosen:
            roots.append(pid)
    return roots


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _describe(pid: int) -> str:
    try:
        p = psutil.Process(pid)
        return f"{pid} ({' '.join(p.cmdline())[:60] or p.name()})"
    except psutil.Error:
        return str(pid)


def _one(pids: list[int], what: str, hint: str) -> int:
    if not pids:
        raise DiagError(f"no process {what}: {hint}", EXIT_NO_TARGET)
    roots = root_pids(pids)
    if len(roots) == 1:
        return roots[0]
    listed = ", ".join(_describe(p) for p in roots[:8])
    raise DiagError(f"{len(roots)} processes {what}: {listed}; give one pid instead", EXIT_BAD_INPUT)


def listening_pids(port: int) -> list[int]:
    """Processes holding a TCP socket listening on `port` (in diag's network namespace)."""
    if not 0 < port < 65536:
        raise DiagError(f"--port {port}: not a TCP port (1-65535)", EXIT_BAD_INPUT)
    inodes = set()
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/net/{name}") as f:
                for line in f.readlines()[1:]:
                    parts = line.split()
                    if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(parts[9])
        except OSError:
            continue
    pids = set()
    if inodes:
        wanted = {f"socket:[{i}]" for i in inodes}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                for fd in os.listdir(f"/proc/{d}/fd"):
                    if os.readlink(f"/proc/{d}/fd/{fd}") in wanted:
                        pids.add(int(d))
                        break
            except OSError:
                continue
    return sorted(pids)


def _names(name: str, argv: list[str]) -> set[str]:
    """What a process may be called: its comm, its program, and for an interpreter the script or
    module it runs (`python3 -m pkg.server`, `python3 server.py`)."""
    names = {name}
    if argv:
        names.add(os.path.basename(argv[0]))
        for i, a in enumerate(argv[1:3], 1):
            if a == "-m" and i + 1 < len(argv):
                names.update({argv[i + 1], argv[i + 1].rsplit(".", 1)[-1]})
            elif not a.startswith("-"):
                base = os.path.basename(a)
                names.update({base, base.rsplit(".", 1)[0]})
                break
    return names


def named_pids(pattern: str) -> list[int]:
    """Processes a name matches: one of its names (see _names), a shell glob over its name or
    command line, or a part of its command line. diag itself never matches."""
    me = {os.getpid(), os.getppid()}
    glob = any(c in pattern for c in "*?[")
    out = []
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            if p.info["pid"] in me:
                continue
            argv = p.info["cmdline"] or []
            name, cmd = p.info["name"] or "", " ".join(argv)
            if argv[1:3] in (["-m", "diag"],) or os.path.basename(argv[0] if argv else "") == "diag":
                continue
            if glob:
                hit = fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(cmd, pattern)
            else:
                hit = pattern in _names(name, argv) or pattern in cmd
            if hit:
                out.append(p.info["pid"])
        except psutil.Error:
            continue
    return sorted(out)


def pid_listening_on(port: int) -> int:
    """The process listening on TCP `port` (the root of the tree that shares the socket)."""
    return _one(listening_pids(port), f"listening on TCP port {port}",
                "check `ss -ltnp` (a process in another network namespace is found by --pid)")


def pid_named(pattern: str) -> int:
    """The process whose name or command line matches `pattern`: one, or one tree of them."""
    return _one(named_pids(pattern), f"match --name {pattern!r}", "check `ps -eo pid,comm,args`")


def container_id(pid: int) -> str | None:
    """The container id in the process's cgroup path (docker, containerd, cri-o, podman), if any."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            text = f.read()
    except OSError:
        return None
    m = re.search(r"([0-9a-f]{64})", text)
    return m.group(1) if m else None


def resolve(pid: int | None, port: int | None, name: str | None, follow: bool) -> Target:
    given = [x for x in (pid, port, name) if x is not None]
    if len(given) != 1:
        raise DiagError("give exactly one target: a PID, --port N or --name PATTERN", EXIT_BAD_INPUT)
    if port is not None:
        pid = pid_listening_on(port)
    elif name is not None:
        pid = pid_named(name)
    return target_from_pid(int(pid), follow)


def ns_pid(pid: int) -> int | None:
    """The pid as the process's own pid namespace sees it (a container's view), when it differs."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    vals = line.split()[1:]
                    return int(vals[-1]) if len(vals) > 1 else None
    except (OSError, ValueError):
        pass
    return None


@dataclass
class Member:
    pid: int
    ppid: int
    role: str                     # master | worker | child | process
    cmdline: list[str]
    first_seen_ns: int
    last_seen_ns: int
    ns_pid: int | None = None
    python: bool = False
    gil_state: tuple[int, int] | None = None     # (address, size) of its GIL state, Python members

    def to_json(self) -> dict:
        return {"pid": self.pid, "ppid": self.ppid, "role": self.role, "cmdline": self.cmdline,
                "first_seen_ns": self.first_seen_ns, "last_seen_ns": self.last_seen_ns, "ns_pid": self.ns_pid,
                "python": self.python, "gil_state": list(self.gil_state) if self.gil_state else None}


@dataclass
class ProcessTree:
    """The target and every process under it, as seen over the capture (`refresh` every tick)."""

    root: int
    follow: bool = True
    members: dict[int, Member] = field(default_factory=dict)

    def refresh(self) -> list[int]:
        """Look again; returns the pids that appeared since the last look."""
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        try:
            root = psutil.Process(self.root)
            procs = [root, *(root.children(recursive=True) if self.follow else ())]
        except psutil.Error:
            return []
        new = []
        for p in procs:
            m = self.members.get(p.pid)
            if m is not None:
                m.last_seen_ns = now
                continue
            try:
                ppid, cmd = p.ppid(), p.cmdline()
            except psutil.Error:
                continue
            py = is_python(p.pid)
            if py:
                from diag.collect.pyruntime import gil_state
            self.members[p.pid] = Member(p.pid, ppid, "process", cmd, now, now, ns_pid(p.pid), py,
                                         gil_state(p.pid) if py else None)
            new.append(p.pid)
        self._roles()
        return new

    def _roles(self) -> None:
        kids: dict[int, int] = {}
        for m in self.members.values():
            kids[m.ppid] = kids.get(m.ppid, 0) + 1
        for m in self.members.values():
            if m.pid == self.root:
                m.role = "master" if kids.get(m.pid) else "process"
            elif m.ppid == self.root:
                m.role = "worker"
            else:
                m.role = "child"

    def pids(self) -> set[int]:
        return set(self.members)

    def alive(self) -> list[int]:
        return [p for p in self.members if psutil.pid_exists(p)]

    def to_json(self) -> list[dict]:
        return [m.to_json() for m in sorted(self.members.values(), key=lambda m: m.first_seen_ns)]
