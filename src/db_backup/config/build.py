"""Builds the typed config from a document that passed both checks, every default filled in.

Runs only on a document without mistakes (`loader.loads` checks first), so nothing here can
fail: each section becomes its frozen dataclass once, and no module reads the document later.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from db_backup.config import features, sections
from db_backup.config.model import Config, JobConfig
from db_backup.config.rules import effective_encryption, mapping
from db_backup.config.schema_file import node, schema, with_defaults
from db_backup.config.units import parse_duration, parse_size
from db_backup.util.secrets import SecretRef


def build(data: dict[str, Any], source: str) -> Config:
    """Returns the Config of a valid document `data` read from `source`."""
    dirs = with_defaults(node("directories"), data.get("directories"))
    directories = sections.Directories(
        data=Path(dirs["data"]),
        reports=Path(dirs["reports"]),
        state=Path(dirs["state"]),
        logs=Path(dirs["logs"]) if dirs["logs"] else None,
    )
    storage = with_defaults(node("storage"), data.get("storage"))
    daemon = with_defaults(node("daemon"), data.get("daemon"))
    capacity = features.CapacitySettings(
        **_capacity_values(with_defaults(node("capacity"), data.get("capacity")))
    )
    return Config(
        source=source,
        directories=directories,
        storage=_storage(storage),
        daemon=sections.DaemonConfig(
            max_parallel=daemon["max_parallel"],
            max_dumps=daemon["max_dumps"],
            catch_up_window_hours=float(daemon["catch_up_window_hours"]),
            stall_seconds=daemon["stall_seconds"],
        ),
        jobs=tuple(_job(job, storage, directories, capacity) for job in data["jobs"]),
        run_as=data.get("run_as", node("run_as")["default"]),
        capacity=capacity,
        sink=_sink(data.get("sink")),
        metrics=_metrics(data.get("metrics")),
        notifications=_notifications(data.get("notifications")),
        hooks=_hooks(data.get("hooks")),
    )


def _storage(storage: dict[str, Any]) -> sections.StorageConfig:
    """Returns the `storage` section (`storage` has its defaults filled in)."""
    oss_config = None
    if storage.get("oss"):
        oss = with_defaults(node("storage", "oss"), storage["oss"])
        # Every field is the schema key of the same name; only secret references are converted.
        oss_config = sections.OssConfig(
            **{
                f.name: _secret_or_value(oss[f.name])
                for f in dataclasses.fields(sections.OssConfig)
            }
        )
    rclone_config = None
    if storage.get("rclone"):
        rc = with_defaults(node("storage", "rclone"), storage["rclone"])
        rclone_config = sections.RcloneConfig(rc["remote"], rc["prefix"], rc["config_file"])
    return sections.StorageConfig(storage["mode"], storage["tool"], oss_config, rclone_config)


def _job(
    given: dict[str, Any],
    storage: dict[str, Any],
    directories: sections.Directories,
    capacity: features.CapacitySettings,
) -> JobConfig:
    """Returns one job; `capacity` is the top level's, which the job's own keys override."""
    job = with_defaults(node("jobs")["items"], given)
    conn = with_defaults(node("jobs", "connection"), job["connection"])
    dump = with_defaults(node("jobs", "dump"), job["dump"])
    retention = with_defaults(node("jobs", "retention"), job["retention"])
    retry = with_defaults(node("jobs", "retry"), job["retry"])
    databases = job["databases"]
    own_capacity = {k: v for k, v in mapping(job["capacity"]).items() if v is not None}
    return JobConfig(
        name=job["name"],
        schedule=job["schedule"],
        timezone=job["timezone"],
        databases="all" if databases == "all" else tuple(_names(databases)),
        exclude_databases=tuple(job["exclude_databases"]),
        connection=sections.Connection(
            host=conn["host"],
            port=conn["port"],
            user=conn["user"],
            password=_secret(conn["password"]),
            connect_timeout_seconds=conn["connect_timeout_seconds"],
        ),
        dump=sections.DumpOptions(
            dump["format"], dump["compression"], dump["jobs"], _selection(dump)
        ),
        database_dump=_database_dump(databases, dump),
        globals=job["globals"],
        mode=job["mode"] or storage["mode"],
        retention=sections.Retention(
            **{f.name: retention[f.name] for f in dataclasses.fields(sections.Retention)}
        ),
        hooks=_hooks(job.get("hooks")),
        timeout_seconds=job["timeout_seconds"],
        retry=sections.RetryPolicy(retry["attempts"], retry["delay_seconds"]),
        catch_up=job["catch_up"],
        parallel_databases=job["parallel_databases"],
        drill=_drill(job["drill"], conn["connect_timeout_seconds"], directories.state),
        # YAML 1.1 reads a bare `off` as false; the schema allows both for "off".
        row_counts=job["row_counts"] or "off",
        encryption=_encryption(effective_encryption(job, storage)),
        own_encryption=bool(job.get("encryption")),
        capacity=dataclasses.replace(capacity, **_capacity_values(own_capacity)),
        max_age=_max_age(job["max_age"]),
    )


def _max_age(value: int | str | bool | None) -> timedelta | Literal[False] | None:
    """Returns `max_age` as given: None (from the schedule), False (off) or a duration."""
    if value is None:
        return None
    return parse_duration(value) or False


def _size_or_zero(value: int | float | str | None) -> int:
    """Returns a size in bytes, 0 for none."""
    return parse_size(value) or 0


def _float_or_none(value: float | None) -> float | None:
    """Returns `value` as a float, None for none."""
    return float(value) if value is not None else None


# How each `capacity` key becomes its field (sizes in bytes).
_CAPACITY: dict[str, Callable[[Any], Any]] = {
    "check_space": bool,
    "estimate_from_last": int,
    "margin_percent": float,
    "margin_min": _size_or_zero,
    "warn_free_percent": float,
    "warn_free_size": _size_or_zero,
    "suspicious_ratio": float,
    "oss_usage_limit": parse_size,
    "oss_usage_warn_percent": _float_or_none,
}


def _capacity_values(values: dict[str, Any]) -> dict[str, Any]:
    """Returns the CapacitySettings fields of the `capacity` keys in `values`."""
    return {key: _CAPACITY[key](value) for key, value in values.items()}


def _drill(section: dict[str, Any], connect_timeout: int, state: Path) -> features.DrillSettings:
    """Returns a job's drill settings; the scratch server connects as the job's server does."""
    values = with_defaults(node("jobs", "drill"), section)
    server = None
    if values["server"]:
        given = with_defaults(node("jobs", "drill", "server")["oneOf"][1], values["server"])
        server = sections.Connection(
            host=given["host"],
            port=int(given["port"]),
            user=given["user"],
            password=_secret(given["password"]),
            connect_timeout_seconds=connect_timeout,
        )
    return features.DrillSettings(
        enabled=bool(values["enabled"]),
        schedule=str(values["schedule"]),
        target=str(values["target"]),
        source=str(values["source"]),
        directory=Path(values["directory"] or state / "drill"),
        bindir=str(values["bindir"]),
        run_as=str(values["run_as"]),
        server=server,
        globals=bool(values["globals"]),
        jobs=int(values["jobs"]),
        timeout_seconds=int(values["timeout_seconds"]),
        space_factor=float(values["space_factor"]),
        checks=tuple(
            features.DrillCheck(
                c["name"], c["sql"], c.get("database"), float(c.get("timeout_seconds", 60))
            )
            for c in values["checks"] or []
        ),
        check_user=str(values["check_user"]),
        check_password=_secret(values["check_password"]),
    )


def _sink(section: dict[str, Any] | None) -> features.SinkSettings | None:
    """Returns the sink's settings, None without a `sink` section."""
    if not section:
        return None
    values = with_defaults(node("sink"), section)
    return features.SinkSettings(
        dsn=_required_secret(values["dsn"]),
        connect_timeout_seconds=int(values["connect_timeout_seconds"]),
        migrate=bool(values["migrate"]),
        batch_size=int(values["batch_size"]),
    )


