"""What `diag watch` watches: a pid, the processes listening on a port, or the processes of a name;
found again when they restart.

A pid is one process for its life. A port or a name outlives its process: when every process
watched has exited, the watcher asks again (`resolve`) and a new server on the same port (or of
the same name) is watched from then on. Only the roots are returned (a process whose parent also
matches is under it): the agent follows the tree below them (`--follow`).
"""
from __future__ import annotations

from dataclasses import dataclass

import psutil

from diag.collect.targets import alive, container_id, listening_pids, named_pids, root_pids


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


def resolve(spec: TargetSpec) -> list[int]:
    """The root processes of the target now ([] when none)."""
    if spec.pid is not None:
        return [spec.pid] if alive(spec.pid) else []
    pids = listening_pids(spec.port) if spec.port is not None else named_pids(spec.name or "")
    return root_pids([p for p in pids if alive(p)])


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
