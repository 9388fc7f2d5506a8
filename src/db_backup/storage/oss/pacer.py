"""A bandwidth pacer shared by the requests of one target."""

from __future__ import annotations

import threading
import time


class Pacer:
    """Keeps the average upload rate under a byte limit by sleeping between requests."""

    def __init__(self, bytes_per_second: int | None) -> None:
        self._rate = bytes_per_second
        self._lock = threading.Lock()
        self._next_free = time.monotonic()

    def take(self, amount: int) -> None:
        """Reserves `amount` bytes of transfer and sleeps until the reservation starts."""
        if not self._rate:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_free)
            self._next_free = start + amount / self._rate
        if start > now:
            time.sleep(start - now)
