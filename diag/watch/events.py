"""The watcher's events: one line each on stdout, as text or JSON lines (`--json-events`).

Run as a service, stdout is the journal (contrib/diag-watch.service), so every trigger is one
journal entry too. Text lines start with "diag watch:" and fit a terminal; JSON lines have sorted
keys, an "event" name, an ISO 8601 UTC "time" and the fields of the event. Strings from the
target (its command line) are data in JSON and shown with repr() in text: no control characters
reach a terminal.
"""
from __future__ import annotations

import datetime as _dt
import json
import sys
import threading


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


class Events:
    def __init__(self, as_json: bool = False, stream=None) -> None:
        self.as_json = as_json
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()

    def emit(self, event: str, text: str, **fields) -> None:
        now = utc_now()
        if self.as_json:
            line = json.dumps({"event": event, "time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                               **fields}, sort_keys=True, default=str)
        else:
            line = f"diag watch: {now.strftime('%Y-%m-%dT%H:%M:%SZ')} {event}: {_printable(text)}"
        with self._lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass                       # a closed stdout never stops the watcher


def _printable(s: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
