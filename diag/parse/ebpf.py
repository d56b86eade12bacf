"""Parser of the eBPF agent's stream ("ebpf-jsonl": diag/capture/ebpf_stream.py describes it).

`diag.ebpf/2` (the agent of diag/agent/): a JSON header line naming the binary record files that
lie beside the stream and their layouts, then JSON lines: export settings, kernel stacks, the
requests still complete at stop, the in-kernel aggregates and histograms, losses, the end. The
binary files hold the ring buffers' bytes: slow calls, exported requests, wakeups and runq waits,
decoded here a whole file at a time. `diag.ebpf/1` (earlier captures: every record as JSON) is
still read. Times are bpf_ktime_get_ns(): CLOCK_MONOTONIC. A cut last line or record (capture
killed) is a warning.

Yields SyscallEvent (source "ebpf"), StackSample (off-CPU kernel stack of a slow call: ts_ns is
the call start, dur_ns its total off-CPU time, frames root first), Request (source "ebpf";
write_tid None when the reading thread also wrote; weight > 1 for an exemplar of many),
SyscallAggregate, Wakeup, RunqWait, RequestHistogram and ExportSetting.
"""
from __future__ import annotations

import bisect
import json
from typing import IO, Iterator

from diag.capture import ebpf_stream as fmt
from diag.model import (Clock, ExportSetting, Frame, ProbeCounters, Request, RequestHistogram, RunqWait, StackSample,
                        SyscallAggregate, SyscallEvent, Wakeup)
from diag.parse.base import BadLines, ParseContext, json_lines, opt_int
from diag.syscall_numbers import errno_name
from diag.syscalls import BYTE_COUNT, PROBE_FAMILY_KEYS, FdKind

_TAGS = (fmt.FORMAT_TAG, *fmt.OLD_FORMAT_TAGS)
_KINDS_V1 = [k.value for k in (FdKind.UNKNOWN, FdKind.SOCKET, FdKind.FILE, FdKind.PIPE, FdKind.OTHER)]
# Flag bits of the binary records: the values the stream's header gives (the probe's own
# #defines at capture time); these are diag.ebpf/2's first values, for a header without them.
# tests/unit/test_vocabulary.py checks them against probes/diag_events.h.
FLAG_DEFAULTS = {"REQF_EXEMPLAR": 0x2, "REQF_QUEUED": 0x4, "SCHED_WAKEUP": 1, "SCHED_RUNQ": 2,
                 "SCHEDF_WAKER_TARGET": 0x01, "SCHEDF_WAKER_IRQ": 0x02, "SCHEDF_WAKER_IDLE": 0x04,
                 "SCHEDF_WAKER_SERVING": 0x08, "SCHEDF_WAKEE_SERVING": 0x10, "SCHEDF_PREEMPTED": 0x20,
                 "DIAG_KIND_MASK": 0xff, "FDR_SERVER": 0x100, "FDR_OUT": 0x200}


def _kind(v) -> FdKind:
    try:
        return FdKind(v) if v is not None else FdKind.UNKNOWN
    except ValueError:
        return FdKind.UNKNOWN


