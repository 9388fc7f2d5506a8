"""One lane per channel: a thread that sends that channel's alerts, so a hung channel delays
only itself.

A lane takes items (one alert for one channel), newest per key: a newer alert for a key still
waiting replaces the older one. It sends them one after another through the notifier's `send`
(attempts with backoff, each bounded by the channel's timeout) and reports each outcome to
`finish`. While the process lives on (the daemon), an alert that could not be delivered but may
yet be is tried again later, with a growing pause; once the notifier closes, the lane sends what
it holds until the notifier's deadline and then stops, leaving the rest pending on disk for the
next run. When idle, a lane looks for alerts left pending by others every `SWEEP_SECONDS`.

Lanes of every notifier in the process (the daemon builds a new notifier on reload) claim the
(state directory, channel, key) they hold, so two notifiers never send the same pending alert.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import structlog

from db_backup.observe.alerts.channels import Channel, DeliveryError, Retryable
from db_backup.observe.alerts.messages import Alert
from db_backup.observe.alerts.settings import NotifySettings
from db_backup.util.secrets import mask

log = structlog.get_logger("db_backup.observe.alerts")

RETRY_SECONDS = 60.0  # first pause before an undelivered alert is tried again (daemon)
RETRY_MAX_SECONDS = 3600.0  # the pause doubles up to this
SWEEP_SECONDS = 300.0  # an idle lane looks for alerts left pending by others this often


@dataclass(frozen=True)
class Item:
    """One alert for one channel: its key, the pending alert's id, the streak it is about."""

    key: str
    id: str | None  # None: the state file is unusable, nothing to record afterwards
    since: datetime | None
    alert: Alert


@dataclass(frozen=True)
class Outcome:
    """How a delivery ended: `error` is None when delivered."""

    error: str | None = None
    retryable: bool = False


class Attempts:
    """Tries to deliver: `settings.attempts` tries with a doubling pause, each bounded by the
    channel's timeout, none past `deadline` (set when the notifier closes)."""

    def __init__(self, settings: NotifySettings, closing: threading.Event) -> None:
        self.settings = settings
        self._closing = closing
        self.deadline: float | None = None

    def send(self, channel: Channel, alert: Alert) -> tuple[str | None, bool, int]:
        """Sends `alert` to `channel`: `settings.attempts` tries with a doubling pause, none
        past `deadline`; returns (error or None, whether it may yet pass, tries).
        """
        delay = self.settings.backoff_seconds
        error = "not sent"
        attempt = 0
        for attempt in range(1, self.settings.attempts + 1):
            remaining = self.remaining()
            if remaining is not None and remaining <= 0:
                return f"not sent before the end ({error})", True, attempt - 1
            timeout = self.settings.timeout_seconds
            if remaining is not None:
                timeout = min(timeout, remaining)
            try:
                channel.send(alert, timeout)
            except Retryable as exc:
                error = str(exc)
                if attempt < self.settings.attempts:
                    if not self._pause(delay):
                        return f"not sent before the end ({error})", True, attempt
                    delay *= 2
                continue
            except DeliveryError as exc:
                return str(exc), False, attempt
            except Exception as exc:  # a bug in a sender: still an undelivered alert
                return f"{type(exc).__name__}: {exc}", False, attempt
            log.info(
                "alert sent",
                channel=channel.name,
                alert=alert.event_name,
                state=alert.state,
                job=alert.job or None,
                database=alert.database or None,
                attempts=attempt,
            )
            return None, False, attempt
        return error, True, attempt

    def remaining(self) -> float | None:
        """Returns the seconds left before `deadline`, None while there is none."""
        deadline = self.deadline
        return None if deadline is None else deadline - time.monotonic()

    def _pause(self, seconds: float) -> bool:
        """Waits `seconds` before a retry; returns False (at once) when that would pass the
        `deadline`, even if the notifier closes during the wait."""
        end = time.monotonic() + seconds
        if not self._closing.is_set():
            self._closing.wait(seconds)
        deadline = self.deadline
        if deadline is not None and end > deadline:
            return False
        left = end - time.monotonic()
        if left > 0:
            time.sleep(left)
        return True


Send = Callable[[Channel, Alert], Outcome]
Finish = Callable[["Lane", Item, Outcome], None]
Sweep = Callable[["Lane"], None]

_claims_lock = threading.Lock()
_claims: dict[tuple[str, str, str], Lane] = {}


def retry_pause(rounds: int, first: float = RETRY_SECONDS) -> float:
    """Returns the pause before round `rounds` + 1 of an undelivered alert: doubling, capped."""
    return float(min(first * 2 ** max(0, rounds - 1), RETRY_MAX_SECONDS))


