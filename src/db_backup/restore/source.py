"""Which backup to restore: a report file or id, a dump path, an oss:// URL, or the newest one.

File names read from a report are input: only plain names (no `/`, no leading `.`) are accepted,
and they are looked up in the configured data directory or under the configured OSS prefix, never
at a path the report names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from db_backup.config import Config
from db_backup.reports.model import SUCCESS, load_reports, seed_field_problems
from db_backup.storage.base import StorageError, split_member

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
FORMAT_OF_SUFFIX = (
    ("dump.d", "directory"),
    (".dump", "custom"),
    (".sql", "plain"),
    (".dump.age", "custom"),  # encrypted with age (issue 13): decrypted on the way in
    (".sql.age", "plain"),
)


class RestoreError(Exception):
    """A restore that cannot go on; the message says what is wrong and what to do."""


@dataclass
class BackupSource:
    """One backup to restore: where its dump, checksum and globals files are, and what it is."""

    dump_name: str
    dump_format: str
    database: str
    expected_sha256: str = ""  # from the report, if there is one
    report: dict[str, Any] | None = None
    report_file: str = ""
    local_dir: Path | None = None  # the dump and its companions are in this directory
    remote_keys: dict[str, str] = field(default_factory=dict)  # dump/checksum/globals -> key
    globals_name: str = ""
    description: str = ""

    @property
    def checksum_name(self) -> str:
        """Returns the name of the `.sha256` file next to the dump."""
        return f"{self.dump_name}.sha256"


def safe_file_name(name: object) -> str:
    """Returns `name` if it is a plain file name (no directory part, not hidden); else raises."""
    if (
        not isinstance(name, str)
        or not name
        or "/" in name
        or "\\" in name
        or "\0" in name
        or name.startswith(".")
        or len(name.encode("utf-8", "surrogateescape")) > 255
    ):
        raise RestoreError(f"the report names an unusable file {name!r}; refusing to use it")
    return name


def dump_format_of(name: str) -> str:
    """Returns the dump format a file name's suffix stands for; raises RestoreError otherwise."""
    for suffix, fmt in FORMAT_OF_SUFFIX:
        if name.endswith(suffix):
            return fmt
    raise RestoreError(
        f"{name}: not a dump file name this program writes (.dump, .sql or .dump.d directory)"
    )


def stem_of(dump_name: str) -> str:
    """Returns the dump's stem: its name without the suffix of its format."""
    for suffix in (".dump.d", ".dump.age", ".sql.age", ".dump", ".sql"):
        if dump_name.endswith(suffix):
            return dump_name[: -len(suffix)]
    return dump_name


def source_from_report(
    config: Config, document: dict[str, Any], report_file: str = "", prefer_remote: bool = False
) -> BackupSource:
    """Returns the backup a report describes; refuses FAILED reports and unsafe names."""
    problems = seed_field_problems(document)
    if problems:
        raise RestoreError(f"{report_file or 'report'}: not a backup report ({problems[0]})")
    if document["status"] != SUCCESS:
        raise RestoreError(
            f"{report_file or 'report'}: that backup FAILED "
            f"({document['errorMessage'] or 'no message'}); there is nothing to restore from it"
        )
    artefacts = document.get("artefacts")
    if not isinstance(artefacts, list) or not artefacts:
        # Reports of the seed's shell script: only local.file names the dump.
        artefacts = [Path(str(document["local"]["file"])).name]
    first = artefacts[0]
    member = split_member(first)
    if member is not None:  # a directory dump stored remotely only: its members come first
        first = member[0]
    dump_name = safe_file_name(first)
    fmt = dump_format_of(dump_name)
    globals_names = [
        a
        for a in artefacts
        if isinstance(a, str) and a.endswith(("_globals.sql", "_globals.sql.age"))
    ]
    expected = str(document["local"].get("checksumSha256", "")).lower()
    if expected and not SHA256_RE.match(expected):
        raise RestoreError(f"{report_file or 'report'}: checksumSha256 is not a sha256")
    source = BackupSource(
        dump_name=dump_name,
        dump_format=fmt,
        database=str(document["database"]),
        expected_sha256=expected,
        report=document,
        report_file=report_file,
        globals_name=safe_file_name(globals_names[0]) if globals_names else "",
    )
    targets = document.get("targets") if isinstance(document.get("targets"), dict) else {}
    local_ok = bool(document["local"].get("file")) and (
        not targets or targets.get("local", {}).get("status") == SUCCESS
    )
    remote_ok = bool(document["remote"].get("urls")) and (
        not targets or targets.get("oss", {}).get("status") == SUCCESS
    )
    local_dump = config.directories.data / dump_name
    use_local = local_ok and local_dump.exists() and not (prefer_remote and remote_ok)
    if use_local:
        source.local_dir = config.directories.data
        source.description = str(local_dump)
    elif remote_ok:
        _set_remote_keys(config, source)
    elif local_ok:
        raise RestoreError(
            f"{local_dump}: the dump named by {report_file or 'the report'} is no longer there "
            "(removed by retention, or moved?)"
        )
    else:
        raise RestoreError(f"{report_file or 'the report'} names no stored copy of the dump")
    return source


def _set_remote_keys(config: Config, source: BackupSource) -> None:
    """Points `source` at its objects under the configured OSS prefix."""
    from db_backup.restore.oss_read import oss_target

    try:
        target = oss_target(config)
    except StorageError as exc:
        raise RestoreError(str(exc)) from None
    # A directory dump is the objects under `<prefix><name>/`: its key ends with "/".
    slash = "/" if source.dump_format == "directory" else ""
    source.remote_keys = {
        "dump": target.key(source.dump_name + slash),
        "checksum": target.key(source.checksum_name),
    }
    if source.globals_name:
        source.remote_keys["globals"] = target.key(source.globals_name)
    source.description = target.url(source.remote_keys["dump"])


