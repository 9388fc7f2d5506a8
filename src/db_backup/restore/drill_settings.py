"""A job's `drill` section, every default filled in: what, where and when to drill."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from db_backup.config import Config, Connection, JobConfig, SecretRef, schema


@dataclass(frozen=True)
class DrillCheck:
    """One user SQL check: a query that must return one row holding true."""

    name: str
    sql: str
    database: str | None


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


def drill_settings(config: Config, job: JobConfig) -> DrillSettings:
    """Returns the drill settings of `job` (read from the validated config document)."""
    given = dict(job.drill)
    props = schema()["properties"]["jobs"]["items"]["properties"]["drill"]["properties"]
    values = {k: given.get(k, p.get("default")) for k, p in props.items()}
    server = None
    if values["server"]:
        raw = values["server"]
        password = raw.get("password")
        server = Connection(
            host=raw.get("host", "/var/run/postgresql"),
            port=int(raw.get("port", 5432)),
            user=raw.get("user", "postgres"),
            password=SecretRef(*next(iter(password.items()))) if password else None,
            connect_timeout_seconds=job.connection.connect_timeout_seconds,
        )
    directory = values["directory"] or str(config.directories.state / "drill")
    return DrillSettings(
        enabled=bool(values["enabled"]),
        schedule=str(values["schedule"]),
        target=str(values["target"]),
        source=str(values["source"]),
        directory=Path(directory),
        bindir=str(values["bindir"]),
        run_as=str(values["run_as"]),
        server=server,
        globals=bool(values["globals"]),
        jobs=int(values["jobs"]),
        timeout_seconds=int(values["timeout_seconds"]),
        space_factor=float(values["space_factor"]),
        checks=tuple(
            DrillCheck(c["name"], c["sql"], c.get("database")) for c in values["checks"] or []
        ),
    )
