"""The life of one eBPF capture: compile the probe, attach, consume its rings, steer what it exports,
and at the end write the in-kernel aggregates.

The stream it writes is described in diag/capture/ebpf_stream.py. The header line is written once
every program is attached (the collector waits for it). Ring batches are copied every POLL_S and
flushed, so a capture cut by SIGKILL is readable up to its last whole record. On SIGTERM/SIGINT
(or --duration, or when every target has exited) the agent detaches, drains the rings, writes the
requests still complete in the connection map, the aggregates, the histograms, the losses and the
end line, and exits 0.
"""
from __future__ import annotations

import argparse
import ctypes as ct
import json
import mmap
import os
import signal
import sys
import time
from pathlib import Path

from diag.agent import build, export_policy, procfs
from diag.agent import header as hdr
from diag.agent.ring import RingReader, stride_of
from diag.agent.syscall_table import fd_tracking, syscall_numbers, sysinfo_of, traced
from diag.capture import ebpf_stream as fmt
from diag.syscalls import PROBE_FAMILY_KEYS, FdKind

POLL_S = 0.1
TICK_S = 1.0
KIND_NAMES = [k.value for k in (FdKind.UNKNOWN, FdKind.SOCKET, FdKind.FILE, FdKind.PIPE, FdKind.OTHER)]


