"""Parser of the eBPF agent's stream ("ebpf-jsonl", written by diag.collect.ebpf_agent).

First line: a header `{"format": "diag.ebpf/1", "tgids": [...], "slow_ns": N, ...}`. Then one JSON
object per line: `"type": "syscall"` (a call slower than slow_ns, with its off-CPU time and the
kernel stack of its longest blocked interval, root first), `"request"` (one server-side request
summarized in the kernel: start/end, bytes, reads/writes, time per syscall family on the serving
thread), `"aggregate"` (in-kernel totals per
syscall and fd kind: exact even when per-call records were lost), `"lost"` and `"end"`. Times are
bpf_ktime_get_ns(): CLOCK_MONOTONIC. A cut last line (capture killed) is a warning.

Yields SyscallEvent (source "ebpf"), StackSample (off-CPU kernel stack of a slow call: ts_ns is
the call start, dur_ns its total off-CPU time, frames root first), Request (source "ebpf";
write_tid None when the reading thread also wrote) and SyscallAggregate.
"""
from __future__ import annotations

import json
from typing import IO, Iterator

from diag.model import Clock, FdKind, Frame, Request, StackSample, SyscallAggregate, SyscallEvent, family
from diag.parse.base import BadLines, ParseContext, json_lines

FORMAT_TAG = "diag.ebpf/1"
_BYTE_FAMILIES = ("read", "write")


def _kind(v) -> FdKind:
    try:
        return FdKind(v) if v is not None else FdKind.UNKNOWN
    except ValueError:
        return FdKind.UNKNOWN


def _opt_int(v) -> int | None:
    return None if v is None else int(v)


class EbpfParser:
    format = "ebpf-jsonl"
    clock = Clock.MONOTONIC

    def sniff(self, head: str, name: str) -> bool:
        first = head.lstrip().split("\n", 1)[0]
        if not first.startswith("{") or FORMAT_TAG not in first:
            return False
        try:
            obj = json.loads(first)
        except (ValueError, RecursionError):
            # the sniffed head may cut a long header line: the tag is enough then
            return '"format"' in first and len(first) >= len(head.lstrip()) - 1
        return isinstance(obj, dict) and obj.get("format") == FORMAT_TAG

    def parse(self, stream: IO[str], ctx: ParseContext) -> Iterator[object]:
        bad = BadLines(ctx, "eBPF agent")
        total = good = 0
        offset = ctx.offset_ns
        header_seen = end_seen = False
        lost = lost_requests = 0
        stack_cache: dict[tuple[str, ...], tuple[Frame, ...]] = {}
        for lineno, line, obj in json_lines(stream, bad):
            total += 1
            if "format" in obj:
                if obj.get("format") != FORMAT_TAG:
                    bad.bad(lineno, line, f"unsupported format {obj.get('format')!r} (expected {FORMAT_TAG})")
                    continue
                header_seen = True
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
                elif kind == "lost":
                    lost += int(obj.get("count") or 0)
                    lost_requests += int(obj.get("lost_requests") or 0)
                elif kind == "end":
                    end_seen = True
                else:
                    bad.bad(lineno, line, f"unknown record type {kind!r}")
                    continue
            except (KeyError, TypeError, ValueError, OverflowError) as e:   # OverflowError: int(Infinity)
                bad.bad(lineno, line, f"missing or invalid field ({e})")
                continue
            good += 1
        total += bad.count
        if total and not header_seen:
            ctx.warn(f"{ctx.path}: no diag.ebpf/1 header line; parsed the records anyway")
        if lost:
            ctx.warn(f"{ctx.path}: the eBPF agent lost {lost} slow-call record(s) (buffer full); "
                     "the aggregates are still exact")
        if lost_requests:
            ctx.warn(f"{ctx.path}: the eBPF agent lost {lost_requests} request record(s) (buffer full); "
                     "request counts and latency percentiles miss them")
        if total and header_seen and not end_seen:
            ctx.warn(f"{ctx.path}: no end record: the eBPF agent was cut off before writing its aggregates")
        bad.finish(total, good)

    @staticmethod
    def _syscall(obj: dict, offset: int, stack_cache: dict) -> Iterator[object]:
        name = str(obj["name"])
        start = int(obj["start_ns"]) + offset
        tid = int(obj["tid"])
        pid = int(obj.get("pid") or tid)
        ret = _opt_int(obj.get("ret"))
        nbytes = _opt_int(obj.get("bytes"))
        if nbytes is None and family(name) in _BYTE_FAMILIES and ret is not None and ret >= 0:
            nbytes = ret
        ev = SyscallEvent(pid=pid, tid=tid, name=name, start_ns=start, dur_ns=_opt_int(obj.get("dur_ns")),
                          ret=ret, errno=obj.get("errno"), fd=_opt_int(obj.get("fd")),
                          fd_kind=_kind(obj.get("fd_kind")), nbytes=nbytes, source="ebpf")
        kstack = obj.get("kstack")
        sample = None
        if kstack:
            key = tuple(str(f) for f in kstack)
            frames = stack_cache.get(key)
            if frames is None:
                frames = stack_cache[key] = tuple(Frame(function=f, module="kernel") for f in key)
            sample = StackSample(tid=tid, ts_ns=start, frames=frames, on_cpu=False, source="ebpf", pid=pid,
                                 dur_ns=_opt_int(obj.get("off_cpu_ns")))
        yield ev
        if sample is not None:
            yield sample

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
        family_ns = tuple(sorted((str(k), int(v)) for k, v in fam.items() if v))
        tid = int(obj["tid"])
        write_tid = _opt_int(obj.get("write_tid"))
        return Request(pid=int(obj.get("pid") or tid), tid=tid, fd=int(obj["fd"]), start_ns=start, end_ns=end,
                       bytes_in=int(obj.get("bytes_in") or 0), bytes_out=int(obj.get("bytes_out") or 0),
                       reads=int(obj.get("reads") or 0), writes=int(obj.get("writes") or 0),
                       first_write_ns=t(obj.get("first_write_ns")),
                       write_tid=write_tid if write_tid != tid else None,
                       conn_start_ns=t(obj.get("conn_start_ns")), seq=int(obj.get("seq") or 0),
                       family_ns=family_ns, source="ebpf")

    @staticmethod
    def _aggregate(obj: dict) -> SyscallAggregate:
        hist = tuple((int(lo), int(n)) for lo, n in obj.get("hist") or ())
        return SyscallAggregate(name=str(obj["name"]), fd_kind=_kind(obj.get("fd_kind")), count=int(obj["count"]),
                                total_ns=int(obj["total_ns"]), log2_hist_ns=hist,
                                bytes_total=int(obj.get("bytes_total") or 0), source="ebpf",
                                max_ns=int(obj.get("max_ns") or 0))
