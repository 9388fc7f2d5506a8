"""The typed sections of the optional features: capacity, the sink, metrics, alerts, drills.

Built when the file loads, like every other section, so `check-config`, the daemon's start and a
reload see their mistakes; the modules that use them read these fields and nothing else. The
defaults here are the schema's (tests hold them equal), for code that builds settings without
a config file.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from db_backup.config.sections import Connection
from db_backup.util.secrets import SecretRef


@dataclass(frozen=True)
class CapacitySettings:
    """The effective `capacity` settings of one job (top level, then the job's own keys)."""

    check_space: bool = True
    estimate_from_last: int = 5
    margin_percent: float = 20.0
    margin_min: int = 0
    warn_free_percent: float = 10.0
    warn_free_size: int = 0
    suspicious_ratio: float = 0.5
    oss_usage_limit: int | None = None
    oss_usage_warn_percent: float | None = None


@dataclass(frozen=True)
class SinkSettings:
    """The `sink:` section of the config, defaults filled in."""

    dsn: SecretRef
    connect_timeout_seconds: int
    migrate: bool
    batch_size: int


@dataclass(frozen=True)
class MetricsSettings:
    """The `metrics` section with its defaults."""

    textfile_dir: Path | None
    file_name: str
    listen: str | None
    allow_remote: bool

    @property
    def textfile(self) -> Path | None:
        """Returns the path of the metrics file, None when no file is written."""
        return self.textfile_dir / self.file_name if self.textfile_dir else None


# Event names as the config spells them (`notifications.events`, a channel's `events`).
BACKUP_FAILED = "backup_failed"
BACKUP_SUCCEEDED = "backup_succeeded"
DRILL_FAILED = "drill_failed"
STALE = "stale"
LOW_DISK = "low_disk"
OSS_USAGE = "oss_usage"
SUSPICIOUS_SIZE = "suspicious_size"

DEFAULT_SMTP_PORTS = {"starttls": 587, "ssl": 465, "none": 25}


@dataclass(frozen=True)
class ChannelSettings:
    """One channel as configured; secret references are resolved when a message is sent."""

    name: str
    type: str
    url: SecretRef | None = None
    secret: SecretRef | None = None
    authorization: SecretRef | None = None
    format: str = "markdown"
    language: str | None = None
    events: tuple[str, ...] | None = None
    smtp_host: str | None = None
    smtp_port: int | None = None
    security: str = "starttls"
    ca_file: str | None = None
    username: str | None = None
    password: SecretRef | None = None
    sender: str | None = None
    to: tuple[str, ...] = ()

    def wants(self, event_name: str) -> bool:
        """Returns whether this channel takes messages about `event_name`."""
        return self.events is None or event_name in self.events

    @property
    def port(self) -> int:
        """Returns the SMTP port: the configured one, else the usual one for `security`."""
        return self.smtp_port or DEFAULT_SMTP_PORTS[self.security]


@dataclass(frozen=True)
class NotifySettings:
    """The whole `notifications` section with its defaults (no channel: no alerts)."""

    language: str = "en"
    hostname: str | None = None
    remind_every_hours: float = 24.0
    recovery: bool = True
    timeout_seconds: float = 10.0
    attempts: int = 3
    backoff_seconds: float = 2.0
    events: tuple[str, ...] = (
        BACKUP_FAILED,
        DRILL_FAILED,
        STALE,
        LOW_DISK,
        OSS_USAGE,
        SUSPICIOUS_SIZE,
    )
    channels: tuple[ChannelSettings, ...] = ()

    def enabled(self, event_name: str) -> bool:
        """Returns whether `event_name` alerts at all."""
        return event_name in self.events

    def host(self) -> str:
        """Returns the host name that messages show."""
        return self.hostname or socket.gethostname()


@dataclass(frozen=True)
class DrillCheck:
    """One user SQL check: a query that must return one row holding true."""

    name: str
    sql: str
    database: str | None
    timeout_seconds: float = 60.0


@dataclass(frozen=True)
class DrillSettings:
    """A job's `drill` section with every default filled in."""

    enabled: bool
    schedule: str
    target: str
    source: str
    directory: Path
    bindir: str
    run_as: str
    server: Connection | None
    globals: bool
    jobs: int
    timeout_seconds: int
    space_factor: float
    checks: tuple[DrillCheck, ...]
    check_user: str = "db_backup_drill_check"
    check_password: SecretRef | None = None
