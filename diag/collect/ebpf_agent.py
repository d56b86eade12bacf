"""The eBPF agent: loads probes/syscall_latency.c with BCC and streams its records as JSON Lines.

Run by the eBPF collector as a subprocess (so a crash in BCC or libbpf cannot take diag down, and
so it can run under the system python that has `bcc` when the venv has not):

    /usr/bin/python3 -m diag.collect.ebpf_agent --pid 1234 --out streams/ebpf.jsonl

It imports only the standard library and `bcc`. The stream ("ebpf-jsonl", parsed by
diag.parse.ebpf) is:

    {"format": "diag.ebpf/1", "tgids": [...], "slow_ns": N, "ringbuf": true, "probes": [...], ...}
    {"type": "syscall", "tid", "pid", "name", "start_ns", "dur_ns", "fd", "fd_kind", "ret", ...}
    {"type": "request", "pid", "tid", "fd", "start_ns", "end_ns", "bytes_in", "bytes_out", "reads",
     "writes", "first_write_ns", "write_tid", "conn_start_ns", "seq", "family_ns": {"sync": ns, ...}}
    ...
    {"type": "aggregate", "name", "fd_kind", "count", "total_ns", "hist": [[lower_ns, n], ...], ...}
    {"type": "lost", "count": N, ...}
    {"type": "end", "events": N, ...}

Request records come from the probe's in-kernel request summarizer (on by default, off with
--no-requests): one record per server-side request, whatever --slow-ns, from their own ring
buffer. accept/accept4/connect calls are then emitted whatever their duration (per connection,
cheap). Requests whose response was complete when the agent stopped are emitted at the drain
("at_stop": true); requests still being read are counted as "inflight" in the end line.

The header line is written once every probe is attached: the collector waits for it. Slow-call
lines are flushed after every ring-buffer poll (at most every 100 ms), so a capture cut by SIGKILL
is replayable up to its last complete line. On SIGTERM/SIGINT (or --duration, or when every target
has exited) the agent detaches, drains the buffer, writes the in-kernel aggregates (exact even
when per-event records were lost), the lost counts and the end line, and exits 0.
"""
from __future__ import annotations

import argparse
import ctypes as ct
import errno as _errno
import json
import os
import signal
import stat
import struct
import sys
import time

from diag.resources import probe_dir

PROBE = "syscall_latency.c"
FORMAT_TAG = "diag.ebpf/1"

# Mirrors probes/diag_events.h.
KIND_UNKNOWN, KIND_SOCKET, KIND_FILE, KIND_PIPE, KIND_OTHER = 0, 1, 2, 3, 4
KIND_NAMES = {KIND_UNKNOWN: "unknown", KIND_SOCKET: "socket", KIND_FILE: "file", KIND_PIPE: "pipe",
              KIND_OTHER: "other"}
SF_LAT, SF_FD0, SF_BYTES, SF_NEWFD_RET, SF_NEWFD_DUP = 0x001, 0x002, 0x004, 0x008, 0x010
SF_PAIR_ARG0, SF_PAIR_ARG3, SF_CLOSE, SF_PATH_ARG0, SF_PATH_ARG1, SF_FCNTL = 0x020, 0x040, 0x080, 0x100, 0x200, 0x400
SF_RD, SF_WR, SF_ACCEPT, SF_CONNECT, SF_ALWAYS = 0x800, 0x1000, 0x2000, 0x4000, 0x8000
SF_KSTACK, SF_KSTACK_FILE = 0x10000, 0x20000
DIAG_NIDX, DIAG_NKIND, DIAG_NSLOT = 32, 5, 48   # checked by the probe at compile time
KIND_MASK, FDR_SERVER, FDR_OUT, FDR_PAIR = 0xff, 0x100, 0x200, 0x400
CNT_EVENT_LOST, CNT_AGG_ERR, CNT_STACK_ERR, CNT_FDMAP_ERR, CNT_CALLS = 0, 1, 2, 3, 4
CNT_REQ_LOST, CNT_REQ_EMITTED, CNT_CONN_ERR, CNT_REQ_ABANDONED = 5, 6, 7, 8
FAM_SYNC, FAM_FILE, FAM_FUTEX, FAM_SLEEP, FAM_POLL, FAM_UPSTREAM, FAM_SOCK, FAM_OTHER, FAM_RUNQ, FAM_IO = range(10)
FAM_NAMES = ("sync", "file", "futex", "sleep", "poll", "upstream", "sock", "other", "runq")
CONN_IDLE, CONN_READING, CONN_WRITING = 0, 1, 2


