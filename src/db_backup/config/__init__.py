"""Loads /etc/db-backup/config.yaml: schema validation first, then rules that span fields.

Every mistake is reported at once, each with its place (`jobs[1].schedule: ...`), so a user fixes
a config in one round. The result is a tree of frozen dataclasses with every default filled in.
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from db_backup.config.schedule import validate_cron, validate_timezone
from db_backup.util.secrets import SecretRef

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
class Directories:
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
    row_counts: str = "exact"  # exact | estimate | off
    # The validated `drill` section as written (drill.drill_settings fills in the defaults).
    drill: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    encryption: AgeEncryption | None = None  # effective: the job's own, else storage's
    own_encryption: bool = False  # whether `encryption` is the job's own section
    # The validated job mapping as written (defaults applied to the top level only): the
    # sections read by their own modules (e.g. `max_age` by the staleness check) live here.
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

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
    run_as: str | None = "postgres"  # the user a root-started db-backup becomes; None: stay root
    # The validated document as written: the sections that their own modules read and give
    # defaults to (`sink`, `notifications`, `metrics`, `capacity`) are taken from here.
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

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
    text = resources.files("db_backup.config").joinpath("schema.yaml").read_text(encoding="utf-8")
    # libyaml's loader when PyYAML has it: this file is parsed by every command (status too)
    # and the pure-Python loader takes about 6x the CPU time. Errors here are our bugs.
    loaded: dict[str, Any] = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return loaded


def config_path(explicit: str | None = None) -> str:
    """Returns the config path: --config, else $DB_BACKUP_CONFIG, else the packaged default."""
    return explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def load(path: str) -> Config:
    """Returns the validated config at `path`; raises ConfigError listing every mistake."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(path, [f"cannot read the config file: {exc.strerror}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [_not_utf8(raw, exc)]) from None
    return loads(text, source=path)


def loads(text: str, source: str = "<config>") -> Config:
    """Returns the validated config parsed from YAML `text`; raises ConfigError.

    Every check runs that the document's structure allows: duplicate keys, the schema and the
    rules that span fields are reported together, so one round of fixes is enough.
    """
    data, problems = _parse(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            source, [*problems, "the top level must be a mapping of keys (jobs:, storage:, ...)"]
        )
    problems += _schema_problems(data)
    problems += _rule_problems(data)
    if problems:
        raise ConfigError(source, problems)
    return _build(data, source)


def _not_utf8(raw: bytes, exc: UnicodeDecodeError) -> str:
    """Returns the message for a config that is not UTF-8, naming the first bad byte's place."""
    before = raw[: exc.start]
    line = before.count(b"\n") + 1
    # Characters, not bytes: everything before the first bad byte is valid UTF-8.
    column = len(before[before.rfind(b"\n") + 1 :].decode("utf-8")) + 1
    return (
        f"line {line}, column {column} (byte offset {exc.start}): not UTF-8 text "
        f"(byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
    )


def _parse(text: str, source: str) -> tuple[Any, list[str]]:
    """Returns the YAML document in `text` and one problem per duplicate key; raises ConfigError.

    Duplicate keys are found on the node tree, where both keys still have their line numbers
    (PyYAML itself keeps the last value silently).
    """
    try:
        loader = yaml.SafeLoader(text)  # checks for unprintable characters at once
    except yaml.YAMLError as exc:
        raise ConfigError(source, [_yaml_problem(exc, text)]) from None
    try:
        node = loader.get_single_node()
        problems = list(_duplicate_keys(node)) if node is not None else []
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise ConfigError(source, [_yaml_problem(exc, text)]) from None
    finally:
        loader.dispose()
    return data, problems


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """Returns a YAML error as one line: where the parser gave up and where the problem began."""
    if isinstance(exc, yaml.reader.ReaderError):
        before = text[: exc.position]
        line = before.count("\n") + 1
        column = exc.position - (before.rfind("\n") + 1) + 1
        return (
            f"line {line}, column {column}: not valid YAML: character U+{exc.character:04X} "
            f"is not allowed ({exc.reason})"
        )
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f"not valid YAML: {exc}"
    mark, context_mark = exc.problem_mark, exc.context_mark
    where = f"{_mark(mark)}: " if mark else ""
    problem = (exc.problem or "").removeprefix("but ")
    message = f"{where}not valid YAML: {problem or exc.context or 'cannot parse'}"
    if exc.context and problem:
        # Where the parser gave up is often far from the cause (an unclosed quote fails at the
        # end of the file); the context mark says where the unfinished construct started.
        message += f" ({exc.context}"
        if context_mark is not None and _mark(context_mark) != _mark(mark):
            message += f" that started at {_mark(context_mark)}"
        message += ")"
    return message