class Lane:
    """The sender thread of one channel."""

    def __init__(
        self,
        channel: Channel,
        scope: str,
        send: Send,
        finish: Finish,
        closing: threading.Event,
        sweep: Sweep | None = None,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self.channel = channel
        self.scope = scope  # the state directory: claims are per state file
        self._send = send
        self._finish = finish
        self._closing = closing
        self._sweep = sweep
        self._retry_seconds = retry_seconds
        self._items: dict[str, Item] = {}  # waiting, oldest first
        self._later: dict[str, tuple[Item, float]] = {}  # undelivered, retried at (monotonic)
        self._rounds: dict[str, int] = {}
        self._busy: Item | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    # --- what others call ----------------------------------------------------------------

    def put(self, item: Item, *, claim: bool = True) -> bool:
        """Queues `item`, replacing what waits for its key; returns False when another lane of
        this process holds the key (its pending alert is that lane's to send)."""
        with _claims_lock:
            holder = _claims.get(self._claim(item.key))
            if holder is not None and holder is not self:
                return False
            if claim:
                _claims[self._claim(item.key)] = self
        with self._cond:
            self._later.pop(item.key, None)
            self._items.pop(item.key, None)
            self._items[item.key] = item
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name=f"db-backup-alert-{self.channel.name}", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
        return True

    def holds(self, key: str) -> bool:
        """Returns whether this lane has an alert for `key` waiting, in flight or for later."""
        with self._cond:
            busy = self._busy is not None and self._busy.key == key
            return busy or key in self._items or key in self._later

    def waiting(self) -> int:
        """Returns how many alerts this lane has not finished with."""
        with self._cond:
            return len(self._items) + len(self._later) + (self._busy is not None)

    def wake(self) -> None:
        """Makes the lane look at its queue and at `closing` now."""
        with self._cond:
            self._cond.notify_all()

    def join(self, timeout: float) -> bool:
        """Waits up to `timeout` seconds for the lane to stop; returns whether it stopped."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(max(0.0, timeout))
        return not thread.is_alive()

    # --- the thread ----------------------------------------------------------------------

    def _claim(self, key: str) -> tuple[str, str, str]:
        return (self.scope, self.channel.name, key)

    def _release(self, key: str) -> None:
        with _claims_lock:
            if _claims.get(self._claim(key)) is self:
                del _claims[self._claim(key)]

    def _run(self) -> None:
        try:
            while True:
                item = self._next()
                if item is None:
                    return
                try:
                    outcome = self._send(self.channel, item.alert)
                except Exception as exc:  # a bug in a sender: still an undelivered alert
                    outcome = Outcome(f"{type(exc).__name__}: {exc}")
                self._settle(item, outcome)
        finally:
            with self._cond:
                left = [*self._items, *self._later]
                if self._busy is not None:
                    left.append(self._busy.key)
            for key in left:  # stays pending on disk: the next notifier's to send
                self._release(key)

    def _settle(self, item: Item, outcome: Outcome) -> None:
        # The outcome is recorded while the item still counts as held: a decision made
        # meanwhile sees it held (not piled on), never neither held nor told.
        try:
            self._finish(self, item, outcome)
        except Exception as exc:  # the bookkeeping must not end the lane
            log.error("alert bookkeeping failed", error=mask(f"{type(exc).__name__}: {exc}"))
        with self._cond:
            self._busy = None
            again = outcome.error is not None and outcome.retryable
            newer = item.key in self._items
            if again and not newer and not self._closing.is_set():
                rounds = self._rounds.get(item.key, 0) + 1
                self._rounds[item.key] = rounds
                pause = retry_pause(rounds, self._retry_seconds)
                self._later[item.key] = (item, time.monotonic() + pause)
            elif not newer:
                self._rounds.pop(item.key, None)
        if not self.holds(item.key):
            self._release(item.key)

    def _next(self) -> Item | None:
        """Returns the next item to send, waiting for one; None when the lane is to stop."""
        while True:
            sweep = False
            with self._cond:
                if self._items:
                    key = next(iter(self._items))
                    self._busy = self._items.pop(key)
                    return self._busy
                if self._closing.is_set():
                    return None  # what waits for later stays pending on disk
                now = time.monotonic()
                due = [key for key, (_, at) in self._later.items() if at <= now]
                if due:
                    self._busy = self._later.pop(due[0])[0]
                    return self._busy
                wait = min((at for _, at in self._later.values()), default=now + SWEEP_SECONDS)
                if not self._cond.wait(max(0.01, wait - now)) and not self._later:
                    sweep = self._sweep is not None
            if sweep and self._sweep is not None and not self._closing.is_set():
                try:
                    self._sweep(self)
                except Exception as exc:
                    log.error("pending alerts not read", error=mask(f"{type(exc).__name__}: {exc}"))