class Event(ct.Structure):
    """ctypes mirror of struct diag_event (its size is checked by the probe at compile time)."""

    _fields_ = [("start_ns", ct.c_uint64), ("dur_ns", ct.c_uint64), ("off_cpu_ns", ct.c_uint64),
                ("kstack_off_ns", ct.c_uint64), ("kstack_ts_ns", ct.c_uint64), ("ret", ct.c_int64),
                ("tid", ct.c_uint32), ("tgid", ct.c_uint32), ("nr", ct.c_uint32), ("fd", ct.c_int32),
                ("kstack_id", ct.c_int32), ("fd_kind", ct.c_uint32)]


class Request(ct.Structure):
    """ctypes mirror of struct diag_request (size checked by the probe at compile time)."""

    _fields_ = [("start_ns", ct.c_uint64), ("end_ns", ct.c_uint64), ("first_write_ns", ct.c_uint64),
                ("conn_start_ns", ct.c_uint64), ("bytes_in", ct.c_uint64), ("bytes_out", ct.c_uint64),
                ("family_ns", ct.c_uint64 * len(FAM_NAMES)), ("reads", ct.c_uint32), ("writes", ct.c_uint32),
                ("tgid", ct.c_uint32), ("tid", ct.c_uint32), ("write_tid", ct.c_uint32), ("fd", ct.c_int32),
                ("seq", ct.c_uint32), ("state", ct.c_uint32)]


# The same layout for struct.unpack (one call per record instead of one ctypes access per field)
REQUEST_LAYOUT = struct.Struct(f"=6Q{len(FAM_NAMES)}Q5Ii2I")
assert REQUEST_LAYOUT.size == ct.sizeof(Request)

_IO = SF_LAT | SF_FD0 | SF_BYTES
# Syscalls whose latency is measured (SF_LAT), and what each one's arguments mean:
# name -> (flags, kind of the new fd (with role bits), family in a request's breakdown).
# Role bits, SF_ALWAYS and the families only matter with the request summarizer (see `sysinfo_of`).
TRACED: dict[str, tuple[int, int, int]] = {
    "accept": (SF_LAT | SF_FD0 | SF_NEWFD_RET | SF_ACCEPT | SF_ALWAYS, KIND_SOCKET | FDR_SERVER, FAM_OTHER),
    "accept4": (SF_LAT | SF_FD0 | SF_NEWFD_RET | SF_ACCEPT | SF_ALWAYS, KIND_SOCKET | FDR_SERVER, FAM_OTHER),
    # kernel stacks where they tell more than the name: reads of files (not idle waits for a peer),
    # every write (blocked only when a buffer or the disk is full), sync, close, connect
    **{n: (_IO | SF_RD | SF_KSTACK_FILE, 0, FAM_IO) for n in ("read", "readv", "pread64", "recvfrom", "recvmsg")},
    **{n: (_IO | SF_WR | SF_KSTACK, 0, FAM_IO) for n in ("write", "writev", "pwrite64", "sendto", "sendmsg")},
    # Every sync and sleep call is sent, not only slow ones: they are rare on a sane server, and
    # each one on the request path is evidence (an event loop's requests share its fsyncs).
    **{n: (SF_LAT | SF_FD0 | SF_ALWAYS | SF_KSTACK, 0, FAM_SYNC) for n in ("fsync", "fdatasync", "sync_file_range")},
    **{n: (SF_LAT | SF_FD0, 0, FAM_POLL) for n in ("epoll_wait", "epoll_pwait")},
    "connect": (SF_LAT | SF_FD0 | SF_CONNECT | SF_ALWAYS | SF_KSTACK, 0, FAM_UPSTREAM),
    "close": (SF_LAT | SF_FD0 | SF_CLOSE | SF_KSTACK, 0, FAM_OTHER),
    **{n: (SF_LAT, 0, FAM_POLL) for n in ("poll", "ppoll", "select", "pselect6")},
    "futex": (SF_LAT, 0, FAM_FUTEX),
    **{n: (SF_LAT | SF_ALWAYS, 0, FAM_SLEEP) for n in ("nanosleep", "clock_nanosleep")},
}
# Syscalls traced only to learn what kind each new fd is.
FD_TRACKING: dict[str, tuple[int, int]] = {
    "socket": (SF_NEWFD_RET, KIND_SOCKET),
    "socketpair": (SF_PAIR_ARG3, KIND_SOCKET | FDR_PAIR),
    "pipe": (SF_PAIR_ARG0, KIND_PIPE),
    "pipe2": (SF_PAIR_ARG0, KIND_PIPE),
    "open": (SF_PATH_ARG0, KIND_FILE),
    "creat": (SF_PATH_ARG0, KIND_FILE),
    "openat": (SF_PATH_ARG1, KIND_FILE),
    "openat2": (SF_PATH_ARG1, KIND_FILE),
    "dup": (SF_NEWFD_DUP, 0),
    "dup2": (SF_NEWFD_DUP, 0),
    "dup3": (SF_NEWFD_DUP, 0),
    "fcntl": (SF_FCNTL, 0),
    "memfd_create": (SF_NEWFD_RET, KIND_FILE),
    **{n: (SF_NEWFD_RET, KIND_OTHER) for n in ("eventfd", "eventfd2", "epoll_create", "epoll_create1",
                                                "timerfd_create", "signalfd4", "inotify_init1", "pidfd_open")},
}
# The entry program reading the fewest arguments that still sees the ones this syscall needs.
ENTER_FN = {"socketpair": "diag_sys_enter4", "openat": "diag_sys_enter2", "openat2": "diag_sys_enter2",
            "fcntl": "diag_sys_enter2"}
TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
assert sum(1 for flags, _, _ in TRACED.values() if flags & SF_LAT) <= DIAG_NIDX, "raise DIAG_NIDX (diag_events.h too)"


def sysinfo_of(name: str, requests: bool) -> tuple[int, int, int]:
    """(flags, new-fd kind, family) the probe gets for one syscall. Without the request summarizer
    the probe behaves as before it existed: no role bits, every call subject to --slow-ns."""
    if name in TRACED:
        flags, kind, fam = TRACED[name]
    else:
        (flags, kind), fam = FD_TRACKING[name], FAM_OTHER
    if not requests:
        flags &= ~SF_ALWAYS
        kind &= KIND_MASK
    return flags, kind, fam


def log(msg: str) -> None:
    sys.stderr.write(f"ebpf-agent: {msg}\n")
    sys.stderr.flush()


def tracefs() -> str | None:
    for d in TRACEFS_CANDIDATES:
        if os.path.isdir(os.path.join(d, "events", "syscalls")):
            return d
    return None


def syscall_numbers() -> dict[str, int]:
    """name -> number for this architecture (BCC's table, else the kernel uapi header)."""
    try:
        from bcc.syscall import syscalls
        table = {v.decode(): k for k, v in syscalls.items()}
        if table:
            return table
    except Exception:
        pass
    import re
    table = {}
    for hdr in ("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "/usr/include/asm/unistd_64.h",
                "/usr/include/asm-generic/unistd.h"):
        try:
            text = open(hdr).read()
        except OSError:
            continue
        for m in re.finditer(r"#define\s+__NR_(\w+)\s+(\d+)", text):
            table.setdefault(m.group(1), int(m.group(2)))
    return table


def fd_kind_of(path: str) -> int:
    """Kind of an open fd from /proc/PID/fd/N (stat follows the fd to the object)."""
    try:
        st = os.stat(path)
    except OSError:
        return KIND_UNKNOWN
    m = st.st_mode
    if stat.S_ISSOCK(m):
        return KIND_SOCKET
    if stat.S_ISFIFO(m):
        return KIND_PIPE
    if stat.S_ISREG(m) or stat.S_ISDIR(m) or stat.S_ISBLK(m):
        return KIND_FILE
    return KIND_OTHER


def _proc_net_lines(path: str) -> list[list[str]]:
    try:
        with open(path) as f:
            return [line.split() for line in f.readlines()[1:]]
    except OSError:
        return []


def socket_roles(tgid: int) -> dict[int, int]:
    """socket inode -> role bits for the connections a target had before the attach.

    TCP: a connection whose local port is a port some socket of the namespace listens on was
    accepted (server-side); any other connected one was connected by the target (outbound).
    Unix stream: an accepted socket carries the listening socket's path; one without a path is a
    socketpair end or a client: never a request. UDP and the rest stay undecided (the probe
    decides on the first I/O: read first = server-side)."""
    roles: dict[int, int] = {}
    listening: set[int] = set()
    conns: list[tuple[int, int]] = []
    for name in ("tcp", "tcp6"):
        for f in _proc_net_lines(f"/proc/{tgid}/net/{name}"):
            try:
                port, st, inode = int(f[1].rsplit(":", 1)[1], 16), f[3], int(f[9])
            except (IndexError, ValueError):
                continue
            if st == "0A":
                listening.add(port)
            else:
                conns.append((port, inode))
    for port, inode in conns:
        roles[inode] = FDR_SERVER if port in listening else FDR_OUT
    for f in _proc_net_lines(f"/proc/{tgid}/net/unix"):
        try:
            flags, inode = int(f[3], 16), int(f[6])
        except (IndexError, ValueError):
            continue
        if flags & 0x10000:                # __SO_ACCEPTCON: listening
            continue
        roles[inode] = FDR_SERVER if len(f) > 7 else FDR_PAIR
    return roles


