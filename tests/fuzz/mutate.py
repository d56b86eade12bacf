"""Mutation operators of the fuzz campaign: a real input in, a damaged one out, chosen by hypothesis.

Every operator is drawn by a hypothesis strategy, so a fixed seed replays the same inputs and
hypothesis' bias towards boundary values (0, -1, 2**63, empty, odd code points) applies to the
damage. Text operators work on bytes (a trace file as the collector wrote it); JSON operators on
the parsed document (a manifest or a py-spy/eBPF record with the wrong shape).
"""
from __future__ import annotations

import json
import re

from hypothesis import strategies as st

# Numbers a parser may meet where a small one is expected.
NUMBERS = ["0", "-0", "-1", "1", "4294967296", "9223372036854775807", "9223372036854775808",
           "-9223372036854775809", "18446744073709551616", "1" + "0" * 40, "9" * 400, "9" * 5000,
           "1e400", "-1e400", "1e-400", "NaN", "Infinity", "-Infinity", "0x10", "1_000", "1.5",
           "\u0661\u0662\u0663", "\U0001d7cf", "+7", " 7", ""]
# Code points and sequences that break naive text handling.
ODD_TEXT = ["\x00", "\ufeff", "\u202e", "\u2028", "\u2029", "\u0085", "\r", "\r\n", "\x1b[31m", "\x7f",
            "\udcff", "\ud800", "\U0010ffff", "e\u0301\u0301\u0301", "<script>alert(1)</script>", "</script>",
            "{{ 7*7 }}", "%s%n%x", "\t", "\\", '"', "'", "\u00a0", "\ufffd", "\uffff", "[x]", "[/]"]

# Damage never makes an input larger than this: a long line duplicated 2000 times would
# otherwise exhaust the fuzzer's own memory before diag sees it.
MAX_INPUT = 48 << 20
_LINE = re.compile(rb"[^\n]*\n?")
_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?")


def encode(text: str) -> bytes:
    """UTF-8, lone surrogates kept as the invalid bytes a broken writer would leave."""
    return text.encode("utf-8", "surrogatepass")


odd_text = st.one_of(st.sampled_from(ODD_TEXT), st.text(max_size=40),
                     st.text(st.characters(codec="utf-8", exclude_categories=()), max_size=20))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from([2**63, -2**63 - 1, 2**64, 10**30]),
                         st.floats(allow_nan=True, allow_infinity=True), odd_text)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=8)


def _lines(data: bytes) -> list[bytes]:
    return [m for m in _LINE.findall(data) if m]


@st.composite
def mutate_bytes(draw, data: bytes, max_ops: int = 4) -> tuple[bytes, list[str]]:
    """`data` damaged by 1..max_ops operators; returns the result and their names."""
    names = []
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(_BYTE_OP_NAMES)
        data = BYTE_OPS[op](draw, data)[:MAX_INPUT]
        names.append(op)
    return data, names


def _pos(draw, data: bytes) -> int:
    return draw(st.integers(0, len(data)))


def _flip(draw, data: bytes) -> bytes:
    if not data:
        return b"\xff"
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 16))):
        i = draw(st.integers(0, len(b) - 1))
        b[i] ^= draw(st.integers(1, 255))
    return bytes(b)


def _truncate(draw, data: bytes) -> bytes:
    return data[:_pos(draw, data)]


