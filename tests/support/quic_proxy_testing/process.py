"""A child process whose stderr is read line by line in a background thread, with its JSON log lines parsed.

The proxy and its demo backends bind port 0 and report what they got in JSON log lines on stderr; waiting for
such a line (with a bound) is how every suite learns addresses and states, instead of guessing or sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

# Start-up and shutdown of a debug build on a busy 2-core machine; generous, but bounded.
START_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0


class Process:
    """A child process whose stderr is read line by line in the background, so waits never block on a pipe."""

    def __init__(self, name: str, args: list[str], cwd: Path):
        self.name = name
        self.args = args
        self.lines: list[str] = []
        self.events: list[dict] = []
        self._eof = False
        self._cond = threading.Condition()
        self.popen = subprocess.Popen(
            args,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "NO_COLOR": "1"},
        )
        self._reader = threading.Thread(target=self._read, name=f"stderr-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for raw in self.popen.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            with self._cond:
                self.lines.append(line)
                if isinstance(event, dict):
                    self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _first(self, predicate: Callable[[dict], bool], timeout: float) -> dict | None:
        """The first JSON log line matching `predicate`, or None once stderr is closed or `timeout` passed."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    return None
                self._cond.wait(left)

    def _fail(self, what: str, timeout: float) -> None:
        self.popen.poll()
        state = "exited with %s" % self.popen.returncode if self.popen.returncode is not None else "still running"
        pytest.fail(f"{self.name}: no log line for {what} within {timeout}s ({state}); stderr:\n{self.stderr()}")

    def wait_for(self, predicate: Callable[[dict], bool], what: str, timeout: float = START_TIMEOUT) -> dict:
        """The first JSON log line matching `predicate`; fails early if the process closes stderr first."""
        event = self._first(predicate, timeout)
        if event is None:
            self._fail(what, timeout)
        return event

    def wait_for_message(self, message: str, timeout: float = START_TIMEOUT) -> dict:
        return self.wait_for(lambda e: e.get("message") == message, repr(message), timeout)

    def wait_for_or_exit(self, predicate: Callable[[dict], bool], what: str, timeout: float = START_TIMEOUT) -> dict | None:
        """Like wait_for, but None when the process closes stderr (exits) first, e.g. because the address it was
        told to bind is taken; fails only when it is still running after `timeout`."""
        event = self._first(predicate, timeout)
        if event is None and not self.ended():
            self._fail(what, timeout)
        return event

    def logged(self, predicate: Callable[[dict], bool]) -> list[dict]:
        """Every JSON log line so far that matches `predicate`, without waiting."""
        with self._cond:
            return [event for event in self.events if predicate(event)]

    def ended(self) -> bool:
        """Whether the process has closed its stderr (it exited, with every line it wrote read)."""
        with self._cond:
            return self._eof

    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def tail(self, lines: int = 40) -> str:
        """The last `lines` lines of stderr, for failure messages of chatty processes."""
        with self._cond:
            return "\n".join(self.lines[-lines:])

    def stop(self, timeout: float = STOP_TIMEOUT) -> tuple[int, bool]:
        """SIGTERM, then a bounded wait, then SIGKILL; returns (exit status, whether it had to be killed)."""
        killed = False
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                killed = True
                self.popen.kill()
                self.popen.wait(timeout)
        self._reader.join(timeout)
        return self.popen.returncode, killed
