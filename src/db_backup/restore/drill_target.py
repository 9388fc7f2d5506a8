"""Where a drill restores to, and removing what an interrupted drill left there.

A drill restores into a throwaway cluster (postgres.cluster) of the major version the backup
came from, or into scratch databases (`db_backup_drill_<job>_<n>`) on a configured server,
which the drill's role creates and so owns; it drops only scratch databases it owns. The
scratch databases in use are written down in `<drill dir>/<job>.scratch-databases.json`, so a
drill that was killed leaves a note of what the next one has to drop.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from db_backup.config import Config, DrillSettings, JobConfig
from db_backup.postgres.cluster import (
    ClusterError,
    ThrowawayCluster,
    stop_and_remove,
    stop_processes_naming,
    user_entry,
)
from db_backup.postgres.server import Server, drop_own_database, server_env
from db_backup.reports.model import StoredReport, write_json_atomically
from db_backup.util.execute import CommandError, child_env

log = structlog.get_logger("db_backup.restore.drill")

SCRATCH_MARKER = "scratch-databases.json"
SCRATCH_PREFIX = "db_backup_drill_"


def drill_root(settings: DrillSettings, job: JobConfig) -> Path:
    """Returns the directory of a job's drill (downloads, the throwaway cluster)."""
    return settings.directory / job.name


def scratch_marker(settings: DrillSettings, job: JobConfig) -> Path:
    """Returns the file naming the scratch databases a drill of `job` made and did not drop."""
    return settings.directory / f"{job.name}.{SCRATCH_MARKER}"


@dataclass
class ScratchDatabases:
    """The scratch databases a drill made on the configured server, written down until dropped."""

    config: Config
    job: JobConfig
    settings: DrillSettings
    names: list[str] = field(default_factory=list)

    def next_name(self) -> str:
        """Returns the name the next scratch database gets."""
        return f"{SCRATCH_PREFIX}{self.job.name}_{len(self.names) + 1}".lower()

    def add(self, name: str) -> None:
        """Writes `name` down before the database is made, so a killed drill leaves a note."""
        self.names.append(name)
        self.write_marker()

    def drop(self) -> None:
        """Drops the scratch databases made so far; one that cannot be dropped is logged."""
        if self.settings.server is None:
            return
        with server_env(self.config, self.settings.server, self.job) as server:
            for name in list(self.names):
                try:
                    if not drop_own_database(server, name):
                        log.error(
                            "scratch database not dropped: another role owns it",
                            database=name,
                            role=server.connection.user,
                        )
                    self.names.remove(name)
                except CommandError as exc:
                    log.error("scratch database not dropped", database=name, error=str(exc))

    def write_marker(self) -> None:
        """Writes down the scratch databases not yet dropped (removed when there are none)."""
        marker = scratch_marker(self.settings, self.job)
        if self.names:
            write_json_atomically(marker, self.names, 0o600)  # type: ignore[arg-type]
        else:
            marker.unlink(missing_ok=True)


def cleanup_leftovers(config: Config, job: JobConfig, settings: DrillSettings) -> list[str]:
    """Removes what an interrupted drill of `job` left; returns what was removed."""
    removed: list[str] = []
    root = drill_root(settings, job)
    if stop_and_remove(root, None, settings.run_as):
        removed.append(str(root))
    # A killed drill's pg_restore or psql runs on in its own session until it notices the server
    # is gone; it is this program's own child, so it goes too.
    removed.extend(f"process {pid}" for pid in stop_processes_naming(root))
    marker = scratch_marker(settings, job)
    if marker.exists():
        try:
            names = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            names = []
        if settings.server is not None and isinstance(names, list):
            with server_env(config, settings.server, job) as server:
                for name in names:
                    if isinstance(name, str) and name.startswith(SCRATCH_PREFIX):
                        with contextlib.suppress(CommandError):
                            if drop_own_database(server, name):
                                removed.append(f"database {name}")
        marker.unlink(missing_ok=True)
    return removed


def server_major(document: dict[str, Any]) -> int | None:
    """Returns the major version of the server a backup report's dump was taken from."""
    match = re.match(r"(\d+)", str(document.get("serverVersion", "")))
    return int(match.group(1)) if match else None


@contextlib.contextmanager
def drill_target(
    scratch: ScratchDatabases, first: StoredReport
) -> Iterator[tuple[Server, ThrowawayCluster | None]]:
    """Yields the server to restore into: a throwaway cluster, or the configured one.

    The throwaway cluster has the major version of the server `first` was dumped from; it is
    removed afterwards. On a configured server, the scratch databases are dropped afterwards.
    """
    settings, job = scratch.settings, scratch.job
    root = drill_root(settings, job)
    made_parent = not settings.directory.exists()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.geteuid() == 0 and settings.target == "cluster":
        # initdb and the server run as `run_as`, inside this directory; a drill directory
        # made by root now must stay usable by the service, which runs as that user.
        owner = user_entry(settings.run_as)
        os.chown(root, owner.pw_uid, owner.pw_gid)
        if made_parent:
            os.chown(settings.directory, owner.pw_uid, owner.pw_gid)
    if settings.target == "server":
        assert settings.server is not None  # the config rules require it
        try:
            with server_env(scratch.config, settings.server, job) as server:
                yield server, None
        finally:
            scratch.drop()
            if not scratch.names:
                scratch_marker(settings, job).unlink(missing_ok=True)
        return
    major = server_major(first.document)
    if major is None:
        raise ClusterError(
            f"{first.path.name}: serverVersion is missing; cannot pick the server version "
            "of the throwaway cluster"
        )
    bindir = Path(settings.bindir.replace("{major}", str(major)))
    cluster = ThrowawayCluster(root / "cluster", bindir, settings.run_as)
    try:
        connection = cluster.start()
        yield Server(connection, child_env({"PGCONNECT_TIMEOUT": "10"})), cluster
    finally:
        cluster.remove()
