"""Go pprof profiles (`profile.proto`, gzipped, as `net/http/pprof` serves them) -> StackSample.

The source document diagnoses Go servers with pprof + strace + perf; these are its profiles:

- CPU (`/debug/pprof/profile?seconds=N`): sample types `samples/count, cpu/nanoseconds`, one
  sample every `period` ns of CPU (10 ms). -> on_cpu=True, weight = the sample count.
- goroutine (`/debug/pprof/goroutine`): `goroutines/count`, a snapshot of every goroutine's stack.
- block and mutex (`/debug/pprof/block`, `/debug/pprof/mutex`, once the server called
  runtime.SetBlockProfileRate / SetMutexProfileFraction): `contentions/count, delay/nanoseconds`.
  -> on_cpu=False, weight = contentions, dur_ns = the delay.
- heap, allocs, threadcreate: read the same way (on_cpu=False), with a warning that they say
  nothing about time.

Samples carry no timestamps and no thread ids (goroutines are not threads): ts_ns None, tid -1;
they feed profiles and the decision matrix (runtime scheduler/GC frames: runtime.mcall,
runtime.gcBgMarkWorker, runtime.futex...), never a time window. The profile's own duration and
period go into the stream's `meta` (how busy the CPU profile says the process was).

Decoding: the protobuf wire format by hand (varints, length-delimited fields, packed or unpacked
repeated scalars), about a hundred lines, checked against `go tool pprof -raw` on profiles of a
real Go server in tests/integration/test_go_pprof.py. A Location's lines are innermost first
(inlined calls), its samples' locations leaf first: frames come out root first as everywhere.
"""
from __future__ import annotations

import gzip
import zlib
from typing import IO, Iterator

from diag.errors import ParseError
from diag.model import Clock, Frame, StackSample
from diag.parse.base import ParseContext

UNKNOWN_TID = -1
_TIME_KINDS = {"cpu", "samples", "goroutine", "goroutines", "contentions", "delay"}


class _Wire(Exception):
    pass


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise _Wire("varint runs past the end")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7
        if shift > 70:
            raise _Wire("varint too long")


def _fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of one message: ints for varints and fixed, bytes for
    length-delimited fields."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
            yield num, wt, v
        elif wt == 2:
            ln, i = _varint(buf, i)
            if i + ln > n:
                raise _Wire("a field runs past the end of its message")
            yield num, wt, buf[i:i + ln]
            i += ln
        elif wt == 1:
            if i + 8 > n:
                raise _Wire("truncated fixed64")
            yield num, wt, int.from_bytes(buf[i:i + 8], "little")
            i += 8
        elif wt == 5:
            if i + 4 > n:
                raise _Wire("truncated fixed32")
            yield num, wt, int.from_bytes(buf[i:i + 4], "little")
            i += 4
        else:
            raise _Wire(f"wire type {wt} is not protobuf")


def _ints(wt: int, v) -> list[int]:
    """A repeated integer field's values: one varint, or a packed run of them."""
    if wt == 0:
        return [v]
    out, i = [], 0
    while i < len(v):
        x, i = _varint(v, i)
        out.append(x)
    return out


def _signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