def _metrics(section: object) -> features.MetricsSettings | None:
    """Returns the metrics settings, None without a `metrics` section."""
    if not isinstance(section, dict):
        return None
    values = with_defaults(node("metrics"), section)
    return features.MetricsSettings(
        textfile_dir=Path(values["textfile_dir"]) if values["textfile_dir"] else None,
        file_name=str(values["file_name"]),
        listen=values["listen"] or None,
        allow_remote=bool(values["allow_remote"]),
    )


def _notifications(section: object) -> features.NotifySettings:
    """Returns the `notifications` section (no channel when absent)."""
    values = with_defaults(node("notifications"), section)
    event_props = node("notifications", "events")["properties"]
    given_events = values["events"] or {}
    return features.NotifySettings(
        language=values["language"],
        hostname=values["hostname"],
        remind_every_hours=float(values["remind_every_hours"]),
        recovery=bool(values["recovery"]),
        timeout_seconds=float(values["timeout_seconds"]),
        attempts=int(values["attempts"]),
        backoff_seconds=float(values["backoff_seconds"]),
        events=tuple(
            name for name, prop in event_props.items() if given_events.get(name, prop["default"])
        ),
        channels=tuple(_channel(channel) for channel in values["channels"] or []),
    )


def _channel(section: dict[str, Any]) -> features.ChannelSettings:
    """Returns one alert channel; its URL, secret and password stay references."""
    channel = with_defaults(node("notifications", "channels")["items"], section)
    return features.ChannelSettings(
        name=channel["name"],
        type=channel["type"],
        url=_secret(channel["url"]),
        secret=_secret(channel["secret"]),
        authorization=_secret(channel["authorization"]),
        format=channel["format"],
        language=channel["language"],
        events=tuple(channel["events"]) if channel["events"] is not None else None,
        smtp_host=channel["smtp_host"],
        smtp_port=channel["smtp_port"],
        security=channel["security"],
        ca_file=channel["ca_file"],
        username=channel["username"],
        password=_secret(channel["password"]),
        sender=channel["from"],
        to=tuple(channel["to"] or ()),
    )


