"""A capture is private to its owner, its secrets redacted, and its report says who captured."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from diag import fsutil
from diag.collect import targets
from diag.analyze.report import build_report
from diag.capture.bundle import CaptureWriter, pack
from diag.collect.base import Target
from diag.errors import EXIT_NO_PRIVILEGE, DiagError
from diag.load import load_inputs
from diag.render import html, terminal

SECRET_CMD = ["python3", "server.py", "--password=hunter2", "DB_TOKEN=t0ken"]


@pytest.fixture
def open_umask():
    old = os.umask(0)             # the most permissive umask: what diag makes must not depend on it
    yield
    os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_capture_is_owner_only_whatever_the_umask(tmp_path, open_umask):
    w = CaptureWriter(tmp_path / "c.diag", {"pid": 1, "cmdline": SECRET_CMD}, "attach")
    assert mode(tmp_path / "c.diag") == 0o700 and mode(tmp_path / "c.diag" / "streams") == 0o700
    assert mode(tmp_path / "c.diag" / "manifest.json") == 0o600
    # a collector creates its stream and a log directory with its own (open) umask
    w.stream_path("process.jsonl").write_text('{"format": "diag.process/1"}\n')
    (w.root / "logs").mkdir()
    (w.root / "logs" / "x.stderr").write_text("")
    assert mode(w.stream_path("process.jsonl")) == 0o666          # (private anyway: inside a 0700 directory)
    w.set_collector("process", status="ok", stream="process.jsonl", format="process-jsonl")
    w.finish()
    for p in [w.root, *w.root.rglob("*")]:
        assert mode(p) == (0o700 if p.is_dir() else 0o600), p
    archive = Path(pack(str(w.root), str(tmp_path / "c.tar.gz")))
    assert mode(archive) == 0o600


def test_reports_are_created_private_and_existing_files_keep_their_mode(tmp_path, open_umask):
    fsutil.write_text(tmp_path / "new.json", "{}")
    assert mode(tmp_path / "new.json") == 0o600
    shared = tmp_path / "shared.html"
    shared.write_text("old")
    os.chmod(shared, 0o644)                   # the user's path says otherwise: it stays so
    fsutil.write_text(shared, "new")
    assert mode(shared) == 0o644 and shared.read_text() == "new"


def test_manifest_and_report_redact_the_command_line(tmp_path):
    w = CaptureWriter(tmp_path / "c.diag", {"pid": 1, "cmdline": SECRET_CMD}, "attach")
    w.finish()
    text = (tmp_path / "c.diag" / "manifest.json").read_text()
    assert "hunter2" not in text and "t0ken" not in text
    m = json.loads(text)
    assert m["target"]["cmdline"] == ["python3", "server.py", "--password=<redacted>", "DB_TOKEN=<redacted>"]
    assert m["access"]["redacted"] is True and m["access"]["attached_by"]["uid"] == os.geteuid()


def test_no_redact_keeps_secrets_and_the_report_redacts_them_again_unless_asked(tmp_path):
    w = CaptureWriter(tmp_path / "c.diag", {"pid": 1, "cmdline": SECRET_CMD}, "attach", redact=False)
    w.finish()
    assert "hunter2" in (tmp_path / "c.diag" / "manifest.json").read_text()
    data = load_inputs([str(tmp_path / "c.diag")])
    report = build_report(data)
    assert "hunter2" not in json.dumps(report) and "hunter2" not in html.render(report)
    assert report["access"]["redacted_in_capture"] is False and report["access"]["redacted_in_report"] is True
    assert build_report(data, redact=False)["target"]["cmdline"] == SECRET_CMD


def test_reports_say_who_captured_and_how_the_files_are_kept(tmp_path):
    w = CaptureWriter(tmp_path / "c.diag", {"pid": 1, "cmdline": ["x"], "uid": 33, "user": "www-data"}, "attach")
    w.finish()
    report = build_report(load_inputs([str(tmp_path / "c.diag")]))
    page = html.render(report)
    assert "captured by" in page and "www-data (uid 33)" in page and "0700" in page
    out = terminal.render(report)
    assert "Capture: captured by:" in out and "target owner: www-data" in out


def test_only_root_attaches_to_another_users_process(monkeypatch):
    other = Target(pid=os.getpid(), comm="server", uid=os.geteuid() + 1, user="someone")
    targets.check_owner(other) if os.geteuid() == 0 else None          # root: allowed
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    with pytest.raises(DiagError) as e:
        targets.check_owner(Target(pid=os.getpid(), comm="server", uid=0, user="root"))
    assert e.value.exit_code == EXIT_NO_PRIVILEGE and "only root attaches" in str(e.value)
