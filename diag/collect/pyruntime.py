"""The CPython runtime sampler: who holds the GIL, and when the cyclic GC runs, read from outside.

A thread of diag reads the target's memory at `rate_hz` (default 200) with process_vm_readv: no
code injected, no ptrace stop, nothing the target can notice but the kernel copying a few hundred
bytes (diag/pyruntime/ says what is read and how it is found). Changes are written to
`streams/pyruntime.jsonl` (format diag.pyruntime/1, docs/capture-format.md): a header, one `gil`
record per run of samples with the same holder, one `gc` record per collection seen, and an end
line with the totals. Lines are flushed every 0.25 s, so a capture cut by SIGKILL replays up to
its last complete line.

Cost: the sampler thread's own CPU, recorded in every capture (manifest `observer`, end line
`cpu_s`). Measured on the reference VM (2 shared cores) at the default 200 Hz: 55-110 µs of CPU
per sample, 1.1-2.2 % of one core, against an idle target or one spinning a core
(tests/integration/test_pyruntime_real.py::test_sampler_cost_at_the_default_rate prints it). Of
that, the read itself is ~6 µs in a tight loop (two process_vm_readv on 3.11+, three before; one
precompiled unpack per struct); most of the rest is waking a Python thread 200 times a second.
The target is never stopped: the kernel copies a few hundred bytes under the target's memory-map
lock taken for reading, which can delay a concurrent mmap/munmap of the target by microseconds.
"""
from __future__ import annotations

import json
import os
import threading
import time

from diag.capture.bundle import CaptureWriter
from diag.collect.base import DEGRADED, FAILED, OK, CollectorStats, Target, Unavailable
from diag.collect.targets import PYTHON_EXE
from diag.pyruntime.discover import NotPython, find_runtime
from diag.pyruntime.elf import ElfError
from diag.pyruntime.intervals import IntervalBuilder
from diag.pyruntime.memory import NoAccess, ReadError, TargetGone
from diag.pyruntime.reader import NotReady, RuntimeReader, Unsupported

FORMAT_TAG = "diag.pyruntime/1"
STREAM = "pyruntime.jsonl"
FLUSH_EVERY_NS = 250_000_000
# How long a `diag run` command named python* may take from its exec to a mapped libpython
# (the dynamic loader maps it after the exec diag waited for). Other commands are not waited for.
LAUNCH_WAIT_S = 5.0

# sizeof(struct _gil_runtime_state) on x86-64 glibc, 3.8-3.13: interval, last_holder, locked,
# switch_number, then the condition variables and mutexes whose futex words GIL waits sleep on
GIL_STATE_SIZE = 208


def _now() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _access_hint(pid: int) -> str:
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope = f.read().strip()
    except OSError:
        scope = None
    if os.geteuid() == 0:
        return "run diag as root with CAP_SYS_PTRACE (a container may need --cap-add SYS_PTRACE)"
    if scope and scope != "0":
        return (f"run diag as root (kernel.yama.ptrace_scope={scope} lets only root read another "
                f"process's memory)")
    return f"run diag as root or as the user of pid {pid}"


def _python_named(pid: int) -> bool:
    try:
        return bool(PYTHON_EXE.search(os.readlink(f"/proc/{pid}/exe")))
    except OSError:
        return False


