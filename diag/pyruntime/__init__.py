"""Reading a CPython process's runtime state from outside: the GIL's holder and the cyclic GC.

Method. The target is never stopped and nothing is injected: diag finds the file that defines
`_PyRuntime` in the target's /proc/PID/maps (the executable, or libpython*.so), reads its ELF
symbol tables itself (`elf.py`; .dynsym is enough, so a stripped python such as Debian's works),
adds the load bias, and then reads the target's memory with process_vm_readv (`memory.py`):
the GIL struct (`locked`, `last_holder`, `switch_number`) and the GC struct (`collecting`, the
generation counts and per-generation collection stats), at offsets known per minor version
(`offsets.py`, verified against each interpreter's own headers by the tests) or, on 3.13, given
by the interpreter itself (`_Py_DebugOffsets`). The holder's OS thread id is its PyThreadState's
`native_thread_id` (3.11+) or, before, the `tid` of its glibc/musl `struct pthread`. Samples
become interval records (`intervals.py`); the collector (diag/collect/pyruntime.py) writes them.

Supported: CPython 3.8 to 3.13, release builds, on Linux; 3.8-3.12 on x86-64 only (the tables
were checked there), 3.13 on any little-endian 64-bit machine. Refused with the reason: other
versions (3.7 and older lack what is read; 3.14 changed `_Py_DebugOffsets`), free-threaded
builds, interpreters whose version cannot be told (a static embedding of <= 3.10 whose file is
not named pythonX.Y). Only the main interpreter is watched (3.12+ sub-interpreters with their
own GIL are not). Reading needs what ptrace attach needs: root, or the target's user when
kernel.yama.ptrace_scope is 0 (or diag is the target's ancestor at scope 1).

Limits of sampling (200 Hz by default: one read every 5 ms).
- Under contention the GIL changes hands about every 5 ms (sys.getswitchinterval()), and far
  more often around blocking calls; a sample sees who holds it at that instant. Shares of
  samples estimate shares of time; hand-offs between two samples are not seen one by one, but
  the interpreter's own `switch_number` counts them (each GIL span's `switches`).
- A collection is seen only if a sample lands inside it: one longer than two periods (10 ms) is
  seen unless diag itself is starved of CPU, one shorter than a period (most gen-0 collections
  take microseconds) mostly is not.
  The generation stats count every collection, seen or not (the end line's `gc_collections`).
- A read is not atomic: a value can be torn while the interpreter writes it (in practice the
  holder for an instant after a hand-off); reads that fail are counted, never fatal.
"""
