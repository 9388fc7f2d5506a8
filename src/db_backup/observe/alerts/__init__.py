"""Alerts: a failed backup, a failed drill, stale backups, low disk, OSS usage, suspicious sizes.

`consumer(config)` is the events seam's factory: None without a `notifications` section (or
without channels). `Notifier.handle` decides at once, against the on-disk state, whether an event
is worth a message and to which channel (first failure, reminder, recovery; see `dedup`), records
the message as pending, and hands it to each channel's lane (`delivery`): one thread per channel,
each attempt bounded by the channel's timeout, retries with backoff, so a backup never waits for
a chat bot and a channel that hangs delays only itself. A channel counts as told only once it
took the message; what a run could not deliver stays pending and is sent by the next run (or,
in the daemon, tried again later). A channel that stays down is logged (masked) and counted as
`notify:<channel>` in the consumer failure counts the metrics read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from db_backup.observe import events
from db_backup.observe.alerts import dedup
from db_backup.observe.alerts import settings as names
from db_backup.observe.alerts.channels import Channel, build
from db_backup.observe.alerts.dedup import Decision, DedupState
from db_backup.observe.alerts.delivery import Attempts, Item, Lane, Outcome
from db_backup.observe.alerts.messages import SUCCEEDED, TEST, Alert, from_record, to_record
from db_backup.observe.alerts.settings import NotifySettings, from_config
from db_backup.util.clock import parse_utc, utc_now
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
# A pending alert older than this is given up: the news is stale, and the channel, never told,
# hears the streak's next failure as the first.
PENDING_MAX_AGE = timedelta(hours=24)
RESUME_DELAY_SECONDS = 5.0


def consumer(config: Config) -> Notifier | None:
    """Returns the notifier of `config` (sending what earlier runs left pending), or None when
    no channel is configured."""
    settings = from_config(config)
    if settings is None:
        return None
    notifier = Notifier(settings, config.directories.state)
    notifier.resume_soon()
    return notifier


@dataclass(frozen=True)
class _Outgoing:
    """What one event tells: the alert per channel, under the pending alert `id`."""

    key: str
    id: str | None  # None when the state file is unusable
    decision: Decision
    alerts: tuple[tuple[Channel, Alert], ...]

    @property
    def channels(self) -> tuple[Channel, ...]:
        """Returns the channels that get a message."""
        return tuple(channel for channel, _ in self.alerts)

    @property
    def alert(self) -> Alert:
        """Returns the message of the first channel (they differ only in their state)."""
        return self.alerts[0][1]


class Notifier:
    """The events consumer that turns events into alerts and sends them in the background."""

    name = "notify"

    def __init__(
        self,
        settings: NotifySettings,
        state_dir: Path,
        clock: Callable[[], datetime] = utc_now,
        retry_seconds: float | None = None,
    ) -> None:
        self.settings = settings
        self.state_dir = state_dir
        self.clock = clock
        self.dedup = DedupState(state_dir)
        self.channels = tuple(
            build(channel, settings.language, settings.timeout_seconds)
            for channel in settings.channels
        )
        self._retry_seconds = retry_seconds
        self._lanes: dict[str, Lane] = {}
        self._lanes_lock = threading.Lock()
        self._closing = threading.Event()
        self._sender = Attempts(settings, self._closing)
        self._resumed = False

    # --- the consumer protocol -----------------------------------------------------------

    def handle(self, event: events.Event) -> None:
        """Decides whether `event` is worth telling and queues the message; never waits.

        The first event of a notifier also sends what earlier runs left pending, after its own
        decision: a newer alert for a key replaces the one left pending for it.
        """
        outgoing = self.prepare(event)
        if outgoing is not None and self._closing.is_set():
            # Too late for the background: it stays pending, the next run sends it.
            log.warning(
                "alert left for the next run: notifier already closed",
                job=event.job,
                kind=event.kind,
            )
            return
        if outgoing is not None:
            for channel, alert in outgoing.alerts:
                item = Item(outgoing.key, outgoing.id, outgoing.decision.since, alert)
                self._lane(channel).put(item, claim=outgoing.id is not None)
        self._resume_once()

    def resume_soon(self, delay: float = RESUME_DELAY_SECONDS) -> None:
        """Sends what earlier runs left pending at the first event, or after `delay` seconds
        without one (the daemon, idle)."""
        timer = threading.Timer(delay, self._resume_once)
        timer.daemon = True
        timer.name = "db-backup-alert-resume"
        timer.start()

    def _resume_once(self) -> None:
        with self._lanes_lock:
            if self._resumed:
                return
            self._resumed = True
        self.resume()

    def close(self, timeout: float) -> None:
        """Sends what is queued, `timeout` seconds at most for all channels together; what is
        left stays pending for the next run, and is logged."""
        deadline = self._sender.deadline = time.monotonic() + timeout
        self._closing.set()
        with self._lanes_lock:
            lanes = list(self._lanes.values())
        for lane in lanes:
            lane.wake()
        unfinished = [lane for lane in lanes if not lane.join(deadline - time.monotonic())]
        if unfinished:
            log.warning(
                "alerts not all sent before the end",
                pending=sum(lane.waiting() for lane in unfinished),
                channels=[lane.channel.name for lane in unfinished],
                timeout_s=timeout,
            )

    def resume(self, lanes: Iterable[str] | None = None) -> int:
        """Hands the alerts still pending on disk to the lanes (of `lanes` only, when given);
        gives up those older than PENDING_MAX_AGE; returns how many were handed over."""
        by_name = {c.name: c for c in self.channels}
        wanted = set(by_name) if lanes is None else set(lanes) & set(by_name)
        items: list[tuple[Channel, Item]] = []
        now = self.clock()
        try:
            with self.dedup.transaction() as state:
                for key, pending in list(state.pending.items()):
                    found = self._pending_items(key, pending, by_name, now)
                    if found is None:
                        del state.pending[key]
                        continue
                    items.extend((c, item) for c, item in found if c.name in wanted)
        except OSError as exc:
            log.warning("pending alerts not read", path=str(self.dedup.path), error=exc.strerror)
            return 0
        if self._closing.is_set():
            return 0
        handed = 0
        for channel, item in items:
            lane = self._lane(channel)
            if not lane.holds(item.key) and lane.put(item):  # what a lane holds is newer
                handed += 1
        return handed

    def _pending_items(
        self, key: str, pending: dedup.Pending, by_name: dict[str, Channel], now: datetime
    ) -> list[tuple[Channel, Item]] | None:
        """Returns the (channel, item) pairs of one pending alert; None when it is to be dropped
        (too old, unreadable, or for channels no longer configured)."""
        try:
            queued = parse_utc(pending["queued"])
            record = pending["alert"]
            states = {c: s for c, s in pending["channels"].items() if c in by_name}
            alerts = [(by_name[c], from_record(record, s)) for c, s in states.items()]
        except (KeyError, ValueError, TypeError) as exc:
            log.warning("pending alert unreadable, dropped", key=key, error=str(exc))
            return None
        if now - queued > PENDING_MAX_AGE:
            log.warning(
                "alert given up: undelivered for too long",
                key=key,
                channels=sorted(pending["channels"]),
                queued=pending["queued"],
            )
            return None
        if not alerts:
            return None
        since = alerts[0][1].since
        return [(c, Item(key, str(pending["id"]), since, alert)) for c, alert in alerts]

    # --- deciding ------------------------------------------------------------------------

    def prepare(self, event: events.Event) -> _Outgoing | None:
        """Returns the messages `event` calls for (per channel), recorded as pending, or None
        for silence."""
        failure_name = FAILURE_NAMES.get(event.kind)
        if failure_name is None:
            return None
        if not event.ok and not self.settings.enabled(failure_name):
            return None
        key = self._key(event)
        now = self.clock()
        try:
            with self.dedup.transaction() as state:
                return self._decide(state, event, failure_name, key, now)
        except OSError as exc:
            log.warning(
                "alert state not saved: every failure alerts until it is",
                path=str(self.dedup.path),
                error=f"{exc.filename or self.dedup.path}: {exc.strerror}",
            )
            scratch = dedup.State({}, {})
            found = self._decide(scratch, event, failure_name, key, now)
            return replace(found, id=None) if found is not None else None

    def _decide(
        self,
        state: dedup.State,
        event: events.Event,
        failure_name: str,
        key: str,
        now: datetime,
    ) -> _Outgoing | None:
        settings = self.settings
        if event.ok:
            wanted = {failure_name}
            if event.kind == events.BACKUP:  # a channel for successes hears a recovery too
                wanted.add(names.BACKUP_SUCCEEDED)
            entry = state.entries.pop(key, None) if settings.enabled(failure_name) else None
            state.pending.pop(key, None)  # older news about the key is superseded
            if entry is not None and settings.recovery:
                event_name = failure_name
                decision = dedup.succeed(entry, self._wanting(wanted))
            elif event.kind == events.BACKUP and settings.enabled(names.BACKUP_SUCCEEDED):
                event_name = names.BACKUP_SUCCEEDED
                found = dedup.succeed(entry, ())
                decision = Decision(
                    SUCCEEDED,
                    found.failures,
                    found.since,
                    dict.fromkeys(self._wanting({event_name}), SUCCEEDED),
                )
            else:
                return None
        else:
            event_name = failure_name
            wanting = self._wanting({failure_name})
            entry, decision = dedup.fail(
                state.entries.get(key),
                state.pending.get(key),
                now,
                self._remind_every(),
                wanting,
                held=self._holding(key),
            )
            state.entries[key] = entry
            if wanting and not decision.state:
                log.info(
                    "alert held back: already told",
                    kind=event.kind,
                    job=event.job,
                    database=event.database or None,
                    failures=decision.failures,
                )
                return None
        if not decision.states:
            return None
        alert = self._alert(event, event_name, decision, now)
        pending = dedup.new_pending(to_record(alert), decision.states, now)
        state.pending[key] = pending
        by_name = {c.name: c for c in self.channels}
        alerts = tuple(
            (by_name[name], replace(alert, state=alert_state))
            for name, alert_state in decision.states.items()
        )
        return _Outgoing(key, str(pending["id"]), decision, alerts)

    def _holding(self, key: str) -> set[str]:
        """Returns the channels whose lane holds an alert for `key` now (to send or resend)."""
        with self._lanes_lock:
            lanes = list(self._lanes.values())
        return {lane.channel.name for lane in lanes if lane.holds(key)}

    def _wanting(self, wanted: set[str]) -> list[str]:
        """Returns the names of the channels that take any of `wanted`, in config order."""
        return [c.name for c in self.channels if any(c.wants(w) for w in wanted)]

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

    def _lane(self, channel: Channel) -> Lane:
        with self._lanes_lock:
            lane = self._lanes.get(channel.name)
            if lane is None:
                lane = Lane(
                    channel,
                    str(self.state_dir),
                    self._attempts,
                    self._settle,
                    self._closing,
                    sweep=self._sweep,
                    **({"retry_seconds": self._retry_seconds} if self._retry_seconds else {}),
                )
                self._lanes[channel.name] = lane
            return lane

    def _sweep(self, lane: Lane) -> None:
        """Hands `lane` the alerts left pending for its channel by others (an idle lane's look)."""
        self.resume([lane.channel.name])

    def _settle(self, lane: Lane, item: Item, outcome: Outcome) -> None:
        """Records a lane's outcome: told when delivered, dropped when it will never be."""
        if item.id is None or (outcome.error is not None and outcome.retryable):
            return  # no state to record in, or still pending (the next try, the next run)
        told_at = item.alert.at if outcome.error is None else None
        try:
            self.mark(item.key, item.id, lane.channel.name, item.alert.state, item.since, told_at)
        except OSError as exc:
            log.warning("alert state not saved", path=str(self.dedup.path), error=exc.strerror)

    def mark(
        self,
        key: str,
        item_id: str,
        channel: str,
        state: str,
        since: datetime | None,
        told_at: datetime | None,
    ) -> None:
        """Records that `channel` took pending alert `item_id` of `key` (at `told_at`), or that
        it never will (`told_at` None); raises OSError."""
        with self.dedup.transaction() as current:
            entry, pending = dedup.after_delivery(
                current.entries.get(key),
                current.pending.get(key),
                item_id,
                channel,
                state,
                since,
                told_at,
            )
            if entry is not None:
                current.entries[key] = entry
            if pending is None:
                current.pending.pop(key, None)
            else:
                current.pending[key] = pending

    def _attempts(self, channel: Channel, alert: Alert) -> Outcome:
        """Sends `alert` to `channel` with retries and counts a failure; returns the outcome."""
        error, retryable, tries = self._sender.send(channel, alert)
        if error is None:
            return Outcome()
        error = mask(error)
        log.error(
            "alert not delivered",
            channel=channel.name,
            type=channel.settings.type,
            alert=alert.event_name,
            job=alert.job or None,
            database=alert.database or None,
            attempts=tries,
            error=error,
        )
        events.count_failure(self.state_dir, f"notify:{channel.name}")
        return Outcome(error, retryable)

    def deliver(self, channel: Channel, alert: Alert, count: bool = True) -> str | None:
        """Sends `alert` to `channel` with retries; returns None when delivered, else the error.

        Returns the error text too when `count` is false (notify-test); otherwise it is
        logged (masked) and counted as `notify:<channel>`.
        """
        if count:
            return self._attempts(channel, alert).error
        error, _, _ = self._sender.send(channel, alert)
        return None if error is None else mask(error)


def send_test(config: Config) -> list[tuple[str, str | None]]:
    """Sends a test message through every channel at once; returns (channel, error or None)
    in config order, once every channel has answered or given up."""
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
    results: dict[str, str | None] = {}

    def one(channel: Channel) -> None:
        """Sends to `channel` and keeps the outcome."""
        results[channel.name] = notifier.deliver(channel, alert, count=False)

    threads = [threading.Thread(target=one, args=(c,), daemon=True) for c in notifier.channels]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [(c.name, results.get(c.name, "not sent")) for c in notifier.channels]
