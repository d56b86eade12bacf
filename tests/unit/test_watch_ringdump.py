"""Segments of the agent's ring merged into one stream that the eBPF parser reads like any other."""
from __future__ import annotations

import json
import struct

from diag.agent import header as hdr
from diag.agent.ring import stride_of
from diag.capture import ebpf_stream as fmt
from diag.model import SyscallAggregate, SyscallEvent
from diag.parse.base import ParseContext
from diag.parse.ebpf import EbpfParser
from diag.watch import ringdump

MS = 1_000_000


def write_segment(ring, name, start, end, calls, agg_count, req_slots, stack_ids=()):
    """A closed segment as diag/agent/segments.py writes it: header, stacks, binary slow calls,
    the segment's own aggregates and histograms, losses, end."""
    h = hdr.load()
    layout = h.structs["diag_event"]
    d = ring / name
    d.mkdir(parents=True)
    head = {"format": fmt.FORMAT_TAG, "tgids": [7], "requests": True, "slow_ns": MS,
            "records": {"calls": {"file": "ebpf.calls.bin", "layout": layout.to_json(),
                                  "stride": stride_of(layout.size)}},
            "syscall_numbers": {"74": "fsync"}, "kinds": ["unknown", "socket", "file", "pipe", "other"],
            "families": ["sync"], "segment": {"name": name, "start_ns": start}}
    lines = [head] + [{"type": "kstack", "id": s, "frames": ["do_fsync"]} for s in stack_ids]
    lines += [{"type": "aggregate", "name": "fsync", "fd_kind": "file", "count": agg_count,
               "total_ns": agg_count * 3 * MS, "max_ns": 4 * MS, "hist": [[2097152, agg_count]]},
              {"type": "request_hist", "latency": "server", "sub_bits": 2, "slots": req_slots,
               "count": sum(n for _, n in req_slots)},
              {"type": "request_hist", "latency": "client", "sub_bits": 2, "slots": [], "count": 0},
              {"type": "family_hist", "families": {"sync": [[2097152, agg_count]]}},
              {"type": "lost", "count": 1, "lost_requests": 0},
              {"type": "end", "events": len(calls), "requests": 0, "start_ns": start, "end_ns": end}]
    (d / fmt.MAIN).write_text("".join(json.dumps(x) + "\n" for x in lines))
    st = fmt.record_struct(layout.fmt, stride_of(layout.size))
    names = layout.names()
    blob = b""
    for t0, dur, sid in calls:
        vals = dict.fromkeys(names, 0)
        vals.update(start_ns=t0, dur_ns=dur, tid=7, tgid=7, nr=74, fd=3, kstack_id=sid, fd_kind=2)
        blob += st.pack(layout.size, 0, *[vals[n] for n in names])
    (d / "ebpf.calls.bin").write_bytes(blob)
    return {"name": name, "start_ns": start, "end_ns": end, "bytes": 0, "generation": int(name[1:5])}


def test_segments_of_a_window_merge_into_one_parsable_stream(tmp_path):
    ring = tmp_path / ".ring"
    segs = [write_segment(ring, "g0001-s000001", 1_000, 5_000, [(1_500, 3 * MS, 1)], 10, [[80, 5]], [1]),
            write_segment(ring, "g0001-s000002", 5_000, 9_000, [(6_000, 4 * MS, 1)], 20, [[80, 7], [90, 1]], [1]),
            write_segment(ring, "g0001-s000003", 9_000, 13_000, [(9_500, 5 * MS, -1)], 30, [], [])]
    (ring / "ring.json").write_text(json.dumps({"segments": segs, "dropped": {"segments": 4, "records": 0}}))
    # WHEN the window covers the last two segments
    cov = ringdump.select(ring, 6_000, 12_000)
    assert [s["name"] for s in cov.segments] == ["g0001-s000002", "g0001-s000003"]
    out = tmp_path / "cap" / "streams"
    out.mkdir(parents=True)
    totals = ringdump.merge(ring, cov, out / fmt.MAIN)
    # THEN one stream: both segments' slow calls, their aggregates summed, the losses summed
    assert totals["events"] == 2 and totals["lost"] == 2
    ctx = ParseContext(path=str(out / fmt.MAIN))
    ctx.read_companion = lambda name: (out / name).read_bytes() if (out / name).exists() else None
    with open(out / fmt.MAIN) as f:
        recs = list(EbpfParser().parse(f, ctx))
    calls = [r for r in recs if isinstance(r, SyscallEvent)]
    assert [c.dur_ns for c in calls] == [4 * MS, 5 * MS]
    aggs = [r for r in recs if isinstance(r, SyscallAggregate)]
    assert len(aggs) == 1 and aggs[0].count == 50 and aggs[0].total_ns == 150 * MS
    lines = [json.loads(x) for x in (out / fmt.MAIN).read_text().splitlines()]
    assert sum(1 for x in lines if x.get("type") == "kstack") == 1          # one stack, once
    server = next(x for x in lines if x.get("type") == "request_hist" and x["latency"] == "server")
    assert server["slots"] == [[80, 7], [90, 1]] and server["count"] == 8
    end = lines[-1]
    assert end["type"] == "end" and end["ring_dropped"]["segments"] == 4


def test_only_the_newest_agent_run_of_a_window_is_merged(tmp_path):
    ring = tmp_path / ".ring"
    segs = [write_segment(ring, "g0001-s000009", 1_000, 5_000, [], 1, []),
            write_segment(ring, "g0002-s000001", 6_000, 9_000, [], 2, [])]
    (ring / "ring.json").write_text(json.dumps({"segments": segs}))
    cov = ringdump.select(ring, 0, 10_000)
    assert [s["name"] for s in cov.segments] == ["g0002-s000001"] and cov.left_out == 1


def test_record_layout_roundtrip_sanity():
    layout = hdr.load().structs["diag_event"]
    assert struct.calcsize(layout.fmt) == layout.size
