"""The eBPF agent: a program of its own that loads probes/diag_probe.c with BCC and writes its records.

It runs as a separate process (`python -m diag.agent`), started by diag.collect.ebpf, so that a
crash in BCC or libbpf cannot take diag down and so that it can run under the interpreter that
has `bcc`. It imports only the standard library, `bcc` and diag's bottom-layer vocabulary.

    header.py        the probe's shared header (probes/diag_events.h) read into constants and layouts
    syscall_table.py what the probe does with each syscall number
    procfs.py        what /proc and tracefs tell about the targets (fds, sockets, the process tree)
    build.py         the probe source and its cflags
    ring.py          BPF ring buffers consumed by whole batches through mmap
    stream.py        the capture stream it writes (format, record files)
    agent.py         the life of one capture: compile, attach, consume, steer, finish
    segments.py      segment mode (diag watch): the stream as a bounded ring of time segments, and
                     the cumulative histograms every second for the watcher's triggers
    percpu.py        per-CPU arrays read a range at a time (one batch lookup per range)
    __main__.py      its command line
"""
