"""`diag doctor`: can each collector run here, and if not, why and the exact fix.

Each check returns a `Check` (collector, ok, what was found, the fix). The checks reuse the
collectors' own `check()` where a target is needed (the doctor uses its own process as a stand-in
target, or `--pid`), so doctor and attach can never disagree.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from diag.collect.base import Target, tool_path


@dataclass
class Check:
    collector: str
    ok: bool
    detail: str
    fix: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def check_strace(target: Target) -> Check:
    from diag.collect.strace import StraceCollector

    path = tool_path("strace")
    if not path:
        return Check("strace", False, "strace not found", "sudo apt-get install strace")
    reason = StraceCollector().check(target)
    scope = _read("/proc/sys/kernel/yama/ptrace_scope")
    detail = f"{path}; kernel.yama.ptrace_scope={scope if scope is not None else 'absent (no Yama)'}"
    if reason:
        fix = reason.split(": ", 1)[-1] if ": " in reason else "run diag with sudo"
        return Check("strace", False, f"{detail}; {reason}", fix)
    return Check("strace", True, detail + "; attach stops the target on every traced call (used when eBPF is "
                                          "unavailable, or asked for)")


def check_perf() -> list[Check]:
    from diag.collect.perf import perf_blocker

    reason = perf_blocker()
    paranoid = _read("/proc/sys/kernel/perf_event_paranoid")
    out = []
    if reason:
        fix = reason.split(": ", 1)[-1] if ": " in reason else ""
        out.append(Check("perf", False, f"{reason} (perf_event_paranoid={paranoid})", fix))
        return out
    out.append(Check("perf", True, f"{tool_path('perf')}; perf_event_paranoid={paranoid}; records system-wide "
                                   "(-a) filtered to the target, since `perf record -p` records nothing on "
                                   "some kernels"))
    r = subprocess.run([tool_path("perf") or "perf", "stat", "-x,", "-e", "instructions", "true"],
                       capture_output=True, text=True)
    if "<not supported>" in r.stderr or "<not counted>" in r.stderr or r.returncode != 0:
        out.append(Check("perf counters", False, "hardware counters (cycles, instructions) are not supported "
                                                 "here, as on many VMs: the CPI row of the matrix is not measurable",
                         "run on bare metal or a VM with a virtual PMU (e.g. -cpu host in QEMU/KVM)"))
    else:
        out.append(Check("perf counters", True, "cycles and instructions countable: CPI is measured"))
    return out


def check_pyspy(target: Target | None) -> Check:
    from diag.collect.pyspy import PyspyCollector

    path = tool_path("py-spy")
    if not path:
        return Check("py-spy", False, "py-spy not found", "pip install py-spy (make setup installs it in .venv)")
    if target is None:
        return Check("py-spy", True, f"{path}; runs on Python targets only, non-blocking")
    reason = PyspyCollector().check(target)
    if reason:
        return Check("py-spy", reason.startswith("not applicable"), f"{path}; {reason}",
                     "" if reason.startswith("not applicable") else reason.split(": ", 1)[-1])
    return Check("py-spy", True, f"{path}; target is Python; non-blocking sampling")


def check_pyruntime(target: Target | None) -> Check:
    from diag.collect.pyruntime import PyRuntimeCollector

    if target is None:
        return Check("pyruntime", True, "reads the GIL holder and GC state of CPython 3.8-3.13 targets from "
                                        "their memory (process_vm_readv: root or the target's user)")
    reason = PyRuntimeCollector().check(target)
    if reason:
        na = reason.startswith("not applicable")      # not a failure, as for py-spy
        return Check("pyruntime", na, reason, "" if na else reason.rsplit(": ", 1)[-1])
    return Check("pyruntime", True, "target is CPython; GIL holder and GC state readable")


def check_ebpf(target: Target) -> Check:
    try:
        from diag.collect.ebpf import EbpfCollector
    except ImportError as e:
        return Check("ebpf", False, f"eBPF collector missing from this install ({e})", "reinstall diag")
    reason = EbpfCollector().check(target)
    kdir = Path(f"/lib/modules/{os.uname().release}/build")
    notes = []
    if kdir.is_symlink():
        notes.append(f"kernel headers: {kdir} -> {os.readlink(kdir)} (linked by `make setup`: the distribution "
                     f"has no headers for this kernel; tracepoint programs compile with the nearest ones)")
    if Path("/sys/kernel/btf/vmlinux").exists():
        notes.append("BTF present")
    if reason:
        fix = reason.split(": ", 1)[-1] if ": " in reason else ""
        return Check("ebpf", False, "; ".join([reason, *notes]), fix)
    return Check("ebpf", True, "; ".join(["syscall and sched tracepoints (no kprobes needed)", *notes]))


def check_process(target: Target) -> Check:
    from diag.collect.process import ProcessSampler

    reason = ProcessSampler().check(target)
    return Check("process", reason is None, reason or "psutil and /proc readable", "" if reason is None else reason)


def check_report_assets() -> Check:
    """Where the HTML report's templates were found: a wheel installed without its package data
    would otherwise only fail at the end of a capture."""
    from diag.errors import DiagError
    from diag.resources import reports_dir

    try:
        return Check("html report", True, f"templates and assets in {reports_dir()}")
    except DiagError as e:
        return Check("html report", False, str(e), "reinstall diag")


def run_checks(pid: int | None = None) -> list[Check]:
    if pid is not None:
        from diag.collect.targets import target_from_pid

        target = target_from_pid(pid)
    else:
        target = Target(pid=os.getpid(), comm="diag", is_python=True)
    checks = [check_ebpf(target), check_strace(target)]
    checks += check_perf()
    checks += [check_pyspy(target if pid is not None else None),
               check_pyruntime(target if pid is not None else None), check_process(target), check_report_assets()]
    return checks