def find_report(
    config: Config,
    *,
    report_id: str | None = None,
    job: str | None = None,
    database: str | None = None,
) -> tuple[dict[str, Any], str]:
    """Returns (document, file) of the report with `report_id`, or of the newest successful one."""
    reports, _ = load_reports(config.directories.reports)
    if report_id is not None:
        from db_backup.restore.select import only_report

        # Two reports with one id (a copied file): refuse rather than restore either silently.
        found = {
            stored.path: stored.document
            for stored in reports
            if str(stored.document.get("id", "")).lower() == report_id.lower()
        }
        path = only_report(list(found), report_id, config.directories.reports)
        return found[path], str(path)
    for stored in reports:  # newest first
        doc = stored.document
        if doc["status"] != SUCCESS:
            continue
        if job is not None and stored.job != job:
            continue
        if database is not None and doc["database"] != database:
            continue
        return doc, str(stored.path)
    what = " and ".join(
        f"{k} {v!r}" for k, v in (("job", job), ("database", database)) if v is not None
    )
    raise RestoreError(
        f"no successful backup of {what or 'any job'} in {config.directories.reports}"
    )


def find_before(
    config: Config, moment: datetime, job: str, database: str
) -> tuple[dict[str, Any], str]:
    """Returns (document, file) of the newest SUCCESS backup of `job`/`database` started
    before `moment` (restore --before); raises RestoreError when there is none."""
    from db_backup.restore.select import Candidate, pick_before

    reports, _ = load_reports(config.directories.reports)
    candidates = [Candidate(r.path, r.started, r.document) for r in reports]
    chosen = pick_before(candidates, moment, job, database)
    return dict(chosen.document), str(chosen.path)


def resolve_source(
    config: Config,
    spec: str | None,
    *,
    job: str | None = None,
    database: str | None = None,
    prefer_remote: bool = False,
    before: datetime | None = None,
) -> BackupSource:
    """Returns the backup named by `spec` (report file or id, dump path, oss:// URL) or the
    newest successful backup of `job` and `database` when `spec` is None (with `before`: the
    newest that started before that moment)."""
    if before is not None:
        if spec is not None or job is None or database is None:
            raise RestoreError("--before picks a backup of --job JOB --database DB; give no SOURCE")
        document, path = find_before(config, before, job, database)
        return source_from_report(config, document, path, prefer_remote)
    if spec is None:
        if job is None or database is None:
            raise RestoreError(
                "say which backup: a report file, a report id, a dump path, an oss:// URL, "
                "or --job JOB --database DB for the newest successful one"
            )
        document, path = find_report(config, job=job, database=database)
        return source_from_report(config, document, path, prefer_remote)
    if UUID_RE.match(spec):
        document, path = find_report(config, report_id=spec)
        return source_from_report(config, document, path, prefer_remote)
    if spec.startswith("oss://"):
        return _source_from_url(config, spec)
    given = Path(spec)
    if given.suffix == ".json" and given.is_file():
        try:
            document = json.loads(given.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RestoreError(f"{given}: not a readable JSON report ({exc})") from None
        if not isinstance(document, dict):
            raise RestoreError(f"{given}: not a backup report")
        return source_from_report(config, document, str(given), prefer_remote)
    return _source_from_path(given)


def _source_from_path(path: Path) -> BackupSource:
    """Returns the backup of a dump path (its companions found beside it by name)."""
    if not path.exists():
        raise RestoreError(f"{path}: no such dump file or report")
    name = path.name
    fmt = dump_format_of(name)
    if fmt == "directory" and not path.is_dir():
        raise RestoreError(f"{path}: a .dump.d backup must be a directory")
    if fmt != "directory" and not path.is_file():
        raise RestoreError(f"{path}: not a regular file")
    globals_name = f"{stem_of(name)}_globals.sql"
    return BackupSource(
        dump_name=name,
        dump_format=fmt,
        database=_database_from_stem(stem_of(name)),
        local_dir=path.parent,
        globals_name=globals_name if (path.parent / globals_name).exists() else "",
        description=str(path),
    )


def _source_from_url(config: Config, url: str) -> BackupSource:
    """Returns the backup of an oss:// URL in the configured bucket (companions by name)."""
    from db_backup.restore.oss_read import oss_target, parse_oss_url

    try:
        bucket, key = parse_oss_url(url)
        target = oss_target(config)
    except (ValueError, StorageError) as exc:
        raise RestoreError(str(exc)) from None
    if bucket != target.settings.bucket:
        raise RestoreError(
            f"{url}: the configured bucket is {target.settings.bucket!r}; "
            "this program only reads from it"
        )
    directory = key.endswith(".dump.d/")
    name = key.rstrip("/").rsplit("/", 1)[-1] if directory else key.rsplit("/", 1)[-1]
    fmt = dump_format_of(name)
    if fmt == "directory" and not directory:
        key += "/"  # the objects under `<name>/`
    base = key[: -len(name) - (1 if fmt == "directory" else 0)]
    globals_name = f"{stem_of(name)}_globals.sql"
    return BackupSource(
        dump_name=safe_file_name(name),
        dump_format=fmt,
        database=_database_from_stem(stem_of(name)),
        remote_keys={
            "dump": key,
            "checksum": f"{base}{name}.sha256",
            "globals": f"{base}{globals_name}",
        },
        globals_name=globals_name,
        description=url,
    )


def _database_from_stem(stem: str) -> str:
    """Returns the database part of `<db>_<YYYYmmddTHHMMSSZ>_<host>` (the whole stem otherwise)."""
    match = re.match(r"^(.*)_\d{8}T\d{6}Z_[^_]*$", stem)
    return match.group(1) if match else stem
