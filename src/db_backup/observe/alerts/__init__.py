"""Alerts: a failed backup, a failed drill, stale backups, low disk, OSS usage, suspicious sizes.

`consumer(config)` is the events seam's factory: None without a `notifications` section (or
without channels). `Notifier.handle` decides at once, against the on-disk state, whether an event
is worth a message (first failure, reminder, recovery; see `dedup`), and queues it; one
background thread sends each message to every channel that wants it, with a timeout per try and
retries with backoff, so a backup never waits for a chat bot. A channel that stays down is
logged (masked) and counted as `notify:<channel>` in the consumer failure counts the metrics read.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from db_backup.observe import events
from db_backup.observe.alerts import settings as names
from db_backup.observe.alerts.channels import Channel, DeliveryError, Retryable, build
from db_backup.observe.alerts.dedup import Decision, DedupState
from db_backup.observe.alerts.messages import FAILED, RECOVERED, SUCCEEDED, TEST, Alert
from db_backup.observe.alerts.settings import NotifySettings, from_config
from db_backup.util.clock import utc_now
from db_backup.util.secrets import mask

if TYPE_CHECKING:
    from db_backup.config import Config

log = structlog.get_logger("db_backup.observe.alerts")

# The config's name of each event kind's failure (or raised condition).
FAILURE_NAMES = {
    events.BACKUP: names.BACKUP_FAILED,
    events.DRILL: names.DRILL_FAILED,
    events.STALE: names.STALE,
    events.LOW_DISK: names.LOW_DISK,
    events.OSS_USAGE: names.OSS_USAGE,
    events.SUSPICIOUS_SIZE: names.SUSPICIOUS_SIZE,
}


def consumer(config: Config) -> Notifier | None:
    """Returns the notifier of `config`, or None when no channel is configured."""
    settings = from_config(config)
    if settings is None:
        return None
    return Notifier(settings, config.directories.state)


@dataclass(frozen=True)
class _Outgoing:
    alert: Alert
    channels: tuple[Channel, ...]
    key: str
    decision: Decision


class Notifier:
    """The events consumer that turns events into alerts and sends them in the background."""

    name = "notify"

    def __init__(
        self,
        settings: NotifySettings,
        state_dir: Path,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.settings = settings
        self.state_dir = state_dir
        self.clock = clock
        self.dedup = DedupState(state_dir)
        self.channels = tuple(
            build(channel, settings.language, settings.timeout_seconds)
            for channel in settings.channels
        )
        self._queue: queue.Queue[_Outgoing | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closing = threading.Event()
        self._deadline: float | None = None

    # --- the consumer protocol -----------------------------------------------------------

    def handle(self, event: events.Event) -> None:
        """Decides whether `event` is worth telling and queues the message; never waits."""
        outgoing = self.prepare(event)
        if outgoing is None:
            return
        if self._closing.is_set():  # too late for the background: say so, do not block
            log.warning("alert dropped: notifier already closed", job=event.job, kind=event.kind)
            return
        self._ensure_worker()
        self._queue.put(outgoing)

    def close(self, timeout: float) -> None:
        """Sends what is queued, `timeout` seconds at most; what is left is logged."""
        self._deadline = time.monotonic() + timeout
        self._closing.set()
        thread = self._thread
        if thread is None:
            return
        self._queue.put(None)
        thread.join(timeout)
        if thread.is_alive():
            log.warning(
                "alerts not all sent before the end",
                pending=self._queue.qsize(),
                timeout_s=timeout,
            )

    # --- deciding ------------------------------------------------------------------------

    def prepare(self, event: events.Event) -> _Outgoing | None:
        """Returns the message `event` calls for (with its channels), or None for silence."""
        failure_name = FAILURE_NAMES.get(event.kind)
        if failure_name is None:
            return None
        settings = self.settings
        tracked = settings.enabled(failure_name)
        now = self.clock()
        key = self._key(event)
        if event.ok:
            decision = self._decide(key, True, now) if tracked else Decision(SUCCEEDED)
            if decision.state == RECOVERED and settings.recovery:
                event_name = failure_name
                wanted = {failure_name}
                if event.kind == events.BACKUP:  # a channel for successes hears it too
                    wanted.add(names.BACKUP_SUCCEEDED)
            elif event.kind == events.BACKUP and settings.enabled(names.BACKUP_SUCCEEDED):
                event_name = names.BACKUP_SUCCEEDED
                wanted = {event_name}
                decision = Decision(SUCCEEDED, decision.failures, decision.since)
            else:
                return None
        else:
            if not tracked:
                return None
            decision = self._decide(key, False, now)
            if not decision.state:
                log.info(
                    "alert held back: already told",
                    kind=event.kind,
                    job=event.job,
                    database=event.database or None,
                    failures=decision.failures,
                )
                return None
            event_name = failure_name
            wanted = {failure_name}
        channels = tuple(c for c in self.channels if any(c.wants(w) for w in wanted))
        if not channels:
            return None
        alert = self._alert(event, event_name, decision, now)
        return _Outgoing(alert, channels, key, decision)

    def _decide(self, key: str, ok: bool, now: datetime) -> Decision:
        """Returns the dedup decision; without a usable state file, tells every failure."""
        try:
            return self.dedup.decide(key, ok, now, self._remind_every())
        except OSError as exc:
            log.warning(
                "alert state not saved: every failure alerts until it is",
                path=str(self.dedup.path),
                error=f"{exc.filename or self.dedup.path}: {exc.strerror}",
            )
            return Decision(SUCCEEDED) if ok else Decision(FAILED, 1, now)

    def _remind_every(self) -> timedelta | None:
        hours = self.settings.remind_every_hours
        return timedelta(hours=hours) if hours > 0 else None

    @staticmethod
    def _key(event: events.Event) -> str:
        where = event.details.get("path") or event.details.get("directory") or ""
        return "|".join(str(part) for part in (event.kind, event.job, event.database, where))

    def _alert(
        self, event: events.Event, event_name: str, decision: Decision, now: datetime
    ) -> Alert:
        report = event.report or {}
        return Alert(
            event_name=event_name,
            state=decision.state,
            kind=event.kind,
            host=self.settings.hostname or str(report.get("hostname") or self.settings.host()),
            job=event.job,
            database=event.database,
            at=now,
            error=mask(event.message or str(report.get("errorMessage") or "")),
            report_path=str(event.report_path) if event.report_path else "",
            failures=decision.failures,
            since=decision.since,
            report=event.report,
            details=dict(event.details),
        )

    # --- sending -------------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="db-backup-notify", daemon=True
                )
                self._thread.start()

    def _work(self) -> None:
        while True:
            outgoing = self._queue.get()
            if outgoing is None:
                return
            try:
                self._send(outgoing)
            except Exception as exc:  # a bug here must not end the worker
                log.error("alert worker failed", error=mask(f"{type(exc).__name__}: {exc}"))

    def _send(self, outgoing: _Outgoing) -> None:
        errors = [self.deliver(channel, outgoing.alert) for channel in outgoing.channels]
        decision = outgoing.decision
        nobody = all(error is not None for error in errors)
        if nobody and decision.state == FAILED and decision.since is not None:
            # Nobody heard the first alert: let the next failure try again, not the reminder.
            try:
                self.dedup.undelivered(outgoing.key, decision.since)
            except OSError as exc:
                log.warning("alert state not saved", path=str(self.dedup.path), error=exc.strerror)

    def deliver(self, channel: Channel, alert: Alert, count: bool = True) -> str | None:
        """Sends `alert` to `channel` with retries; returns None when delivered, else the error.

        Returns the error text too when `count` is false (notify-test); otherwise it is
        logged (masked) and counted as `notify:<channel>`.
        """
        delay = self.settings.backoff_seconds
        error = "not sent"
        attempt = 0
        for attempt in range(1, self.settings.attempts + 1):
            remaining = self._remaining()
            if remaining is not None and remaining <= 0:
                error = f"not sent before the end ({error})"
                break
            timeout = self.settings.timeout_seconds
            if remaining is not None:
                timeout = min(timeout, remaining)
            try:
                channel.send(alert, timeout)
            except Retryable as exc:
                error = str(exc)
                if attempt < self.settings.attempts:
                    if not self._pause(delay):
                        error = f"not sent before the end ({error})"
                        break
                    delay *= 2
                continue
            except DeliveryError as exc:
                error = str(exc)
                break
            except Exception as exc:  # a bug in a sender: still an undelivered alert
                error = f"{type(exc).__name__}: {exc}"
                break
            log.info(
                "alert sent",
                channel=channel.name,
                alert=alert.event_name,
                state=alert.state,
                job=alert.job or None,
                database=alert.database or None,
                attempts=attempt,
            )
            return None
        error = mask(error)
        if count:
            log.error(
                "alert not delivered",
                channel=channel.name,
                type=channel.settings.type,
                alert=alert.event_name,
                job=alert.job or None,
                database=alert.database or None,
                attempts=attempt,
                error=error,
            )
            events.count_failure(self.state_dir, f"notify:{channel.name}")
        return error

    def _remaining(self) -> float | None:
        deadline = self._deadline
        return None if deadline is None else deadline - time.monotonic()

    def _pause(self, seconds: float) -> bool:
        """Waits `seconds` before a retry; returns False (at once) when that would pass the
        deadline that `close` sets, even if `close` comes during the wait."""
        end = time.monotonic() + seconds
        if not self._closing.is_set():
            self._closing.wait(seconds)
        deadline = self._deadline
        if deadline is not None and end > deadline:
            return False
        left = end - time.monotonic()
        if left > 0:
            time.sleep(left)
        return True


def send_test(config: Config) -> list[tuple[str, str | None]]:
    """Sends a test message through every channel now; returns (channel, error or None)."""
    settings = from_config(config)
    if settings is None:
        return []
    notifier = Notifier(settings, config.directories.state)
    alert = Alert(
        event_name=names.BACKUP_FAILED,
        state=TEST,
        kind="test",
        host=settings.host(),
        job="",
        database="",
        at=utc_now(),
    )
    return [(c.name, notifier.deliver(c, alert, count=False)) for c in notifier.channels]
