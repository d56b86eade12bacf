"""Where CPython keeps the GIL and the cyclic GC's state, per minor version (3.8-3.13, x86-64).

The numbers are `offsetof(...)` of CPython's own internal structures, printed by a C program
compiled against each version's headers with -DPy_BUILD_CORE (tests/data/pyruntime_offsets.c;
tests/integration/test_pyruntime_offsets.py recompiles it against every interpreter found and
compares). They hold for release builds of CPython on LP64 x86-64 (Debian's and pyenv's); a debug
build (Py_DEBUG, Py_TRACE_REFS) or another architecture may differ, which is why <= 3.12 is only
trusted on x86-64. Patch releases of one minor version keep these layouts (verified here: Debian
3.11.2 and pyenv 3.11.7 agree), CPython does not promise it for internal structures.

Paths from `_PyRuntime` (the one global the runtime state lives in):
- the main interpreter: `_PyRuntime.interpreters.main` (3.8-3.12); on 3.13 the first interpreter
  with id 0, walking `_PyRuntime.interpreters.head` with the debug offsets;
- the GIL (`struct _gil_runtime_state`: `last_holder`, a PyThreadState*, `locked`, an int, and
  `switch_number`, the count of hand-offs): embedded in `_PyRuntime.ceval.gil` up to 3.11, per
  interpreter from 3.12 (`interp->ceval.gil`, a pointer);
- the GC (`struct _gc_runtime_state`: `collecting`, `generations[i].count`,
  `generation_stats[i].collections`): `_PyRuntime.gc` in 3.8, `interp->gc` from 3.9;
- the holder's OS thread id: `PyThreadState.native_thread_id` from 3.11; before, only
  `thread_id` (the pthread_t, which on glibc is the address of the thread's `struct pthread`,
  whose `tid` field the reader finds by calibration on the main thread).

3.13 carries `_Py_DebugOffsets` at the start of `_PyRuntime` (cookie "xdebugpy"), written by the
interpreter itself: the reader takes the interpreter list, the GIL pointer and fields, the GC
state and `collecting`, and `native_thread_id` from there, and the generation counts and stats
(not in the debug offsets) from this table, only if the table agrees with the debug offsets on
the fields both give.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

SUPPORTED = ((3, 8), (3, 9), (3, 10), (3, 11), (3, 12), (3, 13))
EM_X86_64 = 62


@dataclass(frozen=True)
class GilFields:
    """Offsets inside `struct _gil_runtime_state` (the same from 3.8 to 3.13)."""

    last_holder: int = 8
    locked: int = 16
    switch_number: int = 24


@dataclass(frozen=True)
class GcFields:
    """Offsets inside `struct _gc_runtime_state` (the same from 3.8 to 3.13)."""

    collecting: int = 200
    counts: tuple[int, int, int] = (44, 68, 92)             # generations[i].count (int)
    collections: tuple[int, int, int] = (128, 152, 176)     # generation_stats[i].collections (ssize_t)

    @property
    def span(self) -> tuple[int, int]:
        """(first offset, size) of the smallest read that covers every field."""
        lo = min(self.counts)
        return lo, self.collecting + 4 - lo


@dataclass(frozen=True)
class Layout:
    """One minor version's offsets (None: the field does not exist in that version)."""

    version: tuple[int, int]
    runtime_interp_main: int            # _PyRuntime.interpreters.main
    runtime_main_thread: int            # _PyRuntime.main_thread (pthread_t of the main thread)
    runtime_gil: int | None             # _PyRuntime.ceval.gil (embedded), <= 3.11
    interp_gil_ptr: int | None          # interp->ceval.gil (pointer), >= 3.12
    runtime_gc: int | None              # _PyRuntime.gc, 3.8
    interp_gc: int | None               # interp->gc, >= 3.9
    tstate_thread_id: int               # PyThreadState.thread_id (pthread_t)
    tstate_native_thread_id: int | None  # PyThreadState.native_thread_id, >= 3.11
    gil: GilFields = GilFields()
    gc: GcFields = GcFields()

    def as_flat(self) -> dict[str, int]:
        """Every known offset under the names the verification program prints."""
        out = {"runtime.interp_main": self.runtime_interp_main, "runtime.main_thread": self.runtime_main_thread,
               "tstate.thread_id": self.tstate_thread_id, "gil.last_holder": self.gil.last_holder,
               "gil.locked": self.gil.locked, "gil.switch_number": self.gil.switch_number,
               "gc.collecting": self.gc.collecting}
        for key, value in (("runtime.gil", self.runtime_gil), ("interp.gil_ptr", self.interp_gil_ptr),
                           ("runtime.gc", self.runtime_gc), ("interp.gc", self.interp_gc),
                           ("tstate.native_thread_id", self.tstate_native_thread_id)):
            if value is not None:
                out[key] = value
        for i in range(3):
            out[f"gc.count{i}"] = self.gc.counts[i]
            out[f"gc.collections{i}"] = self.gc.collections[i]
        return out


