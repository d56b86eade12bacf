"""The ELF reader of diag/pyruntime/elf.py on small binaries compiled here, and on real Pythons.

The small ones are built with gcc in the test's temporary directory (never committed): a shared
library exporting a variable and a `Py_Version`, a non-PIE executable with a static variable only
in .symtab and an undefined reference to the library's function, and their stripped copies. The
load bias is checked against the dynamic loader itself: the library is loaded into this test
process and the address the reader computes must be the one ctypes resolves.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from diag.pyruntime.discover import find_runtime, read_maps
from diag.pyruntime.elf import ET_DYN, ET_EXEC, ElfError, ElfFile, find_symbols

LIB_C = """
int diag_marker = 42;
const unsigned int Py_Version = 0x030B07F0;
int diag_get(void) { return diag_marker; }
"""
EXE_C = """
extern int diag_get(void);
static int only_in_symtab = 7;
int main(void) { return diag_get() + only_in_symtab; }
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    gcc = shutil.which("gcc")
    if not gcc or not shutil.which("strip"):
        pytest.skip("gcc and strip are needed to build the test binaries (apt-get install gcc binutils)")
    d = tmp_path_factory.mktemp("elf")
    (d / "lib.c").write_text(LIB_C)
    (d / "exe.c").write_text(EXE_C)
    lib, exe = d / "libdiagtest.so", d / "exe"
    subprocess.run([gcc, "-shared", "-fPIC", "-O0", "-o", str(lib), str(d / "lib.c")], check=True)
    subprocess.run([gcc, "-no-pie", "-O0", "-o", str(exe), str(d / "exe.c"), str(lib)], check=True)
    out = {"lib": lib, "exe": exe}
    for name in ("lib", "exe"):
        stripped = d / f"{out[name].name}.stripped"
        subprocess.run(["strip", "--strip-all", "-o", str(stripped), str(out[name])], check=True)
        out[name + "_stripped"] = stripped
    return out


def test_exported_symbols_come_from_dynsym_and_survive_strip(built):
    # GIVEN a shared library, full and stripped
    for path in (built["lib"], built["lib_stripped"]):
        # WHEN its exported variable is looked up
        syms = find_symbols(str(path), {"diag_marker", "Py_Version", "absent"})
        # THEN it is found in .dynsym (all strip keeps), and a name that is not there is just absent
        assert syms["diag_marker"].table == ".dynsym"
        assert "absent" not in syms


def test_local_symbols_only_in_symtab_and_gone_when_stripped(built):
    # GIVEN a non-PIE executable with a static variable (only .symtab names it)
    full = find_symbols(str(built["exe"]), {"only_in_symtab"})
    stripped = find_symbols(str(built["exe_stripped"]), {"only_in_symtab"})
    # THEN it is found in the full binary's .symtab, not in the stripped one
    assert full["only_in_symtab"].table == ".symtab"
    assert stripped == {}


def test_an_undefined_import_is_not_taken_for_a_definition(built):
    # GIVEN an executable that calls the library's function (an UNDEF entry in its .dynsym)
    # (a variable would not do: a non-PIE executable that reads a library's variable gets a copy
    # relocation, a real definition in its own .bss that the library then uses too; which is why
    # discover.py searches the executable before libpython)
    syms = find_symbols(str(built["exe"]), {"diag_get"})
    # THEN the reader does not return the import
    assert syms == {}


def test_file_types_and_data_read_from_the_file(built):
    with ElfFile(str(built["exe"])) as exe, ElfFile(str(built["lib"])) as lib:
        assert exe.type == ET_EXEC and lib.type == ET_DYN
        assert exe.load_bias(0x400000, 0) == 0                 # non-PIE: linked at its address
        pv = lib.symbols({"Py_Version"})["Py_Version"]
        # .rodata contents come from the file, as discover.py reads Py_Version
        assert int.from_bytes(lib.read_at_vaddr(pv.value, 4), "little") == 0x030B07F0


