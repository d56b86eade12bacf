"""What the eBPF integration tests share: the skips, the interpreter that imports bcc, the agent."""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from diag.collect.ebpf import bcc_python
from diag.parse.base import ParseContext
from diag.parse.ebpf import EbpfParser
from diag.resources import package_root
from toolbox import wait_until

PY = bcc_python() if os.geteuid() == 0 else None
EBPF_MARKS = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="eBPF needs root"),
    pytest.mark.skipif(PY is None, reason="no python that imports bcc (apt-get install python3-bpfcc)"),
    pytest.mark.skipif(not os.path.isdir("/sys/kernel/tracing/events/raw_syscalls"),
                       reason="tracefs / syscall tracepoints not available"),
    pytest.mark.skipif(not os.path.exists(f"/lib/modules/{os.uname().release}/build"),
                       reason="no kernel headers for BCC: run `make setup` as root"),
]
# on the root filesystem (/dev/vda here), not a tmpfs, so fsync reaches the block layer
WORKDIR = "/var/tmp"


def start_agent(pid: int, out: Path, *extra: str) -> subprocess.Popen:
    """Start the eBPF agent on `pid`; return once it wrote its header (attached)."""
    env = dict(os.environ, PYTHONPATH=str(package_root()))
    proc = subprocess.Popen([PY, "-m", "diag.agent", "--pid", str(pid), "--out", str(out), *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_until(lambda: proc.poll() is not None or (out.exists() and out.read_text().endswith("\n")),
               "the agent writing its header (attached)", timeout_s=60)
    if proc.poll() is not None:
        pytest.fail(f"agent exited: {proc.stderr.read().decode()}")
    return proc


def stop_agent(agent: subprocess.Popen, out: Path):
    """SIGTERM (the collector's way to stop it), then its stream: the raw JSON lines, the parsed
    records, the parse context and the agent's stderr."""
    agent.send_signal(signal.SIGTERM)
    _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err.decode()
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    ctx = ParseContext(path=str(out))
    with open(out) as f:
        recs = list(EbpfParser().parse(f, ctx))
    return lines, recs, ctx, err.decode()