LAYOUTS: dict[tuple[int, int], Layout] = {
    (3, 8): Layout((3, 8), runtime_interp_main=40, runtime_main_thread=72, runtime_gil=1152, interp_gil_ptr=None,
                   runtime_gc=344, interp_gc=None, tstate_thread_id=176, tstate_native_thread_id=None),
    (3, 9): Layout((3, 9), runtime_interp_main=40, runtime_main_thread=72, runtime_gil=352, interp_gil_ptr=None,
                   runtime_gc=None, interp_gc=616, tstate_thread_id=176, tstate_native_thread_id=None),
    (3, 10): Layout((3, 10), runtime_interp_main=40, runtime_main_thread=72, runtime_gil=352, interp_gil_ptr=None,
                    runtime_gc=None, interp_gc=616, tstate_thread_id=176, tstate_native_thread_id=None),
    (3, 11): Layout((3, 11), runtime_interp_main=48, runtime_main_thread=80, runtime_gil=360, interp_gil_ptr=None,
                    runtime_gc=None, interp_gc=648, tstate_thread_id=152, tstate_native_thread_id=160),
    (3, 12): Layout((3, 12), runtime_interp_main=48, runtime_main_thread=64, runtime_gil=None, interp_gil_ptr=384,
                    runtime_gc=None, interp_gc=112, tstate_thread_id=136, tstate_native_thread_id=144),
    (3, 13): Layout((3, 13), runtime_interp_main=640, runtime_main_thread=656, runtime_gil=None, interp_gil_ptr=16,
                    runtime_gc=None, interp_gc=7400, tstate_thread_id=152, tstate_native_thread_id=160),
}

# _Py_DebugOffsets of 3.13 (stable within 3.13.x; 3.14 added fields, so its layout differs):
# where each uint64 we use sits inside the struct, and how much of it to read.
DEBUG_COOKIE = b"xdebugpy"
DEBUG_OFFSETS_313 = {
    "version": 8, "free_threaded": 16,
    "runtime_state.interpreters_head": 40,
    "interpreter_state.id": 56, "interpreter_state.next": 64, "interpreter_state.gc": 80,
    "interpreter_state.ceval_gil": 112, "interpreter_state.gil_runtime_state": 120,
    "interpreter_state.gil_runtime_state_locked": 136, "interpreter_state.gil_runtime_state_holder": 144,
    "thread_state.thread_id": 192, "thread_state.native_thread_id": 200,
    "gc.collecting": 576,
}
DEBUG_OFFSETS_313_SIZE = 584


def parse_debug_offsets(raw: bytes) -> dict[str, int] | None:
    """The fields of a 3.13 `_Py_DebugOffsets` block (None when the cookie is absent)."""
    if len(raw) < DEBUG_OFFSETS_313_SIZE or raw[:8] != DEBUG_COOKIE:
        return None
    return {k: struct.unpack_from("<Q", raw, off)[0] for k, off in DEBUG_OFFSETS_313.items()}


def debug_offsets_agree(dbg: dict[str, int], layout: Layout) -> list[str]:
    """Fields where the table disagrees with the interpreter's own debug offsets (empty: agree)."""
    pairs = [
        ("interpreter_state.gc", layout.interp_gc),
        ("interpreter_state.ceval_gil", layout.interp_gil_ptr),
        ("gc.collecting", layout.gc.collecting),
        ("thread_state.native_thread_id", layout.tstate_native_thread_id),
        ("interpreter_state.gil_runtime_state_locked - gil_runtime_state", layout.gil.locked),
        ("interpreter_state.gil_runtime_state_holder - gil_runtime_state", layout.gil.last_holder),
    ]
    base = dbg["interpreter_state.gil_runtime_state"]
    actual = dict(dbg)
    actual["interpreter_state.gil_runtime_state_locked - gil_runtime_state"] = (
        dbg["interpreter_state.gil_runtime_state_locked"] - base)
    actual["interpreter_state.gil_runtime_state_holder - gil_runtime_state"] = (
        dbg["interpreter_state.gil_runtime_state_holder"] - base)
    return [f"{name}: debug offsets {actual[name]}, table {want}" for name, want in pairs if actual[name] != want]


def version_hex(major: int, minor: int, micro: int = 0, level: int = 0xF, serial: int = 0) -> int:
    return (major << 24) | (minor << 16) | (micro << 8) | (level << 4) | serial


def split_version_hex(v: int) -> tuple[int, int, int]:
    return (v >> 24) & 0xFF, (v >> 16) & 0xFF, (v >> 8) & 0xFF


def version_text(v: int) -> str:
    """"3.11.7" (or "3.13.0rc2") from a PY_VERSION_HEX."""
    major, minor, micro = split_version_hex(v)
    level, serial = (v >> 4) & 0xF, v & 0xF
    tail = {0xA: "a", 0xB: "b", 0xC: "rc"}.get(level)
    return f"{major}.{minor}.{micro}" + (f"{tail}{serial}" if tail else "")
