"""The second pass: mistakes the schema cannot see (cron, zones, duplicates, storage set-up).

Runs on a document that may also break the schema: each rule looks only at values of the type
it needs (the schema pass names the others), so one mistake never hides another. Defaults come
from the schema.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from db_backup.config import patterns
from db_backup.config.schedule import validate_cron, validate_timezone
from db_backup.config.schema_file import node, with_defaults
from db_backup.config.units import parse_duration

NEEDS_RECIPIENT = "needs at least one recipient (recipients or recipients_file)"


def rule_problems(data: dict[str, Any]) -> list[str]:
    """Returns the mistakes across fields of a parsed config document, in the file's order."""
    storage = with_defaults(node("storage"), data.get("storage"))
    problems = list(_jobs_problems(data.get("jobs"), storage))
    if storage.get("encryption") and not has_recipients(storage["encryption"]):
        problems.append(f"At 'storage.encryption.age': {NEEDS_RECIPIENT}")
    problems += _identity_problems(data)
    problems += _oss_problems(storage)
    directories = mapping(data.get("directories"))
    for key in ("data", "reports", "state", "logs"):
        value = directories.get(key)
        if value and isinstance(value, str) and not os.path.isabs(value):
            problems.append(f"At 'directories.{key}': {value!r} must be an absolute path")
    problems += _metrics_problems(mapping(data.get("metrics")))
    return problems


def mapping(value: object) -> dict[str, Any]:
    """Returns `value` if it is a mapping, else an empty one (the schema pass reports it)."""
    return value if isinstance(value, dict) else {}


def effective_encryption(job: dict[str, Any], storage: dict[str, Any]) -> dict[str, Any] | None:
    """Returns the encryption mapping that applies to a job as written (its own, else storage's)."""
    own = job.get("encryption")
    if own is False:
        return None
    found = own or storage.get("encryption")
    return found if isinstance(found, dict) else None


def has_recipients(encryption: object) -> bool:
    """Returns whether an `encryption` mapping names at least one age recipient."""
    age = mapping(mapping(encryption).get("age"))
    return bool(age.get("recipients") or age.get("recipients_file"))


def _jobs_problems(jobs: object, storage: dict[str, Any]) -> Iterator[str]:
    """Yields the mistakes of every job, and job names given twice."""
    seen: dict[str, int] = {}
    for index, job in enumerate(jobs if isinstance(jobs, list) else []):
        if not isinstance(job, dict):
            continue
        where = f"jobs[{index}]"
        name = job.get("name")
        if isinstance(name, str):
            if name in seen:
                yield f"At '{where}.name': {name!r} is also the name of jobs[{seen[name]}]"
            seen.setdefault(name, index)
        yield from _job_problems(where, job, storage)


def _job_problems(where: str, job: dict[str, Any], storage: dict[str, Any]) -> Iterator[str]:
    """Yields the mistakes across the fields of one job (`where` is its place)."""
    if isinstance(job.get("schedule"), str):
        cron_error = validate_cron(job["schedule"])
        if cron_error:
            yield f"At '{where}.schedule': {cron_error}"
    if job.get("timezone") and isinstance(job["timezone"], str):
        tz_error = validate_timezone(job["timezone"])
        if tz_error:
            yield f"At '{where}.timezone': {tz_error}"
    fmt = with_defaults(node("jobs", "dump"), job.get("dump"))["format"]
    workers = mapping(job.get("dump")).get("jobs")
    if isinstance(workers, int) and workers > 1 and fmt != "directory":
        yield f"At '{where}.dump.jobs': parallel dump workers need format: directory"
    mode = job.get("mode") or storage["mode"]
    yield from _drill_problems(where, mapping(job.get("drill")), mode)
    if effective_encryption(job, storage) is not None:
        if fmt == "directory":
            yield (
                f"At '{where}.dump.format': the directory format cannot be encrypted; "
                "use format custom (or plain), or set encryption: false on this job"
            )
        if job.get("encryption") and not has_recipients(job["encryption"]):
            yield f"At '{where}.encryption.age': {NEEDS_RECIPIENT}"
    yield from _remote_problems(where, fmt, mode, storage)
    yield from _selection_problems(f"{where}.dump", mapping(job.get("dump")))
    databases = job.get("databases")
    for index, entry in enumerate(databases if isinstance(databases, list) else []):
        own = mapping(mapping(entry).get("dump"))
        yield from _selection_problems(f"{where}.databases[{index}].dump", own)
    max_age = job.get("max_age")
    if isinstance(max_age, str):
        try:
            parse_duration(max_age)
        except ValueError:
            yield (
                f"At '{where}.max_age': {max_age!r} is zero; use a duration such as 26h, "
                "or false to turn the check off"
            )


