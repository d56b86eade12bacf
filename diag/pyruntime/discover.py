"""Finding a process's CPython runtime: the file that defines `_PyRuntime`, its address, the version.

From /proc/PID/maps: the executable and any libpython*.so are searched for a defined `_PyRuntime`
in .dynsym (exported: present even in a stripped binary such as Debian's /usr/bin/python3.11)
and then .symtab; its address is the symbol's value plus the file's load bias, computed from the
mapping. Files are opened through /proc/PID/map_files/ (the very inode mapped, even if it was
deleted or replaced by an upgrade since) and else through /proc/PID/root/ (the target's own mount
namespace: a process in a container is read with its own files, never the host's).

The version comes from the `Py_Version` symbol (3.11+, the PY_VERSION_HEX the library was built
as), else from the file name (libpython3.9.so.1.0, python3.10): minor version only.
"""
from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass

from diag.pyruntime.elf import ElfError, ElfFile

_LIBPYTHON = re.compile(r"^libpython(\d)\.(\d+)")
_PYEXE = re.compile(r"^python(\d)\.(\d+)")


class NotPython(Exception):
    """No CPython runtime in this process (the message says what was searched). `named` is the
    (major, minor) of a pythonX.Y / libpythonX.Y file that is mapped all the same (a Python too
    old to have `_PyRuntime`, 3.6 and before), else None."""

    def __init__(self, message: str, named: tuple[int, int] | None = None, file: str = "") -> None:
        super().__init__(message)
        self.named = named
        self.file = file


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    offset: int
    inode: int
    path: str


@dataclass(frozen=True)
class Runtime:
    """Where one process's `_PyRuntime` is, and what CPython it is."""

    pid: int
    binary: str                  # the file as the target names it (from its maps)
    opened: str                  # how diag opened it (/proc/PID/map_files/..., /proc/PID/root/...)
    address: int                 # of _PyRuntime in the target
    table: str                   # ".dynsym" or ".symtab"
    version: tuple[int, int]     # (major, minor)
    version_hex: int | None      # PY_VERSION_HEX when known (Py_Version symbol)
    version_source: str          # "Py_Version symbol", "file name"
    machine: int                 # ELF e_machine (62: x86-64)

    def describe(self) -> str:
        return f"_PyRuntime symbol from {os.path.basename(self.binary)} ({self.table})"


def read_maps(pid: int) -> list[Mapping]:
    """File-backed mappings of `pid` (raises OSError when /proc/PID/maps cannot be read)."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) < 6 or not parts[5].startswith("/"):
                continue
            lo, hi = parts[0].split("-")
            out.append(Mapping(int(lo, 16), int(hi, 16), int(parts[2], 16), int(parts[4]), parts[5].rstrip("\n")))
    return out


def _candidates(pid: int, maps: list[Mapping]) -> list[Mapping]:
    """The lowest-offset mapping of each file that may hold the runtime: the executable, then
    libpython*, then any other file with "python" in its name (embedders name theirs freely)."""
    first: dict[str, Mapping] = {}
    for m in maps:
        if m.path not in first or m.offset < first[m.path].offset:
            first[m.path] = m
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = ""
    ordered = [m for p, m in first.items() if p == exe]
    ordered += [m for p, m in first.items() if _LIBPYTHON.match(os.path.basename(p)) and p != exe]
    ordered += [m for p, m in first.items() if "python" in os.path.basename(p).lower() and m not in ordered]
    return ordered


def _open_mapped(pid: int, m: Mapping) -> tuple[ElfFile, str]:
    """Open the mapped file itself: map_files (the mapped inode), else the path in the target's
    root, checked against the mapping's inode (a file replaced on disk is a different file)."""
    errors = []
    mf = f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}"
    try:
        return ElfFile(mf), mf
    except ElfError as e:
        errors.append(str(e))
    path = m.path.removesuffix(" (deleted)")
    rooted = f"/proc/{pid}/root{path}"
    try:
        if os.stat(rooted).st_ino != m.inode:
            raise ElfError(f"{m.path}: the file on disk was replaced since pid {pid} mapped it")
        return ElfFile(rooted), rooted
    except OSError as e:
        errors.append(f"{rooted}: {e.strerror}")
    except ElfError as e:
        errors.append(str(e))
    raise ElfError("; ".join(errors))


def _version_from_name(path: str) -> tuple[int, int] | None:
    base = os.path.basename(path)
    m = _LIBPYTHON.match(base) or _PYEXE.match(base)
    return (int(m.group(1)), int(m.group(2))) if m else None


def find_runtime(pid: int) -> Runtime:
    """Locate `_PyRuntime` in `pid`. NotPython when no mapped file defines it; OSError when the
    process's maps cannot be read; ElfError when the file that should hold it cannot be read."""
    maps = read_maps(pid)
    searched, problems = [], []
    named: tuple[tuple[int, int], str] | None = None
    for m in _candidates(pid, maps):
        searched.append(os.path.basename(m.path))
        if named is None and _version_from_name(m.path):
            named = (_version_from_name(m.path), os.path.basename(m.path))
        try:
            elf, opened = _open_mapped(pid, m)
        except ElfError as e:
            problems.append(str(e))
            continue
        with elf:
            syms = elf.symbols({"_PyRuntime", "Py_Version"})
            rt = syms.get("_PyRuntime")
            if rt is None:
                continue
            bias = elf.load_bias(m.start, m.offset)
            version_hex, source = None, "file name"
            pv = syms.get("Py_Version")
            if pv is not None:
                raw = elf.read_at_vaddr(pv.value, 4)
                if raw is not None:
                    version_hex, source = struct.unpack("<I", raw)[0], "Py_Version symbol"
            if version_hex is not None:
                version = ((version_hex >> 24) & 0xFF, (version_hex >> 16) & 0xFF)
            else:
                named = _version_from_name(m.path)
                if named is None:
                    raise ElfError(f"{m.path}: defines _PyRuntime but its Python version cannot be told "
                                   "(no Py_Version symbol, and the file name is not libpythonX.Y or pythonX.Y)")
                version = named
            return Runtime(pid, m.path, opened, rt.value + bias, rt.table, version, version_hex, source, elf.machine)
    what = ", ".join(searched) or "no file-backed mapping"
    if problems:
        raise ElfError(f"pid {pid}: could not read {'; '.join(problems)}")
    raise NotPython(f"pid {pid}: no mapped file defines _PyRuntime (searched: {what})",
                    *(named or (None, "")))
