"""Waiting for an event instead of sleeping and hoping it happened."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], what: str, timeout: float = 60, poll: float = 0.05) -> T:
    """Returns the first truthy result of `check()`; fails naming `what` after `timeout` seconds.

    The deadline is generous on purpose: it only bounds a test that is already failing, and a
    loaded machine must not turn a slow event into a failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)