def _encryption(section: dict[str, Any] | None) -> sections.AgeEncryption | None:
    """Returns the age settings of an `encryption` mapping, None without one."""
    if not section:
        return None
    age = section["age"]
    recipients_file = age.get("recipients_file")
    return sections.AgeEncryption(
        recipients=tuple(age.get("recipients") or ()),
        recipients_file=Path(recipients_file) if recipients_file else None,
        identity=_secret(age.get("identity")),
    )


def _secret(value: dict[str, str] | None) -> SecretRef | None:
    """Returns a `{kind: name}` mapping as a SecretRef, None for none."""
    if not value:
        return None
    ((kind, name),) = value.items()
    return SecretRef(kind, name)


def _required_secret(value: dict[str, str]) -> SecretRef:
    """Returns the SecretRef of a reference the schema requires."""
    ref = _secret(value)
    assert ref is not None  # the schema requires it
    return ref


def _secret_or_value(value: Any) -> Any:
    """Returns a secret reference ({env|file|credential: name}) as a SecretRef, else the value."""
    return _secret(value) if isinstance(value, dict) else value


def _names(value: str | list[str | dict[str, Any]]) -> list[str]:
    """Returns the database names of `databases` (one name, or a list of names and objects)."""
    if isinstance(value, str):
        return [value]
    return [entry if isinstance(entry, str) else entry["name"] for entry in value]


def _selection(values: dict[str, Any]) -> sections.DumpSelection:
    """Returns the dump selection of a `dump` mapping (keys not given take the defaults)."""
    given = with_defaults(schema()["$defs"]["dump_selection"], values)
    timeout = given["lock_wait_timeout"]
    return sections.DumpSelection(
        exclude_table_data=tuple(given["exclude_table_data"]),
        schemas=tuple(given["schemas"]),
        exclude_schemas=tuple(given["exclude_schemas"]),
        tables=tuple(given["tables"]),
        exclude_tables=tuple(given["exclude_tables"]),
        no_owner=bool(given["no_owner"]),
        no_privileges=bool(given["no_privileges"]),
        no_comments=bool(given["no_comments"]),
        lock_wait_timeout=parse_duration(timeout) if timeout is not None else None,
    )


def _database_dump(
    databases: str | list[str | dict[str, Any]], job_dump: dict[str, Any]
) -> tuple[tuple[str, sections.DumpSelection], ...]:
    """Returns each database with its own `dump:` and its selection: its keys over the job's."""
    if isinstance(databases, str):
        return ()
    return tuple(
        (entry["name"], _selection({**job_dump, **entry["dump"]}))
        for entry in databases
        if isinstance(entry, dict) and entry.get("dump")
    )


def _hooks(section: dict[str, Any] | None) -> sections.Hooks:
    """Returns a `hooks` section (top level or a job's), timeouts defaulted."""
    given = with_defaults(node("hooks"), section)
    default_timeout = float(
        node("hooks", "before_backup")["items"]["properties"]["timeout_seconds"]["default"]
    )
    return sections.Hooks(
        **{
            event: tuple(
                sections.HookCommand(
                    tuple(h["command"]), float(h.get("timeout_seconds", default_timeout))
                )
                for h in given.get(event) or []
            )
            for event in (f.name for f in dataclasses.fields(sections.Hooks))
        }
    )
