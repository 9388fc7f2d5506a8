"""The sink as an event consumer: each report into the outbox, sent by one background thread."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from db_backup.config import SinkSettings
from db_backup.observe import events
from db_backup.observe.jobtable.outbox import Outbox, flush
from db_backup.observe.jobtable.rows import BACKUP, DRILL, Entry
from db_backup.observe.jobtable.settings import SinkError
from db_backup.util.secrets import mask

if TYPE_CHECKING:
    from db_backup.config import Config

log = structlog.get_logger("db_backup.observe.jobtable")

NAME = "sink"  # the consumer's name in logs and in consumer-failures.json


class SinkConsumer:
    """Puts each report into the outbox and sends the outbox from one background thread.

    A woken sender waits `gather` seconds before it sends, so the reports of a many-database
    run go in a few transactions over one connection each, not one connection per report;
    `close` cuts the wait short.
    """

    name = NAME
    gather = 2.0

    def __init__(self, settings: SinkSettings, state: Path) -> None:
        self.settings = settings
        self.state = state
        self.outbox = Outbox(state)
        self._wake = threading.Event()
        self._closing = False
        self._closed = threading.Event()  # ends the gathering wait at once
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def handle(self, event: events.Event) -> None:
        """Queues a backup or drill report and wakes the sender; other events are not ours."""
        if event.kind not in {events.BACKUP, events.DRILL} or event.report is None:
            return
        kind = BACKUP if event.kind == events.BACKUP else DRILL
        name = event.report_path.name if event.report_path is not None else ""
        self.outbox.put(Entry(kind, name, dict(event.report)))
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="db-backup-sink", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def close(self, timeout: float) -> None:
        """Waits up to `timeout` seconds for the sending under way; the rest waits on disk."""
        self._closing = True
        self._closed.set()
        self._wake.set()
        thread = self._thread
        if thread is None:
            return
        thread.join(timeout)
        if thread.is_alive():
            log.warning(
                "database sink still sending; the rest waits in the outbox for the next run",
                waited_s=timeout,
                outbox=str(self.outbox.directory),
            )

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._closed.wait(self.gather)  # more reports arrive meanwhile: one flush for all
            self._wake.clear()
            self.flush_once()
            if self._closing and not self._wake.is_set():
                return

    def flush_once(self) -> None:
        """Sends the outbox once; logs and counts a failure, never raises."""
        try:
            result = flush(self.settings, self.outbox)
        except SinkError as exc:
            log.warning(
                "database sink down; the reports wait in the outbox for the next run",
                error=mask(str(exc)),
                waiting=len(self.outbox.pending()),
                outbox=str(self.outbox.directory),
            )
            events.count_failure(self.state, NAME)
            return
        except Exception as exc:  # a bug must not kill the thread silently
            log.error("database sink failed", error=mask(f"{type(exc).__name__}: {exc}"))
            events.count_failure(self.state, NAME)
            return
        if result.rejected:
            events.count_failure(self.state, NAME, result.rejected)
        if result.sent:
            log.info("database sink updated", target=result.target, reports=result.sent)


def consumer(config: Config) -> SinkConsumer | None:
    """Returns the sink consumer of `config`, or None when there is no `sink:` section."""
    settings = config.sink
    if settings is None:
        return None
    return SinkConsumer(settings, config.directories.state)
