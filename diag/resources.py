"""Where the files that are not Python live: the eBPF probe sources and the report templates.

The project keeps them at the top of the repository (`probes/`, `reports/`), beside the `diag`
package; a built wheel ships them inside the package (`diag/probes/`, `diag/reports/`: the
package-dir mapping in pyproject.toml). This module is the one place that knows both layouts, so
a source checkout, an editable install and an installed wheel all find them the same way.
`DIAG_PROBE_DIR` / `DIAG_REPORTS_DIR` point elsewhere (a probe under development).
"""
from __future__ import annotations

import os
from pathlib import Path

from diag.errors import DiagError

_PACKAGE = Path(__file__).resolve().parent

# name -> (environment override, a file that must be there)
_KINDS = {
    "probes": ("DIAG_PROBE_DIR", "diag_probe.c"),
    "reports": ("DIAG_REPORTS_DIR", "templates/report.html.j2"),
}


def _locate(name: str) -> Path:
    env, marker = _KINDS[name]
    override = os.environ.get(env)
    if override:
        p = Path(override)
        if not (p / marker).is_file():
            raise DiagError(f"{env}={override}: no {marker} there; unset {env} or point it at a copy of "
                            f"diag's {name}/ directory")
        return p
    # wheel: inside the package; checkout or editable install: beside it
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if (candidate / marker).is_file():
            return candidate
    raise DiagError(f"diag's {name}/ directory is missing (looked in {_PACKAGE / name} and "
                    f"{_PACKAGE.parent / name}): reinstall diag (pip install --force-reinstall diag)")


def probe_dir() -> Path:
    """The directory holding diag_probe.c and diag_events.h."""
    return _locate("probes")


def reports_dir() -> Path:
    """The directory holding templates/ and static/ of the HTML report."""
    return _locate("reports")


def package_root() -> Path:
    """The directory to put on PYTHONPATH for another interpreter to `import diag` (the eBPF agent
    under the system python that has BCC): the repository in a checkout, site-packages in a wheel."""
    return _PACKAGE.parent


__all__ = ["probe_dir", "reports_dir", "package_root"]