def open_reader(pid: int, wait_s: float = 0.0) -> RuntimeReader:
    """A reader for `pid`, or an exception whose message is the reason it cannot run. With
    `wait_s`, a python* executable whose runtime is not mapped yet (a command just exec'd) is
    given that long."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            reader = RuntimeReader(pid, find_runtime(pid))
            break
        except NotPython:
            if time.monotonic() >= deadline or not _python_named(pid):
                raise
            time.sleep(0.01)
    try:
        reader.prepare()
    except BaseException:
        reader.close()
        raise
    return reader


def gil_state(pid: int) -> tuple[int, int] | None:
    """(address, size) of a CPython process's GIL state, read once (its symbols, and a pointer on
    3.12+), or None: lets the analysis tell a GIL wait from a lock wait even when the runtime
    sampler did not run (`diag watch`, --collectors without it)."""
    try:
        reader = open_reader(pid)
    except Exception:
        return None
    try:
        return reader.gil_address(), GIL_STATE_SIZE
    except Exception:
        return None
    finally:
        reader.close()


class PyRuntimeCollector:
    """Samples the GIL and GC state of a CPython target from a thread of diag."""

    name = "pyruntime"

    def __init__(self, rate_hz: int = 200, name: str = "pyruntime", stream: str = STREAM) -> None:
        self.name = name
        self.stream = stream
        self.rate_hz = max(1, int(rate_hz))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reader: RuntimeReader | None = None
        self._reader_pid: int | None = None
        self.writer: CaptureWriter | None = None
        self.samples = 0
        self.errors = 0
        self.not_ready = 0
        self.late = 0
        self.first_error: str | None = None
        self.ended: str | None = None
        self.cpu_s: float | None = None
        self.wall_s: float | None = None
        self.builder = IntervalBuilder()

    # ---- the collector interface ------------------------------------------------------------------

    def check(self, target: Target) -> str | None:
        pid = target.pid
        if not os.path.exists(f"/proc/{pid}"):
            return f"pid {pid} does not exist"
        try:
            reader = open_reader(pid, LAUNCH_WAIT_S if target.launched else 0.0)
        except NotPython as e:
            if e.named:
                return (f"unsupported interpreter: Python {e.named[0]}.{e.named[1]} ({e.file}) has no _PyRuntime: "
                        f"diag reads the GIL and GC state of CPython 3.8-3.13 only")
            return f"not applicable: the target is not a CPython process ({e})"
        except Unsupported as e:
            return f"unsupported interpreter: {e}"
        except NoAccess as e:
            return f"cannot read pid {pid}'s memory ({e}): {_access_hint(pid)}"
        except TargetGone:
            return f"pid {pid} exited"
        except (ElfError, ReadError) as e:
            return f"cannot locate the Python runtime of pid {pid}: {e}"
        except PermissionError as e:
            return f"cannot read /proc/{pid} ({e.strerror}): {_access_hint(pid)}"
        except OSError as e:
            return f"cannot read /proc/{pid}: {e.strerror or e}"
        self._close_reader()
        self._reader, self._reader_pid = reader, pid
        return None

    def start(self, target: Target, writer: CaptureWriter) -> None:
        self.writer = writer
        if self._reader is None or self._reader_pid != target.pid:
            reason = self.check(target)
            if reason:
                raise Unavailable(reason)
        reader = self._reader
        assert reader is not None
        self._out = open(writer.stream_path(self.stream), "w")
        start_ns = _now()
        header = {"format": FORMAT_TAG, "type": "header", "pid": target.pid,
                  "python": reader.version_label(), "version_hex": reader.version_hex,
                  "binary": reader.runtime.binary, "method": reader.method, "memory": reader.mem.method,
                  "fields": reader.fields, "unknown": reader.unknown, "rate_hz": self.rate_hz,
                  "clock": "CLOCK_MONOTONIC", "start_ns": start_ns}
        self._out.write(json.dumps(header, sort_keys=True) + "\n")
        self._out.flush()
        writer.set_collector(self.name, status=OK, stream=self.stream, format="pyruntime-jsonl",
                             started_monotonic_ns=start_ns, python=header["python"], method=reader.method,
                             settings={"rate_hz": self.rate_hz, "memory": reader.mem.method})
        self._thread = threading.Thread(target=self._run, name="diag-pyruntime-sampler", daemon=True)
        self._thread.start()

    def stats(self) -> CollectorStats:
        note = f"{self.rate_hz} Hz, {self.builder.gc_records} GC pauses"
        if self.errors:
            note += f", {self.errors} read errors"
        return CollectorStats(events=self.samples, running=bool(self._thread and self._thread.is_alive()),
                              note=self.ended or note)

    def begin_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._close_reader()
        if self.writer is None:
            return
        if self._thread is None:
            return
        status, reason = OK, None
        if self.samples == 0:
            status = FAILED if self.first_error else DEGRADED
            reason = f"no sample read: {self.first_error or self.ended or 'the interpreter never became ready'}"
        self.writer.set_collector(self.name, status=status, reason=reason, events=self.samples,
                                  lost=self.errors, observer=self.observer_cost())

    def observer_cost(self) -> dict:
        out: dict = {}
        if self.cpu_s is not None:
            out["cpu_s_capture"] = round(self.cpu_s, 4)
            if self.wall_s:
                out["cores"] = round(self.cpu_s / self.wall_s, 5)
        return out

    # ---- the sampling thread ----------------------------------------------------------------------

    def _run(self) -> None:
        cpu0, wall0 = time.thread_time(), time.monotonic()
        try:
            self._loop()
        except Exception as e:      # a sampler bug degrades the capture, never kills diag
            self.first_error = self.first_error or f"{type(e).__name__}: {e}"
            self.ended = f"sampler stopped: {self.first_error}"
        finally:
            self.cpu_s = time.thread_time() - cpu0
            self.wall_s = time.monotonic() - wall0
            self._finish()

    def _loop(self) -> None:
        reader = self._reader
        assert reader is not None
        lines: list[str] = []
        try:
            self._sample_until_stopped(reader, lines)
        finally:
            self._emit(lines, self.builder.finish())
            self._write(lines)

    def _sample_until_stopped(self, reader: RuntimeReader, lines: list[str]) -> None:
        period = 1_000_000_000 // self.rate_hz
        last_flush = _now()
        next_ns = last_flush
        while not self._stop.is_set():
            t0 = _now()
            sample = None
            try:
                sample = reader.sample()
                self.samples += 1
                if self.samples == 1:
                    # where the GIL's state lives: a futex wait inside it is a wait for the GIL
                    lines.append(json.dumps({"type": "gil_state", "addr": reader.gil_address(),
                                             "size": GIL_STATE_SIZE}, separators=(",", ":")))
            except NotReady:
                self.not_ready += 1
            except TargetGone:
                self.ended = "the target exited"
                self._emit(lines, self.builder.feed(t0, _now(), None))
                break
            except ReadError as e:
                self.errors += 1
                self.first_error = self.first_error or str(e)
            t1 = _now()
            self._emit(lines, self.builder.feed(t0, t1, sample))
            if lines and t1 - last_flush >= FLUSH_EVERY_NS:
                self._write(lines)
                last_flush = t1
            next_ns += period
            if next_ns <= t1:                 # overran (diag starved of CPU): skip, never burst
                self.late += (t1 - next_ns) // period + 1
                next_ns = t1 + period
            self._stop.wait((next_ns - t1) / 1e9)

    def _emit(self, lines: list[str], records: list[dict]) -> None:
        for r in records:
            lines.append(json.dumps(r, separators=(",", ":")))

    def _write(self, lines: list[str]) -> None:
        if lines:
            self._out.write("\n".join(lines) + "\n")
            self._out.flush()
            lines.clear()

    def _finish(self) -> None:
        b = self.builder
        end = {"type": "end", "end_ns": _now(), "samples": self.samples, "read_errors": self.errors,
               "not_ready": self.not_ready, "late": self.late, "gil_records": b.gil_records,
               "gc_records": b.gc_records, "gil_switches": b.switches(),
               "gc_collections": b.collections_seen_by_stats(), "first_error": self.first_error,
               "unknown": self._reader.unknown if self._reader is not None else [],
               "ended": self.ended or "stopped",
               "cpu_s": None if self.cpu_s is None else round(self.cpu_s, 4)}
        try:
            self._out.write(json.dumps(end, sort_keys=True) + "\n")
            self._out.close()
        except (OSError, ValueError):
            pass

    def _close_reader(self) -> None:
        if self._reader is not None and (self._thread is None or not self._thread.is_alive()):
            self._reader.close()
            self._reader = None


class PyRuntimeTree:
    """The runtime sampler over a process tree: one PyRuntimeCollector per Python process of the
    target's tree (a gunicorn master and its workers), each with its own stream
    (`pyruntime.jsonl` for the target itself, `pyruntime.PID.jsonl` for the others), started as
    members appear. The rate is shared: `rate_hz` in all, at least MIN_RATE_HZ per process, so a
    tree of workers costs about what one process does."""

    name = "pyruntime"
    MIN_RATE_HZ = 50
    LOOK_EVERY_S = 1.0

    def __init__(self, rate_hz: int = 200) -> None:
        self.rate_hz = rate_hz
        self.members: dict[int, PyRuntimeCollector | None] = {}
        self.target: Target | None = None
        self.writer: CaptureWriter | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._root: PyRuntimeCollector | None = None

    def _rate(self) -> int:
        n = max(1, len(self.target.pids()) if self.target is not None else 1)
        return max(self.MIN_RATE_HZ, self.rate_hz // n)

    def check(self, target: Target) -> str | None:
        self._root = PyRuntimeCollector(self.rate_hz)
        return self._root.check(target)

    def start(self, target: Target, writer: CaptureWriter) -> None:
        self.target, self.writer = target, writer
        root = self._root or PyRuntimeCollector(self.rate_hz)
        root.rate_hz = self._rate()
        root.start(target, writer)
        self.members[target.pid] = root
        if target.follow_children:
            self._look()
            self._watcher = threading.Thread(target=self._watch, name="diag-pyruntime-tree", daemon=True)
            self._watcher.start()

    def _look(self) -> None:
        """Start a sampler on every Python member not sampled yet (once per pid)."""
        assert self.target is not None and self.writer is not None
        for pid in sorted(self.target.pids()):
            with self._lock:
                if pid in self.members or self._stop.is_set():
                    continue
                self.members[pid] = None
            member = Target(pid=pid, follow_children=False)
            c = PyRuntimeCollector(self._rate(), name=f"pyruntime.{pid}", stream=f"pyruntime.{pid}.jsonl")
            if c.check(member) is not None:       # not Python (or gone): nothing to sample
                continue
            try:
                c.start(member, self.writer)
            except Unavailable:
                continue
            with self._lock:
                self.members[pid] = c

    def _watch(self) -> None:
        while not self._stop.wait(self.LOOK_EVERY_S):
            try:
                self._look()
            except Exception:        # a member that cannot be sampled never stops the others
                pass

    def _running(self) -> list[PyRuntimeCollector]:
        with self._lock:
            return [c for c in self.members.values() if c is not None]

    def stats(self) -> CollectorStats:
        cs = self._running()
        if not cs:
            return CollectorStats()
        st = [c.stats() for c in cs]
        note = st[0].note if len(st) == 1 else f"{len(st)} Python processes, {self._rate()} Hz each"
        return CollectorStats(events=sum(s.events for s in st), running=any(s.running for s in st), note=note)

    def begin_stop(self) -> None:
        self._stop.set()
        for c in self._running():
            c.begin_stop()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(10)
        for c in self._running():
            c.stop()

    def observer_cost(self) -> dict:
        costs = [c.observer_cost() for c in self._running()]
        out: dict = {}
        for key in ("cpu_s_capture", "cores"):
            vals = [c[key] for c in costs if key in c]
            if vals:
                out[key] = round(sum(vals), 5)
        return out
