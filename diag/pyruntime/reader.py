"""One sample of a CPython process's GIL and GC state, read from outside without stopping it.

`RuntimeReader(pid)` finds the runtime (discover.py), picks the layout (offsets.py: the 3.13
debug offsets, else the per-version table), and `sample()` reads, in one process_vm_readv, the
GIL struct and the GC struct, then the holder's PyThreadState for its OS thread id. Addresses
that depend on the interpreter having started (the main interpreter, on 3.12+ the GIL pointer)
are resolved lazily: a process caught before Py_Initialize gives `NotReady` until it is up.

Thread ids. 3.11+ keeps the OS tid in `PyThreadState.native_thread_id`. Before, only the
pthread_t (`thread_id`), which on glibc (and musl) is the address of the thread's `struct
pthread`; its `tid` field is found once by calibration: in the main thread's struct
(`_PyRuntime.main_thread`), the offsets holding the process id (the main thread's tid), glibc's
x86-64 offset 0x2d0 preferred. Every tid read is checked against /proc/PID/task when it is new.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from diag.pyruntime.discover import Runtime, find_runtime
from diag.pyruntime.memory import ReadError, ReadPlan, RemoteMemory
from diag.pyruntime.offsets import (DEBUG_OFFSETS_313_SIZE, EM_X86_64, LAYOUTS, SUPPORTED, GcFields, GilFields,
                                    debug_offsets_agree, parse_debug_offsets, version_text)

GLIBC_X86_64_PTHREAD_TID = 0x2D0
_PTHREAD_SCAN = 0x400


class Unsupported(Exception):
    """This interpreter cannot be read (version, architecture, build): the message says why."""


class NotReady(Exception):
    """The interpreter is not initialized yet (or is finalizing): try again later."""


@dataclass(frozen=True, slots=True)
class Sample:
    """What one read saw. None: that part could not be known in this sample."""

    gil_locked: bool | None
    holder_tid: int | None           # OS tid of the GIL holder when locked (None: unknown)
    switch_number: int | None        # the interpreter's count of GIL hand-offs
    gc_collecting: bool | None
    gc_counts: tuple[int, int, int] | None
    gc_collections: tuple[int, int, int] | None


@dataclass
class _Resolved:
    gil_addr: int
    gc_addr: int
    gil: GilFields
    gc: GcFields
    counts_known: bool               # generation counts and stats offsets trusted
    switch_known: bool


def _layout_struct(fields: list[tuple[int, str]], size: int) -> struct.Struct:
    """A struct.Struct unpacking `fields` ((offset, code), in offset order) from `size` bytes."""
    fmt, pos = "<", 0
    for off, code in fields:
        if off < pos:
            raise ValueError(f"overlapping fields at offset {off}")
        fmt += f"{off - pos}x{code}" if off > pos else code
        pos = off + struct.calcsize("<" + code)
    if size > pos:
        fmt += f"{size - pos}x"
    return struct.Struct(fmt)


class RuntimeReader:
    """Samples one CPython process. Construct, then `sample()` repeatedly; `close()` at the end."""

    def __init__(self, pid: int, runtime: Runtime | None = None) -> None:
        self.pid = pid
        self.runtime = runtime or find_runtime(pid)
        rt = self.runtime
        if rt.version not in SUPPORTED:
            raise Unsupported(f"Python {rt.version[0]}.{rt.version[1]} ({os.path.basename(rt.binary)}): diag reads "
                              f"the GIL and GC state of CPython 3.8-3.13 only")
        if rt.version < (3, 13) and rt.machine != EM_X86_64:
            raise Unsupported(f"Python {rt.version[0]}.{rt.version[1]} on ELF machine {rt.machine}: the offset "
                              "tables are verified on x86-64 only")
        self.layout = LAYOUTS[rt.version]
        self.mem = RemoteMemory(pid)
        self.debug: dict[str, int] | None = None
        self.unknown: list[str] = []         # fields this reader cannot give, with why
        self.fields: dict[str, str] = {}     # how each field is read (for the stream header)
        self.tid_method = ""
        self._resolved: _Resolved | None = None
        self._plan: ReadPlan | None = None
        self._tid_off: int | None = None     # struct pthread tid offset (<= 3.10)
        self._known_tids: set[int] = set()
        if rt.version >= (3, 13):
            try:
                self._read_debug_offsets()
            except BaseException:
                self.mem.close()
                raise
        self.version_hex = (self.debug or {}).get("version") or rt.version_hex
        self._describe()

    # ---- set-up ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Check that the target's memory can be read (NoAccess if not) and resolve now what can
        be: an interpreter not initialized yet is not an error here, sampling waits for it."""
        self.mem.read(self.runtime.address, 8)
        try:
            self._ensure()
            if self.debug is None and self.layout.tstate_native_thread_id is None:
                self._pthread_tid_offset()
        except NotReady:
            pass

    def version_label(self) -> str:
        """"3.11.7" when the build says it (Py_Version, debug offsets), else "3.9" (file name)."""
        if self.version_hex:
            return version_text(self.version_hex)
        return f"{self.runtime.version[0]}.{self.runtime.version[1]}"

    def _read_debug_offsets(self) -> None:
        raw = self.mem.read(self.runtime.address, DEBUG_OFFSETS_313_SIZE)
        dbg = parse_debug_offsets(raw)
        if dbg is None:
            raise Unsupported(f"Python 3.13 ({os.path.basename(self.runtime.binary)}): no _Py_DebugOffsets cookie "
                              "at _PyRuntime")
        if (dbg["version"] >> 16) != (3 << 8 | 13):
            raise Unsupported(f"_Py_DebugOffsets says version {version_text(dbg['version'])}, not 3.13")
        if dbg["free_threaded"]:
            raise Unsupported("free-threaded CPython build (3.13t): there is no single GIL to sample")
        self.debug = dbg
        disagree = debug_offsets_agree(dbg, self.layout)
        if disagree:
            self.unknown.append("gc generation counts and stats, GIL switch count: the 3.13 table disagrees with "
                                "the interpreter's debug offsets (" + "; ".join(disagree) + ")")

    def _describe(self) -> None:
        v = self.runtime.version
        if self.debug is not None:
            v_text = version_text(self.debug["version"])
            self.method = f"{self.runtime.describe()}; debug offsets (_Py_DebugOffsets, {v_text})"
            self.fields = {"gil": "interp->ceval.gil (debug offsets)", "gc": "interp->gc, collecting (debug offsets)"}
            if not self.unknown:
                self.fields["gc_counts"] = "generations[i].count, generation_stats[i].collections (table, 3.13)"
        else:
            self.method = f"{self.runtime.describe()}; offsets table for {v[0]}.{v[1]}"
            where_gil = "_PyRuntime.ceval.gil" if self.layout.runtime_gil is not None else "interp->ceval.gil"
            where_gc = "_PyRuntime.gc" if self.layout.runtime_gc is not None else "interp->gc"
            self.fields = {"gil": where_gil + " (table)", "gc": where_gc + ", collecting (table)",
                           "gc_counts": "generations[i].count, generation_stats[i].collections (table)"}
        if self.layout.tstate_native_thread_id is not None:
            self.tid_method = "PyThreadState.native_thread_id"
        else:
            self.tid_method = "PyThreadState.thread_id -> struct pthread tid (calibrated)"
        self.fields["holder_tid"] = self.tid_method

    def gil_address(self) -> int:
        """Where the interpreter's GIL state is (struct _gil_runtime_state), once resolved."""
        return self._ensure().gil_addr

    def _u64(self, addr: int) -> int:
        return struct.unpack("<Q", self.mem.read(addr, 8))[0]

    def _main_interp(self) -> int:
        rt = self.runtime.address
        if self.debug is None:
            interp = self._u64(rt + self.layout.runtime_interp_main)
            if not interp:
                raise NotReady("no main interpreter yet")
            return interp
        d = self.debug
        interp = self._u64(rt + d["runtime_state.interpreters_head"])
        for _ in range(256):          # the list is newest first: the main one (id 0) is last
            if not interp:
                break
            if self._u64(interp + d["interpreter_state.id"]) == 0:
                return interp
            interp = self._u64(interp + d["interpreter_state.next"])
        raise NotReady("no main interpreter (id 0) in _PyRuntime.interpreters yet")

    def _resolve(self) -> _Resolved:
        lay, rt = self.layout, self.runtime.address
        gil, gc = lay.gil, lay.gc
        counts_known, switch_known = not self.unknown, not self.unknown
        if self.debug is not None:
            d = self.debug
            interp = self._main_interp()
            gil_addr = self._u64(interp + d["interpreter_state.ceval_gil"])
            base = d["interpreter_state.gil_runtime_state"]
            gil = GilFields(last_holder=d["interpreter_state.gil_runtime_state_holder"] - base,
                            locked=d["interpreter_state.gil_runtime_state_locked"] - base,
                            switch_number=gil.switch_number)
            gc = GcFields(collecting=d["gc.collecting"], counts=gc.counts, collections=gc.collections)
            gc_addr = interp + d["interpreter_state.gc"]
        else:
            interp = None
            if lay.runtime_gil is not None:
                gil_addr = rt + lay.runtime_gil
            else:
                interp = self._main_interp()
                gil_addr = self._u64(interp + lay.interp_gil_ptr)
            if lay.runtime_gc is not None:
                gc_addr = rt + lay.runtime_gc
            else:
                interp = interp or self._main_interp()
                gc_addr = interp + lay.interp_gc
        if not gil_addr:
            raise NotReady("the GIL is not created yet")
        return _Resolved(gil_addr, gc_addr, gil, gc, counts_known, switch_known)

    def _ensure(self) -> _Resolved:
        if self._resolved is None:
            r = self._resolve()
            if not r.counts_known:
                # read only `collecting` when the other GC fields are not trusted
                gc_span = (r.gc_addr + r.gc.collecting, 4)
            else:
                lo, size = r.gc.span
                gc_span = (r.gc_addr + lo, size)
            self._plan = ReadPlan(self.mem, [(r.gil_addr, r.gil.switch_number + 8), gc_span])
            # one precompiled unpack per struct: (last_holder, locked, switch_number) and
            # (count[0..2], collections[0..2], collecting)
            self._gil_struct = _layout_struct([(r.gil.last_holder, "Q"), (r.gil.locked, "i"),
                                               (r.gil.switch_number, "Q")], r.gil.switch_number + 8)
            if r.counts_known:
                lo = gc_span[0] - r.gc_addr
                fields = [(o - lo, "i") for o in r.gc.counts] + [(o - lo, "q") for o in r.gc.collections]
                self._gc_struct = _layout_struct(fields + [(r.gc.collecting - lo, "i")], gc_span[1])
            else:
                self._gc_struct = struct.Struct("<i")
            self._resolved = r
        return self._resolved

    # ---- sampling -------------------------------------------------------------------------------

    def sample(self) -> Sample:
        """One read. Raises NotReady (interpreter not up yet), ReadError (torn or failed read; the
        target gone is its subclass TargetGone)."""
        r = self._ensure()
        assert self._plan is not None
        gil_raw, gc_raw = self._plan.read()
        holder, locked, switch = self._gil_struct.unpack(gil_raw)
        if not r.switch_known:
            switch = None
        if r.counts_known:
            c0, c1, c2, s0, s1, s2, collecting = self._gc_struct.unpack(gc_raw)
            counts, colls = (c0, c1, c2), (s0, s1, s2)
        else:
            collecting = self._gc_struct.unpack(gc_raw)[0]
            counts = colls = None
        is_locked = locked == 1                   # -1: not created yet (<= 3.11), 0: free
        tid = self._holder_tid(holder) if is_locked and holder else None
        return Sample(is_locked, tid, switch, bool(collecting), counts, colls)  # type: ignore[arg-type]

    def _holder_tid(self, tstate: int) -> int | None:
        lay = self.layout
        if self.debug is not None:
            tid = self._u64(tstate + self.debug["thread_state.native_thread_id"])
        elif lay.tstate_native_thread_id is not None:
            tid = self._u64(tstate + lay.tstate_native_thread_id)
        else:
            pthread = self._u64(tstate + lay.tstate_thread_id)
            if not pthread:
                return None
            off = self._pthread_tid_offset()
            if off is None:
                return None
            tid = struct.unpack("<i", self.mem.read(pthread + off, 4))[0]
        return tid if self._is_thread(tid) else None

    def _is_thread(self, tid: int) -> bool:
        if tid in self._known_tids:
            return True
        if tid > 0 and os.path.exists(f"/proc/{self.pid}/task/{tid}"):
            if len(self._known_tids) > 4096:      # a server with thread churn: keep it bounded
                self._known_tids.clear()
            self._known_tids.add(tid)
            return True
        return False

    def _pthread_tid_offset(self) -> int | None:
        """The offset of `tid` in struct pthread, from the main thread's (its tid is the pid)."""
        if self._tid_off is None:
            main = self._u64(self.runtime.address + self.layout.runtime_main_thread)
            if not main:
                return None
            raw = self.mem.read(main, _PTHREAD_SCAN)
            hits = [off for off in range(0, _PTHREAD_SCAN, 4) if struct.unpack_from("<i", raw, off)[0] == self.pid]
            if not hits:
                self.unknown.append("GIL holder tid: no field of the main thread's struct pthread holds its tid")
                self._tid_off = -1
            else:
                self._tid_off = GLIBC_X86_64_PTHREAD_TID if GLIBC_X86_64_PTHREAD_TID in hits else hits[0]
                self.tid_method = (f"PyThreadState.thread_id -> struct pthread tid at {self._tid_off:#x} "
                                   "(calibrated on the main thread)")
                self.fields["holder_tid"] = self.tid_method
        return self._tid_off if self._tid_off >= 0 else None

    def close(self) -> None:
        self.mem.close()


__all__ = ["RuntimeReader", "Sample", "Unsupported", "NotReady", "ReadError"]
