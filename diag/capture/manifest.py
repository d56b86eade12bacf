"""What each field of a capture manifest must be, checked when a capture is opened.

The loader, the analysis and every renderer read manifest fields directly (a pid as a number, a
command line as a list of strings, clock pairs as integers). A manifest damaged by hand, by a
tool, or on purpose must be refused here, in one line that names the field, rather than fail
later inside a renderer. Fields this version does not know are left alone (a newer diag may have
written them); fields it knows must have their documented type (docs/capture-format.md), with
integers within 64 bits and numbers finite. The streams of a refused capture stay readable:
`diag replay CAPTURE/streams/FILE` replays each one as a raw file.
"""
from __future__ import annotations

import math
from typing import Callable

from diag.errors import ParseError

Check = Callable[[object], str | None]     # None when the value fits, else what it should be


def _int(v) -> str | None:
    ok = isinstance(v, int) and not isinstance(v, bool) and -2**63 <= v < 2**63
    return None if ok else "an integer (64-bit)"


def _number(v) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) < 2**63
    return None if ok else "a finite number"


def _str(v) -> str | None:
    return None if isinstance(v, str) else "a string"


def _bool(v) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def _any_object(v) -> str | None:
    return None if isinstance(v, dict) else "an object"


def _opt(check: Check) -> Check:
    def f(v):
        return None if v is None else check(v)
    return f


def _list_of(check: Check, what: str) -> Check:
    def f(v):
        if not isinstance(v, list) or any(check(x) for x in v):
            return f"a list of {what}"
        return None
    return f


class _Map:
    """An object of values that each pass `check` (keys that are integers when `int_keys`)."""

    def __init__(self, check: Check, int_keys: bool = False) -> None:
        self.check, self.int_keys = check, int_keys


class _Obj:
    """An object whose known fields are checked (unknown ones are kept, unchecked)."""

    def __init__(self, fields: dict, required: tuple[str, ...] = ()) -> None:
        self.fields, self.required = fields, required


class _Each:
    """An object whose every entry, whatever its name, fits `spec` (the collectors, by name)."""

    def __init__(self, spec: _Obj) -> None:
        self.spec = spec


PAIR = _Obj({"realtime_ns": _int, "monotonic_ns": _int, "gap_ns": _opt(_int)}, ("realtime_ns", "monotonic_ns"))
COLLECTOR = _Obj({
    "status": _str, "reason": _opt(_str), "stream": _opt(_str), "raw_stream": _opt(_str),
    "format": _opt(_str), "events": _opt(_int), "lost": _opt(_int), "started_monotonic_ns": _opt(_int),
    "settings": _opt(_any_object), "observer": _Map(_number),
    "clock": _Obj({"offset_ns": _opt(_int), "uncertainty_ns": _opt(_int), "method": _opt(_str),
                   "started_monotonic_ns": _opt(_int)}),
    "tid_map": _Map(_int, int_keys=True), "version": _opt(_str),
    "counters": _Obj({"cycles": _opt(_int), "instructions": _opt(_int), "reason": _opt(_str)}),
})
MANIFEST = _Obj({
    "schema": _str, "status": _opt(_str), "mode": _opt(_str), "end_reason": _opt(_str),
    "tool": _Obj({"name": _opt(_str), "version": _opt(_str)}),
    "host": _Obj({"hostname": _opt(_str), "kernel": _opt(_str), "machine": _opt(_str), "os": _opt(_str),
                  "cpus": _opt(_int), "boot_id": _opt(_str)}),
    "target": _Obj({"pid": _opt(_int), "cmdline": _opt(_list_of(_str, "strings")), "comm": _opt(_str),
                    "python": _opt(_bool), "launched": _opt(_bool), "follow_children": _opt(_bool),
                    "threads": _opt(_list_of(_int, "integers")), "uid": _opt(_int), "user": _opt(_str)}),
    "clock": _Obj({"start": PAIR, "end": PAIR, "collectors_started_monotonic_ns": _opt(_int)}),
    "collectors": _Each(COLLECTOR),
    "events": _Obj({"seen": _opt(_int), "lost": _opt(_int)}),
    "access": _Obj({"redacted": _opt(_bool), "attached_by": _Obj({"uid": _opt(_int), "user": _opt(_str),
                                                                  "sudo_user": _opt(_str)}),
                    "file_modes": _opt(_str)}),
})


def _check(value, spec, path: str) -> tuple[str, str, object] | None:
    """(field path, what it must be, what it is) for the first field that does not fit, else None."""
    if isinstance(spec, _Map):
        if value is None:
            return None
        if not isinstance(value, dict):
            return path, "an object", value
        for k, x in value.items():
            if spec.int_keys and not k.lstrip("-").isdigit():
                return path, "an object keyed by integers", k
            what = spec.check(x)
            if what:
                return f"{path}.{k}", what, x
        return None
    if isinstance(spec, _Each):
        if value is None:
            return None
        if not isinstance(value, dict):
            return path, "an object", value
        for name, entry in value.items():
            if not isinstance(entry, dict):
                return f"{path}.{name}", "an object", entry
            bad = _check(entry, spec.spec, f"{path}.{name}")
            if bad:
                return bad
        return None
    if isinstance(spec, _Obj):
        if value is None:               # every object is optional; `required` applies when present
            return None
        if not isinstance(value, dict):
            return path, "an object", value
        for name in spec.required:
            if name not in value:
                return f"{path}.{name}", "present", None
        for name, sub in spec.fields.items():
            if name in value:
                bad = _check(value[name], sub, f"{path}.{name}" if path else name)
                if bad:
                    return bad
        return None
    what = spec(value)
    return (path, what, value) if what else None


def _type_name(v) -> str:
    if v is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(v), type(v).__name__)


def check_fields(where: str, manifest: dict) -> dict:
    """`manifest`, or a ParseError naming the first field of the wrong type."""
    bad = _check(manifest, MANIFEST, "")
    if bad:
        path, what, found = bad
        problem = "is missing" if what == "present" else f"must be {what} (found {_type_name(found)})"
        raise ParseError(where, None, f"manifest field {path!r} {problem}: the manifest is damaged; the stream "
                                      "files can still be replayed one by one")
    return manifest


__all__ = ["check_fields"]