class EbpfParser:
    format = "ebpf-jsonl"
    clock = Clock.MONOTONIC

    def sniff(self, head: str, name: str) -> bool:
        first = head.lstrip().split("\n", 1)[0]
        if not first.startswith("{") or not any(t in first for t in _TAGS):
            return False
        try:
            obj = json.loads(first)
        except (ValueError, RecursionError):
            # the sniffed head may cut a long header line: the tag is enough then
            return '"format"' in first and len(first) >= len(head.lstrip()) - 1
        return isinstance(obj, dict) and obj.get("format") in _TAGS

    def parse(self, stream: IO[str], ctx: ParseContext) -> Iterator[object]:
        bad = BadLines(ctx, "eBPF agent")
        total = good = 0
        offset = ctx.offset_ns
        header: dict | None = None
        end_seen = False
        lost = lost_requests = lost_sched = 0
        stack_cache: dict[tuple[str, ...], tuple[Frame, ...]] = {}
        kstacks: dict[int, tuple[Frame, ...]] = {}
        exports: list[ExportSetting] = []
        for lineno, line, obj in json_lines(stream, bad):
            total += 1
            if "format" in obj:
                if obj.get("format") not in _TAGS:
                    bad.bad(lineno, line, f"unsupported format {obj.get('format')!r} (expected {fmt.FORMAT_TAG})")
                    continue
                header = obj
                good += 1
                continue
            kind = obj.get("type")
            try:
                if kind == "syscall":
                    yield from self._syscall(obj, offset, stack_cache)
                elif kind == "request":
                    yield self._request(obj, offset)
                elif kind == "aggregate":
                    yield self._aggregate(obj)
                elif kind == "kstack":
                    kstacks[int(obj["id"])] = self._frames([str(f) for f in obj.get("frames") or ()], stack_cache)
                elif kind == "export":
                    e = ExportSetting(int(obj["ts_ns"]) + offset, int(obj["threshold_ns"]), int(obj["mask"]),
                                      int(obj.get("rate") or 0))
                    exports.append(e)
                    yield e
                elif kind == "request_hist":
                    yield self._request_hist(obj)
                elif kind == "family_hist":
                    pass                      # per-family request time histograms: not used yet
                elif kind == "lost":
                    lost += int(obj.get("count") or 0)
                    lost_requests += int(obj.get("lost_requests") or 0)
                    lost_sched += int(obj.get("lost_sched") or 0)
                elif kind == "end":
                    end_seen = True
                    counts = obj.get("counters")
                    if isinstance(counts, dict):
                        yield ProbeCounters({str(k): int(v) for k, v in counts.items()})
                else:
                    bad.bad(lineno, line, f"unknown record type {kind!r}")
                    continue
            except (KeyError, TypeError, ValueError, OverflowError) as e:   # OverflowError: int(Infinity)
                bad.bad(lineno, line, f"missing or invalid field ({e})")
                continue
            good += 1
        total += bad.count
        if header and header.get("format") == fmt.FORMAT_TAG:
            yield from self._binary(header, ctx, offset, kstacks, exports)
        if total and not header:
            ctx.warn(f"{ctx.path}: no diag.ebpf header line; parsed the records anyway")
        if lost:
            ctx.warn(f"{ctx.path}: the eBPF agent lost {lost} slow-call record(s) (buffer full); "
                     "the aggregates are still exact")
        if lost_requests:
            ctx.warn(f"{ctx.path}: the eBPF agent lost {lost_requests} request record(s) (buffer full); "
                     "request counts and percentiles come from the in-kernel histograms")
        if lost_sched:
            ctx.warn(f"{ctx.path}: the eBPF agent lost {lost_sched} wakeup/runq record(s) (buffer full); "
                     "waits they would have explained stay unattributed")
        if total and header and not end_seen:
            ctx.warn(f"{ctx.path}: no end record: the eBPF agent was cut off before writing its aggregates")
        bad.finish(total, good)

    # --- binary records (diag.ebpf/2) ---------------------------------------------------------
    def _binary(self, header: dict, ctx: ParseContext, offset: int, kstacks: dict, exports: list) -> Iterator[object]:
        records = header.get("records") or {}
        names = {int(k): str(v) for k, v in (header.get("syscall_numbers") or {}).items()}
        kinds = [_kind(k) for k in header.get("kinds") or _KINDS_V1]
        families = [PROBE_FAMILY_KEYS.get(f, f) for f in header.get("families") or ()]
        k = {**FLAG_DEFAULTS, **{n: int(v) for n, v in (header.get("constants") or {}).items()}}
        for kind, spec in records.items():
            data = ctx.companion(str(spec.get("file")))
            if data is None:
                ctx.warn(f"{ctx.path}: its {kind} records ({spec.get('file')}) are missing from the capture")
                continue
            try:
                layout = spec["layout"]
                stride = int(spec["stride"])
                cols = ["_len", "_pg"]
                for name, _code, n in layout["fields"]:
                    cols.extend([name] if int(n) == 1 else [f"{name}.{i}" for i in range(int(n))])
                rows = fmt.iter_records(data, layout["fmt"], stride)
            except (KeyError, TypeError, ValueError, AssertionError) as e:
                ctx.warn(f"{ctx.path}: cannot decode its {kind} records ({e}); skipped")
                continue
            if len(data) % stride:
                ctx.warn(f"{ctx.path}: {spec.get('file')} ends with a cut record (capture cut off); "
                         "read up to the last whole one")
            col = {c: i for i, c in enumerate(cols)}
            if kind == "calls":
                yield from self._calls(rows, col, names, kinds, offset, kstacks)
            elif kind == "requests":
                yield from self._requests(rows, col, families, offset, exports, k)
            elif kind == "sched":
                yield from self._sched(rows, col, names, offset, kinds, k)

    @staticmethod
    def _calls(rows, col, names, kinds, offset, kstacks) -> Iterator[object]:
        i_start, i_dur, i_off, i_ret = col["start_ns"], col["dur_ns"], col["off_cpu_ns"], col["ret"]
        i_tid, i_tgid, i_nr, i_fd, i_sid, i_kind = (col["tid"], col["tgid"], col["nr"], col["fd"], col["kstack_id"],
                                                    col["fd_kind"])
        for r in rows:
            name = names.get(r[i_nr], f"syscall_{r[i_nr]}")
            ret = r[i_ret]
            err = errno_name(-ret) if -4096 < ret < 0 else None
            fd = r[i_fd]
            start = r[i_start] + offset
            k = r[i_kind]
            yield SyscallEvent(pid=r[i_tgid], tid=r[i_tid], name=name, start_ns=start, dur_ns=r[i_dur],
                               ret=ret, errno=err, fd=fd if fd >= 0 else None,
                               fd_kind=kinds[k] if k < len(kinds) else FdKind.UNKNOWN,
                               nbytes=ret if name in BYTE_COUNT and ret >= 0 else None, source="ebpf")
            frames = kstacks.get(r[i_sid]) if r[i_sid] >= 0 else None
            if frames:
                yield StackSample(tid=r[i_tid], ts_ns=start, frames=frames, on_cpu=False, source="ebpf",
                                  pid=r[i_tgid], dur_ns=r[i_off])

    @staticmethod
    def _requests(rows, col, families, offset, exports: list[ExportSetting], k: dict) -> Iterator[Request]:
        fam_cols = [(families[i], col[f"family_ns.{i}"]) for i in range(len(families)) if f"family_ns.{i}" in col]
        g = col.__getitem__
        i_start, i_end, i_fw, i_cs, i_q = g("start_ns"), g("end_ns"), g("first_write_ns"), g("conn_start_ns"), g("queued_ns")
        i_bin, i_bout, i_rd, i_wr = g("bytes_in"), g("bytes_out"), g("reads"), g("writes")
        i_tgid, i_tid, i_wt, i_fd, i_seq, i_flags = g("tgid"), g("tid"), g("write_tid"), g("fd"), g("seq"), g("flags")
        times = [e.ts_ns for e in exports]
        for r in rows:
            start, end = r[i_start] + offset, r[i_end] + offset
            if end < start:
                continue
            flags = r[i_flags]
            weight = 1
            if flags & k["REQF_EXEMPLAR"] and exports:
                e = exports[max(0, bisect.bisect_right(times, end) - 1)]
                weight = e.mask + 1
            tid, wt = r[i_tid], r[i_wt]
            yield Request(pid=r[i_tgid], tid=tid, fd=r[i_fd], start_ns=start, end_ns=end,
                          bytes_in=r[i_bin], bytes_out=r[i_bout], reads=r[i_rd], writes=r[i_wr],
                          first_write_ns=r[i_fw] + offset if r[i_fw] else None,
                          write_tid=wt if wt and wt != tid else None,
                          conn_start_ns=r[i_cs] + offset if r[i_cs] else None, seq=r[i_seq],
                          family_ns=tuple(sorted((name, r[i]) for name, i in fam_cols if r[i])), source="ebpf",
                          queued_ns=r[i_q] if flags & k["REQF_QUEUED"] else None, weight=weight)

    @staticmethod
    def _sched(rows, col, names, offset, kinds, k: dict) -> Iterator[object]:
        g = col.__getitem__
        i_type, i_ts, i_since, i_arg, i_wcall = g("type"), g("ts_ns"), g("since_ns"), g("arg"), g("waker_call_ns")
        i_tid, i_tgid, i_nr, i_wtid, i_wtgid, i_wnr, i_flags = (g("tid"), g("tgid"), g("wakee_nr"), g("waker_tid"),
                                                                 g("waker_tgid"), g("waker_nr"), g("flags"))
        comm_cols = [col[f"waker_comm.{i}"] for i in range(16) if f"waker_comm.{i}" in col]
        i_fdv = col.get("wakee_fdv")
        comms: dict[bytes, str] = {}
        for r in rows:
            flags = r[i_flags]
            call = names.get(r[i_nr]) if r[i_nr] >= 0 else None
            if r[i_type] == k["SCHED_WAKEUP"]:
                raw = bytes(r[i] for i in comm_cols).split(b"\0", 1)[0]
                comm = comms.get(raw)
                if comm is None:
                    comm = comms[raw] = raw.decode(errors="replace")
                fdv = r[i_fdv] if i_fdv is not None else 0
                kind = fdv & k["DIAG_KIND_MASK"]
                yield Wakeup(pid=r[i_tgid], tid=r[i_tid], start_ns=r[i_since] + offset, end_ns=r[i_ts] + offset,
                             call=call, arg=r[i_arg], fd_kind=kinds[kind] if kind < len(kinds) else FdKind.UNKNOWN,
                             fd_role="out" if fdv & k["FDR_OUT"] else "server" if fdv & k["FDR_SERVER"] else None,
                             waker_pid=r[i_wtgid], waker_tid=r[i_wtid], waker_comm=comm,
                             waker_call=names.get(r[i_wnr]) if r[i_wnr] >= 0 else None,
                             waker_call_start_ns=r[i_wcall] + offset if r[i_wcall] else None,
                             waker_target=bool(flags & k["SCHEDF_WAKER_TARGET"]),
                             waker_irq=bool(flags & k["SCHEDF_WAKER_IRQ"]), waker_idle=bool(flags & k["SCHEDF_WAKER_IDLE"]),
                             waker_serving=bool(flags & k["SCHEDF_WAKER_SERVING"]),
                             wakee_serving=bool(flags & k["SCHEDF_WAKEE_SERVING"]))
            elif r[i_type] == k["SCHED_RUNQ"]:
                yield RunqWait(pid=r[i_tgid], tid=r[i_tid], start_ns=r[i_since] + offset, end_ns=r[i_ts] + offset,
                               preempted=bool(flags & k["SCHEDF_PREEMPTED"]), call=call,
                               serving=bool(flags & k["SCHEDF_WAKEE_SERVING"]))

    # --- JSON records -------------------------------------------------------------------------
    @staticmethod
    def _frames(names: list[str], cache: dict) -> tuple[Frame, ...]:
        key = tuple(names)
        frames = cache.get(key)
        if frames is None:
            frames = cache[key] = tuple(Frame(function=f, module="kernel") for f in key)
        return frames

    @classmethod
    def _syscall(cls, obj: dict, offset: int, stack_cache: dict) -> Iterator[object]:
        """A slow call as JSON (diag.ebpf/1)."""
        name = str(obj["name"])
        start = int(obj["start_ns"]) + offset
        tid = int(obj["tid"])
        pid = int(obj.get("pid") or tid)
        ret = opt_int(obj.get("ret"))
        nbytes = opt_int(obj.get("bytes"))
        if nbytes is None and name in BYTE_COUNT and ret is not None and ret >= 0:
            nbytes = ret
        ev = SyscallEvent(pid=pid, tid=tid, name=name, start_ns=start, dur_ns=opt_int(obj.get("dur_ns")),
                          ret=ret, errno=obj.get("errno"), fd=opt_int(obj.get("fd")),
                          fd_kind=_kind(obj.get("fd_kind")), nbytes=nbytes, source="ebpf")
        kstack = obj.get("kstack")
        yield ev
        if kstack:
            yield StackSample(tid=tid, ts_ns=start, frames=cls._frames([str(f) for f in kstack], stack_cache),
                              on_cpu=False, source="ebpf", pid=pid, dur_ns=opt_int(obj.get("off_cpu_ns")))

    @staticmethod
    def _request(obj: dict, offset: int) -> Request:
        def t(v) -> int | None:
            return None if v is None else int(v) + offset

        start, end = int(obj["start_ns"]) + offset, int(obj["end_ns"]) + offset
        if end < start:
            raise ValueError("end_ns before start_ns")
        fam = obj.get("family_ns") or {}
        if not isinstance(fam, dict):
            raise TypeError("family_ns is not an object")
        family_ns = tuple(sorted((PROBE_FAMILY_KEYS.get(str(k), str(k)), int(v)) for k, v in fam.items() if v))
        tid = int(obj["tid"])
        write_tid = opt_int(obj.get("write_tid"))
        return Request(pid=int(obj.get("pid") or tid), tid=tid, fd=int(obj["fd"]), start_ns=start, end_ns=end,
                       bytes_in=int(obj.get("bytes_in") or 0), bytes_out=int(obj.get("bytes_out") or 0),
                       reads=int(obj.get("reads") or 0), writes=int(obj.get("writes") or 0),
                       first_write_ns=t(obj.get("first_write_ns")),
                       write_tid=write_tid if write_tid != tid else None,
                       conn_start_ns=t(obj.get("conn_start_ns")), seq=int(obj.get("seq") or 0),
                       family_ns=family_ns, source="ebpf", queued_ns=opt_int(obj.get("queued_ns")))

    @staticmethod
    def _aggregate(obj: dict) -> SyscallAggregate:
        hist = tuple((int(lo), int(n)) for lo, n in obj.get("hist") or ())
        return SyscallAggregate(name=str(obj["name"]), fd_kind=_kind(obj.get("fd_kind")), count=int(obj["count"]),
                                total_ns=int(obj["total_ns"]), log2_hist_ns=hist,
                                bytes_total=int(obj.get("bytes_total") or 0), source="ebpf",
                                max_ns=int(obj.get("max_ns") or 0))

    @staticmethod
    def _request_hist(obj: dict) -> RequestHistogram:
        sub = int(obj.get("sub_bits") or 2)
        slots = []
        for s, n in obj.get("slots") or ():
            s, n = int(s), int(n)
            slots.append((fmt.loglinear_lower(s, sub), fmt.loglinear_lower(s + 1, sub), n))
        return RequestHistogram(latency=str(obj["latency"]), count=int(obj.get("count") or sum(n for *_, n in slots)),
                                slots=tuple(slots))
