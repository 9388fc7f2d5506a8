"""Loads /etc/db-backup/config.yaml: schema validation first, then rules that span fields.

Every mistake is reported at once, each with its place (`jobs[1].schedule: ...`), so a user fixes
a config in one round. The result is a tree of frozen dataclasses with every default filled in.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jsonschema
import yaml

from db_backup.schedule import validate_cron, validate_timezone

DEFAULT_CONFIG_PATH = "/etc/db-backup/config.yaml"
CONFIG_ENV = "DB_BACKUP_CONFIG"


class ConfigError(Exception):
    """A config file that cannot be used; `problems` holds one line per mistake."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


@dataclass(frozen=True)
class SecretRef:
    """Where a secret is read from: an environment variable, a file or a systemd credential."""

    kind: str  # "env" | "file" | "credential"
    name: str

    def describe(self) -> str:
        """Returns where the secret comes from, for messages (never the secret)."""
        return f"{self.kind} {self.name!r}"


@dataclass(frozen=True)
class Directories:
    data: Path
    reports: Path
    state: Path
    logs: Path | None


@dataclass(frozen=True)
class OssConfig:
    endpoint: str
    bucket: str
    prefix: str
    region: str | None
    signature_version: str
    access_key_id: SecretRef
    access_key_secret: SecretRef
    security_token: SecretRef | None
    server_side_encryption: str | None
    kms_key_id: str | None
    storage_class: str | None
    connect_timeout_seconds: float
    read_timeout_seconds: float
    retries: int
    part_size_mib: int
    parallel_parts: int
    buffer_mib: int
    bandwidth_limit_mbps: float | None


@dataclass(frozen=True)
class RcloneConfig:
    remote: str
    prefix: str
    config_file: str | None


@dataclass(frozen=True)
class StorageConfig:
    mode: str
    tool: str
    oss: OssConfig | None
    rclone: RcloneConfig | None


@dataclass(frozen=True)
class DaemonConfig:
    max_parallel: int
    max_dumps: int
    catch_up_window_hours: float
    stall_seconds: int


@dataclass(frozen=True)
class Connection:
    host: str
    port: int
    user: str
    password: SecretRef | None
    connect_timeout_seconds: int


@dataclass(frozen=True)
class DumpOptions:
    format: str
    compression: int
    jobs: int


@dataclass(frozen=True)
class Retention:
    days: int
    keep_last: int


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int
    delay_seconds: int


@dataclass(frozen=True)
class AgeEncryption:
    """Client-side encryption with age: the recipients to encrypt to, the identity to decrypt."""

    recipients: tuple[str, ...]
    recipients_file: Path | None
    identity: SecretRef | None


@dataclass(frozen=True)
class JobConfig:
    name: str
    schedule: str
    timezone: str | None
    databases: str | tuple[str, ...]  # "all" or explicit names
    exclude_databases: tuple[str, ...]
    connection: Connection
    dump: DumpOptions
    globals: bool
    mode: str  # effective storage mode (job override or storage.mode)
    retention: Retention
    timeout_seconds: int | None
    retry: RetryPolicy
    catch_up: bool
    parallel_databases: int
    encryption: AgeEncryption | None = None  # effective: the job's own, else storage's

    @property
    def discovers_databases(self) -> bool:
        """Returns whether the database list is found at run time (`databases: all`)."""
        return self.databases == "all"

    def zone(self) -> ZoneInfo:
        """Returns the schedule's zone: `timezone`, else the host's zone."""
        return ZoneInfo(self.timezone) if self.timezone else host_zone()


@dataclass(frozen=True)
class Config:
    source: str
    directories: Directories
    storage: StorageConfig
    daemon: DaemonConfig
    jobs: tuple[JobConfig, ...]
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    def job(self, name: str) -> JobConfig:
        """Returns the job called `name`; raises KeyError naming the known jobs."""
        for job in self.jobs:
            if job.name == name:
                return job
        known = ", ".join(j.name for j in self.jobs)
        raise KeyError(f"no job named {name!r} in {self.source} (jobs: {known})")


