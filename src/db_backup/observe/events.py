"""What happened, told to whoever listens: the one seam between a run and its consumers.

`job.py` publishes one `Event` after each backup report is written (retention included), and
`drill.py` one after each drill report; the daemon publishes conditions (a job gone stale, low
disk space, OSS usage over its limit) and their clearing. Consumers (the database sink, the
notifiers, the metrics file) plug in by one line in `CONSUMERS`: a module with a
`consumer(config) -> Consumer | None` factory (None: not configured). The modules are imported
only when an event is published, so commands that publish nothing stay quick to start.

A consumer that fails is logged (masked) and counted in `<state>/consumer-failures.json`, which
the metrics read, and never changes the backup's status: `publish` does not raise.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from db_backup.util.fsutil import write_atomically
from db_backup.util.secrets import mask

if TYPE_CHECKING:
    from db_backup.config import Config

log = structlog.get_logger("db_backup.observe.events")

# Kinds of events.
BACKUP = "backup"  # a backup report was written; `report` is its document
DRILL = "drill"  # a drill report was written; `report` is its document
STALE = "stale"  # a job has no SUCCESS within its max_age (ok=False), or again has one (ok=True)
LOW_DISK = "low_disk"  # a local directory's free space under its threshold (ok=False) or back
OSS_USAGE = "oss_usage"  # the bucket's usage over the configured limit (ok=False) or back
SUSPICIOUS_SIZE = "suspicious_size"  # retention held back: the newest backup looks too small

# The consumers, as "module:factory"; each factory returns None when it is not configured.
CONSUMERS: tuple[str, ...] = (
    "db_backup.observe.jobtable.sender:consumer",
    "db_backup.observe.metrics:consumer",
    "db_backup.observe.alerts:consumer",
)


@dataclass(frozen=True)
class Event:
    """One thing that happened, with what a consumer needs to tell about it."""

    kind: str
    job: str
    database: str = ""
    ok: bool = True  # a SUCCESS report, or a condition that cleared
    message: str = ""  # the error or the condition, in English, masked
    report: Mapping[str, Any] | None = None  # the report document as written
    report_path: Path | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


class Consumer(Protocol):
    """Something that takes events: the sink, a notifier set, the metrics writer."""

    name: str

    def handle(self, event: Event) -> None:
        """Takes one event; may raise (the dispatcher logs and counts it)."""

    def close(self, timeout: float) -> None:
        """Finishes background work (sending, flushing) within `timeout` seconds."""


ConsumerFactory = Callable[["Config"], "Consumer | None"]


def _load(spec: str) -> ConsumerFactory:
    module, _, attribute = spec.partition(":")
    factory: ConsumerFactory = getattr(importlib.import_module(module), attribute)
    return factory


class Dispatcher:
    """The consumers built from one config; publishes to each, isolating their failures."""

    def __init__(
        self, config: Config, factories: Mapping[str, ConsumerFactory] | None = None
    ) -> None:
        self.config = config
        self.consumers: list[Consumer] = []
        if factories is None:
            factories = {}
            for spec in CONSUMERS:
                try:
                    factories[spec] = _load(spec)
                except Exception as exc:  # a broken consumer must not stop the others
                    self._failed(spec, "cannot load", exc)
        for name, factory in factories.items():
            try:
                consumer = factory(config)
            except Exception as exc:
                self._failed(name, "cannot start", exc)
                continue
            if consumer is not None:
                self.consumers.append(consumer)

    def publish(self, event: Event) -> None:
        """Hands `event` to every consumer; never raises."""
        for consumer in self.consumers:
            try:
                consumer.handle(event)
            except Exception as exc:
                self._failed(consumer.name, f"failed on a {event.kind} event", exc, event)

    def close(self, timeout: float = 30.0) -> None:
        """Lets every consumer finish its background work, `timeout` seconds in all at most."""
        for consumer in self.consumers:
            try:
                consumer.close(timeout)
            except Exception as exc:
                self._failed(consumer.name, "failed to finish", exc)

    def _failed(self, name: str, what: str, exc: BaseException, event: Event | None = None) -> None:
        log.error(
            f"consumer {what}",
            consumer=name,
            job=event.job if event else None,
            database=(event.database or None) if event else None,
            error=mask(f"{type(exc).__name__}: {exc}"),
        )
        count_failure(self.config.directories.state, name)


_lock = threading.Lock()
_current: Dispatcher | None = None


def dispatcher(config: Config) -> Dispatcher:
    """Returns the dispatcher of `config`, building it (and closing the previous) on a change."""
    global _current
    with _lock:
        previous = _current
        if previous is not None and previous.config is config:
            return previous
        _current = Dispatcher(config)
        current = _current
    if previous is not None:
        previous.close(timeout=5.0)
    return current


def publish(config: Config, event: Event) -> None:
    """Publishes `event` to the consumers configured in `config`; never raises."""
    try:
        dispatcher(config).publish(event)
    except Exception as exc:  # the seam itself must not fail a backup either
        log.error("event not published", kind=event.kind, job=event.job, error=mask(str(exc)))


def shutdown(timeout: float = 30.0) -> None:
    """Closes the current dispatcher (end of a command or of the daemon)."""
    global _current
    with _lock:
        current, _current = _current, None
    if current is not None:
        current.close(timeout)


# Failure counts survive the process (a `db-backup run` is one process, the daemon another),
# so the metrics can show them: one small JSON object {consumer: count} in the state directory.
FAILURES_FILE = "consumer-failures.json"


def count_failure(state: Path, name: str, amount: int = 1) -> None:
    """Adds `amount` to the failure count of consumer `name` (logged, never raised, on error)."""
    path = state / FAILURES_FILE
    try:
        with _failures_locked(state):
            counts = failure_counts(state)
            counts[name] = counts.get(name, 0) + amount
            write_atomically(path, json.dumps(counts, sort_keys=True).encode(), 0o640)
    except OSError as exc:
        log.warning("consumer failure not counted", consumer=name, error=f"{path}: {exc.strerror}")


def failure_counts(state: Path) -> dict[str, int]:
    """Returns {consumer: failures so far}; an unreadable or hand-edited file counts as empty."""
    try:
        data = json.loads((state / FAILURES_FILE).read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, int) and not isinstance(v, bool)}


@contextlib.contextmanager
def _failures_locked(state: Path) -> Iterator[None]:
    fd = open(state / f".{FAILURES_FILE}.lock", "a")  # noqa: SIM115 - held for the block
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fd.close()
