"""What `diag watch` watches: a pid, the processes listening on a port, or the processes of a name;
found again when they restart.

A pid is one process for its life. A port or a name outlives its process: when every process
watched has exited, the watcher asks again (`resolve`) and a new server on the same port (or of
the same name) is watched from then on. Only the roots are returned (a process whose parent also
matches is under it): the agent follows the tree below them (`--follow`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import psutil

from diag.errors import EXIT_NO_TARGET, DiagError


@dataclass(frozen=True)
class TargetSpec:
    pid: int | None = None
    port: int | None = None
    name: str | None = None

    def describe(self) -> str:
        if self.pid is not None:
            return f"pid {self.pid}"
        if self.port is not None:
            return f"port {self.port}"
        return f"name {self.name!r}"

    @property
    def can_return(self) -> bool:
        """A port or a name may be served again by a new process; a pid never comes back."""
        return self.pid is None


def _listening(port: int) -> list[int]:
    pids = set()
    try:
        conns = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, OSError):
        raise DiagError(f"--port {port}: cannot read the sockets of other processes: run diag watch as root",
                        EXIT_NO_TARGET) from None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            pids.add(c.pid)
    return sorted(pids)


def _named(name: str) -> list[int]:
    me = os.getpid()
    out = []
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            if p.info["pid"] == me:
                continue
            argv = p.info["cmdline"] or []
            names = {p.info["name"] or ""}
            if argv:
                names.add(os.path.basename(argv[0]))
                # an interpreter's script or module: python3 -m pkg.server / python3 server.py
                for i, a in enumerate(argv[1:3], 1):
                    if a == "-m" and i + 1 < len(argv):
                        names.update({argv[i + 1], argv[i + 1].rsplit(".", 1)[-1]})
                    elif not a.startswith("-"):
                        base = os.path.basename(a)
                        names.update({base, base.rsplit(".", 1)[0]})
                        break
            if name in names:
                out.append(p.info["pid"])
        except psutil.Error:
            continue
    return sorted(out)


def _roots(pids: list[int]) -> list[int]:
    chosen = set(pids)
    out = []
    for pid in pids:
        try:
            parent = psutil.Process(pid).ppid()
        except psutil.Error:
            continue
        if parent not in chosen:
            out.append(pid)
    return out


def resolve(spec: TargetSpec) -> list[int]:
    """The root processes of the target now ([] when none)."""
    if spec.pid is not None:
        return [spec.pid] if alive(spec.pid) else []
    pids = _listening(spec.port) if spec.port is not None else _named(spec.name or "")
    return _roots([p for p in pids if alive(p)])


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def describe(pid: int) -> dict:
    """pid, command, command line and container of a target process (for reports and telemetry)."""
    out: dict = {"pid": pid}
    try:
        p = psutil.Process(pid)
        out.update(comm=p.name(), cmdline=p.cmdline())
    except psutil.Error:
        pass
    cid = container_id(pid)
    if cid:
        out["container_id"] = cid
    return out


def container_id(pid: int) -> str | None:
    """The container id in the process's cgroup path (docker, containerd, cri-o, podman), if any."""
    import re

    try:
        with open(f"/proc/{pid}/cgroup") as f:
            text = f.read()
    except OSError:
        return None
    m = re.search(r"([0-9a-f]{64})", text)
    return m.group(1) if m else None
