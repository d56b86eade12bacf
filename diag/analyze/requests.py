"""Server-side requests rebuilt from syscalls, without instrumenting the target.

Per connection (pid, fd) of a server socket, in time order:
- `accept`/`accept4` returning the fd opens the connection (idle);
- a read-family call returning bytes starts a request when the connection is idle or has just
  written a response (keep-alive: a read after a write starts the next request); the request
  starts at the END of that read, because the blocking wait before the bytes arrive is idle time,
  not latency; further reads before any write add to the same request;
- write-family calls returning bytes after a read are the response; the request ends at the end
  of the last write before the next request's read, EOF (read returning 0) or close.
Sockets the target connected itself (`connect`) are upstream connections: they open no
requests, and time on them inside a request is "upstream" time, from the connect to the close:
an fd number freed by an upstream's close and returned by accept is a client's connection again.

The eBPF probe applies the same rules in the kernel and emits one record per request; the
rebuild here serves strace and per-event eBPF captures.

Limits, by construction:
- pipelined requests (several requests read in one read, or a read of request N+1 before the
  response of N) are merged into one request;
- a worker hand-off (one thread reads, another writes) is followed by fd, not thread: the request
  is credited to the reading thread and `write_tid` names the writer;
- UDP servers (recvfrom/sendto on one fd for many peers) are not split by peer: each datagram
  exchange is a request only when reads and writes alternate;
- a response written before its request was fully read (streaming) ends the request early.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from diag.model import Request, SyscallEvent
from diag.syscalls import ACCEPT_NAMES, READ_NAMES, WRITE_NAMES, FdKind, family

IDLE, READING, WRITING = 0, 1, 2
_OPEN_CLOSE = ACCEPT_NAMES | {"close", "connect"}


@dataclass(slots=True)
class _Conn:
    state: int = IDLE
    conn_start: int | None = None
    seq: int = 0
    tid: int = 0
    start: int = 0
    end: int = 0
    first_write: int | None = None
    write_tid: int | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    reads: int = 0
    writes: int = 0


class UpstreamFds(set):
    """The (pid, fd) the target connected, and when each was an upstream socket (`spans`: from
    its connect's start to its close's end, None while still open). A set as before; family_of
    asks `at(key, t)` of it, since fd numbers are reused."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.spans: dict[tuple[int, int], list[list]] = {}

    def at(self, key: tuple[int, int], t: int) -> bool:
        spans = self.spans.get(key)
        if spans is None:
            return key in self
        return any(a <= t and (b is None or t <= b) for a, b in spans)


@dataclass
class RequestSet:
    """Requests and what the rebuild learned about the connections."""

    requests: list[Request] = field(default_factory=list)
    upstream_fds: UpstreamFds = field(default_factory=UpstreamFds)     # (pid, fd) the target connected
    connections: int = 0
    inflight: int = 0


def rebuild(events: list[SyscallEvent], source: str = "strace") -> RequestSet:
    """Requests from a complete stream of syscall events (strace, or eBPF with every event)."""
    out = RequestSet()
    conns: dict[tuple[int, int], _Conn] = {}
    upstream_now: set[tuple[int, int]] = set()      # connected sockets open at this point in time

    requests = out.requests

    def emit(key: tuple[int, int], c: _Conn) -> None:
        wt = c.write_tid
        requests.append(Request(key[0], c.tid, key[1], c.start, c.end, c.bytes_in, c.bytes_out, c.reads, c.writes,
                                c.first_write, wt if wt != c.tid else None, c.conn_start, c.seq, None, source))
        c.seq += 1
        c.state = IDLE

    SOCKET = FdKind.SOCKET
    relevant = [e for e in events if e.fd_kind is SOCKET or e.name in _OPEN_CLOSE]
    # by end time (start + duration: SyscallEvent fields 3 and 4, read directly: this runs per call)
    relevant.sort(key=lambda e: e[3] + (e[4] or 0))
    conns_get = conns.get
    for pid, tid, name, start, dur, ret, _errno, fd, kind, nbytes, _src in relevant:
        end = start + (dur or 0)
        if name == "connect":
            if fd is not None:
                if (pid, fd) not in upstream_now:
                    out.upstream_fds.spans.setdefault((pid, fd), []).append([start, None])
                upstream_now.add((pid, fd))
                out.upstream_fds.add((pid, fd))
                conns.pop((pid, fd), None)
            continue
        if name in ACCEPT_NAMES:
            if ret is not None and ret >= 0:
                key = (pid, ret)
                old = conns_get(key)
                if old is not None and old.state == WRITING:
                    emit(key, old)
                conns[key] = _Conn(conn_start=end)
                out.connections += 1
            continue
        if fd is None:
            continue
        key = (pid, fd)
        if name == "close":
            c = conns.pop(key, None)
            if c is not None and c.state == WRITING:
                emit(key, c)
            if key in upstream_now:
                upstream_now.discard(key)
                out.upstream_fds.spans[key][-1][1] = end
            continue
        if kind is not SOCKET or key in upstream_now:
            continue
        if name in READ_NAMES:
            n = nbytes if nbytes is not None else ret
            if n is None or n < 0:
                continue                       # EAGAIN and errors: no bytes moved
            c = conns_get(key)
            if n == 0:                         # EOF
                if c is not None and c.state == WRITING:
                    emit(key, c)
                conns.pop(key, None)
                continue
            if c is None:
                c = conns[key] = _Conn()       # a connection older than the trace
                out.connections += 1
            if c.state == WRITING:
                emit(key, c)
            if c.state == IDLE:
                c.state, c.tid, c.start, c.end = READING, tid, end, end
                c.first_write, c.write_tid = None, None
                c.bytes_in = c.bytes_out = c.reads = c.writes = 0
            c.reads += 1
            c.bytes_in += n
            continue
        if name in WRITE_NAMES:
            n = nbytes if nbytes is not None else ret
            c = conns_get(key)
            if c is None or c.state == IDLE or n is None or n <= 0:
                continue
            c.state = WRITING
            c.writes += 1
            c.bytes_out += n
            c.end = end
            if c.first_write is None:
                c.first_write = end
                c.write_tid = tid
    for key, c in conns.items():
        if c.state == WRITING:
            emit(key, c)
        elif c.state == READING:
            out.inflight += 1
    out.requests.sort(key=lambda r: r.start_ns)
    return out


def family_of(ev: SyscallEvent, upstream_fds: set[tuple[int, int]]) -> str:
    """The family a call counts in within a request's time breakdown. With the UpstreamFds of a
    rebuild, a call on an fd counts as upstream only while that fd was a connected socket."""
    fam = family(ev.name)
    if fam in ("read", "write", "connect") and ev.fd is not None and (ev.pid, ev.fd) in upstream_fds and \
            (not isinstance(upstream_fds, UpstreamFds) or upstream_fds.at((ev.pid, ev.fd), ev.start_ns)):
        return "upstream"
    if fam in ("read", "write"):
        if ev.fd_kind is FdKind.FILE:
            return "file"
        return "socket"
    return fam
