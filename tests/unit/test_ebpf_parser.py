"""The eBPF agent's stream parser, on inline JSON Lines."""
from __future__ import annotations

import io
import json

import pytest

from diag.errors import ParseError
from diag.model import Request, StackSample, SyscallAggregate, SyscallEvent
from diag.syscalls import FdKind
from diag.parse.base import ParseContext
from diag.parse.ebpf import EbpfParser

HEADER = {"format": "diag.ebpf/1", "tgids": [42], "slow_ns": 1000000, "ringbuf": True,
          "probes": ["fsync", "read"], "missing": []}
FSYNC = {"type": "syscall", "tid": 43, "pid": 42, "name": "fsync", "start_ns": 1_000_000, "dur_ns": 5_000_000,
         "fd": 3, "fd_kind": "file", "ret": 0, "off_cpu_ns": 4_000_000,
         "kstack": ["entry_SYSCALL_64_after_hwframe", "do_syscall_64", "ext4_sync_file", "io_schedule",
                    "schedule"]}
READ = {"type": "syscall", "tid": 42, "pid": 42, "name": "read", "start_ns": 9_000_000, "dur_ns": 2_000_000,
        "fd": 5, "fd_kind": "socket", "ret": 1000, "bytes": 1000, "off_cpu_ns": 0}
ERR = {"type": "syscall", "tid": 42, "pid": 42, "name": "connect", "start_ns": 10, "dur_ns": 3_000_000,
       "fd": 6, "fd_kind": "socket", "ret": -111, "errno": "ECONNREFUSED", "off_cpu_ns": 0}
AGG = {"type": "aggregate", "name": "fsync", "fd_kind": "file", "count": 20, "total_ns": 60_000_000,
       "hist": [[1048576, 15], [2097152, 5]]}
AGG_READ = {"type": "aggregate", "name": "read", "fd_kind": "socket", "count": 5, "total_ns": 10_000,
            "hist": [[1024, 5]], "bytes_total": 5000, "bytes_hist": [[512, 5]]}
TAIL = [{"type": "lost", "count": 0}, {"type": "end", "events": 3}]


def jsonl(*objs) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


def parse(text: str, offset: int = 0):
    ctx = ParseContext(path="ebpf.jsonl", offset_ns=offset)
    return list(EbpfParser().parse(io.StringIO(text), ctx)), ctx


def test_sniff():
    p = EbpfParser()
    assert p.sniff(jsonl(HEADER, READ), "ebpf.jsonl")
    assert not p.sniff(jsonl({"format": "diag.process/1"}), "x.jsonl")
    assert not p.sniff("read(3, ..., 10) = 10 <0.001>\n", "trace.txt")
    assert not p.sniff("", "empty")


def test_full_stream():
    recs, ctx = parse(jsonl(HEADER, FSYNC, READ, ERR, AGG, AGG_READ, *TAIL), offset=100)
    events = [r for r in recs if isinstance(r, SyscallEvent)]
    samples = [r for r in recs if isinstance(r, StackSample)]
    aggs = [r for r in recs if isinstance(r, SyscallAggregate)]
    assert [e.name for e in events] == ["fsync", "read", "connect"]
    fs, rd, cn = events
    assert (fs.pid, fs.tid, fs.start_ns, fs.dur_ns, fs.fd, fs.fd_kind, fs.ret) == \
        (42, 43, 1_000_100, 5_000_000, 3, FdKind.FILE, 0)
    assert fs.source == "ebpf" and fs.nbytes is None
    assert rd.fd_kind is FdKind.SOCKET and rd.nbytes == 1000
    assert cn.errno == "ECONNREFUSED" and cn.ret == -111 and cn.nbytes is None
    assert len(samples) == 1
    s = samples[0]
    assert s.tid == 43 and s.pid == 42 and s.on_cpu is False and s.source == "ebpf"
    assert s.ts_ns == 1_000_100 and s.dur_ns == 4_000_000
    assert s.frames[0].function == "entry_SYSCALL_64_after_hwframe"      # root first
    assert s.frames[-1].function == "schedule" and s.frames[-1].module == "kernel"
    assert {(a.name, a.fd_kind) for a in aggs} == {("fsync", FdKind.FILE), ("read", FdKind.SOCKET)}
    fa = next(a for a in aggs if a.name == "fsync")
    assert fa.count == 20 and fa.total_ns == 60_000_000 and fa.log2_hist_ns == ((1048576, 15), (2097152, 5))
    assert next(a for a in aggs if a.name == "read").bytes_total == 5000
    assert ctx.warnings == []


def test_lost_records_warn():
    recs, ctx = parse(jsonl(HEADER, READ, {"type": "lost", "count": 7}, {"type": "end", "events": 1}))
    assert len(recs) == 1
    assert any("lost 7" in w for w in ctx.warnings)


def test_truncated_last_line_is_a_warning():
    text = jsonl(HEADER, FSYNC, READ) + json.dumps(AGG)[:30]
    recs, ctx = parse(text)
    assert sum(isinstance(r, SyscallEvent) for r in recs) == 2
    assert any("truncated" in w for w in ctx.warnings)
    assert any("no end record" in w for w in ctx.warnings)


