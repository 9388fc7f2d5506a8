"""Stop requests: a token another thread fires, and the exception a stopped run raises.

The daemon's shutdown, a job's `timeout_seconds` and a one-shot command's SIGTERM all end up
as `CancelToken.cancel(reason)`; the running code checks the token between steps and between
chunks, and raises `Cancelled` with the reason, which ends up in the report.
"""

from __future__ import annotations

import threading
import time


class Cancelled(Exception):
    """The run was asked to stop (daemon shutdown or job timeout); the message says why."""


class CancelToken:
    """Lets another thread stop a run: `cancel(reason)`; the run checks `raise_if_cancelled`."""

    def __init__(
        self,
        deadline_monotonic: float | None = None,
        timeout_reason: str = "",
        parent: CancelToken | None = None,
    ) -> None:
        self._event = threading.Event()
        self._reason = ""
        self._deadline = deadline_monotonic
        self._timeout_reason = timeout_reason
        self._parent = parent

    @classmethod
    def for_job(cls, timeout_seconds: int | None, parent: CancelToken | None = None) -> CancelToken:
        """Returns a token that also fires after `timeout_seconds` or when `parent` fires."""
        deadline = time.monotonic() + timeout_seconds if timeout_seconds else None
        return cls(deadline, f"timed out after {timeout_seconds} s (timeout_seconds)", parent)

    def cancel(self, reason: str) -> None:
        """Asks the run to stop, giving the reason that ends up in its report."""
        if not self._event.is_set():
            self._reason = reason
            self._event.set()

    @property
    def reason(self) -> str:
        """Returns why the run was stopped, or "" while it may go on."""
        self._check_deadline()
        return self._reason

    def is_cancelled(self) -> bool:
        """Returns whether the run must stop now."""
        self._check_deadline()
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        """Raises Cancelled when the run must stop."""
        if self.is_cancelled():
            raise Cancelled(self._reason)

    def _check_deadline(self) -> None:
        if self._parent is not None and self._parent.is_cancelled():
            self.cancel(self._parent.reason)
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self.cancel(self._timeout_reason or "timed out")
