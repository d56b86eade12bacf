"""Running diag as another user (nobody) wherever the checkout lives.

A clone in a `mktemp -d` directory or a 0700 home is unreadable to nobody, and so is the venv
inside it: `python -m diag` as nobody then fails with "No module named diag". So what nobody runs
is staged first: diag (with probes/ and reports/, in the checkout's layout) and the files of the
installed distributions it depends on, copied into a world-readable temporary directory, run by
the base interpreter (the venv's python is a link inside the checkout).
"""
from __future__ import annotations

import atexit
import importlib.metadata as md
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from diag.resources import package_root, probe_dir, reports_dir

_staged: dict[str, Path] = {}
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


def _world_traversable(path: Path) -> str | None:
    """None when every directory from / down to `path` lets others in; else the one that does not."""
    for d in [path, *path.parents]:
        if not os.stat(d).st_mode & stat.S_IXOTH:
            return str(d)
    return None


def _dependencies(name: str, seen: set[str]) -> None:
    """Installed distributions `name` needs (extras and unmet markers left out), recursively."""
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in seen:
        return
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        return
    seen.add(key)
    for req in dist.requires or ():
        if "extra ==" in req:
            continue
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        if m:
            _dependencies(m.group(1), seen)


def _copy_distribution(name: str, dest: Path) -> None:
    dist = md.distribution(name)
    for f in dist.files or ():
        parts = Path(str(f)).parts
        if not parts or parts[0] == ".." or parts[0].endswith((".dist-info", ".pth")) or "__pycache__" in parts:
            continue
        src = Path(f.locate())
        if src.is_file():
            out = dest / Path(*parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out)


def staged_diag() -> Path:
    """A world-readable directory holding diag and its dependencies (made once per session), or
    the test is skipped saying why nobody could not read it."""
    if "root" in _staged:
        return _staged["root"]
    base = Path(tempfile.gettempdir()).resolve()
    blocked = _world_traversable(base)
    if blocked:
        pytest.skip(f"no world-readable place to stage diag for user nobody ({blocked} is not searchable "
                    f"by others; set TMPDIR to one that is)")
    root = Path(tempfile.mkdtemp(prefix="diag-staged-", dir=base))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    shutil.copytree(package_root() / "diag", root / "diag", ignore=_IGNORE)
    shutil.copytree(probe_dir(), root / "probes", ignore=_IGNORE)
    shutil.copytree(reports_dir(), root / "reports", ignore=_IGNORE)
    deps: set[str] = set()
    _dependencies("diag", deps)
    for name in sorted(deps - {"diag"}):
        _copy_distribution(name, root)
    for d, dirs, files in os.walk(root):
        os.chmod(d, 0o755)
        for f in files:
            os.chmod(os.path.join(d, f), 0o644)
    _staged["root"] = root
    return root


def run_as_nobody(args: list[str], **kw) -> subprocess.CompletedProcess:
    """`python ARGS...` as user nobody (uid/gid 65534, no groups), importing the staged diag."""
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("setpriv is not installed (util-linux)")
    if os.geteuid() != 0:
        pytest.skip("switching to user nobody needs root")
    root = staged_diag()
    python = os.path.realpath(sys.executable)       # the base interpreter: the venv lives in the checkout
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp", "PYTHONPATH": str(root),
           "LC_ALL": "C.UTF-8", **kw.pop("env", {})}
    return subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", python, *args],
                          cwd=kw.pop("cwd", "/"), env=env, capture_output=True, text=True, **kw)
