"""What stack samples alone say about a target: whose samples they are, how busy it was, where its
CPU went (hottest frames, code paths, threads), and how much of it was the runtime (GC, scheduler).

Used when no syscall stream rebuilds requests (perf alone, py-spy alone, a Go CPU profile): the
samples still name the code that burns the CPU. perf -a samples every process: the target is the
busiest one (the idle task, perf and py-spy themselves left out), by pid when `perf script -F
+pid` printed it, else by command name.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from diag.model import Frame, StackSample

# Samples of these commands are the machine idling or the observers themselves, never the target.
NOT_TARGETS = frozenset({"swapper", "perf", "perf-exec", "py-spy", "strace", "diag"})
# Frames that are a sampler's view of waiting, not work (py-spy --idle stacks, perf idle loops).
IDLE_FRAMES = ("do_idle", "cpu_idle", "default_idle", "native_safe_halt", "pv_native_safe_halt", "poll_idle",
               "cpuidle_enter")
# py-spy samples at 100 Hz unless told otherwise (`py-spy record --rate`).
PYSPY_DEFAULT_RATE = 100


@dataclass
class Profile:
    """The target's on-CPU samples and what they add up to."""

    samples: list[StackSample]
    total: int                              # weighted count of the target's samples
    all_total: int                          # weighted count of every on-CPU sample in the inputs
    label: str                              # who the target is ("pid 1234", "command python")
    how: str                                # how the target was chosen
    sources: list[str]
    window_ns: int | None = None            # time the timed samples span
    rate_hz: float | None = None            # sampling rate, when known or inferred
    cores: float | None = None              # average CPUs the target kept busy
    cores_lower_bound: bool = False         # py-spy chrometrace keeps stack changes only: at least
    threads: list[tuple[str, int]] = field(default_factory=list)
    runtime: int = 0                        # samples in runtime GC/scheduler frames

    def share(self, n: int) -> float:
        return n / self.total if self.total else 0.0


def _group(s: StackSample) -> tuple[str, str]:
    if s.pid is not None:
        return ("pid", str(s.pid))
    return ("command", s.thread_name or "?")


def _is_idle(s: StackSample) -> bool:
    return any(f.function.startswith(IDLE_FRAMES) for f in s.frames[:4])


def target_profile(samples: list[StackSample], pid: int | None = None,
                   runtime_frames: tuple[str, ...] = (), streams=()) -> Profile | None:
    """The target's on-CPU profile (None without on-CPU samples). Samples marked off-CPU (Go
    goroutine/block/mutex profiles, eBPF off-CPU stacks) are left out."""
    oncpu = [s for s in samples if s.on_cpu is not False and s.frames and s.source != "ebpf"]
    if not oncpu:
        return None
    all_total = sum(s.weight for s in oncpu)
    perf = [s for s in oncpu if s.source == "perf"]
    chosen = oncpu
    how = "every sample"
    label = "the sampled process"
    if pid is not None:
        mine = [s for s in oncpu if s.pid == pid or (s.pid is None and s.tid == pid)]
        if mine:
            chosen, how, label = mine, "--pid", f"pid {pid}"
    elif perf and len({_group(s) for s in perf}) > 1:
        # system-wide perf: the busiest process that is not idle or an observer
        counts: Counter[tuple[str, str]] = Counter()
        names: dict[tuple[str, str], Counter[str]] = {}
        for s in perf:
            if s.tid == 0 or (s.thread_name or "") in NOT_TARGETS or _is_idle(s):
                continue
            g = _group(s)
            counts[g] += s.weight
            names.setdefault(g, Counter())[s.thread_name or "?"] += s.weight
        if counts:
            g, _ = counts.most_common(1)[0]
            chosen = [s for s in oncpu if s.source != "perf" or _group(s) == g]
            comm = names[g].most_common(1)[0][0]
            label = f"pid {g[1]} ({comm})" if g[0] == "pid" else f"command {g[1]!r}"
            how = ("the busiest process in the system-wide samples" +
                   ("" if g[0] == "pid" else " (perf script printed no pids: threads grouped by command name; "
                                             "`perf script -F +pid` or --pid names the process)"))
    total = sum(s.weight for s in chosen)
    prof = Profile(chosen, total, all_total, label, how, sorted({s.source for s in chosen}))
    timed = sorted(s.ts_ns for s in chosen if s.ts_ns is not None)
    if len(timed) >= 2:
        prof.window_ns = timed[-1] - timed[0]
        prof.rate_hz = _rate(chosen)
        if prof.rate_hz and prof.window_ns > 0:
            prof.cores = sum(s.weight for s in chosen if s.ts_ns is not None) / (prof.rate_hz * prof.window_ns / 1e9)
            prof.cores_lower_bound = all(s.source == "py-spy" for s in chosen)
    cpu_profiles = [st.meta for st in streams if st.meta.get("kind") == "cpu" and st.meta.get("duration_nanos")]
    if prof.cores is None and cpu_profiles and all(s.source == "pprof" for s in chosen):
        # a Go CPU profile: one sample per `period` ns of CPU over `duration_nanos`
        m = cpu_profiles[0]
        prof.window_ns = int(m["duration_nanos"])
        prof.rate_hz = 1e9 / m["period"] if m.get("period") else None
        cpu_ns = sum(s.weight for s in chosen if s.on_cpu) * (m.get("period") or 0)
        if cpu_ns and len(cpu_profiles) == 1:
            prof.cores = cpu_ns / prof.window_ns
    per_thread: Counter[str] = Counter()
    for s in chosen:
        per_thread[f"{s.thread_name or ''} tid {s.tid}".strip() if s.tid >= 0 else "all threads"] += s.weight
    prof.threads = per_thread.most_common(5)
    if runtime_frames:
        prof.runtime = sum(s.weight for s in chosen if any(f.function.startswith(runtime_frames) for f in s.frames))
    return prof