def _dup_lines(draw, data: bytes) -> bytes:
    lines = _lines(data)
    if not lines:
        return data
    i = draw(st.integers(0, len(lines) - 1))
    span = draw(st.integers(1, 5))
    times = draw(st.sampled_from([1, 2, 10, 100, 2000]))
    block = lines[i:i + span]
    times = max(1, min(times, MAX_INPUT // max(1, sum(map(len, block)))))
    return b"".join(lines[:i + span] + block * times + lines[i + span:])


def _delete_lines(draw, data: bytes) -> bytes:
    lines = _lines(data)
    if not lines:
        return data
    i = draw(st.integers(0, len(lines) - 1))
    return b"".join(lines[:i] + lines[i + draw(st.integers(1, 10)):])


def _swap_lines(draw, data: bytes) -> bytes:
    lines = _lines(data)
    if len(lines) < 2:
        return data
    i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
    lines[i], lines[j] = lines[j], lines[i]
    return b"".join(lines)


def _number(draw, data: bytes) -> bytes:
    spans = [m.span() for m in _NUMBER.finditer(data, 0, 200_000)]
    if not spans:
        return data
    for _ in range(draw(st.integers(1, 4))):
        a, b = spans[draw(st.integers(0, len(spans) - 1))]
        token = draw(_NUMBER_TOKENS)
        data = data[:a] + encode(token) + data[b:]
        spans = [m.span() for m in _NUMBER.finditer(data, 0, 200_000)] or [(0, 0)]
    return data


def _insert_text(draw, data: bytes) -> bytes:
    p = _pos(draw, data)
    return data[:p] + encode(draw(odd_text)) + data[p:]


def _nuls(draw, data: bytes) -> bytes:
    p = _pos(draw, data)
    return data[:p] + b"\0" * draw(st.sampled_from([1, 7, 4096, 70000])) + data[p:]


def _binary(draw, data: bytes) -> bytes:
    p = _pos(draw, data)
    return data[:p] + draw(st.binary(min_size=1, max_size=512)) + data[p:]


def _long_line(draw, data: bytes) -> bytes:
    p = _pos(draw, data)
    n = draw(st.sampled_from([4096, 65537, 1 << 20, 20 << 20]))
    return data[:p] + draw(st.sampled_from([b"x", b"(", b"{", b"[", b" ", b"9", b"\xff"])) * n + data[p:]


def _newlines(draw, data: bytes) -> bytes:
    return data.replace(b"\n", draw(st.sampled_from([b"\r\n", b"\r", b"", b"\n\n", b"\x00"])))


def _bom(draw, data: bytes) -> bytes:
    return draw(st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\n", b" "])) + data


def _utf16(draw, data: bytes) -> bytes:
    return data.decode("utf-8", "replace").encode("utf-16")


_NUMBER_TOKENS = st.one_of(st.sampled_from(NUMBERS), st.integers().map(str))
_JSON_OPS = st.sampled_from(["delete", "replace", "retype", "wrap", "empty", "repeat"])
_RETYPED = st.sampled_from([0, -1, 2**64, 1e308, None, [], {}, True, float("nan")])

BYTE_OPS = {"flip": _flip, "truncate": _truncate, "dup-lines": _dup_lines, "delete-lines": _delete_lines,
            "swap-lines": _swap_lines, "numbers": _number, "odd-text": _insert_text, "nuls": _nuls,
            "binary": _binary, "long-line": _long_line, "newlines": _newlines, "bom": _bom, "utf-16": _utf16}
_BYTE_OP_NAMES = st.sampled_from(sorted(BYTE_OPS))


# ---------------------------------------------------------------- JSON with the wrong shape

def _paths(doc, prefix=(), out=None, limit=3000):
    """Every path into a JSON document (keys and list indexes), the root included."""
    out = [] if out is None else out
    out.append(prefix)
    if len(out) >= limit:
        return out
    if isinstance(doc, dict):
        for k, v in doc.items():
            _paths(v, prefix + (k,), out, limit)
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:50]):
            _paths(v, prefix + (i,), out, limit)
    return out


def _get(doc, path):
    for k in path:
        doc = doc[k]
    return doc


@st.composite
def mutate_json(draw, doc, max_ops: int = 3) -> tuple[object, list[str]]:
    """`doc` (a parsed JSON value; not modified) with 1..max_ops shape changes."""
    doc = json.loads(json.dumps(doc))
    names = []
    for _ in range(draw(st.integers(1, max_ops))):
        paths = _paths(doc)
        path = paths[draw(st.integers(0, len(paths) - 1))]
        op = draw(_JSON_OPS)
        if not path:
            if op in ("replace", "retype", "delete"):
                doc = draw(json_values)
            elif op == "wrap":
                doc = [doc]
            names.append(f"root-{op}")
            continue
        parent, key = _get(doc, path[:-1]), path[-1]
        value = parent[key]
        if op == "delete":
            del parent[key]
        elif op == "replace":
            parent[key] = draw(json_values)
        elif op == "retype":
            parent[key] = str(value) if not isinstance(value, str) else draw(_RETYPED)
        elif op == "wrap":
            parent[key] = draw(st.sampled_from([[value], {"value": value}]))
        elif op == "empty":
            parent[key] = type(value)() if isinstance(value, (dict, list, str)) else None
        elif op == "repeat" and isinstance(value, list) and value and len(value) <= 1000:
            parent[key] = value * draw(st.sampled_from([2, 50, 1000]))
        names.append(f"{op}:{'.'.join(str(k) for k in path)[:60]}")
    return doc, names


def dumps(doc) -> bytes:
    """JSON as Python writes it (NaN and Infinity included: json.loads accepts them back)."""
    return encode(json.dumps(doc))


@st.composite
def mutate_jsonl(draw, data: bytes) -> tuple[bytes, list[str]]:
    """A JSON Lines stream with 1..3 of its records reshaped."""
    lines = _lines(data)
    names = []
    for _ in range(draw(st.integers(1, 3))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        try:
            obj = json.loads(lines[i])
        except ValueError:
            continue
        obj, n = draw(mutate_json(obj, max_ops=2))
        lines[i] = dumps(obj) + b"\n"
        names += [f"line{i + 1}:{x}" for x in n]
    return b"".join(lines), names or ["jsonl-noop"]
