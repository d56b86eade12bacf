"""A small ELF reader: the symbols of a binary (.dynsym and .symtab) and its load segments.

Enough to find `_PyRuntime` and `Py_Version` in a python executable or libpython without a new
dependency: pyelftools would do it, but it parses far more than two symbol tables need. Only
little-endian ELF64 (x86-64, aarch64) is read; anything else is refused with a one-line error.
Section contents are read lazily with pread, so a 25 MB libpython with a full .symtab costs only
its symbol and string tables.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

ET_EXEC, ET_DYN = 2, 3
SHT_SYMTAB, SHT_DYNSYM = 2, 11
SHN_UNDEF = 0
PT_LOAD = 1

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")     # Elf64_Ehdr
_SHDR = struct.Struct("<IIQQQQIIQQ")           # Elf64_Shdr
_PHDR = struct.Struct("<IIQQQQQQ")             # Elf64_Phdr
_SYM = struct.Struct("<IBBHQQ")                # Elf64_Sym


class ElfError(ValueError):
    """The file is not an ELF file this reader understands (message names the file)."""


@dataclass(frozen=True, slots=True)
class Symbol:
    name: str
    value: int          # st_value: a virtual address before the load bias
    size: int
    table: str          # ".dynsym" or ".symtab": which table it was found in


@dataclass(frozen=True, slots=True)
class Segment:
    vaddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int


@dataclass(frozen=True, slots=True)
class _Section:
    name_off: int
    type: int
    offset: int
    size: int
    link: int
    entsize: int


class ElfFile:
    """One ELF64 little-endian file opened for symbol lookups."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise ElfError(f"{path}: cannot open ({e.strerror})") from None
        try:
            self._read_headers()
        except BaseException:
            os.close(self._fd)
            raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "ElfFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _pread(self, n: int, off: int) -> bytes:
        data = os.pread(self._fd, n, off)
        if len(data) != n:
            raise ElfError(f"{self.path}: truncated ELF file (wanted {n} bytes at offset {off})")
        return data

    def _read_headers(self) -> None:
        head = os.pread(self._fd, _EHDR.size, 0)
        if len(head) < 16 or head[:4] != b"\x7fELF":
            raise ElfError(f"{self.path}: not an ELF file")
        if head[4] != 2 or head[5] != 1:
            raise ElfError(f"{self.path}: only little-endian 64-bit ELF is supported "
                           f"(class {head[4]}, data {head[5]})")
        if len(head) < _EHDR.size:
            raise ElfError(f"{self.path}: truncated ELF header")
        (_, self.type, self.machine, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum,
         shstrndx) = _EHDR.unpack(head)
        self.segments: list[Segment] = []
        if phoff and phnum:
            if phentsize != _PHDR.size:
                raise ElfError(f"{self.path}: unexpected program header size {phentsize}")
            raw = self._pread(phentsize * phnum, phoff)
            for ptype, flags, off, vaddr, _, filesz, memsz, _ in _PHDR.iter_unpack(raw):
                if ptype == PT_LOAD:
                    self.segments.append(Segment(vaddr, off, filesz, memsz, flags))
        self.sections: list[_Section] = []
        if shoff and shnum:
            if shentsize != _SHDR.size:
                raise ElfError(f"{self.path}: unexpected section header size {shentsize}")
            raw = self._pread(shentsize * shnum, shoff)
            for name, stype, _, _, off, size, link, _, _, entsize in _SHDR.iter_unpack(raw):
                self.sections.append(_Section(name, stype, off, size, link, entsize))
        self._shstrndx = shstrndx

    def symbols(self, wanted: set[str] | frozenset[str]) -> dict[str, Symbol]:
        """The defined symbols among `wanted`, from .dynsym first, then .symtab (a stripped
        binary keeps only .dynsym: the exported symbols). Undefined entries (a program's import
        of a symbol that libpython defines) are skipped."""
        found: dict[str, Symbol] = {}
        targets = {w.encode() for w in wanted}
        for stype, label in ((SHT_DYNSYM, ".dynsym"), (SHT_SYMTAB, ".symtab")):
            for sec in self.sections:
                if sec.type != stype or sec.link >= len(self.sections) or not sec.size:
                    continue
                strsec = self.sections[sec.link]
                strtab = self._pread(strsec.size, strsec.offset)
                offsets = _name_offsets(strtab, targets)
                if not offsets:
                    continue
                raw = self._pread(sec.size - sec.size % _SYM.size, sec.offset)
                for st_name, _info, _other, shndx, value, size in _SYM.iter_unpack(raw):
                    name = offsets.get(st_name)
                    if name is None or shndx == SHN_UNDEF or name in found:
                        continue
                    found[name] = Symbol(name, value, size, label)
            if len(found) == len(targets):
                break
        return found

    def load_bias(self, map_start: int, map_offset: int) -> int:
        """What to add to a symbol's value to get its address in a process, given one mapping
        of this file (its start address and file offset, from /proc/PID/maps)."""
        if self.type == ET_EXEC:
            return 0
        page = 0xFFF
        for seg in self.segments:
            lo = seg.offset & ~page
            if lo <= map_offset < seg.offset + seg.filesz:
                return map_start - ((seg.vaddr & ~page) + (map_offset - lo))
        raise ElfError(f"{self.path}: no load segment covers file offset {map_offset:#x}")

    def read_at_vaddr(self, vaddr: int, n: int) -> bytes | None:
        """`n` bytes of initialized data at virtual address `vaddr`, from the file (None when the
        address is not backed by file contents, e.g. .bss)."""
        for seg in self.segments:
            if seg.vaddr <= vaddr and vaddr + n <= seg.vaddr + seg.filesz:
                return self._pread(n, seg.offset + (vaddr - seg.vaddr))
        return None


def _name_offsets(strtab: bytes, targets: set[bytes]) -> dict[int, str]:
    """Every string-table offset at which a wanted name followed by NUL begins, also inside a longer
    string: linkers share tails, so a symbol "_PyRuntime" may point into "Xx_PyRuntime"."""
    out: dict[int, str] = {}
    for t in targets:
        needle = t + b"\0"
        start = 0
        while True:
            i = strtab.find(needle, start)
            if i < 0:
                break
            out[i] = t.decode()
            start = i + 1
    return out


def find_symbols(path: str, wanted: set[str] | frozenset[str]) -> dict[str, Symbol]:
    """One-shot lookup: the defined symbols among `wanted` in the ELF file at `path`."""
    with ElfFile(path) as elf:
        return elf.symbols(wanted)
