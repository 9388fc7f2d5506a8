"""The JSON report of one database in one run: the platform's source of truth.

Every field of the seed's example keeps its name and type (`port` is a string, `durationSeconds`
an integer); everything else is additive. Reports are written atomically (temp, fsync, rename).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from db_backup.util.clock import format_utc, parse_utc, to_the_second, utc_now
from db_backup.util.fsutil import fsync_dir, write_atomically
from db_backup.util.names import safe_name
from db_backup.util.secrets import mask

SCHEMA_VERSION = 1
SUCCESS = "SUCCESS"
FAILED = "FAILED"
REPORT_NAMESPACE = uuid.UUID("7d3f4a52-6c1e-4d0b-9a57-2f4c1e8b9d10")
LOCAL = "local"  # the local target's name: its dump is the seed's `local.file`

# The seed's report, field by field: name -> type. Tests validate every report against it.
SEED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "database": str,
    "host": str,
    "port": str,
    "startedAt": str,
    "finishedAt": str,
    "durationSeconds": int,
    "mode": str,
    "tool": str,
    "status": str,
    "errorMessage": str,
    "local": dict,
    "remote": dict,
}
SEED_LOCAL_FIELDS: dict[str, type | tuple[type, ...]] = {
    "file": str,
    "globalsFile": str,
    "checksumSha256": str,
    "sizeBytes": int,
}


def stem(database: str, started: datetime, host: str) -> str:
    """Returns the seed's file stem `<db>_<YYYYmmddTHHMMSSZ>_<host>`."""
    return f"{safe_name(database)}_{started.astimezone(UTC):%Y%m%dT%H%M%SZ}_{host}"


@dataclass
class TargetResult:
    """What one storage target did with a backup: the one record of where it stored it.

    The report's `local`, `remote.urls`, `targets` and `artefacts` all derive from these results
    and from `Report.stored` (the file names each target still holds).
    """

    status: str  # SUCCESS: the dump and the files beside it are stored; FAILED: nothing is
    error: str = ""
    location: str = ""  # the dump: a path, or the URL of the object (of the members' prefix)
    size_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # the backend's own (crc64, objects, ...)
    checksum_location: str = ""  # the .sha256 beside the dump
    globals_location: str = ""  # the globals file beside it ("" without one)

    def urls(self) -> list[str]:
        """Returns the dump's URLs: every member's of a directory dump, else the one object's."""
        if "objects" in self.extra:
            return list(self.extra["objects"])
        return [self.location]


