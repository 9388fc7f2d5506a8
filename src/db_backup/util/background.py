"""One task at a time in a thread of its own, waited for a bounded time: a loop that must go on
turning (the daemon's, which feeds the watchdog) hands it work that may block on others."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Background:
    """Runs a task in its own thread, one at a time; `start` waits `wait_seconds` at most."""

    def __init__(self, name: str, wait_seconds: float) -> None:
        self.name = name
        self.wait_seconds = wait_seconds
        self._thread: threading.Thread | None = None

    def busy(self) -> bool:
        """Returns whether the last task still runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, task: Callable[..., object], *args: object) -> bool:
        """Starts `task(*args)` unless the last one still runs; returns whether it finished
        within `wait_seconds` (a quick task is done when the caller goes on)."""
        if self.busy():
            return False
        thread = threading.Thread(target=task, args=args, name=self.name, daemon=True)
        self._thread = thread
        thread.start()
        thread.join(self.wait_seconds)
        return not thread.is_alive()
