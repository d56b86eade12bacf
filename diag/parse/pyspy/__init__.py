"""py-spy output (`py-spy record -f speedscope | chrometrace | raw`) -> StackSample records.

What py-spy writes (verified on py-spy 0.4.3, Linux, and its source, src/{speedscope,chrometrace,
flamegraph,main,stack_trace}.rs):

Thread ids. py-spy knows two ids per thread: `thread_id`, the pthread id (what Python's
`threading.get_ident()` returns, e.g. 140279111079616) and `os_thread_id`, the kernel tid (what
`threading.get_native_id()` / strace / perf show). `StackTrace.format_threadid()` prints the OS
tid in decimal when py-spy could resolve it (the normal case on Linux), else the pthread id as
`0x7F95F4A40640` (Rust `{:#X}`).
- speedscope: one profile per (pid, thread), named `Thread 5152 "busy-worker"` (or
  `Process 5110 Thread 5152 "..."` with --subprocesses): format_threadid(), so the **OS tid**.
  The name is the one seen at the thread's first sample: it can be empty (`Thread 5218 ""`)
  when the first sample came before `threading` named the thread.
- raw (folded): no thread id at all unless `--threads`; then every stack starts with a pseudo
  frame `thread (5152): busy-worker` (`thread (5567)` when the name is unknown): the **OS tid**.
  With --subprocesses, `process 5110:"python3 prog.py"` pseudo frames come first (root-most is
  the top parent).
- chrometrace: the event `tid` is always the **pthread id** (`trace.thread_id`); `pid` is the OS
  pid. With `--threads`, the same `thread (OSTID): name` pseudo frame is the root frame of every
  stack, which gives the OS tid (used here when present). Otherwise `ctx.tid_map` (pthread id ->
  OS tid, from `py-spy dump --json`, see `pthread_to_tid_map_from_dump`) is applied, and the
  raw pthread id is kept (with one warning) when it has no entry.
  The `py-spy dump` text output prints the OS tid only (`Thread 5152 (active+gil): "name"`);
  `py-spy dump --json` prints both (`thread_id`, `os_thread_id`).

Timestamps. speedscope and raw carry none (speedscope `weights` are 1/rate seconds per sample,
whatever the real spacing was). chrometrace `ts` is integer microseconds since py-spy created its
Chrometrace recorder (`Instant::now()`, i.e. CLOCK_MONOTONIC on Linux), which happens in
`record_samples` *after* py-spy spawned the target (when it launches it) and *before* it attached
(Sampler::new, which waits for the interpreter). Each trace is stamped when py-spy's main thread
*processes* it (`Chrometrace::increment`), not when the sampling thread read it: the stamp lags
the sample by the channel hand-off, and the threads of one sample get stamps a few µs apart.

Chrometrace events. For each thread and sample py-spy compares the stack with that thread's
previous one and emits, at the sample's stamp, `E` for the frames that ended (leaf first) then
`B` for the new frames (root first). A sample whose stack did not change emits **nothing**, so
the file holds stack *changes*, not samples. Threads not sampled (idle threads without
`--idle`, non-GIL holders with `--gil`) emit nothing either: their last stack stays open across
the idle time. At the end py-spy closes every open frame with `E` events stamped at write time.
The parser replays this: after all events of one (thread, ts) are applied, the stack at that
time is one StackSample; a state without any Python frame (the final all-closing one, or a
thread with no Python frames, e.g. finalizing) is not a sample. So a
chrometrace StackSample means "from ts on, until the thread's next sample, py-spy saw this stack"
(weight 1, dur_ns None). `X` (complete) events, which py-spy does not write, are read as B+E.

Samples that caught no frame at all (interpreter starting or finalizing; py-spy writes them as
` 1` in raw, `thread (N): name 1` with --threads, or an empty stack) are skipped in all formats.

Idle. No format marks idle vs active stacks (`--idle` just adds idle threads' stacks), nor GIL
ownership: on_cpu is None everywhere.

Frames: Python frames become Frame(function, file, line) (line None when recorded with
--nolineno). With `--native`, native frames carry the shared object as their file and line 0
(`deflate (libz.so.1.2.13)`, `0x7f6d7143c24a (libc.so.6)`): they become Frame(function,
module=that file); native frames with debug info (`zlib_compress_impl (zlibmodule.c:374)`) keep
file and line.
"""
from __future__ import annotations

from diag.parse.pyspy.chrometrace import ChrometraceParser
from diag.parse.pyspy.common import UNKNOWN_TID, pthread_to_tid_map_from_dump
from diag.parse.pyspy.raw import PyspyRawParser
from diag.parse.pyspy.speedscope import SpeedscopeParser

__all__ = ["ChrometraceParser", "PyspyRawParser", "SpeedscopeParser", "UNKNOWN_TID", "pthread_to_tid_map_from_dump"]
