"""structlog set-up: journald native fields under systemd, console on a TTY, JSON lines otherwise.

Secrets are masked by a processor, so no call site has to remember to.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from db_backup.journal import JournalRenderer, stderr_is_journal
from db_backup.secrets import mask

_file_lock = threading.Lock()


def mask_secrets(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Replaces every registered secret in every string value with ***."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = mask(value)
        elif isinstance(value, list | tuple):
            event_dict[key] = [mask(v) if isinstance(v, str) else v for v in value]
    return event_dict


def drop_none(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Removes fields whose value is None, so the canonical line carries only what applies."""
    return {k: v for k, v in event_dict.items() if v is not None}


class DailyFile:
    """A processor that appends each event as a JSON line to `<dir>/backup_<YYYY-MM-DD>.log`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __call__(self, _logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        """Writes the event to today's file (UTC date) and passes it on unchanged."""
        path = self.directory / f"backup_{datetime.now(UTC):%Y-%m-%d}.log"
        line = json.dumps(event_dict, default=str, ensure_ascii=False) + "\n"
        try:
            with _file_lock, path.open("a", encoding="utf-8") as handle:
                handle.write(line)
        except OSError as exc:
            sys.stderr.write(f"db-backup: cannot write log file {path}: {exc.strerror}\n")
        return event_dict


def setup(level: str = "info", log_dir: Path | None = None, force: str | None = None) -> str:
    """Configures structlog for this process and returns the output kind chosen.

    `force` (or $DB_BACKUP_LOG_FORMAT) picks "journal", "console" or "json"; by default the
    journal when stderr is connected to it, the console on a TTY, JSON lines otherwise.
    """
    kind = force or os.environ.get("DB_BACKUP_LOG_FORMAT") or _detect()
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        drop_none,
        mask_secrets,
    ]
    if log_dir is not None:
        processors.append(DailyFile(log_dir))
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    if kind == "journal":
        processors.append(JournalRenderer())
    elif kind == "console":
        processors.append(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    else:
        processors.append(structlog.processors.JSONRenderer(default=str, ensure_ascii=False))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    return kind


def _detect() -> str:
    if stderr_is_journal():
        return "journal"
    return "console" if sys.stderr.isatty() else "json"
