"""What every report says about the capture itself: who attached, to whose process, how its files
are protected, and whether command-line secrets were redacted (the report's `access` section)."""
from __future__ import annotations


def _who(a: dict | None) -> str | None:
    if not a:
        return None
    who = f"{a.get('user', '?')} (uid {a.get('uid', '?')})"
    if a.get("sudo_user"):
        who += f", through sudo by {a['sudo_user']}"
    return who


def access_rows(report: dict) -> list[tuple[str, str]]:
    """(label, text) rows; none for raw trace files (no capture, nothing to say)."""
    a = report.get("access")
    if not a:
        return []
    rows = []
    who = _who(a.get("attached_by"))
    if who:
        rows.append(("captured by", who))
    if a.get("target_user") is not None:
        rows.append(("target owner", f"{a['target_user']} (uid {a.get('target_uid', '?')})"))
    rows.append(("capture files", a.get("file_modes") or "not recorded (a capture written before diag recorded "
                                                          "its file modes)"))
    if a.get("redacted_in_report"):
        rows.append(("secrets", "command-line secrets redacted in this report (--no-redact shows them)"
                     + ("" if a.get("redacted_in_capture") else "; the capture itself holds them")))
    else:
        rows.append(("secrets", "not redacted (--no-redact)"))
    return rows


def access_line(report: dict) -> str | None:
    """The rows in one line, for the terminal."""
    rows = access_rows(report)
    return "; ".join(f"{k}: {v}" for k, v in rows) if rows else None
