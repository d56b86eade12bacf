"""Real captures: private files whatever the umask, redacted secrets, and only root attaching to
another user's process (the process sampler could read it: /proc is readable by all)."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from other_user import run_as_nobody

pytestmark = pytest.mark.slow


def test_run_writes_a_private_redacted_capture_whatever_the_umask(tmp_path):
    # GIVEN a command with secrets on its command line, run under the most open umask
    cmd = [sys.executable, "-c", "import time; time.sleep(0.5)", "--password=hunter2", "API_TOKEN=t0k"]
    r = subprocess.run([sys.executable, "-m", "diag", "run", "--collectors", "process", "--out", str(tmp_path / "c.diag"),
                        "--json", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html"), "--quiet", "--", *cmd],
                       capture_output=True, text=True, timeout=120, preexec_fn=lambda: os.umask(0))
    assert r.returncode == 0, r.stderr
    # THEN every directory of the capture is 0700, every file 0600, and so are the reports
    cap = tmp_path / "c.diag"
    for p in [cap, *cap.rglob("*")]:
        assert stat.S_IMODE(os.lstat(p).st_mode) == (0o700 if p.is_dir() else 0o600), p
    for p in ("r.json", "r.html"):
        assert stat.S_IMODE(os.stat(tmp_path / p).st_mode) == 0o600
    # AND no secret reached the manifest or a report, which say who captured and that it redacted
    for p in (cap / "manifest.json", tmp_path / "r.json", tmp_path / "r.html"):
        text = p.read_text()
        assert "hunter2" not in text and "t0k" not in text, p
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["target"]["cmdline"][-2:] == ["--password=<redacted>", "API_TOKEN=<redacted>"]
    assert report["access"]["attached_by"]["uid"] == os.geteuid() and report["access"]["redacted_in_report"]
    assert "0700" in report["access"]["file_modes"]


def test_unprivileged_user_cannot_attach_to_another_users_process(tmp_path):
    # GIVEN a process of root's, and diag run as user nobody
    if os.geteuid() != 0:
        pytest.skip("needs root: a process of another user, and switching to nobody")
    victim = subprocess.Popen(["sleep", "60"])
    try:
        # WHEN nobody attaches with the process sampler (which could read root's /proc entries)
        r = run_as_nobody(["-m", "diag", "attach", str(victim.pid), "--collectors", "process", "--duration", "1",
                           "--out", "/tmp/diag-nobody-must-not-write-this.diag"])
    finally:
        victim.kill()
        victim.wait()
    # THEN it is refused, in one line, with the documented exit code, and nothing is captured
    assert r.returncode == 4, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and "only root attaches to another user's process" in r.stderr
    assert not os.path.exists("/tmp/diag-nobody-must-not-write-this.diag")
