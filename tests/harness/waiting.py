"""Bounded polling for tests: every wait has a timeout and says what it waited for."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
POLL_INTERVAL = 0.05


def wait_for(
    predicate: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT,
    *,
    what: str = "",
    interval: float = POLL_INTERVAL,
    describe: Callable[[], object] | None = None,
) -> T:
    """Poll until `predicate()` returns something truthy and return it; AssertionError after `timeout` s.

    `describe()` (if given) is called on timeout and its result is put in the message, e.g. the object's
    current status, so a failing test shows where things stood.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            state = f"; last state: {describe()!r}" if describe is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate!r}{state}")
        time.sleep(interval)