def _mark(mark: yaml.Mark | None) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def _duplicate_keys(root: yaml.Node) -> Iterable[str]:
    """Yields a problem for each key that appears twice in one mapping, with both line numbers."""
    pending: list[tuple[yaml.Node, list[str | int]]] = [(root, [])]
    visited: set[int] = set()
    while pending:
        node, path = pending.pop(0)
        if id(node) in visited:  # an alias points back to a node already checked
            continue
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            pending.extend((item, [*path, index]) for index, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], yaml.Node] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                if key_node.tag == "tag:yaml.org,2002:merge":
                    pending.append((value_node, path))
                    continue
                identity = (key_node.tag, key_node.value)
                if identity in first:
                    earlier, later = first[identity].start_mark, key_node.start_mark
                    places = (
                        f"line {earlier.line + 1} and line {later.line + 1}"
                        if earlier.line != later.line
                        else f"line {later.line + 1}, columns {earlier.column + 1} and "
                        f"{later.column + 1}"
                    )
                    yield (
                        f"At '{format_path([*path, key_node.value])}': key given twice, "
                        f"at {places}; keep one (YAML would silently use the last)"
                    )
                else:
                    first[identity] = key_node
                pending.append((value_node, [*path, key_node.value]))


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
    sink_dsn = _secret((config.raw.get("sink") or {}).get("dsn"))
    if sink_dsn is not None:
        refs.append(("sink.dsn", sink_dsn))
    notifications = config.raw.get("notifications") or {}
    for index, channel in enumerate(notifications.get("channels") or []):
        for key in ("url", "secret", "authorization", "password"):
            if channel.get(key):
                place = f"notifications.channels[{index}].{key}"
                refs.append((place, _required_secret(channel[key])))
    return refs


def format_path(parts: Iterable[str | int]) -> str:
    """Returns a config path like `jobs[1].connection.port` for messages."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _schema_problems(data: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    return sorted(problem for error in errors for problem in _describe(error))


def _describe(error: jsonschema.ValidationError) -> list[str]:
    """Returns one problem per mistake in `error` (an unknown-keys error names several keys)."""
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        # YAML keys may be numbers, booleans or null, which do not sort with strings.
        extra = sorted(str(key) for key in error.instance if key not in allowed)
        return [
            f"At '{format_path([*path, key])}': unknown key (known here: {', '.join(allowed)})"
            for key in extra
        ]
    return [_describe_one(error, path)]


def _describe_one(error: jsonschema.ValidationError, path: list[str | int]) -> str:
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
    """Yields mistakes the schema cannot see: cron, zones, duplicates, storage that needs setup.

    Runs on a document that may also break the schema: each rule looks only at values of the
    type it needs (the schema pass names the others), so one mistake never hides another.
    Defaults come from the schema.
    """
    props = schema()["properties"]
    storage = _defaults(props["storage"], _mapping(data.get("storage")))
    seen: dict[str, int] = {}
    jobs = data.get("jobs")
    for index, job in enumerate(jobs if isinstance(jobs, list) else []):
        if not isinstance(job, dict):
            continue
        where = f"jobs[{index}]"
        name = job.get("name")
        if isinstance(name, str):
            if name in seen:
                yield f"At '{where}.name': {name!r} is also the name of jobs[{seen[name]}]"
            seen.setdefault(name, index)
        if isinstance(job.get("schedule"), str):
            cron_error = validate_cron(job["schedule"])
            if cron_error:
                yield f"At '{where}.schedule': {cron_error}"
        if job.get("timezone") and isinstance(job["timezone"], str):
            tz_error = validate_timezone(job["timezone"])
            if tz_error:
                yield f"At '{where}.timezone': {tz_error}"
        dump = _defaults(props["jobs"]["items"]["properties"]["dump"], _mapping(job.get("dump")))
        fmt = dump["format"]
        workers = dump["jobs"]
        if isinstance(workers, int) and workers > 1 and fmt != "directory":
            yield f"At '{where}.dump.jobs': parallel dump workers need format: directory"
        mode = job.get("mode") or storage["mode"]
        yield from _drill_problems(where, _mapping(job.get("drill")), mode)
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
        tool = storage["tool"]
        if fmt == "directory" and mode in {"oss", "both"} and tool == "rclone":
            yield (
                f"At '{where}.dump.format': the directory format cannot be uploaded with "
                f"storage.tool: rclone; use storage.tool: oss2 or set mode: local on this job"
            )
        if mode in {"oss", "both"} and tool in {"oss2", "rclone"}:
            section = "oss" if tool == "oss2" else "rclone"
            if section not in storage:
                yield (
                    f"At '{where}.mode': {mode!r} needs a 'storage.{section}' section "
                    f"(storage.tool is {tool})"
                )
    if storage.get("encryption") and not _has_recipients(storage["encryption"]):
        yield "At 'storage.encryption.age': needs at least one recipient (recipients or recipients_file)"
    yield from _identity_problems(data)
    if _mapping(storage.get("oss")):
        oss = _defaults(props["storage"]["properties"]["oss"], storage["oss"])
        if oss["signature_version"] == "v4" and not oss["region"]:
            yield "At 'storage.oss.region': signature_version v4 needs the bucket's region"
        if oss["server_side_encryption"] == "KMS" and not oss["kms_key_id"]:
            yield "At 'storage.oss.kms_key_id': server_side_encryption KMS needs a key id"
        prefix = oss["prefix"]
        if prefix and isinstance(prefix, str) and not prefix.endswith("/"):
            yield f"At 'storage.oss.prefix': {prefix!r} must end with '/'"
    directories = _mapping(data.get("directories"))
    for key in ("data", "reports", "state", "logs"):
        value = directories.get(key)
        if value and isinstance(value, str) and not os.path.isabs(value):
            yield f"At 'directories.{key}': {value!r} must be an absolute path"


def _mapping(value: object) -> dict[str, Any]:
    """Returns `value` if it is a mapping, else an empty one (the schema pass reports it)."""
    return value if isinstance(value, dict) else {}


def _drill_problems(where: str, drill: dict[str, Any], mode: str) -> Iterable[str]:
    """Yields the mistakes in a job's `drill` section that the schema cannot see."""
    cron_error = validate_cron(drill.get("schedule", "0 4 * * 0"))
    if cron_error:
        yield f"At '{where}.drill.schedule': {cron_error}"
    if drill.get("target") == "server" and not drill.get("server"):
        yield f"At '{where}.drill.server': target: server needs the server's connection"
    if drill.get("source") == "oss" and mode == "local":
        yield f"At '{where}.drill.source': the job stores locally only (mode: local)"


