"""Bounded waits for conditions only polling can see (an admin API answer, a counter, a file). Conditions a
process logs are waited for on its log instead (Process.wait_for), which needs no polling at all."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

import pytest

T = TypeVar("T")

# How often a condition is looked at again while waiting for it.
POLL = 0.05


def wait_until(condition: Callable[[], T], what: str | Callable[[], str], timeout: float, interval: float = POLL) -> T:
    """Polls `condition` until it returns something true, and returns that; fails after `timeout` seconds saying
    `what` did not happen (a string, or a function giving one, called then, e.g. to show the last state)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"not within {timeout}s: {what() if callable(what) else what}")
        time.sleep(interval)


def poll_until(condition: Callable[[], T], timeout: float, interval: float = POLL) -> T:
    """Polls `condition` until it returns something true or `timeout` passes, and returns the result of the last
    look either way: for callers that judge the outcome themselves."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            return condition()
        time.sleep(interval)
