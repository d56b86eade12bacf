"""Go pprof (profile.proto) -> StackSample, on profiles encoded here field by field (packed and
unpacked repeated fields, inlined lines, a sample without value). Real Go profiles are read and
checked against `go tool pprof -raw` in tests/integration/test_replay_inputs.py."""
from __future__ import annotations

import gzip

import pytest

from diag.errors import ParseError
from diag.parse import detect, parse_file
from diag.parse.base import ParseContext


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(num: int, value) -> bytes:
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    return varint(num << 3 | 2) + varint(len(value)) + value


def packed(num: int, values) -> bytes:
    return field(num, b"".join(varint(v) for v in values))


def profile(kind: str, samples, packed_fields=True) -> bytes:
    strings = ["", kind, "count", "cpu", "nanoseconds", "main.burn", "main.go", "main.handler", "runtime.mcall",
               "proc.go", "delay"]
    s = {x: i for i, x in enumerate(strings)}
    msg = b""
    if kind == "samples":
        msg += field(1, field(1, s["samples"]) + field(2, s["count"]))
        msg += field(1, field(1, s["cpu"]) + field(2, s["nanoseconds"]))
    else:
        msg += field(1, field(1, s[kind]) + field(2, s["count"]))
        msg += field(1, field(1, s["delay"]) + field(2, s["nanoseconds"]))
    for locs, values in samples:
        body = packed(1, locs) if packed_fields else b"".join(field(1, x) for x in locs)
        body += packed(2, values) if packed_fields else b"".join(field(2, x) for x in values)
        msg += field(2, body)
    # location 1: burn inlined into handler (innermost first); 2: runtime.mcall
    msg += field(4, field(1, 1) + field(4, field(1, 1) + field(2, 12)) + field(4, field(1, 2) + field(2, 30)))
    msg += field(4, field(1, 2) + field(4, field(1, 3) + field(2, 300)))
    msg += field(5, field(1, 1) + field(2, s["main.burn"]) + field(4, s["main.go"]))
    msg += field(5, field(1, 2) + field(2, s["main.handler"]) + field(4, s["main.go"]))
    msg += field(5, field(1, 3) + field(2, s["runtime.mcall"]) + field(4, s["proc.go"]))
    for x in strings:
        msg += field(6, x.encode())
    msg += field(9, 1_700_000_000_000_000_000) + field(10, 2_000_000_000) + field(12, 10_000_000)
    return gzip.compress(msg)


@pytest.mark.parametrize("packed_fields", [True, False], ids=["packed", "unpacked"])
def test_cpu_profile_samples_frames_and_meta(tmp_path, packed_fields):
    p = tmp_path / "cpu.pb.gz"
    p.write_bytes(profile("samples", [([1], [30, 300_000_000]), ([2], [5, 50_000_000]), ([1], [0, 0])],
                          packed_fields))
    assert detect(str(p)).format == "pprof"
    ctx = ParseContext(path=str(p))
    ps = parse_file(str(p), ctx)
    smp = ps.data.samples
    assert [(s.weight, s.on_cpu, s.ts_ns) for s in smp] == [(30, True, None), (5, True, None)]
    # root first: the caller the burn was inlined into, then burn
    assert [(f.function, f.line) for f in smp[0].frames] == [("main.handler", 30), ("main.burn", 12)]
    assert ps.info.meta["kind"] == "cpu" and ps.info.meta["duration_nanos"] == 2_000_000_000
    assert ps.info.meta["period"] == 10_000_000


def test_mutex_profile_is_off_cpu_with_delays(tmp_path):
    p = tmp_path / "mutex.pb.gz"
    p.write_bytes(profile("contentions", [([1, 2], [3, 4_500_000])]))
    smp = parse_file(str(p), ParseContext(path=str(p))).data.samples
    assert [(s.weight, s.on_cpu, s.dur_ns) for s in smp] == [(3, False, 4_500_000)]
    assert [f.function for f in smp[0].frames] == ["runtime.mcall", "main.handler", "main.burn"]


@pytest.mark.parametrize("cut", [0.3, 0.9])
def test_truncated_or_garbled_profile_is_one_line_error(tmp_path, cut):
    raw = profile("samples", [([1], [30, 300_000_000])])
    p = tmp_path / "cpu.pb.gz"
    p.write_bytes(raw[: int(len(raw) * cut)])
    with pytest.raises(ParseError) as e:
        parse_file(str(p), ParseContext(path=str(p)))
    assert str(p) in str(e.value) and "\n" not in str(e.value)
    p.write_bytes(gzip.compress(b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"))
    with pytest.raises(ParseError):
        parse_file(str(p), ParseContext(path=str(p)))