class PprofParser:
    """Go `profile.proto` (gzipped or not): CPU, goroutine, block, mutex, heap profiles."""

    format = "pprof"
    clock = Clock.NONE
    binary = True

    def sniff(self, head: str, name: str) -> bool:
        return False        # binary: detected from its bytes by diag.parse.sniff_binary

    @staticmethod
    def sniff_bytes(raw: bytes, name: str) -> bool:
        if raw[:2] == b"\x1f\x8b":
            return name.endswith((".pb.gz", ".pprof", ".prof")) or "pprof" in name or _looks_like_profile(raw)
        return name.endswith((".pb", ".pprof")) and raw[:1] == b"\x0a"

    def parse(self, stream: IO[bytes], ctx: ParseContext) -> Iterator[object]:
        raw = stream.read()
        if not raw:
            raise ParseError(ctx.path, None, "empty file: no pprof profile")
        if raw[:2] == b"\x1f\x8b":
            try:
                raw = gzip.decompress(raw)
            except (EOFError, OSError, zlib.error) as e:
                raise ParseError(ctx.path, None, f"truncated or corrupt gzip data ({e}): not a whole pprof profile") from None
        try:
            yield from self._profile(raw, ctx)
        except _Wire as e:
            raise ParseError(ctx.path, None, f"not a pprof profile (profile.proto): {e}") from None

    def _profile(self, raw: bytes, ctx: ParseContext) -> Iterator[StackSample]:
        strings: list[str] = []
        sample_types: list[tuple[int, int]] = []
        samples: list[bytes] = []
        locations: dict[int, list[tuple[int, int]]] = {}     # id -> [(function id, line)] innermost first
        functions: dict[int, tuple[int, int]] = {}           # id -> (name, filename) string indexes
        mappings: dict[int, int] = {}                        # id -> filename string index
        loc_mapping: dict[int, int] = {}
        loc_addr: dict[int, int] = {}
        meta = {"time_nanos": 0, "duration_nanos": 0, "period": 0}
        period_type = None
        for num, wt, v in _fields(raw):
            if num == 1 and wt == 2:
                t = dict((n, x) for n, w, x in _fields(v) if w == 0)
                sample_types.append((t.get(1, 0), t.get(2, 0)))
            elif num == 2 and wt == 2:
                samples.append(v)
            elif num == 3 and wt == 2:
                m = {n: x for n, w, x in _fields(v) if w == 0}
                mappings[m.get(1, 0)] = m.get(5, 0)
            elif num == 4 and wt == 2:
                lid, lines, mid, addr = 0, [], 0, 0
                for n, w, x in _fields(v):
                    if n == 1 and w == 0:
                        lid = x
                    elif n == 2 and w == 0:
                        mid = x
                    elif n == 3 and w == 0:
                        addr = x
                    elif n == 4 and w == 2:
                        ln = {a: b for a, c, b in _fields(x) if c == 0}
                        lines.append((ln.get(1, 0), _signed(ln.get(2, 0))))
                locations[lid] = lines
                loc_mapping[lid] = mid
                loc_addr[lid] = addr
            elif num == 5 and wt == 2:
                f = {n: x for n, w, x in _fields(v) if w == 0}
                functions[f.get(1, 0)] = (f.get(2, 0), f.get(4, 0))
            elif num == 6 and wt == 2:
                strings.append(v.decode("utf-8", errors="replace"))
            elif num == 9 and wt == 0:
                meta["time_nanos"] = _signed(v)
            elif num == 10 and wt == 0:
                meta["duration_nanos"] = _signed(v)
            elif num == 11 and wt == 2:
                t = {n: x for n, w, x in _fields(v) if w == 0}
                period_type = (t.get(1, 0), t.get(2, 0))
            elif num == 12 and wt == 0:
                meta["period"] = _signed(v)

        def s(i: int) -> str:
            return strings[i] if 0 <= i < len(strings) else ""

        if not strings or not sample_types:
            raise _Wire("no string table or no sample types")
        types = [(s(t), s(u)) for t, u in sample_types]
        kind = types[0][0]
        meta["sample_types"] = [f"{t}/{u}" for t, u in types]
        if period_type is not None:
            meta["period_type"] = f"{s(period_type[0])}/{s(period_type[1])}"
        cpu = kind == "samples" and any(t == "cpu" for t, _ in types)
        delay_i = next((i for i, (t, u) in enumerate(types) if t == "delay" and u == "nanoseconds"), None)
        if not cpu and kind not in _TIME_KINDS:
            ctx.warn(f"{ctx.path}: a pprof {'/'.join(t for t, _ in types)} profile says where memory or threads "
                     "were allocated, not where time went: shown in profiles only")
        meta["kind"] = "cpu" if cpu else kind
        ctx.meta.update(meta)
        cache: dict[int, tuple[Frame, ...]] = {}
        for loc_id, lines in locations.items():
            fr = []
            for fid, line in lines:
                name_i, file_i = functions.get(fid, (0, 0))
                fr.append(Frame(function=s(name_i) or "?", file=s(file_i) or None, line=line or None))
            if not fr:     # an address without symbols
                fr.append(Frame(function=f"0x{loc_addr.get(loc_id, 0):x}", module=s(mappings.get(loc_mapping.get(loc_id, 0), 0)) or None))
            cache[loc_id] = tuple(reversed(fr))        # outer caller first
        for blob in samples:
            locs: list[int] = []
            values: list[int] = []
            for n, w, x in _fields(blob):
                if n == 1:
                    locs.extend(_ints(w, x))
                elif n == 2:
                    values.extend(_signed(y) for y in _ints(w, x))
            if not values or values[0] <= 0:
                continue
            frames: list[Frame] = []
            for lid in reversed(locs):                 # leaf first in the file
                frames.extend(cache.get(lid, (Frame(function=f"location {lid}"),)))
            if not frames:
                continue
            dur = values[delay_i] if delay_i is not None and delay_i < len(values) else None
            yield StackSample(tid=UNKNOWN_TID, ts_ns=None, frames=tuple(frames), on_cpu=True if cpu else False,
                              source="pprof", weight=values[0], pid=ctx.pid, thread_name=None, dur_ns=dur)


def _looks_like_profile(raw: bytes) -> bool:
    """A gzip member whose start decodes as a profile.proto (sample_type first)."""
    try:
        head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw[:4096], 64)
    except zlib.error:
        return False
    return head[:1] == b"\x0a"
