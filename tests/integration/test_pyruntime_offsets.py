"""The offset tables of diag/pyruntime/offsets.py, derived again from each interpreter's own headers.

For every CPython found here (Debian's python3, pyenv's 3.8-3.13), tests/data/pyruntime/offsets.c
is compiled with gcc -DPy_BUILD_CORE against that interpreter's headers (include/pythonX.Y and
its internal/ directory) and run: every offsetof() it prints must equal the table's value, and
the table may hold no field the headers do not print. The headers must be those of the
interpreter itself (PY_VERSION_HEX equal to its sys.hexversion), else the test skips saying so.
A 3.13 is also read live: the _Py_DebugOffsets it carries must agree with the table.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from pyruntime_helpers import SPINNER, Interp, read_json_line, require_gcc, supported_params, target

from diag.pyruntime.offsets import DEBUG_OFFSETS_313, DEBUG_OFFSETS_313_SIZE, LAYOUTS, version_text

SOURCE = Path(__file__).resolve().parents[1] / "data" / "pyruntime" / "offsets.c"


def _compiled_offsets(interp: Interp, tmp_path: Path) -> dict[str, int]:
    gcc = require_gcc()
    if not os.path.exists(os.path.join(interp.include, "Python.h")):
        pytest.skip(f"{interp.label}: no headers at {interp.include} (install the -dev package)")
    if not os.path.exists(os.path.join(interp.include, "internal", "pycore_gil.h")):
        pytest.skip(f"{interp.label}: {interp.include}/internal/ is missing: the internal headers are needed")
    exe = tmp_path / "offsets"
    r = subprocess.run([gcc, "-O0", "-w", "-I", interp.include, "-o", str(exe), str(SOURCE)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{interp.label}: offsets.c does not compile against {interp.include}:\n" + r.stderr[-3000:]
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60, check=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


@pytest.mark.parametrize("interp", supported_params())
def test_offset_table_matches_the_interpreters_own_headers(interp: Interp, tmp_path):
    # GIVEN the offsets the interpreter's headers give (compiled and printed by gcc)
    printed = _compiled_offsets(interp, tmp_path)
    major, minor, micro = interp.version()
    real_hex = int(subprocess.run([interp.exe, "-c", "import sys; print(sys.hexversion)"], capture_output=True,
                                  text=True, check=True).stdout)
    if printed["version_hex"] != real_hex:
        pytest.skip(f"{interp.label}: headers at {interp.include} are of {version_text(printed['version_hex'])}, "
                    f"the interpreter is {version_text(real_hex)}")
    # WHEN compared with diag's table for that minor version
    table = LAYOUTS[(major, minor)].as_flat()
    from_headers = {k: v for k, v in printed.items() if k != "version_hex" and not k.startswith("debug.")}
    # THEN every field agrees, and the table has no field the headers lack
    mismatched = {k: (table.get(k), v) for k, v in from_headers.items() if table.get(k) != v}
    assert not mismatched, f"{interp.label}: (table, headers) differ: {mismatched}"
    only_table = set(table) - set(from_headers)
    assert not only_table, f"{interp.label}: fields only in the table: {only_table}"
    if (major, minor) >= (3, 13):
        debug = {k.removeprefix("debug."): v for k, v in printed.items() if k.startswith("debug.")}
        assert debug.pop("size") == DEBUG_OFFSETS_313_SIZE
        assert debug.pop("at_runtime") == 0, "_Py_DebugOffsets is no longer the first field of _PyRuntime"
        assert debug == DEBUG_OFFSETS_313
    print(f"\n{interp.label} {major}.{minor}.{micro}: {len(from_headers)} offsets match the headers")


@pytest.mark.parametrize("interp", [p for p in supported_params() if p.id.startswith("pyenv-3.13")] or
                         [pytest.param(None, marks=pytest.mark.skip(reason="no CPython 3.13 installed here"))])
def test_live_313_debug_offsets_agree_with_the_table(interp: Interp):
    from diag.pyruntime.reader import RuntimeReader

    # GIVEN a running 3.13
    with target(interp.exe, SPINNER) as p:
        read_json_line(p)
        # WHEN diag reads its _Py_DebugOffsets
        reader = RuntimeReader(p.pid)
        try:
            # THEN they are there, name 3.13, and agree with the table (generation counts trusted)
            assert reader.debug is not None, reader.method
            assert "debug offsets" in reader.method
            assert reader.unknown == [], reader.unknown
            assert reader.version_label().startswith("3.13")
        finally:
            reader.close()
