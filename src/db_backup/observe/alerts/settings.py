"""The `notifications` section as settings: defaults from the schema, secrets still references."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from db_backup.config import SecretRef, schema

if TYPE_CHECKING:
    from db_backup.config import Config

# Event names as the config spells them.
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
    """The whole `notifications` section with its defaults."""

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


def _ref(value: Any) -> SecretRef | None:
    if not value:
        return None
    ((kind, name),) = value.items()
    return SecretRef(kind, name)


def parse(section: dict[str, Any]) -> NotifySettings:
    """Returns the settings of a validated `notifications` mapping, schema defaults filled in."""
    props = schema()["properties"]["notifications"]["properties"]
    values = {key: section.get(key, prop.get("default")) for key, prop in props.items()}
    event_props = props["events"]["properties"]
    given_events = values["events"] or {}
    events = tuple(
        name for name, prop in event_props.items() if given_events.get(name, prop["default"])
    )
    channel_props = props["channels"]["items"]["properties"]
    channels = []
    for raw in values["channels"] or []:
        channel = {key: raw.get(key, prop.get("default")) for key, prop in channel_props.items()}
        channels.append(
            ChannelSettings(
                name=channel["name"],
                type=channel["type"],
                url=_ref(channel["url"]),
                secret=_ref(channel["secret"]),
                authorization=_ref(channel["authorization"]),
                format=channel["format"],
                language=channel["language"],
                events=tuple(channel["events"]) if channel["events"] is not None else None,
                smtp_host=channel["smtp_host"],
                smtp_port=channel["smtp_port"],
                security=channel["security"],
                ca_file=channel["ca_file"],
                username=channel["username"],
                password=_ref(channel["password"]),
                sender=channel["from"],
                to=tuple(channel["to"] or ()),
            )
        )
    return NotifySettings(
        language=values["language"],
        hostname=values["hostname"],
        remind_every_hours=float(values["remind_every_hours"]),
        recovery=bool(values["recovery"]),
        timeout_seconds=float(values["timeout_seconds"]),
        attempts=int(values["attempts"]),
        backoff_seconds=float(values["backoff_seconds"]),
        events=events,
        channels=tuple(channels),
    )


def from_config(config: Config) -> NotifySettings | None:
    """Returns the notification settings of `config`, or None when it has no channel."""
    section = config.raw.get("notifications")
    if not section:
        return None
    settings = parse(section)
    return settings if settings.channels else None
