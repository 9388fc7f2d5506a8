"""structlog set-up: journald native fields under systemd, console on a TTY, JSON lines otherwise.

Secrets are masked by a processor, so no call site has to remember to. The standard library's
`logging` (oss2, urllib3, any library) is routed into the same pipeline, so its records get the
same masking, the journal fields and the daily log file instead of reaching stderr as plain text.
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

from db_backup.observe.journal import JournalRenderer, JournalSender, stderr_is_journal
from db_backup.util.secrets import mask

_file_lock = threading.Lock()
LIBRARY_MIN_LEVEL = logging.WARNING  # below DEBUG, libraries' INFO lines are noise


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
        self.failed = False  # said once: a line per event about the same directory is noise
        try:  # the package makes /var/log/db-backup; a directory.logs of the admin's may not exist
            directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError as exc:
            self._cannot_write(directory, exc)

    def _cannot_write(self, path: Path, exc: OSError) -> None:
        """Says once on stderr that the log file cannot be written, and why."""
        if not self.failed:
            self.failed = True
            sys.stderr.write(
                f"db-backup: cannot write log files in {self.directory} ({path}: "
                f"{exc.strerror}); logging to stderr only\n"
            )

    def __call__(self, _logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        """Writes the event to today's file (UTC date) and passes it on unchanged."""
        path = self.directory / f"backup_{datetime.now(UTC):%Y-%m-%d}.log"
        line = json.dumps(event_dict, default=str, ensure_ascii=False) + "\n"
        try:
            with _file_lock, path.open("a", encoding="utf-8") as handle:
                handle.write(line)
        except OSError as exc:
            self._cannot_write(path, exc)
        return event_dict


class StdlibToStructlog(logging.Handler):
    """A `logging` handler that hands every record to the structlog pipeline.

    The record's message becomes the event, its logger name the `logger` field, and a traceback
    is formatted (and masked) by the pipeline like one of ours.
    """

    def emit(self, record: logging.LogRecord) -> None:
        """Logs the record through structlog at its level; never raises into the library."""
        try:
            try:
                event = record.getMessage()
            except Exception:  # a library's bad format string must not lose the record
                event = str(record.msg)
            exc_info = record.exc_info if record.exc_info and record.exc_info[1] else None
            structlog.get_logger().log(record.levelno, event, logger=record.name, exc_info=exc_info)
        except Exception:
            self.handleError(record)


def route_stdlib_logging(level: int) -> None:
    """Makes the root `logging` logger send library records to structlog.

    Only libraries log through `logging` here. They get WARNING and above, or everything when
    `level` is DEBUG: oss2 logs every error answer at INFO (expected 404s too), which our own
    lines already say better.
    """
    root = logging.getLogger()
    _remove_bridge(root)
    root.addHandler(StdlibToStructlog())
    root.setLevel(level if level <= logging.DEBUG else max(level, LIBRARY_MIN_LEVEL))


def setup(
    level: str = "info",
    log_dir: Path | None = None,
    force: str | None = None,
    journal: JournalSender | None = None,
) -> str:
    """Configures structlog (and routes `logging` into it) and returns the output kind chosen.

    `force` (or $DB_BACKUP_LOG_FORMAT) picks "journal", "console" or "json"; by default the
    journal when stderr is connected to it, the console on a TTY, JSON lines otherwise.
    `journal` is where journal entries go (default: journald's socket).
    """
    kind = force or os.environ.get("DB_BACKUP_LOG_FORMAT") or _detect()
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,  # the traceback becomes text the masking sees
        drop_none,
        mask_secrets,
    ]
    if log_dir is not None:
        processors.append(DailyFile(log_dir))
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    if kind == "journal":
        processors.append(JournalRenderer(journal))
    elif kind == "console":
        processors.append(
            structlog.dev.ConsoleRenderer(
                colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
            )
        )
    else:
        processors.append(structlog.processors.JSONRenderer(default=str, ensure_ascii=False))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    route_stdlib_logging(numeric)
    return kind


def _detect() -> str:
    if stderr_is_journal():
        return "journal"
    return "console" if sys.stderr.isatty() else "json"


def reset() -> None:
    """Undoes `setup`: structlog's defaults, and `logging` no longer routed into structlog."""
    root = logging.getLogger()
    _remove_bridge(root)
    root.setLevel(logging.WARNING)
    structlog.reset_defaults()


def _remove_bridge(root: logging.Logger) -> None:
    for handler in list(root.handlers):
        if isinstance(handler, StdlibToStructlog):
            root.removeHandler(handler)