def test_load_bias_gives_the_address_the_dynamic_loader_chose(built):
    # GIVEN the library loaded into this process by the dynamic loader
    lib = ctypes.CDLL(str(built["lib"]))
    real = ctypes.addressof(ctypes.c_int.in_dll(lib, "diag_marker"))
    # WHEN the reader computes the address from /proc/self/maps and the symbol table
    first = min((m for m in read_maps(os.getpid()) if m.path == str(built["lib"])), key=lambda m: m.offset)
    with ElfFile(str(built["lib"])) as elf:
        addr = elf.symbols({"diag_marker"})["diag_marker"].value + elf.load_bias(first.start, first.offset)
    # THEN it is the same address
    assert addr == real
    assert ctypes.c_int.from_address(addr).value == 42


def test_not_an_elf_file_is_one_line_naming_it(tmp_path):
    bad = tmp_path / "notelf"
    bad.write_bytes(b"#!/bin/sh\necho hi\n")
    with pytest.raises(ElfError) as e:
        ElfFile(str(bad))
    assert str(bad) in str(e.value) and "not an ELF file" in str(e.value) and "\n" not in str(e.value)


def test_truncated_elf_file_is_an_error_not_a_crash(built, tmp_path):
    cut = tmp_path / "cut.so"
    data = built["lib"].read_bytes()
    cut.write_bytes(data[: len(data) // 3])          # headers survive, section tables do not
    with pytest.raises(ElfError) as e:
        ElfFile(str(cut)).symbols({"diag_marker"})
    assert "truncated" in str(e.value)


def test_32_bit_elf_is_refused_with_the_reason(tmp_path):
    f = tmp_path / "elf32"
    f.write_bytes(b"\x7fELF\x01\x01\x01" + b"\0" * 60)
    with pytest.raises(ElfError, match="64-bit"):
        ElfFile(str(f))


@pytest.mark.parametrize("path,table", [("/usr/bin/python3.11", ".dynsym"),
                                        ("/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0", ".dynsym")])
def test_pyruntime_of_real_pythons_matches_nm(path, table):
    # GIVEN a real interpreter binary (Debian's is stripped: only .dynsym)
    if not os.path.exists(path):
        pytest.skip(f"{path} is not installed")
    nm = shutil.which("nm")
    if not nm:
        pytest.skip("nm (binutils) is needed to cross-check")
    # WHEN the reader looks up _PyRuntime
    sym = find_symbols(path, {"_PyRuntime"})["_PyRuntime"]
    # THEN it is where nm -D says it is
    out = subprocess.run([nm, "-D", "--defined-only", path], capture_output=True, text=True, check=True).stdout
    want = next(int(line.split()[0], 16) for line in out.splitlines() if line.endswith(" _PyRuntime"))
    assert (sym.value, sym.table) == (want, table)


def test_find_runtime_of_this_very_process():
    # GIVEN this test process (a CPython), WHEN its runtime is located from its own maps
    import sys

    rt = find_runtime(os.getpid())
    # THEN it names this interpreter's version and the address of this process's _PyRuntime
    assert rt.version == sys.version_info[:2]
    api = ctypes.pythonapi
    try:
        want = ctypes.addressof(ctypes.c_char.in_dll(api, "_PyRuntime"))
    except ValueError:
        pytest.skip("this interpreter does not export _PyRuntime to ctypes")
    assert rt.address == want


def test_a_mapped_file_is_opened_through_the_targets_own_root_when_map_files_fails(built):
    from dataclasses import replace

    from diag.pyruntime.discover import _open_mapped

    # GIVEN this process's mapping of the library, named by a range map_files does not have
    lib = ctypes.CDLL(str(built["lib"]))  # noqa: F841 (kept loaded while its mapping is used)
    m = min((m for m in read_maps(os.getpid()) if m.path == str(built["lib"])), key=lambda m: m.offset)
    fake = replace(m, start=1, end=2)
    # WHEN it is opened THEN it is read through /proc/PID/root (the target's mount namespace)
    elf, opened = _open_mapped(os.getpid(), fake)
    with elf:
        assert opened == f"/proc/{os.getpid()}/root{built['lib']}"
        assert "diag_marker" in elf.symbols({"diag_marker"})
    # AND a file replaced on disk since it was mapped (another inode) is refused, not misread
    with pytest.raises(ElfError, match="replaced"):
        _open_mapped(os.getpid(), replace(fake, inode=m.inode + 1))
