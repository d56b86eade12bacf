"""The probe's source and the cflags that configure it for one capture (BCC's way: filters and
sizes as -D flags, not text substitution)."""
from __future__ import annotations

import argparse
from pathlib import Path

from diag.agent import header as hdr
from diag.agent.procfs import pid_max
from diag.resources import probe_dir

PROBE = "diag_probe.c"


def probe_path(args: argparse.Namespace) -> Path:
    return Path(args.probe) if args.probe else probe_dir() / PROBE


def cflags(args: argparse.Namespace, h: hdr.Header) -> list[str]:
    path = probe_path(args)
    incdir = path.parent if (path.parent / hdr.HEADER).exists() else probe_dir()
    flags = [f"-I{incdir}", f"-DSLOW_NS={int(args.slow_ns)}ULL", f"-DWAKE_MIN_NS={int(args.wake_min_ns)}ULL",
             f"-DRUNQ_MIN_NS={int(args.runq_min_ns)}ULL", f"-DSTACK_ENTRIES={int(args.stack_entries)}",
             f"-DPID_WORDS={(pid_max() + 63) // 64}",
             f"-DRINGBUF_PAGES={int(args.ringbuf_pages)}", f"-DSCHED_PAGES={int(args.sched_pages)}",
             f"-DREQ_PAGES={int(args.request_pages)}", "-Wno-macro-redefined"]
    for name, layout in h.structs.items():
        flags.append(f"-D{name.upper()}_SIZE={layout.size}")
    if args.follow or len(args.pid) > 1:
        flags.append("-DTARGET_SET")
        if args.follow:
            flags.append("-DFOLLOW")
    elif args.pid:
        flags.append(f"-DTARGET_TGID={args.pid[0]}")
    if not args.no_requests:
        flags.append("-DREQUESTS")
        if not args.no_accept_queue:
            flags.append("-DACCEPT_QUEUE")
    if args.floor:
        flags.append("-DFLOOR")
    return flags


def source(args: argparse.Namespace) -> str:
    return probe_path(args).read_text()


def dump(args: argparse.Namespace, h: hdr.Header) -> str:
    """The probe as it would be compiled: its cflags as #defines, then the source (BCC tools'
    --ebpf flag)."""
    fl = cflags(args, h)
    defines = []
    for c in fl:
        if c.startswith("-D"):
            k, _, v = c[2:].partition("=")
            defines.append(f"#define {k} {v}".rstrip())
    return f"// cflags: {' '.join(fl)}\n" + "\n".join(defines) + "\n" + source(args)

