"""What /proc and tracefs tell the agent about its targets: fd kinds, socket roles, the process
tree, listening ports, liveness, and whether kernel symbols are visible.

Everything here is read once at the attach (or when a new target appears), never per record.
"""
from __future__ import annotations

import os
import stat

from diag.agent.header import Header

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
TCP_LISTEN = "0A"


def tracefs() -> str | None:
    for d in TRACEFS_CANDIDATES:
        if os.path.isdir(os.path.join(d, "events", "syscalls")) or os.path.isdir(os.path.join(d, "events", "raw_syscalls")):
            return d
    return None


def tracepoint_exists(tfs: str | None, category: str, event: str) -> bool:
    return bool(tfs) and os.path.isdir(os.path.join(tfs, "events", category, event))


def pid_max() -> int:
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 4_194_304


def fd_kind_of(h: Header, path: str) -> int:
    """Kind of an open fd from /proc/PID/fd/N (stat follows the fd to the object)."""
    try:
        m = os.stat(path).st_mode
    except OSError:
        return h.DIAG_KIND_UNKNOWN
    if stat.S_ISSOCK(m):
        return h.DIAG_KIND_SOCKET
    if stat.S_ISFIFO(m):
        return h.DIAG_KIND_PIPE
    if stat.S_ISREG(m) or stat.S_ISDIR(m) or stat.S_ISBLK(m):
        return h.DIAG_KIND_FILE
    return h.DIAG_KIND_OTHER


def _proc_net_lines(path: str) -> list[list[str]]:
    try:
        with open(path) as f:
            return [line.split() for line in f.readlines()[1:]]
    except OSError:
        return []


def _tcp_sockets(tgid: int) -> tuple[dict[int, int], list[tuple[int, int]]]:
    """({listening inode: port}, [(local port, inode) of the other TCP sockets]) of the tgid's
    network namespace."""
    listening: dict[int, int] = {}
    conns: list[tuple[int, int]] = []
    for name in ("tcp", "tcp6"):
        for f in _proc_net_lines(f"/proc/{tgid}/net/{name}"):
            try:
                port, st, inode = int(f[1].rsplit(":", 1)[1], 16), f[3], int(f[9])
            except (IndexError, ValueError):
                continue
            if st == TCP_LISTEN:
                listening[inode] = port
            else:
                conns.append((port, inode))
    return listening, conns


def socket_inodes(tgid: int) -> set[int]:
    """Inodes of the sockets the process holds open."""
    out = set()
    base = f"/proc/{tgid}/fd"
    try:
        names = os.listdir(base)
    except OSError:
        return out
    for n in names:
        try:
            link = os.readlink(f"{base}/{n}")
        except OSError:
            continue
        if link.startswith("socket:["):
            try:
                out.add(int(link[8:-1]))
            except ValueError:
                pass
    return out


def listening_ports(tgid: int) -> set[int]:
    """TCP ports the process itself listens on (sockets it holds, not its namespace's)."""
    listening, _ = _tcp_sockets(tgid)
    if not listening:
        return set()
    mine = socket_inodes(tgid)
    return {port for inode, port in listening.items() if inode in mine}


def socket_roles(h: Header, tgid: int) -> dict[int, int]:
    """socket inode -> role bits for the connections a target had before the attach.

    TCP: a connection whose local port is a port some socket of the namespace listens on was
    accepted (server-side); any other connected one was connected by the target (outbound).
    Unix stream: an accepted socket carries the listening socket's path; one without a path is a
    socketpair end or a client: never a request. UDP and the rest stay undecided (the probe
    decides on the first I/O: read first = server-side)."""
    roles: dict[int, int] = {}
    listening, conns = _tcp_sockets(tgid)
    ports = set(listening.values())
    for port, inode in conns:
        roles[inode] = h.FDR_SERVER if port in ports else h.FDR_OUT
    for f in _proc_net_lines(f"/proc/{tgid}/net/unix"):
        try:
            flags, inode = int(f[3], 16), int(f[6])
        except (IndexError, ValueError):
            continue
        if flags & 0x10000:                # __SO_ACCEPTCON: listening
            continue
        roles[inode] = h.FDR_SERVER if len(f) > 7 else h.FDR_PAIR
    return roles


def open_fds(h: Header, tgid: int, requests: bool) -> dict[int, int]:
    """fd -> kind (with role bits for sockets) of what the process has open now."""
    out: dict[int, int] = {}
    base = f"/proc/{tgid}/fd"
    try:
        fds = os.listdir(base)
    except OSError:
        return out
    roles = socket_roles(h, tgid) if requests else {}
    for name in fds:
        kind = fd_kind_of(h, f"{base}/{name}")
        if kind == h.DIAG_KIND_UNKNOWN:
            continue
        if kind == h.DIAG_KIND_SOCKET and roles:
            try:
                link = os.readlink(f"{base}/{name}")     # socket:[INODE]
                kind |= roles.get(int(link[link.index("[") + 1:-1]), 0)
            except (OSError, ValueError):
                pass
        try:
            out[int(name)] = kind
        except ValueError:
            pass
    return out


def proc_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def is_process(pid: int) -> bool:
    """Whether pid is a process (thread group leader), not another process's thread."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("Tgid:") and int(line.split()[1]) == pid for line in f)
    except (OSError, ValueError):
        return False


def children_map() -> dict[int, list[int]]:
    """ppid -> child pids, for every process now."""
    out: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        out.setdefault(ppid, []).append(int(d))
    return out


def descendants(roots: list[int]) -> list[int]:
    """The roots and every process under them now, roots first."""
    kids = children_map()
    out, todo, seen = [], list(roots), set()
    while todo:
        p = todo.pop(0)
        if p in seen:
            continue
        seen.add(p)
        out.append(p)
        todo.extend(sorted(kids.get(p, ())))
    return out


def kallsyms_visible() -> bool:
    """/proc/kallsyms shows real addresses (root with kptr_restrict < 2); zeros otherwise."""
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                return int(line.split()[0], 16) != 0
    except (OSError, ValueError, IndexError):
        return False
    return False


def held_prog_ids(pid: int) -> set[int]:
    """Ids of the BPF programs process `pid` holds open (its fds' fdinfo says `prog_id:`): an
    agent's own programs, told apart from other agents' on the same machine. Empty once it exited."""
    ids: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return ids
    for fd in fds:
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except (OSError, ValueError):
            pass
    return ids
