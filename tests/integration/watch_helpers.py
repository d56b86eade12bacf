"""What the `diag watch` integration tests share: a watcher in the background whose JSON events are
read as they come, and waits on them (handshakes, never sleeps)."""
from __future__ import annotations

import json
import signal
import subprocess
import threading

from diag_run import diag_popen
from toolbox import wait_until


class WatchProc:
    """`diag watch ... --json-events` in the background; `events` fills as lines arrive."""

    def __init__(self, *args: str, timeout_s: float = 180.0) -> None:
        self.p = diag_popen("watch", *args, "--json-events")
        self.events: list[dict] = []
        self.raw: list[str] = []
        self.timeout_s = timeout_s
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        for line in self.p.stdout:
            self.raw.append(line)
            try:
                self.events.append(json.loads(line))
            except ValueError:
                pass

    def named(self, name: str) -> list[dict]:
        return [e for e in list(self.events) if e.get("event") == name]

    def wait(self, name: str, n: int = 1, timeout_s: float | None = None) -> dict:
        """The n-th event `name` (waits for it; fails with the watcher's output if it ends first)."""
        def got():
            if len(self.named(name)) >= n:
                return self.named(name)[n - 1]
            if self.p.poll() is not None:
                self._t.join(5)
                if len(self.named(name)) >= n:
                    return self.named(name)[n - 1]
                raise AssertionError(f"diag watch exited ({self.p.returncode}) before event {name!r} #{n}: "
                                     f"{''.join(self.raw)[-3000:]} {self.p.stderr.read()[-3000:]}")
            return None
        return wait_until(got, lambda: f"event {name!r} #{n} (events so far: {[e.get('event') for e in self.events]})",
                          timeout_s or self.timeout_s, 0.05)

    def stop(self, sig=signal.SIGINT, timeout_s: float = 120.0) -> str:
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            self.p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(10)
            raise AssertionError("diag watch did not stop after SIGINT")
        self._t.join(5)
        return self.p.stderr.read()

    def __enter__(self) -> "WatchProc":
        return self

    def __exit__(self, *exc) -> None:
        if self.p.poll() is None:
            self.stop()
