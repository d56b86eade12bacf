"""The syscall vocabulary: fd kinds, syscall families and the call tables every stage shares.

Parsers, the eBPF agent, request rebuilding, crossing, rules, gates and the bench all speak in
these words; each is defined here once. The probe's own numbers (fd kinds, request families) live
in probes/diag_events.h and are read from it (diag/agent/header.py), never copied by hand;
tests/unit/test_vocabulary.py checks that the names here and there agree.
"""
from __future__ import annotations

from enum import Enum


class FdKind(str, Enum):
    """What an fd points at, where the trace lets us know."""

    SOCKET = "socket"
    FILE = "file"      # a regular file (or a directory / block device opened as a file)
    PIPE = "pipe"
    OTHER = "other"    # eventfd, epoll, timerfd, character devices, anon inodes...
    UNKNOWN = "unknown"


# Syscall families, the unit the decision rules reason in.
FAMILIES: dict[str, tuple[str, ...]] = {
    "accept": ("accept", "accept4"),
    "read": ("read", "readv", "pread64", "preadv", "preadv2", "recvfrom", "recvmsg", "recvmmsg"),
    "write": ("write", "writev", "pwrite64", "pwritev", "pwritev2", "sendto", "sendmsg",
              "sendmmsg", "sendfile", "sendfile64"),
    "sync": ("fsync", "fdatasync", "sync_file_range", "syncfs", "sync", "msync"),
    "poll": ("epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll", "select",
             "pselect6", "_newselect"),
    "connect": ("connect",),
    "close": ("close", "shutdown"),
    "futex": ("futex", "futex_waitv"),
    "sleep": ("nanosleep", "clock_nanosleep"),
}
FAMILY_OF: dict[str, str] = {name: fam for fam, names in FAMILIES.items() for name in names}

READ_NAMES = frozenset(FAMILIES["read"])
WRITE_NAMES = frozenset(FAMILIES["write"])
ACCEPT_NAMES = frozenset(FAMILIES["accept"])

# Families whose long calls are usually a thread waiting for work, not work taking long: an idle
# worker in epoll_wait or accept, a thread parked on a futex, an explicit sleep. They are shown,
# but never called a latency spike on their own.
WAIT_FAMILIES = frozenset({"poll", "accept", "futex", "sleep"})
# Names by family group, for the loops over every call (a set lookup, not a family() call each)
WAIT_NAMES = frozenset(n for f in WAIT_FAMILIES for n in FAMILIES[f])
POLL_NAMES = frozenset(FAMILIES["poll"])
SYNC_NAMES = frozenset(FAMILIES["sync"])
# Calls that wait for another process or a signal: never work.
PROCESS_WAITS = frozenset({"wait4", "waitid", "pause", "rt_sigsuspend", "rt_sigtimedwait", "sigsuspend"})

# Calls whose non-negative return value is the number of bytes moved (mmsg calls return a count
# of messages, so they are not here).
BYTE_COUNT = frozenset(READ_NAMES | WRITE_NAMES) - {"recvmmsg", "sendmmsg"}

# Calls that only exist on sockets: an fd they use is a socket whatever the trace says of it.
SOCKET_ONLY = frozenset({"recvfrom", "recvmsg", "recvmmsg", "sendto", "sendmsg", "sendmmsg", "accept",
                         "accept4", "connect", "shutdown", "bind", "listen", "getsockname", "getpeername",
                         "getsockopt", "setsockopt"})

# Calls whose first argument is an fd (the one SyscallEvent.fd reports).
FD_FIRST = frozenset((
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2",
    "pwritev2", "recvfrom", "recvmsg", "recvmmsg", "sendto", "sendmsg", "sendmmsg", "sendfile",
    "sendfile64", "splice", "tee", "vmsplice", "copy_file_range", "fsync", "fdatasync",
    "sync_file_range", "syncfs", "readahead", "accept", "accept4", "close", "connect", "shutdown",
    "bind", "listen", "getsockname", "getpeername", "getsockopt", "setsockopt", "epoll_wait",
    "epoll_pwait", "epoll_pwait2", "epoll_ctl", "fstat", "newfstat", "fstatfs", "lseek", "_llseek", "getdents",
    "getdents64", "ioctl", "fcntl", "fcntl64", "flock", "ftruncate", "fallocate", "fadvise64",
    "fchmod", "fchown", "fchdir", "fgetxattr", "fsetxattr", "flistxattr", "fremovexattr",
    "dup", "dup2", "dup3", "inotify_add_watch", "inotify_rm_watch", "timerfd_settime",
    "timerfd_gettime", "io_uring_enter", "io_uring_register",
))

# Calls that create fds, by the kind of what they create.
OPENS = frozenset(("open", "openat", "openat2", "creat", "open_by_handle_at"))   # kind from the path
NEW_SOCKET = frozenset(("socket", "accept", "accept4"))
NEW_OTHER = frozenset((
    "epoll_create", "epoll_create1", "eventfd", "eventfd2", "timerfd_create", "signalfd",
    "signalfd4", "inotify_init", "inotify_init1", "fanotify_init", "memfd_create", "memfd_secret",
    "userfaultfd", "perf_event_open", "pidfd_open", "pidfd_getfd", "io_uring_setup",
))
PAIRS: dict[str, FdKind] = {"pipe": FdKind.PIPE, "pipe2": FdKind.PIPE, "socketpair": FdKind.SOCKET}
DUPS = frozenset(("dup", "dup2", "dup3"))
CLONES = frozenset(("clone", "clone2", "clone3", "fork", "vfork"))

# Where the time of a request goes: the keys of a slow request's breakdown (docs/report-schema.md).
# "socket": I/O on the request's own connection; "upstream": I/O on sockets the target connected;
# "runq": runnable but waiting for a CPU (eBPF sched_switch); "user": what no syscall explains;
# "queue": before the server read the request, its connection waited in the accept queue (client-
# visible latency, measured by the probe from the handshake to the accept); "setup": then the
# server set the connection up (accept to the first read of the request).
BREAKDOWN_KEYS = ("sync", "file", "upstream", "futex", "sleep", "poll", "socket", "connect", "accept", "close",
                  "other", "runq", "user", "queue", "setup")
# The probe's request families (FAM_* in probes/diag_events.h), by their index there, named as
# breakdown keys ("sock" in the header is "socket" here).
PROBE_FAMILY_KEYS = {"sync": "sync", "file": "file", "futex": "futex", "sleep": "sleep", "poll": "poll",
                     "upstream": "upstream", "sock": "socket", "other": "other", "runq": "runq"}


def family(syscall: str) -> str:
    """The family a syscall belongs to, or "other"."""
    return FAMILY_OF.get(syscall, "other")


def breakdown_key(name: str) -> str:
    """The breakdown key of a family or probe family name ("read"/"write"/"sock" -> "socket")."""
    if name in BREAKDOWN_KEYS:
        return name
    if name in ("sock", "read", "write"):
        return "socket"
    return "other"