def proc_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def build(args: argparse.Namespace, ringbuf: bool) -> tuple[str, list[str]]:
    """The probe text and its cflags."""
    probes = str(probe_dir())          # the one place that knows a checkout from a wheel
    path = args.probe or os.path.join(probes, PROBE)
    with open(path) as f:
        text = f.read()
    incdir = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(os.path.join(incdir, "diag_events.h")):
        incdir = probes
    cflags = [f"-I{incdir}", f"-DSLOW_NS={int(args.slow_ns)}ULL", f"-DDIAG_EVENT_SIZE={ct.sizeof(Event)}",
              f"-DDIAG_AGENT_NIDX={DIAG_NIDX}", f"-DDIAG_AGENT_NKIND={DIAG_NKIND}", f"-DDIAG_AGENT_NSLOT={DIAG_NSLOT}",
              f"-DDIAG_REQUEST_SIZE={ct.sizeof(Request)}",
              f"-DAGENT_TGID={os.getpid()}", f"-DSTACK_ENTRIES={int(args.stack_entries)}",
              "-Wno-macro-redefined"]
    if args.follow or len(args.pid) > 1:
        cflags.append("-DTARGET_MAP")
        if args.follow:
            cflags.append("-DFOLLOW")
    elif args.pid:
        cflags.append(f"-DTARGET_TGID={args.pid[0]}")
    if ringbuf:
        cflags += ["-DUSE_RINGBUF", f"-DRINGBUF_PAGES={int(args.ringbuf_pages)}"]
    if not args.no_requests:
        cflags += ["-DREQUESTS", f"-DREQ_PAGES={int(args.request_pages)}"]
    return text, cflags


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stop_reason: str | None = None
        self.events = 0
        self.perf_lost = 0
        self.requests = 0           # request records written (from the buffer and at the drain)
        self.requests_at_stop = 0
        self.inflight = 0
        self.perf_lost_requests = 0
        self.want_requests = not args.no_requests
        self.out = None
        self.b = None
        self.ringbuf = not args.no_ringbuf
        self.attached: list[str] = []
        self.tracepoints: list[str] = []
        self.missing: list[str] = []
        self.nr_name: dict[int, str] = {}
        self.idx_name: list[str] = []       # sysinfo.idx -> syscall name
        self.stack_cache: dict[int, list[str]] = {}
        self.seeded: set[int] = set()
        self.tgids: list[int] = list(args.pid)

    # --- set-up -------------------------------------------------------------------------------
    def compile(self):
        from bcc import BPF

        text, cflags = build(self.args, self.ringbuf)
        try:
            return BPF(text=text, cflags=cflags)
        except Exception as e:
            if not self.ringbuf:
                raise
            # Kernels before 5.8 have no BPF ring buffer: fall back to the perf buffer.
            log(f"ring buffer unavailable ({str(e).splitlines()[0] if str(e) else e}); using the perf buffer")
            self.ringbuf = False
            text, cflags = build(self.args, False)
            return BPF(text=text, cflags=cflags)

    def attach(self) -> None:
        from bcc import BPF

        tfs = tracefs()
        numbers = syscall_numbers()
        b = self.b
        info = b["sysinfo"]
        wanted = [*FD_TRACKING, *TRACED]
        # sysinfo first, so every call seen after the attach is handled completely
        for name in wanted:
            flags, kind, fam = sysinfo_of(name, self.want_requests)
            nr = numbers.get(name)
            # a syscall this architecture lacks (open, select, pipe... on arm64) has no number and
            # no tracepoint: skip it and say so in the header
            if nr is None or not (tfs and os.path.isdir(f"{tfs}/events/syscalls/sys_enter_{name}")
                                  and os.path.isdir(f"{tfs}/events/syscalls/sys_exit_{name}")):
                self.missing.append(name)
                continue
            v = info.Leaf()
            v.flags, v.kind, v.fam = flags, kind, fam
            if flags & SF_LAT:          # its row in the per-CPU aggregate arrays
                v.idx = len(self.idx_name)
                self.idx_name.append(name)
            info[ct.c_int(nr)] = v
            self.nr_name[nr] = name
        if self.args.follow or len(self.args.pid) > 1:
            tg = b["targets"]
            for pid in self.args.pid:
                tg[tg.Key(pid)] = tg.Leaf(1)
        self.attached = sorted(self.nr_name.values())
        if self.args.tracepoints == "raw" and os.path.isdir(f"{tfs}/events/raw_syscalls/sys_enter"):
            # Two tracepoints for every syscall: the probe returns at once for other processes and
            # for syscalls not in `sysinfo`. Their layout (long id; unsigned long args[6] / long
            # ret) matches the per-syscall ones, so the same programs serve both.
            b.attach_tracepoint(tp="raw_syscalls:sys_enter", fn_name="diag_sys_enter4")
            b.attach_tracepoint(tp="raw_syscalls:sys_exit", fn_name="diag_sys_exit")
            self.tracepoints = ["raw_syscalls:sys_enter", "raw_syscalls:sys_exit"]
        else:
            # One pair per syscall: detaching costs ~80 ms per tracepoint (the kernel waits for a
            # grace period on each), so stopping takes seconds with ~90 of them.
            for name in self.attached:
                b.attach_tracepoint(tp=f"syscalls:sys_enter_{name}", fn_name=ENTER_FN.get(name, "diag_sys_enter1"))
                b.attach_tracepoint(tp=f"syscalls:sys_exit_{name}", fn_name="diag_sys_exit")
                self.tracepoints += [f"syscalls:sys_enter_{name}", f"syscalls:sys_exit_{name}"]
        self.tracepoints += ["sched:sched_switch", "sched:sched_process_exit", "sched:sched_process_exec"]
        if self.args.follow:
            self.tracepoints.append("sched:sched_process_fork")
        del BPF

    def seed_fds(self, tgid: int) -> None:
        """Kinds of the fds a target had before the attach, from /proc/PID/fd."""
        if tgid in self.seeded:
            return
        self.seeded.add(tgid)
        fdk = self.b["fdkinds"]
        base = f"/proc/{tgid}/fd"
        try:
            fds = os.listdir(base)
        except OSError:
            return
        roles = socket_roles(tgid) if self.want_requests else {}
        for name in fds:
            kind = fd_kind_of(f"{base}/{name}")
            if kind == KIND_UNKNOWN:
                continue
            if kind == KIND_SOCKET and roles:
                try:
                    link = os.readlink(f"{base}/{name}")     # socket:[INODE]
                    kind |= roles.get(int(link[link.index("[") + 1:-1]), 0)
                except (OSError, ValueError):
                    pass
            k = fdk.Key()
            k.tgid, k.fd = tgid, int(name)
            try:
                fdk[k] = ct.c_uint32(kind)
            except Exception:
                pass

    def follow_new_targets(self) -> None:
        if not self.args.follow:
            return
        for k, _ in self.b["targets"].items():
            pid = k.value
            if pid not in self.seeded:
                try:
                    with open(f"/proc/{pid}/status") as f:
                        is_process = any(line.startswith("Tgid:") and int(line.split()[1]) == pid for line in f)
                except OSError:
                    is_process = False
                if is_process:
                    self.tgids.append(pid)
                    self.seed_fds(pid)
                else:
                    self.seeded.add(pid)

    # --- records ------------------------------------------------------------------------------
    def kstack(self, sid: int) -> list[str]:
        if sid < 0:
            return []
        frames = self.stack_cache.get(sid)
        if frames is None:
            try:
                addrs = list(self.b["stacks"].walk(sid))
            except Exception:
                addrs = []
            frames = [self.b.ksym(a).decode(errors="replace") for a in reversed(addrs)]
            self.stack_cache[sid] = frames
        return frames

    def on_event(self, ctx, data, size) -> None:
        ev = ct.cast(data, ct.POINTER(Event)).contents
        name = self.nr_name.get(ev.nr, f"syscall_{ev.nr}")
        rec = {"type": "syscall", "tid": ev.tid, "pid": ev.tgid, "name": name, "start_ns": ev.start_ns,
               "dur_ns": ev.dur_ns, "fd": ev.fd if ev.fd >= 0 else None,
               "fd_kind": KIND_NAMES.get(ev.fd_kind, "unknown"), "ret": ev.ret}
        if -4096 < ev.ret < 0:
            rec["errno"] = _errno.errorcode.get(-ev.ret, str(-ev.ret))
        elif ev.ret > 0 and TRACED.get(name, (0, 0, 0))[0] & SF_BYTES:
            rec["bytes"] = ev.ret
        rec["off_cpu_ns"] = ev.off_cpu_ns
        if ev.kstack_id >= 0:
            rec["kstack"] = self.kstack(ev.kstack_id)
            rec["kstack_off_ns"] = ev.kstack_off_ns
            rec["kstack_ts_ns"] = ev.kstack_ts_ns
        self.out.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self.events += 1

    def on_perf_event(self, cpu, data, size) -> None:
        self.on_event(None, data, size)

    def request_record(self, r, at_stop: bool = False) -> dict:
        rec = {"type": "request", "pid": r.tgid, "tid": r.tid, "fd": r.fd, "start_ns": r.start_ns,
               "end_ns": r.end_ns, "bytes_in": r.bytes_in, "bytes_out": r.bytes_out, "reads": r.reads,
               "writes": r.writes, "first_write_ns": r.first_write_ns or None, "write_tid": r.write_tid or None,
               "conn_start_ns": r.conn_start_ns or None, "seq": r.seq,
               "family_ns": {n: int(v) for n, v in zip(FAM_NAMES, r.family_ns) if v}}
        if at_stop:
            rec["at_stop"] = True
        return rec

    def on_request(self, ctx, data, size) -> None:
        # One record per request of a busy server: formatted by hand (~3x cheaper than json.dumps)
        # from one struct.unpack (measured 2.1 us per record against 2.7 us through ctypes fields)
        v = REQUEST_LAYOUT.unpack(ct.string_at(data, REQUEST_LAYOUT.size))
        start, end, first_write, conn_start, bytes_in, bytes_out = v[:6]
        reads, writes, tgid, tid, write_tid, fd, seq, _state = v[6 + len(FAM_NAMES):]
        fam = ",".join([f'"{n}":{x}' for n, x in zip(FAM_NAMES, v[6:6 + len(FAM_NAMES)]) if x])
        self.out.write(
            f'{{"type":"request","pid":{tgid},"tid":{tid},"fd":{fd},"start_ns":{start},'
            f'"end_ns":{end},"bytes_in":{bytes_in},"bytes_out":{bytes_out},"reads":{reads},'
            f'"writes":{writes},"first_write_ns":{first_write or "null"},'
            f'"write_tid":{write_tid or "null"},"conn_start_ns":{conn_start or "null"},"seq":{seq},'
            f'"family_ns":{{{fam}}}}}\n')
        self.requests += 1

    def on_perf_request(self, cpu, data, size) -> None:
        self.on_request(None, data, size)

    def on_perf_lost_requests(self, n) -> None:
        self.perf_lost_requests += n

    def lost_requests(self) -> int:
        return self.perf_lost_requests + self.counter(CNT_REQ_LOST)

    def drain_connections(self) -> None:
        """At stop: requests whose response is complete are emitted, those still being read are
        in flight (counted, not emitted)."""
        try:
            items = list(self.b["conns"].items())
        except Exception as e:  # pragma: no cover
            log(f"cannot read the connection map: {e}")
            return
        recs = []
        for _, c in items:
            r = c.r
            if r.state == CONN_WRITING:
                recs.append(self.request_record(r, at_stop=True))
            elif r.state == CONN_READING:
                self.inflight += 1
        for rec in sorted(recs, key=lambda x: x["start_ns"]):
            self.write(rec)
        self.requests += len(recs)
        self.requests_at_stop = len(recs)

    def on_perf_lost(self, n) -> None:
        self.perf_lost += n

    def counter(self, slot: int) -> int:
        try:
            return int(sum(self.b["counters"][ct.c_int(slot)]))
        except Exception:
            return 0

    def lost(self) -> int:
        return self.perf_lost + self.counter(CNT_EVENT_LOST)

    def write_progress(self) -> None:
        if not self.args.progress:
            return
        tmp = self.args.progress + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"events": self.events, "lost": self.lost(), "calls": self.counter(CNT_CALLS),
                       "requests": self.requests, "lost_requests": self.lost_requests(),
                       "ts_ns": time.clock_gettime_ns(time.CLOCK_MONOTONIC), "tgids": self.tgids}, f)
        os.replace(tmp, self.args.progress)

    def write(self, obj: dict) -> None:
        self.out.write(json.dumps(obj, separators=(",", ":")) + "\n")

    def aggregates(self) -> list[dict]:
        """One record per (syscall, fd kind) seen: the per-CPU cells summed (max: the largest)."""
        agg, lat, nbytes = self.b["agg"], self.b["lat_hist"], self.b["bytes_hist"]

        def hist(table, row: int) -> list[list[int]]:
            out = []
            for slot in range(DIAG_NSLOT):
                n = int(sum(table.getvalue(ct.c_int(row * DIAG_NSLOT + slot))))
                if n:
                    out.append([0 if slot == 0 else 1 << (slot - 1), n])
            return out

        recs = []
        for idx, name in enumerate(self.idx_name):
            for kind in range(DIAG_NKIND):
                row = idx * DIAG_NKIND + kind
                cells = agg.getvalue(ct.c_int(row))
                count = sum(int(c.count) for c in cells)
                if not count:
                    continue
                rec = {"type": "aggregate", "name": name, "fd_kind": KIND_NAMES.get(kind, "unknown"),
                       "count": count, "total_ns": sum(int(c.total_ns) for c in cells),
                       "max_ns": max(int(c.max_ns) for c in cells), "hist": hist(lat, row)}
                if TRACED.get(name, (0, 0, 0))[0] & SF_BYTES:
                    rec["bytes_total"] = sum(int(c.bytes_total) for c in cells)
                    rec["bytes_hist"] = hist(nbytes, row)
                recs.append(rec)
        recs.sort(key=lambda r: (r["name"], r["fd_kind"]))
        return recs

    # --- life -------------------------------------------------------------------------------
    def run(self) -> int:
        args = self.args
        t0 = time.monotonic()
        self.b = self.compile()
        t1 = time.monotonic()
        self.attach()
        for pid in args.pid:
            self.seed_fds(pid)
        t2 = time.monotonic()
        if self.ringbuf:
            self.b["events"].open_ring_buffer(self.on_event)
            if self.want_requests:
                self.b["requests"].open_ring_buffer(self.on_request)
            poll = self.b.ring_buffer_poll
        else:
            # wakeup_events > 1: waking the consumer per event costs ~10x the ring buffer
            self.b["events"].open_perf_buffer(self.on_perf_event, page_cnt=args.perf_pages,
                                              lost_cb=self.on_perf_lost)
            if self.want_requests:
                self.b["requests"].open_perf_buffer(self.on_perf_request, page_cnt=args.perf_pages,
                                                    lost_cb=self.on_perf_lost_requests)
            poll = self.b.perf_buffer_poll
        kallsyms_ok = _kallsyms_visible()
        self.out = open(args.out, "w", encoding="utf-8") if args.out != "-" else sys.stdout
        started = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        self.write({"format": FORMAT_TAG, "tgids": list(args.pid), "follow": bool(args.follow),
                    "slow_ns": int(args.slow_ns), "ringbuf": self.ringbuf, "requests": self.want_requests,
                    "buffer_pages": args.ringbuf_pages if self.ringbuf else args.perf_pages,
                    "probes": self.attached, "tracepoints": self.tracepoints, "missing": self.missing, "clock": "monotonic", "started_monotonic_ns": started,
                    "compile_ms": round((t1 - t0) * 1000, 1), "attach_ms": round((t2 - t1) * 1000, 1),
                    "kallsyms": kallsyms_ok, "agent_pid": os.getpid()})
        self.out.flush()
        log(f"attached {len(self.attached)} syscalls via {len(self.tracepoints)} tracepoints in {t2 - t0:.2f}s "
            f"(compile {t1 - t0:.2f}s); ringbuf={self.ringbuf}; missing: {','.join(self.missing) or '-'}")
        deadline = time.monotonic() + args.duration if args.duration else None
        next_tick = time.monotonic() + 1.0
        self.write_progress()
        while self.stop_reason is None:
            poll(100)
            if self.ringbuf and self.want_requests:
                self.b.ring_buffer_consume()     # request records do not wake us up
            self.out.flush()
            now = time.monotonic()
            if deadline and now >= deadline:
                self.stop_reason = "duration"
            if now >= next_tick:
                next_tick = now + 1.0
                self.follow_new_targets()
                self.write_progress()
                if args.pid and not args.keep_running and not any(proc_alive(p) for p in self.tgids):
                    self.stop_reason = "target-exited"
        return self.finish(started)

    def finish(self, started: int) -> int:
        # Ignore further signals: a second SIGTERM must not cut the aggregates.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        b = self.b
        for tp in list(b.tracepoint_fds.keys()):
            try:
                b.detach_tracepoint(tp)
            except Exception as e:  # pragma: no cover
                log(f"detach {tp!r}: {e}")
        # drain what the probes wrote before the detach
        for _ in range(1000):
            before = self.events + self.requests
            if self.ringbuf:
                b.ring_buffer_consume()
            else:
                b.perf_buffer_poll(0)
            if self.events + self.requests == before:
                break
        if self.want_requests:
            self.drain_connections()
        for rec in self.aggregates():
            self.write(rec)
        lost = {"type": "lost", "count": self.lost(), "agg_errors": self.counter(CNT_AGG_ERR),
                "stack_errors": self.counter(CNT_STACK_ERR), "fd_map_errors": self.counter(CNT_FDMAP_ERR)}
        end = {"type": "end", "events": self.events, "calls": self.counter(CNT_CALLS)}
        if self.want_requests:
            lost.update(lost_requests=self.lost_requests(), conn_map_errors=self.counter(CNT_CONN_ERR))
            end.update(requests=self.requests, requests_at_stop=self.requests_at_stop, inflight=self.inflight,
                       requests_emitted=self.counter(CNT_REQ_EMITTED),
                       abandoned=self.counter(CNT_REQ_ABANDONED))
        self.write(lost)
        ended = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        self.write({**end, "reason": self.stop_reason, "duration_ns": ended - started})
        self.out.flush()
        self.write_progress()
        if self.out is not sys.stdout:
            self.out.close()
        log(f"stopped ({self.stop_reason}): {self.events} events, {self.lost()} lost"
            + (f"; {self.requests} requests, {self.lost_requests()} lost, {self.inflight} in flight"
               if self.want_requests else ""))
        return 0


