"""What every rule reads: the dataset, indexed once (samples by thread and time, stats)."""
from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import cached_property

from diag.analyze import stats
from diag.model import Dataset, StackSample, SyscallEvent

# Kernel functions that place a blocked call in the filesystem or block layer (the document's
# worked example: ext4_sync_file -> blk_mq_sched_insert_request).
IO_KERNEL_PREFIXES = ("ext4_", "jbd2", "xfs_", "btrfs_", "f2fs_", "blk_", "bio_", "submit_bio", "nvme_",
                      "virtblk", "file_write_and_wait", "filemap_", "do_fsync", "vfs_fsync",
                      "__x64_sys_fsync", "__x64_sys_fdatasync", "iomap_", "fuse_", "io_schedule")


@dataclass
class AnalysisContext:
    data: Dataset
    slow_ns: int | None = None
    _by_tid: dict[int, list[StackSample]] = field(default_factory=dict, init=False)
    _ts_by_tid: dict[int, list[int]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        groups: dict[int, list[StackSample]] = defaultdict(list)
        for s in self.data.samples:
            if s.ts_ns is not None:
                groups[s.tid].append(s)
        for tid, lst in groups.items():
            lst.sort(key=lambda s: s.ts_ns or 0)
            self._by_tid[tid] = lst
            self._ts_by_tid[tid] = [s.ts_ns or 0 for s in lst]

    @cached_property
    def members(self) -> list[dict]:
        """The processes the capture watched (the target's tree), as the manifest lists them."""
        target = (self.data.manifest or {}).get("target") or {}
        return [m for m in target.get("processes") or () if isinstance(m, dict) and "pid" in m]

    @cached_property
    def idx(self):
        from diag.analyze.crossing import ThreadIndex

        return ThreadIndex(self.data)

    @cached_property
    def req(self):
        """Requests and the breakdown of the slow ones (None: no request stream in the inputs)."""
        from diag.analyze.crossing import analyze_requests

        return analyze_requests(self.data, self.idx, self.slow_ns)

    @cached_property
    def polling_tids(self) -> set[int]:
        """Event-loop threads (serving several connections at once), from the requests."""
        from diag.analyze.crossing import event_loop_threads

        return event_loop_threads(self.req.requests) if self.req is not None else set()

    @cached_property
    def timed_syscalls(self) -> list[SyscallEvent]:
        return [e for e in self.data.syscalls if e.dur_ns is not None]

    @cached_property
    def by_syscall(self):
        return stats.per_syscall(self.data.syscalls, self.data.aggregates)

    @cached_property
    def by_family(self):
        return stats.per_family(self.by_syscall, self.data.syscalls, self.data.aggregates)

    @cached_property
    def work_time_ns(self) -> int:
        """Time spent in work syscalls (see stats.is_work), from the same rows as the tables."""
        return sum(st.total_ns for (name, kind), st in self.by_syscall.items() if stats.is_work(name, kind))

    def process_cpu(self) -> tuple[float, float, dict[int, float]] | None:
        """CPU the watched processes used over the capture, from the process sampler: (CPU-s of
        all of them, the seconds sampled, CPU-s per pid); None without two snapshots."""
        by_pid: dict[int, list] = defaultdict(list)
        for s in self.data.snapshots:
            by_pid[s.pid].append(s)
        per: dict[int, float] = {}
        t0 = t1 = None
        for pid, snaps in by_pid.items():
            if len(snaps) < 2:
                continue
            a, b = snaps[0], snaps[-1]
            per[pid] = (b.cpu_user_s + b.cpu_system_s) - (a.cpu_user_s + a.cpu_system_s)
            t0 = a.ts_ns if t0 is None else min(t0, a.ts_ns)
            t1 = b.ts_ns if t1 is None else max(t1, b.ts_ns)
        if not per or t1 <= t0:
            return None
        return sum(per.values()), (t1 - t0) / 1e9, per

    def own_gc_ns(self, sr) -> int:
        """Time a slow request's own thread spent collecting garbage inside the request (the
        runtime sampler's GC pauses whose paying thread is that thread)."""
        r = sr.request
        return sum(e - s for p, s, e in self.data.runtime().gc_pieces(r.start_ns, r.end_ns, r.pid)
                   if p.tid == r.tid)

    @cached_property
    def read_loop_share(self) -> float:
        """See diag.analyze.rules.common.read_loop_share (computed once per analysis)."""
        from diag.analyze.rules.common import read_loop_share

        return read_loop_share(self)

    def samples_in(self, tid: int, t0: int, t1: int, source: str | None = None) -> list[StackSample]:
        """Timed stack samples of thread `tid` with t0 <= ts <= t1 (optionally of one source)."""
        ts = self._ts_by_tid.get(tid)
        if not ts:
            return []
        lo, hi = bisect.bisect_left(ts, t0), bisect.bisect_right(ts, t1)
        lst = self._by_tid[tid][lo:hi]
        return [s for s in lst if source is None or s.source == source]

    def hot_frames(self, samples: list[StackSample], n: int = 3, python_only: bool = False) -> list[tuple[str, int]]:
        """The most frequent leaf-most frames of `samples` (Python frames first when asked)."""
        c: Counter[str] = Counter()
        for s in samples:
            frames = s.frames
            if python_only:
                frames = tuple(f for f in frames if f.file and f.file.endswith(".py"))
            if frames:
                c[frames[-1].label()] += s.weight
        return c.most_common(n)

    @staticmethod
    def io_kernel_path(sample: StackSample) -> list[str]:
        """The filesystem/block-layer functions in a stack, root to leaf, or [] if none."""
        return [f.function for f in sample.frames if f.function.startswith(IO_KERNEL_PREFIXES)]

