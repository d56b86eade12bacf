"""probes/diag_events.h read as data: its #define constants and its record structs' layouts.

The probe and the agent share one header; reading it here (instead of copying its numbers) means
a change there reaches the agent and the stream decoder by itself. The reader understands exactly
what the header promises to contain: `#define NAME <integer>` lines and structs of fixed-size
integer fields (u8..u64, s8..s64, optionally arrays whose length is an integer or a #define).
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from diag.resources import probe_dir

HEADER = "diag_events.h"

_TYPES = {"u8": ("B", 1), "u16": ("H", 2), "u32": ("I", 4), "u64": ("Q", 8),
          "s8": ("b", 1), "s16": ("h", 2), "s32": ("i", 4), "s64": ("q", 8)}
_DEFINE = re.compile(r"^\s*#define\s+([A-Z_][A-Z0-9_]*)\s+(0x[0-9a-fA-F]+|\d+)\b", re.M)
_STRUCT = re.compile(r"struct\s+(\w+)\s*\{(.*?)\};", re.S)
_FIELD = re.compile(r"^\s*(u8|u16|u32|u64|s8|s16|s32|s64)\s+(\w+)(?:\[(\w+)\])?\s*$")


@dataclass(frozen=True)
class Layout:
    """One record struct: its fields (name, struct code, count) in order and its C size."""

    name: str
    fields: tuple[tuple[str, str, int], ...]
    fmt: str            # struct module format, native byte order, C padding made explicit
    size: int

    def unpacker(self) -> struct.Struct:
        return struct.Struct(self.fmt)

    def names(self) -> list[str]:
        """Field names in unpack order; an array field `x[N]` unpacks as x.0 .. x.N-1."""
        out = []
        for name, _code, n in self.fields:
            out.extend([name] if n == 1 else [f"{name}.{i}" for i in range(n)])
        return out

    def to_json(self) -> dict:
        return {"name": self.name, "fields": [list(f) for f in self.fields], "fmt": self.fmt, "size": self.size}

    @classmethod
    def from_json(cls, obj: dict) -> "Layout":
        fields = tuple((str(n), str(c), int(k)) for n, c, k in obj["fields"])
        return cls(str(obj["name"]), fields, str(obj["fmt"]), int(obj["size"]))


@dataclass(frozen=True)
class Header:
    defines: dict[str, int]
    structs: dict[str, Layout]

    def __getattr__(self, name: str) -> int:
        try:
            return self.defines[name]
        except KeyError:
            raise AttributeError(f"{HEADER} defines no {name}") from None

    def prefixed(self, prefix: str) -> dict[str, int]:
        """{'SYNC': 0, 'FILE': 1, ...} for prefix 'FAM_'."""
        return {k[len(prefix):]: v for k, v in self.defines.items() if k.startswith(prefix)}


def _layout(name: str, body: str, defines: dict[str, int]) -> Layout:
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    fields, fmt, off, align_max = [], "=", 0, 1
    for m in filter(None, (_FIELD.match(stmt) for stmt in body.split(";"))):
        ctype, fname, count = m.group(1), m.group(2), m.group(3)
        n = 1
        if count:
            n = int(count) if count.isdigit() else defines[count]
        code, size = _TYPES[ctype]
        pad = -off % size
        if pad:
            fmt += f"{pad}x"
            off += pad
        fmt += f"{n}{code}" if n > 1 else code
        off += size * n
        align_max = max(align_max, size)
        fields.append((fname, code, n))
    tail = -off % align_max
    if tail:
        fmt += f"{tail}x"
        off += tail
    assert struct.calcsize(fmt) == off, (name, fmt, off)
    return Layout(name, tuple(fields), fmt, off)


def parse_header(text: str) -> Header:
    defines = {m.group(1): int(m.group(2), 0) for m in _DEFINE.finditer(text)}
    structs = {}
    for m in _STRUCT.finditer(text):
        body = m.group(2)
        if re.search(r"\bstruct\s+\w+\s+\w+\s*;", body):
            continue                      # nests another struct: not a record layout
        structs[m.group(1)] = _layout(m.group(1), body, defines)
    return Header(defines, structs)


@lru_cache(maxsize=4)
def load(path: str | None = None) -> Header:
    p = Path(path) if path else probe_dir() / HEADER
    return parse_header(p.read_text())
