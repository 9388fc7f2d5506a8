"""Capacity conditions (low disk, OSS usage, suspicious size): raised while they hold, cleared once."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import structlog

from db_backup.config import Config
from db_backup.observe import events
from db_backup.util.fsutil import describe_os_error, write_atomically

log = structlog.get_logger("db_backup.backup.conditions")


class Conditions:
    """Which conditions are raised now (`<state>/capacity/conditions.json`), to publish a clear.

    A condition is published (ok=False) every time it is found, so reminders work; its clearing
    (ok=True) only once, when it was raised before.
    """

    def __init__(self, state: Path) -> None:
        self.path = state / "capacity" / "conditions.json"

    def update(self, key: str, raised: bool) -> bool:
        """Sets `key` to `raised`; returns whether it was raised before."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / "conditions.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                current = json.loads(self.path.read_bytes())
            except (OSError, ValueError):
                current = {}
            if not isinstance(current, dict):
                current = {}
            before = bool(current.get(key))
            if raised:
                current[key] = True
            else:
                current.pop(key, None)
            if before != raised:
                write_atomically(self.path, json.dumps(current, sort_keys=True).encode(), 0o640)
        return before


def publish_condition(
    config: Config,
    key: str,
    raised: bool,
    event: events.Event,
) -> None:
    """Publishes a raised condition, or its clearing when it was raised before."""
    try:
        before = Conditions(config.directories.state).update(key, raised)
    except OSError as exc:
        log.warning(
            "condition state not kept",
            condition=key,
            error=describe_os_error(exc, config.directories.state),
        )
        before = True  # unsure: a clear too many beats a clear never sent
    if raised or before:
        events.publish(config, event)