# The pattern keys of a dump selection: True for table patterns (schema.table), False for schemas.
PATTERN_KEYS = {
    "exclude_table_data": True,
    "schemas": False,
    "exclude_schemas": False,
    "tables": True,
    "exclude_tables": True,
}


def _selection_problems(where: str, dump: dict[str, Any]) -> Iterator[str]:
    """Yields the patterns pg_dump must not get and a zero lock_wait_timeout in a `dump`."""
    for key, qualified in PATTERN_KEYS.items():
        values = dump.get(key)
        for index, pattern in enumerate(values if isinstance(values, list) else []):
            if isinstance(pattern, str):
                found = patterns.problem(pattern, qualified=qualified)
                if found:
                    yield f"At '{where}.{key}[{index}]': {found}"
    timeout = dump.get("lock_wait_timeout")
    if isinstance(timeout, str):
        try:
            parse_duration(timeout)
        except ValueError:
            yield f"At '{where}.lock_wait_timeout': {timeout!r} is zero; use e.g. 30s or 2m"


def _remote_problems(where: str, fmt: str, mode: str, storage: dict[str, Any]) -> Iterator[str]:
    """Yields what a job's mode needs of the storage section that is not there."""
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


def _drill_problems(where: str, drill: dict[str, Any], mode: str) -> Iterator[str]:
    """Yields the mistakes in a job's `drill` section that the schema cannot see."""
    cron_error = validate_cron(drill.get("schedule", node("jobs", "drill", "schedule")["default"]))
    if cron_error:
        yield f"At '{where}.drill.schedule': {cron_error}"
    if drill.get("target") == "server" and not drill.get("server"):
        yield f"At '{where}.drill.server': target: server needs the server's connection"
    if drill.get("source") == "oss" and mode == "local":
        yield f"At '{where}.drill.source': the job stores locally only (mode: local)"


def _identity_problems(data: dict[str, Any]) -> Iterator[str]:
    """Yields an identity file kept beside the backups: whoever has the backups has the key."""
    directories = with_defaults(node("directories"), data.get("directories"))
    kept = {
        key: Path(directories[key])
        for key in ("data", "reports")
        if isinstance(directories[key], str)  # the schema pass names any other type
    }
    places: list[tuple[str, Any]] = [
        ("storage.encryption", mapping(data.get("storage")).get("encryption"))
    ]
    jobs = data.get("jobs")
    places += [
        (f"jobs[{i}].encryption", mapping(job).get("encryption"))
        for i, job in enumerate(jobs if isinstance(jobs, list) else [])
    ]
    for where, encryption in places:
        identity = mapping(mapping(mapping(encryption).get("age")).get("identity"))
        file = identity.get("file")
        if not isinstance(file, str) or not os.path.isabs(file):
            continue
        for key, directory in kept.items():
            if Path(file).is_relative_to(directory):
                yield (
                    f"At '{where}.age.identity': the identity is inside directories.{key}; keep "
                    "the private key away from the backups (a systemd credential is best)"
                )


def _oss_problems(storage: dict[str, Any]) -> Iterable[str]:
    """Yields the `storage.oss` settings that do not work together."""
    if not mapping(storage.get("oss")):
        return
    oss = with_defaults(node("storage", "oss"), storage["oss"])
    if oss["signature_version"] == "v4" and not oss["region"]:
        yield "At 'storage.oss.region': signature_version v4 needs the bucket's region"
    if oss["server_side_encryption"] == "KMS" and not oss["kms_key_id"]:
        yield "At 'storage.oss.kms_key_id': server_side_encryption KMS needs a key id"
    prefix = oss["prefix"]
    if prefix and isinstance(prefix, str) and not prefix.endswith("/"):
        yield f"At 'storage.oss.prefix': {prefix!r} must end with '/'"


def _metrics_problems(metrics: dict[str, Any]) -> Iterable[str]:
    """Yields a `metrics.listen` port that no socket can have (the schema checks the form)."""
    listen = metrics.get("listen")
    if isinstance(listen, str) and listen.rpartition(":")[2].isdigit():
        port = int(listen.rpartition(":")[2])
        if port > 65535:
            yield f"At 'metrics.listen': port {port} is out of range (0 to 65535)"
