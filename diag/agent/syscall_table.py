"""What the probe does with each syscall: the rows of its `sysinfo` array.

Two groups: calls whose latency is measured (SF_LAT: the families of diag.syscalls that a request
can spend time in) and calls traced only to learn the kind of each new fd. The flag values and
request families are the probe header's own (diag.agent.header).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from diag.agent.header import Header
from diag.syscall_numbers import X86_64
from diag.syscalls import FAMILIES

# The read/write calls the probe times (the vectored and mmsg variants are rare on servers and
# would each take a row of the aggregate arrays).
TIMED_READS = ("read", "readv", "pread64", "recvfrom", "recvmsg")
TIMED_WRITES = ("write", "writev", "pwrite64", "sendto", "sendmsg")


@dataclass(frozen=True)
class SysInfo:
    flags: int
    kind: int          # kind (with role bits) of the fd(s) the call creates
    fam: int           # FAM_* in a request's breakdown


def traced(h: Header) -> dict[str, SysInfo]:
    """Calls whose latency is measured (SF_LAT), and what each one's arguments mean."""
    io = h.SF_LAT | h.SF_FD0 | h.SF_BYTES
    t: dict[str, SysInfo] = {}
    for n in FAMILIES["accept"]:
        t[n] = SysInfo(h.SF_LAT | h.SF_FD0 | h.SF_NEWFD_RET | h.SF_ACCEPT | h.SF_ALWAYS,
                       h.DIAG_KIND_SOCKET | h.FDR_SERVER, h.FAM_OTHER)
    # kernel stacks where they tell more than the name: reads of files (not idle waits for a peer),
    # every write (blocked only when a buffer or the disk is full), sync, close, connect
    for n in TIMED_READS:
        t[n] = SysInfo(io | h.SF_RD | h.SF_KSTACK_FILE, 0, h.FAM_IO)
    for n in TIMED_WRITES:
        t[n] = SysInfo(io | h.SF_WR | h.SF_KSTACK, 0, h.FAM_IO)
    # Every sync and sleep call is sent, not only slow ones: they are rare on a sane server, and
    # each one on the request path is evidence (an event loop's requests share its fsyncs).
    for n in ("fsync", "fdatasync", "sync_file_range"):
        t[n] = SysInfo(h.SF_LAT | h.SF_FD0 | h.SF_ALWAYS | h.SF_KSTACK, 0, h.FAM_SYNC)
    for n in ("epoll_wait", "epoll_pwait"):
        t[n] = SysInfo(h.SF_LAT | h.SF_FD0, 0, h.FAM_POLL)
    t["connect"] = SysInfo(h.SF_LAT | h.SF_FD0 | h.SF_CONNECT | h.SF_ALWAYS | h.SF_KSTACK, 0, h.FAM_UPSTREAM)
    t["close"] = SysInfo(h.SF_LAT | h.SF_FD0 | h.SF_CLOSE | h.SF_KSTACK, 0, h.FAM_OTHER)
    for n in ("poll", "ppoll", "select", "pselect6"):
        t[n] = SysInfo(h.SF_LAT, 0, h.FAM_POLL)
    # which lock a wait was for: the futex's address (the GIL's is known to the runtime sampler)
    t["futex"] = SysInfo(h.SF_LAT | h.SF_UADDR, 0, h.FAM_FUTEX)
    for n in FAMILIES["sleep"]:
        t[n] = SysInfo(h.SF_LAT | h.SF_ALWAYS, 0, h.FAM_SLEEP)
    assert sum(1 for v in t.values() if v.flags & h.SF_LAT) <= h.DIAG_NIDX, "raise DIAG_NIDX in diag_events.h"
    return t


def fd_tracking(h: Header) -> dict[str, SysInfo]:
    """Calls traced only to learn what kind each new fd is."""
    t = {
        "socket": SysInfo(h.SF_NEWFD_RET, h.DIAG_KIND_SOCKET, h.FAM_OTHER),
        "socketpair": SysInfo(h.SF_PAIR_ARG3, h.DIAG_KIND_SOCKET | h.FDR_PAIR, h.FAM_OTHER),
        "pipe": SysInfo(h.SF_PAIR_ARG0, h.DIAG_KIND_PIPE, h.FAM_OTHER),
        "pipe2": SysInfo(h.SF_PAIR_ARG0, h.DIAG_KIND_PIPE, h.FAM_OTHER),
        "open": SysInfo(h.SF_PATH_ARG0, h.DIAG_KIND_FILE, h.FAM_OTHER),
        "creat": SysInfo(h.SF_PATH_ARG0, h.DIAG_KIND_FILE, h.FAM_OTHER),
        "openat": SysInfo(h.SF_PATH_ARG1, h.DIAG_KIND_FILE, h.FAM_OTHER),
        "openat2": SysInfo(h.SF_PATH_ARG1, h.DIAG_KIND_FILE, h.FAM_OTHER),
        "fcntl": SysInfo(h.SF_FCNTL, 0, h.FAM_OTHER),
        "memfd_create": SysInfo(h.SF_NEWFD_RET, h.DIAG_KIND_FILE, h.FAM_OTHER),
    }
    for n in ("dup", "dup2", "dup3"):
        t[n] = SysInfo(h.SF_NEWFD_DUP, 0, h.FAM_OTHER)
    for n in ("eventfd", "eventfd2", "epoll_create", "epoll_create1", "timerfd_create", "signalfd4",
              "inotify_init1", "pidfd_open"):
        t[n] = SysInfo(h.SF_NEWFD_RET, h.DIAG_KIND_OTHER, h.FAM_OTHER)
    return t


def sysinfo_of(h: Header, name: str, requests: bool) -> SysInfo:
    """What the probe gets for one syscall. Without the request summarizer the probe behaves as
    before it existed: no role bits, every call subject to the slow threshold."""
    info = traced(h).get(name) or fd_tracking(h)[name]
    if requests:
        return info
    return SysInfo(info.flags & ~h.SF_ALWAYS, info.kind & h.DIAG_KIND_MASK, info.fam)


def syscall_numbers() -> dict[str, int]:
    """name -> number for this architecture: the kernel uapi header's, completed by BCC's table
    and, on x86_64, diag's own (each may lack calls newer than itself)."""
    table: dict[str, int] = {}
    for hdr in ("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "/usr/include/asm/unistd_64.h",
                "/usr/include/asm-generic/unistd.h"):
        try:
            text = open(hdr).read()
        except OSError:
            continue
        for m in re.finditer(r"#define\s+__NR_(\w+)\s+(\d+)", text):
            table.setdefault(m.group(1), int(m.group(2)))
    try:
        from bcc.syscall import syscalls
        for k, v in syscalls.items():
            table.setdefault(v.decode(), k)
    except Exception:
        pass
    if os.uname().machine == "x86_64":          # no uapi header installed, no BCC table: the built-in one
        for nr, name in X86_64.items():
            table.setdefault(name, nr)
    return table
