"""Reading another process's memory without stopping it: process_vm_readv, else /proc/PID/mem.

Neither stops the target or attaches to it (no ptrace): the kernel copies the bytes while the
target runs, so a read can see a structure half-updated (a "torn" read). Callers treat every
value as a sample, never as a consistent snapshot. Both need the same right as ptrace attach
(PTRACE_MODE_ATTACH_REALCREDS): root (CAP_SYS_PTRACE), or the target's user when Yama's
ptrace_scope is 0. /proc/PID/mem is the fallback when the syscall itself is refused (ENOSYS, or
EPERM from a container's seccomp profile) while the file is allowed.
"""
from __future__ import annotations

import ctypes
import errno
import os


class ReadError(OSError):
    """A read failed: the address is not mapped (EFAULT/EIO) or only part of it was copied."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class TargetGone(ReadError):
    """The target process no longer exists (ESRCH)."""


class NoAccess(ReadError):
    """The kernel refused the read (EPERM/EACCES): privilege, Yama ptrace_scope, or seccomp."""


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_vm_readv = getattr(_libc, "process_vm_readv", None)
if _vm_readv is not None:
    _vm_readv.argtypes = [ctypes.c_int, ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.POINTER(_IoVec),
                          ctypes.c_ulong, ctypes.c_ulong]
    _vm_readv.restype = ctypes.c_ssize_t


def _error(pid: int, err: int, what: str) -> ReadError:
    msg = f"pid {pid}: {what}: {os.strerror(err)}"
    if err == errno.ESRCH:
        return TargetGone(err, msg)
    if err in (errno.EPERM, errno.EACCES):
        return NoAccess(err, msg)
    return ReadError(err, msg)


class RemoteMemory:
    """Reads of one process's memory. `method` says which mechanism is in use."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._mem_fd: int | None = None
        self._small: dict[int, ReadPlan] = {}     # reusable plans for pointer-sized reads
        self.method = "process_vm_readv" if _vm_readv is not None else f"/proc/{pid}/mem"
        if _vm_readv is None:
            self._open_mem()

    def _open_mem(self) -> None:
        try:
            self._mem_fd = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise TargetGone(errno.ESRCH, f"pid {self.pid}: no such process") from None
        except OSError as e:
            raise _error(self.pid, e.errno or errno.EIO, f"open /proc/{self.pid}/mem") from None
        self.method = f"/proc/{self.pid}/mem"

    def close(self) -> None:
        if self._mem_fd is not None:
            os.close(self._mem_fd)
            self._mem_fd = None

    def read(self, addr: int, size: int) -> bytes:
        """`size` bytes at `addr`, or ReadError (never fewer bytes)."""
        if size <= 8 and self._mem_fd is None:
            plan = self._small.get(size)
            if plan is None:
                plan = self._small[size] = ReadPlan(self, [(0, size)])
            return plan.read_at(addr)
        return self.readv([(addr, size)])[0]

    def readv(self, spans: list[tuple[int, int]]) -> list[bytes]:
        """Several (addr, size) spans in one system call (process_vm_readv), each complete."""
        if self._mem_fd is not None:
            return [self._pread(a, n) for a, n in spans]
        plan = ReadPlan(self, spans)
        return [bytes(b) for b in plan.read()]

    def _pread(self, addr: int, size: int) -> bytes:
        assert self._mem_fd is not None
        try:
            data = os.pread(self._mem_fd, size, addr)
        except OSError as e:
            if e.errno == errno.EIO and not os.path.exists(f"/proc/{self.pid}"):
                raise TargetGone(errno.ESRCH, f"pid {self.pid}: no such process") from None
            raise _error(self.pid, e.errno or errno.EIO, f"read {size} bytes at {addr:#x}") from None
        if len(data) != size:
            if not data and not os.path.exists(f"/proc/{self.pid}"):
                raise TargetGone(errno.ESRCH, f"pid {self.pid}: no such process")
            raise ReadError(errno.EFAULT, f"pid {self.pid}: partial read at {addr:#x} ({len(data)} of {size})")
        return data

    def _fallback(self, err: int) -> bool:
        """process_vm_readv refused as a syscall: switch to /proc/PID/mem if that is allowed."""
        if self._mem_fd is not None or err not in (errno.ENOSYS, errno.EPERM):
            return False
        try:
            self._open_mem()
        except ReadError:
            return False
        return True


class ReadPlan:
    """A fixed set of remote spans read again and again into preallocated buffers: the sampler's
    per-sample read is one system call and no allocation besides the results."""

    def __init__(self, mem: RemoteMemory, spans: list[tuple[int, int]]) -> None:
        self.mem = mem
        self.spans = list(spans)
        n = len(self.spans)
        self._bufs = [ctypes.create_string_buffer(size) for _, size in self.spans]
        self._local = (_IoVec * n)(*[_IoVec(ctypes.cast(b, ctypes.c_void_p), size)
                                     for b, (_, size) in zip(self._bufs, self.spans)])
        self._remote = (_IoVec * n)(*[_IoVec(addr, size) for addr, size in self.spans])
        self._total = sum(size for _, size in self.spans)

    def read_at(self, addr: int) -> bytes:
        """Read this plan's first span from another address (one-span plans: a moving pointer)."""
        self._remote[0].iov_base = addr
        self.spans[0] = (addr, self.spans[0][1])
        return self.read()[0]

    def read(self) -> list[bytes]:
        mem = self.mem
        if mem._mem_fd is not None or _vm_readv is None:
            return [mem._pread(a, n) for a, n in self.spans]
        got = _vm_readv(mem.pid, self._local, len(self.spans), self._remote, len(self.spans), 0)
        if got < 0:
            err = ctypes.get_errno()
            if mem._fallback(err):
                return [mem._pread(a, n) for a, n in self.spans]
            raise _error(mem.pid, err, f"process_vm_readv of {self._total} bytes")
        if got != self._total:
            raise ReadError(errno.EFAULT, f"pid {mem.pid}: partial read ({got} of {self._total} bytes)")
        return [b.raw for b in self._bufs]