def log(msg: str) -> None:
    sys.stderr.write(f"ebpf-agent: {msg}\n")
    sys.stderr.flush()


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.h = hdr.load()
        self.stop_reason: str | None = None
        self.b = None
        self.want_requests = not args.no_requests
        self.tracepoints: list[str] = []
        self.missing: list[str] = []
        self.nr_name: dict[int, str] = {}
        self.idx_name: list[str] = []       # sysinfo.idx -> syscall name
        self.stacks_written: set[int] = set()
        self.tgids: list[int] = []
        self.seeded: set[int] = set()
        self.ports: set[int] = set()
        self.rings: dict[str, RingReader] = {}
        self.files: dict[str, object] = {}
        self.out = None
        self.export = export_policy.Export(0, 0, 0)
        self._req_hist_prev: list[int] | None = None
        self.at_stop = 0
        self.inflight_requests = 0

    # --- set-up -------------------------------------------------------------------------------
    def compile(self):
        from bcc import BPF

        return BPF(text=build.source(self.args), cflags=build.cflags(self.args, self.h))

    def attach(self) -> None:
        from bcc import BPF

        b, h = self.b, self.h
        tfs = procfs.tracefs()
        numbers = syscall_numbers()
        info = b["sysinfo"]
        # sysinfo first, so every call seen after the attach is handled completely
        for name in [*fd_tracking(h), *traced(h)]:
            si = sysinfo_of(h, name, self.want_requests)
            nr = numbers.get(name)
            # a syscall this architecture lacks (open, select, pipe... on arm64) has no number
            if nr is None:
                self.missing.append(name)
                continue
            v = info.Leaf()
            v.flags, v.kind, v.fam = si.flags, si.kind, si.fam
            if si.flags & h.SF_LAT:          # its row in the per-CPU aggregate arrays
                v.idx = len(self.idx_name)
                self.idx_name.append(name)
            info[ct.c_int(nr)] = v
            self.nr_name[nr] = name
        self.add_targets(procfs.descendants(self.args.pid) if self.args.follow else list(self.args.pid))
        learn = b.load_func("diag_learn_stack", BPF.TRACEPOINT)
        b["learn_prog"][ct.c_int(0)] = ct.c_int(learn.fd)
        b.attach_tracepoint(tp="raw_syscalls:sys_enter", fn_name="diag_sys_enter")
        b.attach_tracepoint(tp="raw_syscalls:sys_exit", fn_name="diag_sys_exit")
        self.tracepoints = ["raw_syscalls:sys_enter", "raw_syscalls:sys_exit"]
        # TRACEPOINT_PROBE programs were attached by BCC when it loaded them
        self.tracepoints += sorted(tp.decode() if isinstance(tp, bytes) else str(tp)
                                   for tp in b.tracepoint_fds if "raw_syscalls" not in str(tp))
        if not procfs.tracepoint_exists(tfs, "raw_syscalls", "sys_enter"):
            raise RuntimeError("no raw_syscalls tracepoints in tracefs")

    def add_targets(self, pids: list[int]) -> None:
        """Into the probe's target set (a process tree) and the agent's own list; their open fds
        seeded into the fd-kind map."""
        new = [p for p in pids if p not in self.tgids]
        if not new:
            return
        if "-DTARGET_SET" in build.cflags(self.args, self.h):
            bits = self.b["target_bits"]
            for p in new:
                w = ct.c_int(p >> 6)
                bits[w] = ct.c_uint64(bits[w].value | (1 << (p & 63)))
        for p in new:
            self.tgids.append(p)
            self.seed_fds(p)
        self.refresh_ports()

    def seed_fds(self, tgid: int) -> None:
        """Kinds of the fds a target had before the attach, from /proc/PID/fd."""
        if tgid in self.seeded:
            return
        self.seeded.add(tgid)
        fdk = self.b["fdkinds"]
        for fd, kind in procfs.open_fds(self.h, tgid, self.want_requests).items():
            k = fdk.Key()
            k.tgid, k.fd = tgid, fd
            try:
                fdk[k] = ct.c_uint32(kind)
            except Exception:
                pass

    def refresh_ports(self) -> None:
        """Ports the targets listen on, for the accept-queue programs."""
        if not self.want_requests or self.args.no_accept_queue:
            return
        ports = set()
        for p in self.tgids:
            if procfs.proc_alive(p):
                ports |= procfs.listening_ports(p)
        table = self.b["listen_ports"]
        for port in ports - self.ports:
            table[ct.c_int(port)] = ct.c_uint8(1)
        self.ports |= ports

    def follow_new_targets(self) -> None:
        """Processes the probe added to the target set (forked by targets) since the last tick."""
        if not self.args.follow:
            return
        found = []
        bits = self.b["target_bits"]
        for w, v in bits.items():
            word = v.value
            while word:
                low = word & -word
                pid = (w.value << 6) + low.bit_length() - 1
                word ^= low
                if pid not in self.seeded and procfs.is_process(pid):
                    found.append(pid)
        self.add_targets(found)

    def open_rings(self) -> None:
        """A reader on each of the probe's ring buffers (the request ring only with requests)."""
        maps = {"calls": "events", "requests": "requests", "sched": "sched"}
        pages = {"calls": self.args.ringbuf_pages, "requests": self.args.request_pages,
                 "sched": self.args.sched_pages}
        for kind, (_fname, struct_name) in fmt.RECORDS.items():
            if kind == "requests" and not self.want_requests:
                continue
            layout = self.h.structs[struct_name]
            self.rings[kind] = RingReader(self.b[maps[kind]].map_fd, pages[kind] * mmap.PAGESIZE, layout.size)

    def open_outputs(self) -> None:
        out = Path(self.args.out)
        self.out = open(out, "w", encoding="utf-8")
        self.open_rings()
        for kind in self.rings:
            self.files[kind] = open(out.parent / fmt.RECORDS[kind][0], "wb")

    # --- the loop -----------------------------------------------------------------------------
    def consume(self) -> None:
        for kind, ring in self.rings.items():
            self.drain(kind, ring)

    def drain(self, kind: str, ring) -> None:
        """One ring's pending records into its file (slow calls: their new stacks symbolized)."""
        if kind == "calls":
            before = self.files[kind].tell()
            if ring.consume(self.files[kind]):
                self.symbolize_new_stacks(before)
        else:
            ring.consume(self.files[kind])
        self.files[kind].flush()

    def symbolize_new_stacks(self, since: int) -> None:
        """Kernel stacks of the slow calls just copied, written once per stack id (slow calls are
        rare: decoding their batch here is cheap)."""
        layout = self.h.structs["diag_event"]
        names = layout.names()
        i = 2 + names.index("kstack_id")
        f = self.files["calls"]
        f.flush()
        with open(f.name, "rb") as r:
            r.seek(since)
            data = r.read()
        for rec in fmt.iter_records(data, layout.fmt, stride_of(layout.size)):
            sid = rec[i]
            if sid >= 0 and sid not in self.stacks_written:
                self.stacks_written.add(sid)
                self.write({"type": "kstack", "id": sid, "frames": self.kstack(sid)})

    def kstack(self, sid: int) -> list[str]:
        try:
            addrs = list(self.b["stacks"].walk(sid))
        except Exception:
            addrs = []
        return [self.b.ksym(a).decode(errors="replace") for a in reversed(addrs)]

    def steer_export(self) -> None:
        """Once a second: the request export for the next second, from the last one's histogram."""
        if not self.want_requests:
            return
        h = self.h
        counts = self.hist_counts("req_hist", h.REQ_HIST_SERVER, h.REQ_NSLOT)
        prev = self._req_hist_prev or [0] * len(counts)
        self._req_hist_prev = counts
        delta = [c - p for c, p in zip(counts, prev)]
        if self.args.requests == "all":
            new = export_policy.Export(0, 0, sum(delta))
        else:
            new = export_policy.decide(delta, h.REQ_SUB_BITS, self.args.export_budget,
                                       self.args.slow_request_ns or None)
        if (new.threshold_ns, new.mask) != (self.export.threshold_ns, self.export.mask):
            ctl = self.b["req_ctl"]
            ctl[ct.c_int(h.CTL_REQ_EXEMPLAR_MASK)] = ct.c_uint64(new.mask)
            ctl[ct.c_int(h.CTL_REQ_THRESHOLD_NS)] = ct.c_uint64(new.threshold_ns)
            self.write({"type": "export", "ts_ns": time.clock_gettime_ns(time.CLOCK_MONOTONIC),
                        "threshold_ns": new.threshold_ns, "mask": new.mask, "rate": new.rate})
        self.export = new

    def hist_counts(self, table: str, row: int, nslot: int) -> list[int]:
        t = self.b[table]
        return [int(sum(t.getvalue(ct.c_int(row * nslot + s)))) for s in range(nslot)]

    def counter(self, slot: int) -> int:
        try:
            return int(sum(self.b["counters"][ct.c_int(slot)]))
        except Exception:
            return 0

    def counters(self) -> dict:
        h = self.h
        return {name.lower(): self.counter(v) for name, v in h.prefixed("CNT_").items() if name != "MAX"}

    def write_progress(self) -> None:
        if not self.args.progress:
            return
        c = self.counters()
        tmp = self.args.progress + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"events": self.rings["calls"].records if "calls" in self.rings else 0,
                       "lost": c["event_lost"], "calls": c["calls"],
                       "requests": self.rings["requests"].records if "requests" in self.rings else 0,
                       "requests_done": c["req_done"], "lost_requests": c["req_lost"],
                       "wakeups": c["wakeups"], "runq": c["runq"], "lost_sched": c["sched_lost"],
                       "ts_ns": time.clock_gettime_ns(time.CLOCK_MONOTONIC), "tgids": self.tgids}, f)
        os.replace(tmp, self.args.progress)

    def write(self, obj: dict) -> None:
        self.out.write(json.dumps(obj, separators=(",", ":")) + "\n")

    # --- end ----------------------------------------------------------------------------------
    def aggregates(self) -> list[dict]:
        """One record per (syscall, fd kind) seen: the per-CPU cells summed (max: the largest)."""
        h = self.h
        agg, lat, nbytes = self.b["agg"], self.b["lat_hist"], self.b["bytes_hist"]
        timed = traced(h)

        def hist(table, row: int) -> list[list[int]]:
            out = []
            for slot in range(h.DIAG_NSLOT):
                n = int(sum(table.getvalue(ct.c_int(row * h.DIAG_NSLOT + slot))))
                if n:
                    out.append([fmt.log2_lower(slot), n])
            return out

        recs = []
        for idx, name in enumerate(self.idx_name):
            for kind in range(h.DIAG_NKIND):
                row = idx * h.DIAG_NKIND + kind
                cells = agg.getvalue(ct.c_int(row))
                count = sum(int(c.count) for c in cells)
                if not count:
                    continue
                rec = {"type": "aggregate", "name": name, "fd_kind": KIND_NAMES[kind],
                       "count": count, "total_ns": sum(int(c.total_ns) for c in cells),
                       "max_ns": max(int(c.max_ns) for c in cells), "hist": hist(lat, row)}
                if timed[name].flags & h.SF_BYTES:
                    rec["bytes_total"] = sum(int(c.bytes_total) for c in cells)
                    rec["bytes_hist"] = hist(nbytes, row)
                recs.append(rec)
        recs.sort(key=lambda r: (r["name"], r["fd_kind"]))
        return recs

    def request_histograms(self) -> list[dict]:
        h = self.h
        out = []
        for which, name in ((h.REQ_HIST_SERVER, "server"), (h.REQ_HIST_CLIENT, "client")):
            counts = self.hist_counts("req_hist", which, h.REQ_NSLOT)
            out.append({"type": "request_hist", "latency": name, "sub_bits": h.REQ_SUB_BITS,
                        "slots": [[s, n] for s, n in enumerate(counts) if n], "count": sum(counts)})
        fams = {}
        names = list(PROBE_FAMILY_KEYS)
        for i, fam in enumerate(names[:h.FAM_N]):
            counts = self.hist_counts("fam_hist", i, h.DIAG_NSLOT)
            if any(counts):
                fams[PROBE_FAMILY_KEYS[fam]] = [[fmt.log2_lower(s), n] for s, n in enumerate(counts) if n]
        out.append({"type": "family_hist", "families": fams})
        return out

    def drain_connections(self) -> None:
        """At stop: requests whose response is complete are written (as JSON), those still being
        read are in flight (counted)."""
        h = self.h
        try:
            items = list(self.b["conns"].items())
        except Exception as e:  # pragma: no cover
            log(f"cannot read the connection map: {e}")
            return
        recs = []
        for _, c in items:
            r = c.r
            if r.state == h.CONN_WRITING:
                recs.append({"type": "request", "pid": r.tgid, "tid": r.tid, "fd": r.fd, "start_ns": r.start_ns,
                             "end_ns": r.end_ns, "bytes_in": r.bytes_in, "bytes_out": r.bytes_out,
                             "reads": r.reads, "writes": r.writes, "first_write_ns": r.first_write_ns or None,
                             "write_tid": r.write_tid or None, "conn_start_ns": r.conn_start_ns or None,
                             "queued_ns": r.queued_ns if r.flags & h.REQF_QUEUED else None, "seq": r.seq,
                             "family_ns": {PROBE_FAMILY_KEYS[n]: int(v) for n, v in
                                           zip(PROBE_FAMILY_KEYS, r.family_ns) if v},
                             "at_stop": True})
            elif r.state == h.CONN_READING:
                self.inflight_requests += 1
        for rec in sorted(recs, key=lambda x: x["start_ns"]):
            self.write(rec)
        self.at_stop = len(recs)

    def detach(self) -> None:
        b = self.b
        for tp in list(b.tracepoint_fds.keys()):
            try:
                b.detach_tracepoint(tp)
            except Exception as e:  # pragma: no cover
                log(f"detach {tp!r}: {e}")

    def finish(self, started: int) -> int:
        # Ignore further signals: a second SIGTERM must not cut the aggregates.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.detach()
        for _ in range(100):                 # what the programs wrote before the detach
            self.consume()
            if not any(r.pending() for r in self.rings.values()):
                break
        if self.want_requests:
            self.drain_connections()
        for rec in self.aggregates():
            self.write(rec)
        if self.want_requests:
            for rec in self.request_histograms():
                self.write(rec)
        c = self.counters()
        lost = {"type": "lost", "count": c["event_lost"], "agg_errors": c["agg_err"], "stack_errors": c["stack_err"],
                "fd_map_errors": c["fdmap_err"], "lost_sched": c["sched_lost"]}
        if self.want_requests:
            lost.update(lost_requests=c["req_lost"], conn_map_errors=c["conn_err"])
        self.write(lost)
        ended = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        end = {"type": "end", "events": self.rings["calls"].records, "calls": c["calls"],
               # the agent's own CPU once attached (compiling the probe before is a one-off)
               "cpu_s_attached": round(time.process_time() - self.cpu_at_attach, 4),
               "wakeups": c["wakeups"], "runq": c["runq"], "counters": c,
               "reason": self.stop_reason, "duration_ns": ended - started}
        if self.want_requests:
            end.update(requests=self.rings["requests"].records + self.at_stop, requests_at_stop=self.at_stop,
                       requests_done=c["req_done"], inflight=self.inflight_requests,
                       requests_emitted=c["req_emitted"], abandoned=c["req_abandoned"])
        self.write(end)
        self.out.flush()
        self.write_progress()
        for f in self.files.values():
            f.close()
        for r in self.rings.values():
            r.close()
        self.out.close()
        log(f"stopped ({self.stop_reason}): {self.rings['calls'].records} slow calls, {c['event_lost']} lost; "
            f"{c['wakeups']} wakeups, {c['runq']} runq waits, {c['sched_lost']} lost"
            + (f"; {c['req_done']} requests, {self.rings['requests'].records + self.at_stop} exported, "
               f"{c['req_lost']} lost, {self.inflight_requests} in flight" if self.want_requests else ""))
        return 0

    def run(self) -> int:
        args = self.args
        t0 = time.monotonic()
        self.b = self.compile()
        t1 = time.monotonic()
        self.attach()
        t2 = time.monotonic()
        self.open_outputs()
        started = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        self.cpu_at_attach = time.process_time()
        layouts = {kind: {"file": fname, "layout": self.h.structs[sname].to_json(),
                          "stride": stride_of(self.h.structs[sname].size)}
                   for kind, (fname, sname) in fmt.RECORDS.items() if kind in self.rings}
        self.write({"format": fmt.FORMAT_TAG, "tgids": list(args.pid), "follow": bool(args.follow),
                    "slow_ns": int(args.slow_ns), "wake_min_ns": int(args.wake_min_ns),
                    "runq_min_ns": int(args.runq_min_ns), "requests": self.want_requests,
                    "request_export": args.requests, "export_budget": args.export_budget,
                    "accept_queue": self.want_requests and not args.no_accept_queue, "floor": bool(args.floor),
                    "buffer_pages": {"calls": args.ringbuf_pages, "requests": args.request_pages,
                                     "sched": args.sched_pages},
                    "records": layouts, "syscalls": sorted(self.nr_name.values()),
                    "syscall_numbers": {str(k): v for k, v in sorted(self.nr_name.items())},
                    "kinds": KIND_NAMES, "families": list(PROBE_FAMILY_KEYS.values())[:self.h.FAM_N],
                    # the flag bits the binary records carry, as this probe defines them
                    "constants": {k: v for k, v in self.h.defines.items()
                                  if k.startswith(fmt.RECORD_CONSTANT_PREFIXES)},
                    "tracepoints": self.tracepoints, "missing": self.missing, "clock": "monotonic",
                    "started_monotonic_ns": started, "compile_ms": round((t1 - t0) * 1000, 1),
                    "attach_ms": round((t2 - t1) * 1000, 1), "kallsyms": procfs.kallsyms_visible(),
                    "compile_cpu_s": round(time.process_time(), 3),
                    "agent_pid": os.getpid(), "initial_tgids": list(self.tgids), "listen_ports": sorted(self.ports)})
        self.out.flush()
        log(f"attached {len(self.nr_name)} syscalls via {len(self.tracepoints)} tracepoints in {t2 - t0:.2f}s "
            f"(compile {t1 - t0:.2f}s); targets {self.tgids}; missing: {','.join(self.missing) or '-'}")
        deadline = time.monotonic() + args.duration if args.duration else None
        next_tick = time.monotonic() + TICK_S
        self.write_progress()
        while self.stop_reason is None:
            time.sleep(POLL_S)
            self.consume()
            self.out.flush()
            now = time.monotonic()
            if deadline and now >= deadline:
                self.stop_reason = "duration"
            if now >= next_tick:
                next_tick = now + TICK_S
                self.follow_new_targets()
                self.steer_export()
                self.write_progress()
                if not args.keep_running and not any(procfs.proc_alive(p) for p in self.tgids):
                    self.stop_reason = "target-exited"
        return self.finish(started)