def host_zone() -> ZoneInfo:
    """Returns the host's time zone: $TZ, else /etc/localtime's target, else /etc/timezone, else UTC."""
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


@cache
def schema() -> dict[str, Any]:
    """Returns the config JSON schema shipped in the package."""
    text = resources.files("db_backup").joinpath("schema.yaml").read_text(encoding="utf-8")
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def config_path(explicit: str | None = None) -> str:
    """Returns the config path: --config, else $DB_BACKUP_CONFIG, else the packaged default."""
    return explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def load(path: str) -> Config:
    """Returns the validated config at `path`; raises ConfigError listing every mistake."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, [f"cannot read the config file: {exc.strerror}"]) from None
    return loads(text, source=path)


def loads(text: str, source: str = "<config>") -> Config:
    """Returns the validated config parsed from YAML `text`; raises ConfigError."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"{where}not valid YAML: {problem}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            source, ["the top level must be a mapping of keys (jobs:, storage:, ...)"]
        )
    problems = list(_schema_problems(data))
    if problems:
        raise ConfigError(source, problems)
    problems = list(_rule_problems(data))
    if problems:
        raise ConfigError(source, problems)
    return _build(data, source)


def format_path(parts: Iterable[str | int]) -> str:
    """Returns a config path like `jobs[1].connection.port` for messages."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _schema_problems(data: dict[str, Any]) -> Iterable[str]:
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    yield from sorted(_describe(error) for error in errors)


def _describe(error: jsonschema.ValidationError) -> str:
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return "; ".join(
            f"At '{format_path([*path, key])}': unknown key (known here: {', '.join(allowed)})"
            for key in extra
        )
    if error.validator == "required":
        missing = str(error.message).split("'")[1] if "'" in error.message else error.message
        return f"At '{format_path([*path, missing])}': required key is missing"
    if error.validator == "enum":
        choices = ", ".join("null" if c is None else str(c) for c in error.validator_value)
        return f"At '{format_path(path)}': {error.instance!r} is not one of: {choices}"
    if error.validator == "oneOf" and error.context:
        best = jsonschema.exceptions.best_match(error.context)
        if best is not None:
            return f"At '{format_path(path)}': {_plain(best)}"
    return f"At '{format_path(path)}': {_plain(error)}"


def _plain(error: jsonschema.ValidationError) -> str:
    if error.validator == "type":
        wanted = error.validator_value
        wanted_text = " or ".join(wanted) if isinstance(wanted, list) else wanted
        return f"must be {wanted_text}, got {type(error.instance).__name__} {error.instance!r}"
    if error.validator == "pattern":
        return f"{error.instance!r} does not match the allowed form {error.validator_value}"
    if error.validator in {"minProperties", "maxProperties"}:
        return "a secret reference needs exactly one of: env, file, credential"
    return str(error.message)


def _rule_problems(data: dict[str, Any]) -> Iterable[str]:
    """Yields mistakes the schema cannot see: cron, zones, duplicates, storage that needs setup."""
    storage = data.get("storage", {})
    seen: dict[str, int] = {}
    for index, job in enumerate(data["jobs"]):
        where = f"jobs[{index}]"
        if job["name"] in seen:
            yield f"At '{where}.name': {job['name']!r} is also the name of jobs[{seen[job['name']]}]"
        seen.setdefault(job["name"], index)
        cron_error = validate_cron(job["schedule"])
        if cron_error:
            yield f"At '{where}.schedule': {cron_error}"
        if job.get("timezone"):
            tz_error = validate_timezone(job["timezone"])
            if tz_error:
                yield f"At '{where}.timezone': {tz_error}"
        dump = job.get("dump", {})
        fmt = dump.get("format", "custom")
        if dump.get("jobs", 1) > 1 and fmt != "directory":
            yield f"At '{where}.dump.jobs': parallel dump workers need format: directory"
        mode = job.get("mode") or storage.get("mode", "both")
        if fmt == "directory" and mode != "local":
            yield (
                f"At '{where}.dump.format': the directory format is stored locally only; "
                f"set mode: local on this job"
            )
        encryption = _effective_encryption(job, storage)
        if encryption is not None:
            if fmt == "directory":
                yield (
                    f"At '{where}.dump.format': the directory format cannot be encrypted; "
                    "use format custom (or plain), or set encryption: false on this job"
                )
            if job.get("encryption") and not _has_recipients(job["encryption"]):
                yield (
                    f"At '{where}.encryption.age': needs at least one recipient "
                    "(recipients or recipients_file)"
                )
        if mode in {"oss", "both"}:
            tool = storage.get("tool", "oss2")
            section = "oss" if tool == "oss2" else "rclone"
            if section not in storage:
                yield (
                    f"At '{where}.mode': {mode!r} needs a 'storage.{section}' section "
                    f"(storage.tool is {tool})"
                )
    if storage.get("encryption") and not _has_recipients(storage["encryption"]):
        yield "At 'storage.encryption.age': needs at least one recipient (recipients or recipients_file)"
    yield from _identity_problems(data)
    oss = storage.get("oss")
    if oss:
        if oss.get("signature_version", "v4") == "v4" and not oss.get("region"):
            yield "At 'storage.oss.region': signature_version v4 needs the bucket's region"
        if oss.get("server_side_encryption") == "KMS" and not oss.get("kms_key_id"):
            yield "At 'storage.oss.kms_key_id': server_side_encryption KMS needs a key id"
        prefix = oss.get("prefix", "postgres/backups/")
        if prefix and not prefix.endswith("/"):
            yield f"At 'storage.oss.prefix': {prefix!r} must end with '/'"
    directories = data.get("directories", {})
    for key in ("data", "reports", "state", "logs"):
        value = directories.get(key)
        if value and not os.path.isabs(value):
            yield f"At 'directories.{key}': {value!r} must be an absolute path"


def _identity_problems(data: dict[str, Any]) -> Iterable[str]:
    """Yields an identity file kept beside the backups: whoever has the backups has the key."""
    dirs_schema = schema()["properties"]["directories"]["properties"]
    directories = data.get("directories", {})
    kept = {
        key: Path(directories.get(key) or dirs_schema[key]["default"])
        for key in ("data", "reports")
    }
    places: list[tuple[str, Any]] = [
        ("storage.encryption", data.get("storage", {}).get("encryption"))
    ]
    places += [
        (f"jobs[{i}].encryption", job.get("encryption")) for i, job in enumerate(data["jobs"])
    ]
    for where, encryption in places:
        identity = ((encryption or {}).get("age") or {}).get("identity") or {}
        if "file" not in identity or not os.path.isabs(identity["file"]):
            continue
        for key, directory in kept.items():
            if Path(identity["file"]).is_relative_to(directory):
                yield (
                    f"At '{where}.age.identity': the identity is inside directories.{key}; keep "
                    "the private key away from the backups (a systemd credential is best)"
                )


def _effective_encryption(job: dict[str, Any], storage: dict[str, Any]) -> dict[str, Any] | None:
    """Returns the encryption mapping that applies to a raw job (its own, else storage's)."""
    own = job.get("encryption")
    if own is False:
        return None
    found = own or storage.get("encryption")
    return found if isinstance(found, dict) else None


def _has_recipients(encryption: dict[str, Any]) -> bool:
    age = encryption.get("age") or {}
    return bool(age.get("recipients") or age.get("recipients_file"))


def _encryption(raw: dict[str, Any] | None) -> AgeEncryption | None:
    if not raw:
        return None
    age = raw["age"]
    recipients_file = age.get("recipients_file")
    return AgeEncryption(
        recipients=tuple(age.get("recipients") or ()),
        recipients_file=Path(recipients_file) if recipients_file else None,
        identity=_secret(age.get("identity")),
    )


def _defaults(schema_node: dict[str, Any], given: dict[str, Any] | None) -> dict[str, Any]:
    """Returns `given` with every missing key that has a schema default filled in."""
    out = dict(given or {})
    for key, prop in schema_node.get("properties", {}).items():
        if key not in out and "default" in prop:
            out[key] = prop["default"]
    return out


def _secret(value: dict[str, str] | None) -> SecretRef | None:
    if not value:
        return None
    ((kind, name),) = value.items()
    return SecretRef(kind, name)


def _build(data: dict[str, Any], source: str) -> Config:
    props = schema()["properties"]
    dirs = _defaults(props["directories"], data.get("directories"))
    storage_schema = props["storage"]
    storage = _defaults(storage_schema, data.get("storage"))
    oss_config = None
    if storage.get("oss"):
        oss = _defaults(storage_schema["properties"]["oss"], storage["oss"])
        oss_config = OssConfig(
            endpoint=oss["endpoint"],
            bucket=oss["bucket"],
            prefix=oss["prefix"],
            region=oss["region"],
            signature_version=oss["signature_version"],
            access_key_id=_required_secret(oss["access_key_id"]),
            access_key_secret=_required_secret(oss["access_key_secret"]),
            security_token=_secret(oss["security_token"]),
            server_side_encryption=oss["server_side_encryption"],
            kms_key_id=oss["kms_key_id"],
            storage_class=oss["storage_class"],
            connect_timeout_seconds=float(oss["connect_timeout_seconds"]),
            read_timeout_seconds=float(oss["read_timeout_seconds"]),
            retries=oss["retries"],
            part_size_mib=oss["part_size_mib"],
            parallel_parts=oss["parallel_parts"],
            buffer_mib=oss["buffer_mib"],
            bandwidth_limit_mbps=oss["bandwidth_limit_mbps"],
        )
    rclone_config = None
    if storage.get("rclone"):
        rc = _defaults(storage_schema["properties"]["rclone"], storage["rclone"])
        rclone_config = RcloneConfig(rc["remote"], rc["prefix"], rc["config_file"])
    daemon = _defaults(props["daemon"], data.get("daemon"))
    job_schema = props["jobs"]["items"]["properties"]
    jobs = []
    for raw_job in data["jobs"]:
        job = _defaults(props["jobs"]["items"], raw_job)
        conn = _defaults(job_schema["connection"], job["connection"])
        dump = _defaults(job_schema["dump"], job["dump"])
        retention = _defaults(job_schema["retention"], job["retention"])
        retry = _defaults(job_schema["retry"], job["retry"])
        databases = job["databases"]
        jobs.append(
            JobConfig(
                name=job["name"],
                schedule=job["schedule"],
                timezone=job["timezone"],
                databases="all" if databases == "all" else tuple(_as_list(databases)),
                exclude_databases=tuple(job["exclude_databases"]),
                connection=Connection(
                    host=conn["host"],
                    port=conn["port"],
                    user=conn["user"],
                    password=_secret(conn["password"]),
                    connect_timeout_seconds=conn["connect_timeout_seconds"],
                ),
                dump=DumpOptions(dump["format"], dump["compression"], dump["jobs"]),
                globals=job["globals"],
                mode=job["mode"] or storage["mode"],
                retention=Retention(retention["days"], retention["keep_last"]),
                timeout_seconds=job["timeout_seconds"],
                retry=RetryPolicy(retry["attempts"], retry["delay_seconds"]),
                catch_up=job["catch_up"],
                parallel_databases=job["parallel_databases"],
                encryption=_encryption(_effective_encryption(job, storage)),
            )
        )
    return Config(
        source=source,
        directories=Directories(
            data=Path(dirs["data"]),
            reports=Path(dirs["reports"]),
            state=Path(dirs["state"]),
            logs=Path(dirs["logs"]) if dirs["logs"] else None,
        ),
        storage=StorageConfig(storage["mode"], storage["tool"], oss_config, rclone_config),
        daemon=DaemonConfig(
            max_parallel=daemon["max_parallel"],
            max_dumps=daemon["max_dumps"],
            catch_up_window_hours=float(daemon["catch_up_window_hours"]),
            stall_seconds=daemon["stall_seconds"],
        ),
        jobs=tuple(jobs),
        raw=data,
    )


def _required_secret(value: dict[str, str]) -> SecretRef:
    ref = _secret(value)
    assert ref is not None  # the schema requires it
    return ref


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)