def _rate(samples: list[StackSample]) -> float | None:
    """Samples per second per running thread: perf's frequency, from the spacing of a thread's
    consecutive samples (the median of gaps under 50 ms); py-spy's default rate."""
    if all(s.source == "py-spy" for s in samples):
        return float(PYSPY_DEFAULT_RATE)
    by_tid: dict[int, list[int]] = {}
    for s in samples:
        if s.source == "perf" and s.ts_ns is not None:
            by_tid.setdefault(s.tid, []).append(s.ts_ns)
    gaps = []
    for ts in by_tid.values():
        ts.sort()
        gaps.extend(b - a for a, b in zip(ts, ts[1:]) if 0 < b - a < 50_000_000)
    if len(gaps) < 10:
        return None
    gaps.sort()
    return 1e9 / gaps[len(gaps) // 2]


def _frame_key(f: Frame) -> str:
    # a function's samples spread over its lines (Python, Go): count them together
    if f.file and f.line:
        return f"{f.function} ({f.file})"
    return f.label()


def hottest(prof: Profile, n: int = 3) -> list[tuple[str, int]]:
    """Leaf-most frames by self samples; for Python stacks the leaf-most Python frame (the code
    that runs, not the interpreter's C function under it)."""
    c: Counter[str] = Counter()
    for s in prof.samples:
        py = [f for f in s.frames if f.file and f.file.endswith(".py")]
        f = py[-1] if py else s.frames[-1]
        c[_frame_key(f)] += s.weight
    return c.most_common(n)


def hottest_paths(prof: Profile, n: int = 3, depth: int = 3) -> list[tuple[str, int]]:
    """The caller chains (up to `depth` frames ending at the leaf-most frame) most sampled."""
    c: Counter[str] = Counter()
    for s in prof.samples:
        py = [f for f in s.frames if f.file and f.file.endswith(".py")]
        frames = py or list(s.frames)
        c[" <- ".join(f.function for f in reversed(frames[-depth:]))] += s.weight
    return c.most_common(n)


def inclusive(prof: Profile, n: int = 5) -> list[tuple[str, int]]:
    """Functions by the samples they appear in (each counted once per sample)."""
    c: Counter[str] = Counter()
    for s in prof.samples:
        for k in {f.function for f in s.frames}:
            c[k] += s.weight
    return c.most_common(n)
