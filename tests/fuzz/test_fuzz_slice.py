"""The fast slice of the fuzz campaign (`make fuzz` runs the full one): a few hundred hostile
inputs from a fixed seed through `diag replay`, none of which may fail (see campaign.py for what
counts as a failure). The table of outcomes is printed (`pytest -s` shows it)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CAMPAIGN = Path(__file__).resolve().parent / "campaign.py"
INPUTS = 250
SEED = 20261203

pytest.importorskip("hypothesis", reason="hypothesis is a test dependency (make setup installs it)")


@pytest.mark.slow
def test_fuzz_slice_has_no_failures(tmp_path):
    # GIVEN a fixed seed, so this slice replays the same inputs on every run
    # WHEN the campaign replays them (one worker, small archive bombs, a subprocess sample)
    r = subprocess.run([sys.executable, str(CAMPAIGN), "--inputs", str(INPUTS), "--seed", str(SEED), "--jobs", "1",
                        "--bomb-gib", "0", "--subprocess-every", "50", "--save", str(tmp_path / "failures")],
                       capture_output=True, text=True, timeout=900)
    print(r.stdout)
    # THEN every input produced a report or a one-line refusal, with nothing written elsewhere
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert f"{INPUTS} distinct inputs" in r.stdout
    assert "failures by outcome: internal-error 0, traceback 0, bad-refusal 0, timeout 0, memory 0" in r.stdout
