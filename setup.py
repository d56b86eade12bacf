"""Build configuration that pyproject.toml cannot say: probes/ and reports/ ship inside the package.

The project keeps the eBPF sources and the report templates at the top of the repository; a wheel
carries them as `diag/probes/` and `diag/reports/` (each directory a data-only package mapped from
the top-level one), and `diag.resources` finds them in either place. Packages are discovered, so
a new subpackage of diag or a new asset directory is never left out of the wheel. Everything
else is in pyproject.toml.
"""
import os

from setuptools import find_namespace_packages, setup

DATA_DIRS = {"diag.probes": "probes", "diag.reports": "reports"}


def data_packages() -> dict[str, str]:
    """Every directory under the data dirs as a package name (setuptools ships data per package)."""
    out = {}
    for package, top in DATA_DIRS.items():
        for d, dirs, _files in os.walk(top):
            dirs[:] = sorted(x for x in dirs if not x.startswith((".", "__")))
            rel = os.path.relpath(d, top)
            out[package if rel == "." else package + "." + rel.replace(os.sep, ".")] = d
    return out


DATA = data_packages()
setup(
    packages=[*find_namespace_packages(include=["diag", "diag.*"], exclude=["*.__pycache__"]), *DATA],
    package_dir=DATA_DIRS,
    package_data={name: ["*"] for name in DATA},
)
