"""The config as the program uses it: `Config` and its `JobConfig`s, frozen, defaults filled in.

Every section is typed here or in `sections` and `features`; nothing keeps the document as
written, so a value that loads is a value that works when it is used.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from db_backup.config import features, sections
from db_backup.util.secrets import SecretRef


@dataclass(frozen=True)
class JobConfig:
    """One backup job with every default filled in and its effective settings."""

    name: str
    schedule: str
    timezone: str | None
    databases: str | tuple[str, ...]  # "all" or explicit names
    exclude_databases: tuple[str, ...]
    connection: sections.Connection
    dump: sections.DumpOptions
    globals: bool
    mode: str  # effective storage mode (job override or storage.mode)
    retention: sections.Retention
    timeout_seconds: int | None
    retry: sections.RetryPolicy
    catch_up: bool
    parallel_databases: int
    drill: features.DrillSettings
    capacity: features.CapacitySettings  # effective: the top level's, then the job's own keys
    # The staleness limit as given: None = derived from the schedule when checked, False = off.
    max_age: timedelta | Literal[False] | None
    row_counts: str = "exact"  # exact | estimate | off
    encryption: sections.AgeEncryption | None = None  # effective: the job's own, else storage's
    own_encryption: bool = False  # whether `encryption` is the job's own section
    hooks: sections.Hooks = field(
        default_factory=sections.Hooks
    )  # the job's own (the top level's run first: `Config.hooks`)
    # Databases with their own `dump:` in `databases`, with the selection that results.
    database_dump: tuple[tuple[str, sections.DumpSelection], ...] = ()

    def dump_selection(self, database: str) -> sections.DumpSelection:
        """Returns what goes into `database`'s dump: its own selection, else the job's."""
        for name, selection in self.database_dump:
            if name == database:
                return selection
        return self.dump.selection

    @property
    def discovers_databases(self) -> bool:
        """Returns whether the database list is found at run time (`databases: all`)."""
        return self.databases == "all"

    def zone(self) -> ZoneInfo:
        """Returns the schedule's zone: `timezone`, else the host's zone."""
        return ZoneInfo(self.timezone) if self.timezone else host_zone()


@dataclass(frozen=True)
class Config:
    """The whole config: directories, storage, the daemon, the jobs and the optional sections."""

    source: str
    directories: sections.Directories
    storage: sections.StorageConfig
    daemon: sections.DaemonConfig
    jobs: tuple[JobConfig, ...]
    capacity: features.CapacitySettings  # the top level's (a job's own is `JobConfig.capacity`)
    sink: features.SinkSettings | None  # None: no `sink` section
    metrics: features.MetricsSettings | None  # None: no `metrics` section
    notifications: features.NotifySettings  # no channel: no alerts
    run_as: str | None = "postgres"  # the user a root-started db-backup becomes; None: stay root
    hooks: sections.Hooks = field(
        default_factory=sections.Hooks
    )  # every job's (a job's own run after these)

    def job(self, name: str) -> JobConfig:
        """Returns the job called `name`; raises KeyError naming the known jobs."""
        for job in self.jobs:
            if job.name == name:
                return job
        known = ", ".join(j.name for j in self.jobs)
        raise KeyError(f"no job named {name!r} in {self.source} (jobs: {known})")


def host_zone() -> ZoneInfo:
    """Returns the host's time zone: $TZ, else /etc/localtime's target, else /etc/timezone, else UTC."""
    # croniter (behind the schedule module) loads only where a zone is needed, not with the config.
    from db_backup.config.schedule import validate_timezone

    candidates = [os.environ.get("TZ", "").lstrip(":")]
    with contextlib.suppress(OSError):
        target = os.readlink("/etc/localtime")
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    with contextlib.suppress(OSError):
        candidates.append(Path("/etc/timezone").read_text(encoding="utf-8").strip())
    for name in candidates:
        if name and validate_timezone(name) is None:
            return ZoneInfo(name)
    return ZoneInfo("UTC")


def secret_refs(config: Config) -> list[tuple[str, SecretRef]]:
    """Returns every secret reference in `config` with its place, e.g. `jobs[0].connection.password`."""
    refs: list[tuple[str, SecretRef]] = []
    oss = config.storage.oss
    if oss is not None:
        refs.append(("storage.oss.access_key_id", oss.access_key_id))
        refs.append(("storage.oss.access_key_secret", oss.access_key_secret))
        if oss.security_token is not None:
            refs.append(("storage.oss.security_token", oss.security_token))
    for index, job in enumerate(config.jobs):
        if job.connection.password is not None:
            refs.append((f"jobs[{index}].connection.password", job.connection.password))
        server = job.drill.server
        if server is not None and server.password is not None:
            refs.append((f"jobs[{index}].drill.server.password", server.password))
        if job.drill.check_password is not None:
            refs.append((f"jobs[{index}].drill.check_password", job.drill.check_password))
    if config.sink is not None:
        refs.append(("sink.dsn", config.sink.dsn))
    for index, channel in enumerate(config.notifications.channels):
        for key in ("url", "secret", "authorization", "password"):
            ref = getattr(channel, key)
            if ref is not None:
                refs.append((f"notifications.channels[{index}].{key}", ref))
    return refs