@dataclass
class Report:
    """One database's result in one run; `to_json` gives the platform's document."""

    job: str
    database: str
    host: str
    port: int
    mode: str
    tool: str
    stem: str
    started: datetime
    finished: datetime | None = None
    status: str = FAILED
    error_message: str = ""
    sha256: str = ""  # of the stored dump (of the manifest for a directory dump)
    size_bytes: int = 0
    # Per target, the names it holds of this backup, in the order they were stored; a run adds
    # each name as it is stored and empties the list when it deletes them again.
    stored: dict[str, list[str]] = field(default_factory=dict)
    targets: dict[str, TargetResult] = field(default_factory=dict)
    dump_format: str = "custom"
    compression: int = 9
    pg_dump_version: str = ""
    server_version: str = ""
    attempt: int = 1
    trigger: str = "manual"
    retention_deleted: list[str] = field(default_factory=list)
    retention_error: str = ""
    retention_held: str = ""  # why retention deleted nothing (capacity's suspicious-size guard)
    # capacity's numbers: `space` (the estimate checked before the dump), `suspicious`.
    capacity: dict[str, Any] | None = None
    row_counts: str | None = None  # exact | estimate | off | failed; None: the dump did not end
    tables: dict[str, int | None] | None = None  # format('%I.%I', schema, table) -> rows
    row_counts_error: str = ""
    # None: not encrypted; else method, recipient fingerprints and the plaintext's checksums.
    encryption: dict[str, Any] | None = None
    # The database's own definition (owner, encoding, locale, ACL, settings...), read from the
    # catalog at dump time: postgres.dbdef. None: not read (the dump did not start).
    database_definition: dict[str, Any] | None = None
    # The roles file stored beside the dump (None: none): file, sizeBytes, sha256 (of the stored
    # bytes; its `.sha256` says the same) and, encrypted, plaintextSha256.
    globals_file: dict[str, Any] | None = None
    hostname: str = field(default_factory=socket.gethostname)
    # What went into the dump when not the whole database (`dumpOptions`); None: all of it.
    dump_options: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        """Returns a stable UUID for this report (the db_backup_job primary key)."""
        return str(uuid.uuid5(REPORT_NAMESPACE, f"{self.job}/{self.stem}"))

    def holds(self, target: str) -> TargetResult | None:
        """Returns the result of `target` if it stored the dump and still holds it, else None."""
        result = self.targets.get(target)
        if result is None or result.status != SUCCESS or not self.stored.get(target):
            return None
        return result

    @property
    def local_file(self) -> str:
        """Returns the local dump's path ("" when no local copy is kept)."""
        local = self.holds(LOCAL)
        return local.location if local is not None else ""

    @property
    def remote_urls(self) -> list[str]:
        """Returns the URLs of the dump on every remote target that holds it."""
        return [
            url
            for name in self.targets
            if name != LOCAL and (result := self.holds(name)) is not None
            for url in result.urls()
        ]

    @property
    def artefacts(self) -> list[str]:
        """Returns the file names some target still holds (retention deletes them in time)."""
        return list(dict.fromkeys(name for names in self.stored.values() for name in names))

    def failed_targets(self) -> dict[str, str]:
        """Returns the error of every target that failed, in the order of the targets."""
        return {name: r.error for name, r in self.targets.items() if r.status == FAILED}

    def _local_json(self) -> dict[str, Any]:
        local = self.holds(LOCAL)
        return {
            "file": local.location if local else "",
            "globalsFile": local.globals_location if local else "",
            "checksumSha256": self.sha256,
            "sizeBytes": self.size_bytes,
            "checksumFile": local.checksum_location if local else "",
        }

    def _targets_json(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for name, result in self.targets.items():
            if result.status != SUCCESS:
                found[name] = {"status": result.status, "error": result.error}
                continue
            found[name] = {
                "status": result.status,
                "location": result.location,
                "sizeBytes": result.size_bytes,
                **result.extra,
            }
            if self.stored.get(name):
                found[name]["files"] = list(self.stored[name])
        return found

    def to_json(self) -> dict[str, Any]:
        """Returns the report document: the seed's fields first, additive fields after."""
        # The seed's form has whole seconds; the duration is the difference of the two shown.
        started = to_the_second(self.started)
        finished = to_the_second(self.finished or utc_now())
        document: dict[str, Any] = {
            "database": self.database,
            "host": self.host,
            "port": str(self.port),
            "startedAt": format_utc(started),
            "finishedAt": format_utc(finished),
            "durationSeconds": max(0, round((finished - started).total_seconds())),
            "mode": self.mode,
            "tool": self.tool,
            "status": self.status,
            "errorMessage": mask(self.error_message),
            "local": self._local_json(),
            "remote": {"urls": self.remote_urls},
            "schemaVersion": SCHEMA_VERSION,
            "id": self.id,
            "job": self.job,
            "hostname": self.hostname,
            "format": self.dump_format,
            "compression": self.compression,
            "pgDumpVersion": self.pg_dump_version,
            "serverVersion": self.server_version,
            "attempt": self.attempt,
            "trigger": self.trigger,
            "targets": self._targets_json(),
            "retention": {
                "deleted": list(self.retention_deleted),
                "error": mask(self.retention_error),
                "held": self.retention_held,
            },
            "artefacts": [*self.artefacts, f"{self.stem}.json"],
            "rowCounts": self.row_counts,
            "tables": dict(self.tables) if self.tables is not None else None,
            "rowCountsError": mask(self.row_counts_error),
            "encryption": dict(self.encryption) if self.encryption is not None else None,
            "capacity": dict(self.capacity) if self.capacity is not None else None,
            **(
                {"databaseDefinition": self.database_definition}
                if self.database_definition is not None
                else {}
            ),
        }
        if self.globals_file is not None:  # added when the backup has a roles file
            document["globals"] = dict(self.globals_file)
        if self.dump_options is not None:  # only then: a whole-database report stays as it was
            document["dumpOptions"] = dict(self.dump_options)
        return document


def report_path(reports_dir: Path, stem_text: str) -> Path:
    """Returns where the report of `stem_text` lives."""
    return reports_dir / f"{stem_text}.json"


class ReportExists(OSError):
    """A report of that name is already there; reports never overwrite one another."""


def write_report(reports_dir: Path, report: Report, *, replace: bool = False) -> Path:
    """Writes the report atomically (temp, fsync, rename), mode 0640; returns its path.

    A new report never replaces an existing file (ReportExists); `replace=True` is for the run
    that wrote it, updating its own report (e.g. with what retention did).
    """
    path = report_path(reports_dir, report.stem)
    if replace:
        write_json_atomically(path, report.to_json())
        return path
    staged = reports_dir / f".{report.stem}.json.new-{os.getpid()}"
    try:
        write_json_atomically(staged, report.to_json())
        try:
            os.link(staged, path)  # fails if the name exists: never overwrite another report
        except FileExistsError:
            raise ReportExists(
                errno.EEXIST, "a report of this name already exists", str(path)
            ) from None
    finally:
        staged.unlink(missing_ok=True)
    fsync_dir(reports_dir)
    return path


def write_json_atomically(path: Path, document: dict[str, Any], mode: int = 0o640) -> None:
    """Writes `document` to `path` atomically; 0640 so the platform's group can read it."""
    data = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    write_atomically(path, data, mode)


def _typed_field_problems(
    mapping: dict[str, Any], fields: dict[str, type | tuple[type, ...]], prefix: str
) -> list[str]:
    """Returns each of `fields` missing from `mapping` or of another type (a bool is no number)."""
    problems = []
    for name, kind in fields.items():
        if name not in mapping:
            problems.append(f"missing {prefix}{name}")
        elif not isinstance(mapping[name], kind) or isinstance(mapping[name], bool):
            problems.append(f"{prefix}{name} is {type(mapping[name]).__name__}")
    return problems


def seed_field_problems(document: dict[str, Any]) -> list[str]:
    """Returns what in `document` breaks the seed's field names and types (empty: none)."""
    problems = _typed_field_problems(document, SEED_FIELDS, "")
    local = document.get("local")
    if isinstance(local, dict):
        problems += _typed_field_problems(local, SEED_LOCAL_FIELDS, "local.")
    remote = document.get("remote")
    if isinstance(remote, dict):
        urls = remote.get("urls")
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            problems.append("remote.urls is not a list of strings")
    if document.get("status") not in {SUCCESS, FAILED}:
        problems.append(f"status {document.get('status')!r} is not SUCCESS or FAILED")
    return problems


class NotAReport(ValueError):
    """A file in the reports directory that is no report; the message says why it is skipped."""


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class StoredReport:
    """A report read back from the reports directory: the one typed view every reader uses.

    Made by `parse_report`, so the seed's fields are there with their types, and the fields
    naming files are strings; the additive fields (absent from the seed's script's reports) are
    read defensively. `document` is the whole document, as the platform reads it.
    """

    path: Path
    document: dict[str, Any]

    @property
    def name(self) -> str:
        """Returns the report's file name (`<stem>.json`): its key in the reports directory."""
        return self.path.name

    @property
    def job(self) -> str:
        """Returns the job name ("" for reports written by the seed's shell script)."""
        return str(self.document.get("job", ""))

    @property
    def database(self) -> str:
        """Returns the database the report is of."""
        return str(self.document["database"])

    @property
    def status(self) -> str:
        """Returns SUCCESS or FAILED."""
        return str(self.document["status"])

    @property
    def successful(self) -> bool:
        """Returns whether the backup succeeded."""
        return self.status == SUCCESS

    @property
    def started(self) -> datetime:
        """Returns when the run of this report started (UTC)."""
        return parse_utc(self.document["startedAt"])

    @property
    def local(self) -> dict[str, Any]:
        """Returns the seed's `local` block (file, globalsFile, checksumSha256, sizeBytes)."""
        return dict(self.document["local"])

    @property
    def remote_urls(self) -> list[str]:
        """Returns the URLs of the dump on the remote targets."""
        return list(self.document["remote"].get("urls", []))

    @property
    def dump_format(self) -> str:
        """Returns pg_dump's format (custom for reports that do not say)."""
        return str(self.document.get("format", "custom"))

    @property
    def compression(self) -> int | None:
        """Returns pg_dump's compression level, or None when the report does not say."""
        return _int(self.document.get("compression"))

    @property
    def encrypted(self) -> bool:
        """Returns whether the stored dump is encrypted."""
        return bool(self.document.get("encryption"))

    @property
    def dump_size(self) -> int | None:
        """Returns the size of pg_dump's output (before encryption), or None when unknown."""
        encryption = self.document.get("encryption")
        if isinstance(encryption, dict):
            return _int(encryption.get("plaintextSizeBytes"))
        return _int(self.document["local"]["sizeBytes"])

    def named_files(self) -> list[str]:
        """Returns every file name the report gives: itself, `artefacts`, the local files' and
        the URLs' last parts, in that order (retention keeps only the report's own). Read
        defensively, as a document made by hand may not have been through `parse_report`."""
        local = self.document["local"]
        artefacts = self.document.get("artefacts", [])
        listed: list[object] = [self.name, *(artefacts if isinstance(artefacts, list) else [])]
        for key in LOCAL_FILE_KEYS:
            location = local.get(key)
            if isinstance(location, str) and location:
                listed.append(location.rsplit("/", 1)[-1])
        listed += [url.rsplit("/", 1)[-1] for url in self.document["remote"].get("urls", [])]
        return [name for name in listed if isinstance(name, str)]


LOCAL_FILE_KEYS = ("file", "globalsFile", "checksumFile")


def parse_report(raw: bytes, path: Path) -> StoredReport:
    """Returns the typed view of the report `raw` read from `path`; NotAReport says why not.

    The text is decoded as `Path.read_text` does (UTF-8, universal newlines), so the reasons
    are the same whether a report is read by `load_reports` or by the report index.
    """
    try:
        text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
        document = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotAReport(f"skipped, not readable JSON ({exc})") from None
    if not isinstance(document, dict):
        raise NotAReport("skipped, not a report (top level is not an object)")
    problems = seed_field_problems(document)
    if problems:
        raise NotAReport(f"skipped, not a report ({'; '.join(problems[:3])})")
    try:
        parse_utc(document["startedAt"])
    except (ValueError, OverflowError):  # e.g. year 1 with a positive offset
        raise NotAReport("skipped, startedAt is not a time") from None
    problem = _file_field_problem(document)
    if problem:
        raise NotAReport(f"skipped, not a report ({problem})")
    return StoredReport(path, document)


def read_report(path: Path) -> StoredReport:
    """Returns the typed view of the report at `path`; NotAReport says why it is skipped."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise NotAReport(f"skipped, not readable JSON ({exc})") from None
    return parse_report(raw, path)


def _file_field_problem(document: dict[str, Any]) -> str:
    """Returns what is wrong with the fields naming files (retention reads them), or ""."""
    artefacts = document.get("artefacts", [])
    if not isinstance(artefacts, list) or not all(isinstance(a, str) for a in artefacts):
        return "artefacts is not a list of file names"
    local = document["local"]
    for key in LOCAL_FILE_KEYS:
        if not isinstance(local.get(key, ""), str):
            return f"local.{key} is not a string"
    return ""


def read_reports(paths: Iterable[Path]) -> tuple[list[StoredReport], list[str]]:
    """Returns the reports among `paths`, in their order, and a warning per skipped file."""
    reports: list[StoredReport] = []
    warnings: list[str] = []
    for path in paths:
        try:
            reports.append(read_report(path))
        except NotAReport as exc:
            warnings.append(f"{path}: {exc}")
    return reports, warnings


def load_reports(reports_dir: Path) -> tuple[list[StoredReport], list[str]]:
    """Returns the reports in `reports_dir`, newest first, and a warning per skipped file.

    Reads every file; `reports.index` gives the same answers from an index.
    """
    try:
        paths = sorted(reports_dir.glob("*.json"))
    except OSError as exc:
        return [], [f"{reports_dir}: cannot list: {exc.strerror}"]
    reports, warnings = read_reports(paths)
    reports.sort(key=lambda r: (r.started, r.name), reverse=True)
    return reports, warnings
