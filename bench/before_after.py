"""Before / after: `diag replay` of the same inputs by an older commit's `diag/` and by the work
tree's, alternated run by run, so both see the same machine load. Prints CPU seconds (user+sys of
the child, from wait4), wall seconds and peak RSS per run.

    .venv/bin/python -m bench.before_after REV FILE_OR_CAPTURE... [--rounds 2]

The older `diag/` is exported with `git archive REV diag` into a temporary directory and put first
on PYTHONPATH; both use this venv's interpreter and packages.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(code_dir: str, path: str, out: str) -> dict:
    env = dict(os.environ, PYTHONPATH=code_dir)
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "diag", "replay", path, "--json", out, "-q"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tempfile.gettempdir())
    _, status, ru = os.wait4(p.pid, 0)
    return {"cpu_s": round(ru.ru_utime + ru.ru_stime, 2), "wall_s": round(time.monotonic() - t0, 2),
            "rss_mb": round(ru.ru_maxrss / 1024), "rc": os.waitstatus_to_exitcode(status)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev")
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as old:
        archive = subprocess.run(["git", "archive", a.rev, "diag"], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
        out = os.path.join(old, "report.json")
        for rnd in range(a.rounds):
            for path in a.inputs:
                for name, code in (("before", old), ("after", str(REPO))):
                    r = run(code, os.path.abspath(path), out)
                    print(f"round {rnd} {name:6s} {path}: {r}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
