"""The eBPF agent's capture stream: what the agent (diag.agent) writes and diag.parse.ebpf reads.

    streams/ebpf.jsonl        a header line (format, settings, the layouts of the binary records),
                              then small records: export settings over time, kernel stacks, the
                              in-kernel aggregates and histograms, losses, the end line
    streams/ebpf.calls.bin    slow calls          } raw BPF ring buffer batches: each record is
    streams/ebpf.requests.bin exported requests   } an 8-byte ring header, the probe's struct and
    streams/ebpf.sched.bin    wakeups, runq waits } padding to 8 bytes; layouts in the header

The binary files are the ring buffers' own bytes, copied whole, so the agent spends no time per
record; they are decoded at analysis time, a whole file per struct.iter_unpack. The layouts in
the header come from probes/diag_events.h at capture time, so an old capture decodes with the
layout it was written with.
"""
from __future__ import annotations

import struct
from typing import Iterator

FORMAT_TAG = "diag.ebpf/2"
OLD_FORMAT_TAGS = ("diag.ebpf/1",)      # JSON-only streams of earlier versions: still read
MAIN = "ebpf.jsonl"
# record kind -> (binary file, the probe struct it holds)
RECORDS = {"calls": ("ebpf.calls.bin", "diag_event"),
           "requests": ("ebpf.requests.bin", "diag_request"),
           "sched": ("ebpf.sched.bin", "diag_sched")}
RING_HEADER = "II"                       # length (with BUSY/DISCARD bits), page offset
# the probe's #defines a decoder needs (flag bits of the records): the agent writes their values
# into the stream header, the parser reads them from there
RECORD_CONSTANT_PREFIXES = ("REQF_", "SCHED_", "SCHEDF_", "FDR_", "DIAG_KIND_MASK")


def record_struct(fmt: str, stride: int) -> struct.Struct:
    """The struct that unpacks one record as stored: the ring header, the fields, the padding."""
    body = struct.calcsize(fmt)
    pad = stride - 8 - body
    assert pad >= 0, (fmt, stride)
    return struct.Struct("=" + RING_HEADER + fmt.lstrip("=") + (f"{pad}x" if pad else ""))


def iter_records(data: bytes, fmt: str, stride: int) -> Iterator[tuple]:
    """Every whole record of a binary file, as (length, page offset, field...) tuples. A cut last
    record (a capture killed mid-write) is left out."""
    st = record_struct(fmt, stride)
    whole = len(data) - len(data) % st.size
    return st.iter_unpack(memoryview(data)[:whole])


def loglinear_lower(slot: int, sub_bits: int) -> int:
    """Lower bound (ns) of a slot of the probe's log-linear request histograms (req_slot() in
    probes/diag_probe.c): values below 2^(sub_bits+1) have a slot each, then 2^sub_bits slots per
    power of two."""
    per = 1 << sub_bits
    if slot < 2 * per:
        return slot
    lg = slot // per + sub_bits      # floor(log2(v)) + 1, as bpf_log2l gives it
    sub = slot % per
    return (1 << (lg - 1)) + sub * (1 << (lg - 1 - sub_bits))


def log2_lower(slot: int) -> int:
    """Lower bound of a slot of the probe's log2 histograms (bpf_log2l: slot 1 holds 0 and 1)."""
    return 0 if slot <= 1 else 1 << (slot - 1)
