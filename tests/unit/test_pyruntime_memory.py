"""Reading a process's memory from outside (diag/pyruntime/memory.py), on this very process and on
a child that exited: both mechanisms (process_vm_readv and the /proc/PID/mem fallback) give the
bytes a ctypes buffer holds, an unmapped address is a ReadError, a gone process TargetGone."""
from __future__ import annotations

import ctypes
import os
import subprocess

import pytest

from diag.pyruntime.memory import ReadError, ReadPlan, RemoteMemory, TargetGone

PAYLOAD = b"diag-pyruntime-memory-test\x00\x01\x02\xff" * 4


@pytest.fixture
def buffer():
    buf = ctypes.create_string_buffer(PAYLOAD, len(PAYLOAD))
    return buf, ctypes.addressof(buf)


@pytest.mark.parametrize("mechanism", ["process_vm_readv", "/proc/PID/mem"])
def test_reads_give_the_bytes_in_memory(buffer, mechanism):
    buf, addr = buffer
    mem = RemoteMemory(os.getpid())
    if mechanism != "process_vm_readv":
        mem._open_mem()                       # what a seccomp-refused process_vm_readv falls back to
    try:
        assert mem.method.endswith("mem") == (mechanism != "process_vm_readv")
        assert mem.read(addr, len(PAYLOAD)) == PAYLOAD
        assert mem.read(addr + 3, 4) == PAYLOAD[3:7]               # the small-read path
        assert mem.readv([(addr, 5), (addr + 10, 6)]) == [PAYLOAD[:5], PAYLOAD[10:16]]
        plan = ReadPlan(mem, [(addr, 8), (addr + 16, 8)])
        buf[0] = b"X"
        assert plan.read() == [b"X" + PAYLOAD[1:8], PAYLOAD[16:24]]    # re-read sees the change
        with pytest.raises(ReadError) as e:
            mem.read(8, 8)                                             # page 0 is never mapped
        assert not isinstance(e.value, TargetGone) and str(os.getpid()) in str(e.value)
    finally:
        mem.close()


def test_a_process_that_exited_is_target_gone():
    p = subprocess.Popen(["true"])
    p.wait()                                   # reaped: the pid is free
    mem = RemoteMemory(p.pid)
    with pytest.raises(TargetGone):
        mem.read(0x400000, 8)
