"""The typed sections every backup needs: directories, storage, the daemon, a job's parts.

Frozen dataclasses built once when the file loads (`config.build`), every default filled in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from db_backup.util.secrets import SecretRef


@dataclass(frozen=True)
class Directories:
    """Where dumps, reports, state and log files live."""

    data: Path
    reports: Path
    state: Path
    logs: Path | None


@dataclass(frozen=True, kw_only=True)
class OssOptions:
    """The `storage.oss` settings that reach the OSS target as the config gives them.

    A new setting of that kind is a key in the schema and a field here, of the same name: the
    config (`OssConfig`) and the target's settings (`storage.oss.OssSettings`) both inherit it.
    The defaults are the schema's (a test holds them equal), for code that builds settings
    without a config file.
    """

    endpoint: str
    bucket: str
    prefix: str = "postgres/backups/"
    region: str | None = None
    signature_version: str = "v4"  # "v1" | "v4"
    server_side_encryption: str | None = None  # None | "AES256" | "KMS"
    kms_key_id: str | None = None
    storage_class: str | None = None  # Standard | IA | Archive | ColdArchive
    connect_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 120.0
    retries: int = 5
    parallel_parts: int = 2


@dataclass(frozen=True, kw_only=True)
class OssConfig(OssOptions):
    """`storage.oss` as configured: secrets as references, sizes in the config's units."""

    access_key_id: SecretRef
    access_key_secret: SecretRef
    security_token: SecretRef | None
    part_size_mib: int
    buffer_mib: int
    bandwidth_limit_mbps: float | None


@dataclass(frozen=True)
class RcloneConfig:
    """`storage.rclone`: the remote, the path under it and rclone's config file."""

    remote: str
    prefix: str
    config_file: str | None


@dataclass(frozen=True)
class StorageConfig:
    """`storage`: the default mode, the remote tool and its section."""

    mode: str
    tool: str
    oss: OssConfig | None
    rclone: RcloneConfig | None


@dataclass(frozen=True)
class DaemonConfig:
    """`daemon`: how much runs at once, catch-up and the stall limit."""

    max_parallel: int
    max_dumps: int
    catch_up_window_hours: float
    stall_seconds: int


@dataclass(frozen=True)
class Connection:
    """How to reach a PostgreSQL server (the password stays a reference)."""

    host: str
    port: int
    user: str
    password: SecretRef | None
    connect_timeout_seconds: int


@dataclass(frozen=True)
class DumpSelection:
    """What goes into a dump: pg_dump's selection patterns and ownership options (typed, never a
    free-form argument string); the defaults dump the whole database as before."""

    exclude_table_data: tuple[str, ...] = ()
    schemas: tuple[str, ...] = ()
    exclude_schemas: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    exclude_tables: tuple[str, ...] = ()
    no_owner: bool = False
    no_privileges: bool = False
    no_comments: bool = False
    lock_wait_timeout: timedelta | None = None

    @property
    def is_whole(self) -> bool:
        """Returns whether this selection is the default one (the whole database, as before)."""
        return self == DumpSelection()


@dataclass(frozen=True)
class DumpOptions:
    """pg_dump's format, -Z level and -j workers, and the job's selection."""

    format: str
    compression: int
    jobs: int
    selection: DumpSelection = DumpSelection()


@dataclass(frozen=True)
class Retention:
    """How long backups are kept, how many always, and the calendar rules (0: off)."""

    days: int
    keep_last: int
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0


@dataclass(frozen=True)
class RetryPolicy:
    """Extra attempts after a FAILED run and the wait before each."""

    attempts: int
    delay_seconds: int


@dataclass(frozen=True)
class AgeEncryption:
    """Client-side encryption with age: the recipients to encrypt to, the identity to decrypt."""

    recipients: tuple[str, ...]
    recipients_file: Path | None
    identity: SecretRef | None


@dataclass(frozen=True)
class HookCommand:
    """One configured hook: its argv and how long it may run."""

    argv: tuple[str, ...]
    timeout_seconds: float


@dataclass(frozen=True)
class Hooks:
    """The hooks of each event (top level or one job's own)."""

    before_backup: tuple[HookCommand, ...] = ()
    after_backup: tuple[HookCommand, ...] = ()
    on_failure: tuple[HookCommand, ...] = ()
    after_drill: tuple[HookCommand, ...] = ()

    def of(self, event: str) -> tuple[HookCommand, ...]:
        """Returns the hooks of `event` (a field name)."""
        hooks: tuple[HookCommand, ...] = getattr(self, event)
        return hooks