def _identity_problems(data: dict[str, Any]) -> Iterable[str]:
    """Yields an identity file kept beside the backups: whoever has the backups has the key."""
    dirs_schema = schema()["properties"]["directories"]["properties"]
    directories = _mapping(data.get("directories"))
    kept = {}
    for key in ("data", "reports"):
        value = directories.get(key) or dirs_schema[key]["default"]
        if isinstance(value, str):  # the schema pass names any other type
            kept[key] = Path(value)
    places: list[tuple[str, Any]] = [
        ("storage.encryption", _mapping(data.get("storage")).get("encryption"))
    ]
    jobs = data.get("jobs")
    places += [
        (f"jobs[{i}].encryption", _mapping(job).get("encryption"))
        for i, job in enumerate(jobs if isinstance(jobs, list) else [])
    ]
    for where, encryption in places:
        identity = _mapping(_mapping(_mapping(encryption).get("age")).get("identity"))
        file = identity.get("file")
        if not isinstance(file, str) or not os.path.isabs(file):
            continue
        for key, directory in kept.items():
            if Path(file).is_relative_to(directory):
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


def _has_recipients(encryption: object) -> bool:
    age = _mapping(_mapping(encryption).get("age"))
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
        # Every field is the schema key of the same name; only secret references are converted.
        oss_config = OssConfig(
            **{f.name: _secret_or_value(oss[f.name]) for f in dataclasses.fields(OssConfig)}
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
                # YAML 1.1 reads a bare `off` as false; the schema allows both for "off".
                row_counts=job["row_counts"] or "off",
                drill=dict(job.get("drill") or {}),
                encryption=_encryption(_effective_encryption(job, storage)),
                own_encryption=bool(job.get("encryption")),
                raw=job,
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
        run_as=data.get("run_as", props["run_as"]["default"]),
        raw=data,
    )


def _secret_or_value(value: Any) -> Any:
    """Returns a secret reference ({env|file|credential: name}) as a SecretRef, else the value."""
    return _secret(value) if isinstance(value, dict) else value


def _required_secret(value: dict[str, str]) -> SecretRef:
    ref = _secret(value)
    assert ref is not None  # the schema requires it
    return ref


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)