def test_one_bad_line_is_skipped_with_a_warning():
    recs, ctx = parse(jsonl(HEADER, READ) + "garbage here\n" + jsonl(AGG, *TAIL))
    assert sum(isinstance(r, SyscallEvent) for r in recs) == 1
    assert any("skipped 1 unparseable" in w and ":3:" in w for w in ctx.warnings)


def test_missing_field_is_a_bad_line():
    broken = dict(READ)
    del broken["start_ns"]
    recs, ctx = parse(jsonl(HEADER, READ, broken, *TAIL))
    assert sum(isinstance(r, SyscallEvent) for r in recs) == 1
    assert any("missing or invalid field" in w for w in ctx.warnings)


def test_unknown_fd_kind_maps_to_unknown():
    odd = dict(READ, fd_kind="teleporter", fd=None)
    recs, _ = parse(jsonl(HEADER, odd, *TAIL))
    assert recs[0].fd_kind is FdKind.UNKNOWN and recs[0].fd is None


def test_wrong_format_is_an_error():
    with pytest.raises(ParseError):
        parse(jsonl({"format": "diag.process/1"}, {"ts_ns": 1}))
    with pytest.raises(ParseError):
        parse("not json at all\nneither this\n")


def test_empty_stream_yields_nothing():
    recs, ctx = parse("")
    assert recs == [] and ctx.warnings == []
    recs, ctx = parse("\n\n")
    assert recs == []


def test_header_only_capture_cut_before_end():
    recs, ctx = parse(jsonl(HEADER))
    assert recs == []
    assert any("no end record" in w for w in ctx.warnings)


# --- request records (the probe's in-kernel request summarizer) ---------------------------------

REQ = {"type": "request", "pid": 42, "tid": 44, "fd": 7, "start_ns": 2_000_000, "end_ns": 9_000_000,
       "bytes_in": 68, "bytes_out": 157, "reads": 1, "writes": 1, "first_write_ns": 8_500_000, "write_tid": 44,
       "conn_start_ns": 1_000_000, "seq": 3, "family_ns": {"sync": 5_000_000, "sock": 20_000, "futex": 100}}


def test_request_record():
    recs, ctx = parse(jsonl(HEADER, REQ, READ, *TAIL), offset=100)
    reqs = [r for r in recs if isinstance(r, Request)]
    assert len(reqs) == 1 and sum(isinstance(r, SyscallEvent) for r in recs) == 1
    r = reqs[0]
    assert (r.pid, r.tid, r.fd, r.seq, r.source) == (42, 44, 7, 3, "ebpf")
    assert (r.start_ns, r.end_ns, r.first_write_ns, r.conn_start_ns) == (2_000_100, 9_000_100, 8_500_100, 1_000_100)
    assert r.latency_ns == 7_000_000
    assert (r.bytes_in, r.bytes_out, r.reads, r.writes) == (68, 157, 1, 1)
    assert r.write_tid is None                       # the reading thread wrote the response
    assert r.family_ns == (("futex", 100), ("socket", 20_000), ("sync", 5_000_000))   # sorted, "sock" named "socket"
    assert ctx.warnings == []


def test_request_handed_off_and_optional_fields():
    minimal = {k: v for k, v in REQ.items() if k not in ("first_write_ns", "conn_start_ns", "family_ns", "seq")}
    recs, _ = parse(jsonl(HEADER, dict(REQ, write_tid=45), minimal, dict(REQ, family_ns={"sync": 0}, at_stop=True),
                          *TAIL))
    a, b, c = recs
    assert a.write_tid == 45
    assert b.first_write_ns is None and b.conn_start_ns is None and b.family_ns == () and b.seq == 0
    assert c.family_ns == ()                          # zero entries dropped; unknown keys ignored


def test_malformed_request_records_are_bad_lines():
    no_start = {k: v for k, v in REQ.items() if k != "start_ns"}
    backwards = dict(REQ, end_ns=1)
    bad_fam = dict(REQ, family_ns=[1, 2])
    bad_num = dict(REQ, bytes_in="many")
    recs, ctx = parse(jsonl(HEADER, REQ, no_start, backwards, bad_fam, bad_num, *TAIL))
    assert len(recs) == 1
    assert any("skipped 4 unparseable" in w for w in ctx.warnings), ctx.warnings


def test_truncated_request_line_and_lost_requests():
    text = jsonl(HEADER, REQ, {"type": "lost", "count": 0, "lost_requests": 5}) + json.dumps(REQ)[:40]
    recs, ctx = parse(text)
    assert [type(r) for r in recs] == [Request]
    assert any("lost 5 request record" in w for w in ctx.warnings)
    assert any("truncated" in w for w in ctx.warnings)
    assert not any("slow-call" in w for w in ctx.warnings)


def test_requests_land_in_the_dataset():
    from diag.parse import parse_stream
    ps = parse_stream(io.StringIO(jsonl(HEADER, REQ, READ, *TAIL)), EbpfParser(), ParseContext(path="ebpf.jsonl"))
    assert len(ps.data.requests) == 1 and len(ps.data.syscalls) == 1