def _kallsyms_visible() -> bool:
    """/proc/kallsyms shows real addresses (root with kptr_restrict < 2); zeros otherwise."""
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                return int(line.split()[0], 16) != 0
    except (OSError, ValueError, IndexError):
        return False
    return False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ebpf_agent", description="diag's eBPF syscall-latency agent")
    p.add_argument("--pid", type=int, action="append", default=[], help="target tgid (repeatable)")
    p.add_argument("--follow", action="store_true", help="also trace processes forked by the targets")
    p.add_argument("--slow-ns", type=int, default=1_000_000, help="emit calls at least this slow (0: all)")
    p.add_argument("--out", default="-", help="stream file (default stdout)")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds")
    p.add_argument("--progress", default=None, help="JSON progress file rewritten every second")
    p.add_argument("--ringbuf-pages", type=int, default=256, help="ring buffer size in pages (power of 2)")
    p.add_argument("--perf-pages", type=int, default=64, help="perf buffer pages per CPU (power of 2)")
    p.add_argument("--no-ringbuf", action="store_true", help="use the perf buffer even if a ring buffer works")
    p.add_argument("--no-requests", action="store_true",
                   help="no in-kernel request summarizer (and accept/connect only when slower than --slow-ns)")
    p.add_argument("--request-pages", type=int, default=1024, help="request ring buffer size in pages (power of 2)")
    p.add_argument("--stack-entries", type=int, default=16384, help="kernel stack map size")
    p.add_argument("--probe", default=None, help="probe C source (default probes/syscall_latency.c)")
    p.add_argument("--tracepoints", choices=("raw", "syscall"), default="raw",
                   help="raw_syscalls:sys_enter/exit (default; fast to detach) or one syscalls:sys_* pair per syscall")
    p.add_argument("--keep-running", action="store_true", help="do not stop when every target has exited")
    p.add_argument("--dump-probe", action="store_true", help="print the probe source with its cflags, exit")
    a = p.parse_args(argv)
    for name in ("ringbuf_pages", "perf_pages", "request_pages"):
        v = getattr(a, name)
        if v <= 0 or v & (v - 1):
            p.error(f"--{name.replace('_', '-')} must be a power of two")
    if not a.pid and not a.dump_probe:
        p.error("give at least one --pid")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dump_probe:
        text, cflags = build(args, not args.no_ringbuf)
        defines = []
        for c in cflags:
            if c.startswith("-D"):
                k, _, v = c[2:].partition("=")
                defines.append(f"#define {k} {v}".rstrip())
        sys.stdout.write(f"// cflags: {' '.join(cflags)}\n" + "\n".join(defines) + "\n" + text)
        return 0
    agent = Agent(args)

    def on_signal(signum, frame):
        agent.stop_reason = signal.Signals(signum).name

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        import bcc  # noqa: F401
    except Exception as e:
        log(f"error: cannot import bcc ({e}): install python3-bpfcc")
        return 3
    try:
        return agent.run()
    except Exception as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        log(f"error: {msg[:300]}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
