"""`db-backup restore`: bring one backup back into a PostgreSQL server, checksum first.

Order of work, so that nothing touches a database before the backup is proven whole:
find the backup (report file, report id, dump path, oss:// URL, or the newest successful backup
of a job and database) -> download it from OSS when needed (CRC-64 checked) -> verify its sha256
against the `.sha256` file and the report -> `pg_restore --list` (format and version check) ->
roles and tablespaces from the globals file (optional) -> create the target database (an
existing non-empty one only with `--clean`) -> `pg_restore -j N --exit-on-error` (plain dumps:
`psql -v ON_ERROR_STOP=1`). A restore that stops half-way is a failure; a database this command
created for it is dropped again.

File names read from a report are input: only plain names (no `/`, no leading `.`) are accepted,
and they are looked up in the configured data directory or under the configured OSS prefix, never
at a path the report names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from db_backup.config import Config, Connection, JobConfig, SecretRef
from db_backup.postgres import tools as pg
from db_backup.reports.model import SUCCESS, load_reports, seed_field_problems
from db_backup.storage.base import StorageError, split_member
from db_backup.storage.crypto import EncryptionError
from db_backup.storage.local import describe_os_error
from db_backup.util.cancel import Cancelled, CancelToken
from db_backup.util.execute import CommandError, StreamingChild
from db_backup.util.secrets import SecretError, mask

if TYPE_CHECKING:
    from db_backup.storage.oss.target import OssTarget

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
FORMAT_OF_SUFFIX = (
    ("dump.d", "directory"),
    (".dump", "custom"),
    (".sql", "plain"),
    (".dump.age", "custom"),  # encrypted with age (issue 13): decrypted on the way in
    (".sql.age", "plain"),
)
CREATE_ROLE_RE = re.compile(r'^CREATE ROLE ((?:"(?:[^"]|"")+")|[^\s;"]+);$')
TABLESPACE_RE = re.compile(
    r"^(CREATE TABLESPACE |ALTER TABLESPACE |COMMENT ON TABLESPACE |SECURITY LABEL .* ON TABLESPACE"
    r"|GRANT .* ON TABLESPACE |REVOKE .* ON TABLESPACE )"
)
ROLE_MISSING_RE = re.compile(r'role "((?:[^"]|"")+)" does not exist')
DEFAULT_CONNECTION = Connection("/var/run/postgresql", 5432, "postgres", None, 10)
OutputFn = Callable[[str], None]


class RestoreError(Exception):
    """A restore that cannot go on; the message says what is wrong and what to do."""


# --------------------------------------------------------------------------- the backup


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

    @property
    def server_major(self) -> int | None:
        """Returns the major version of the server the dump was taken from, if the report says."""
        text = str((self.report or {}).get("serverVersion", ""))
        match = re.match(r"(\d+)", text)
        return int(match.group(1)) if match else None


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


def _stem_of(dump_name: str) -> str:
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
    from db_backup.restore.fetch import oss_target

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
    for stored in reports:  # newest first
        doc = stored.document
        if report_id is not None:
            if str(doc.get("id", "")).lower() == report_id.lower():
                return doc, str(stored.path)
            continue
        if doc["status"] != SUCCESS:
            continue
        if job is not None and stored.job != job:
            continue
        if database is not None and doc["database"] != database:
            continue
        return doc, str(stored.path)
    if report_id is not None:
        raise RestoreError(f"no report with id {report_id} in {config.directories.reports}")
    what = " and ".join(
        f"{k} {v!r}" for k, v in (("job", job), ("database", database)) if v is not None
    )
    raise RestoreError(
        f"no successful backup of {what or 'any job'} in {config.directories.reports}"
    )


def resolve_source(
    config: Config,
    spec: str | None,
    *,
    job: str | None = None,
    database: str | None = None,
    prefer_remote: bool = False,
) -> BackupSource:
    """Returns the backup named by `spec` (report file or id, dump path, oss:// URL) or the
    newest successful backup of `job` and `database` when `spec` is None."""
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
    if not path.exists():
        raise RestoreError(f"{path}: no such dump file or report")
    name = path.name
    fmt = dump_format_of(name)
    if fmt == "directory" and not path.is_dir():
        raise RestoreError(f"{path}: a .dump.d backup must be a directory")
    if fmt != "directory" and not path.is_file():
        raise RestoreError(f"{path}: not a regular file")
    globals_name = f"{_stem_of(name)}_globals.sql"
    return BackupSource(
        dump_name=name,
        dump_format=fmt,
        database=_database_from_stem(_stem_of(name)),
        local_dir=path.parent,
        globals_name=globals_name if (path.parent / globals_name).exists() else "",
        description=str(path),
    )


def _source_from_url(config: Config, url: str) -> BackupSource:
    from db_backup.restore.fetch import oss_target, parse_oss_url

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
    globals_name = f"{_stem_of(name)}_globals.sql"
    return BackupSource(
        dump_name=safe_file_name(name),
        dump_format=fmt,
        database=_database_from_stem(_stem_of(name)),
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


# --------------------------------------------------------------------------- fetch and verify


@dataclass
class Fetched:
    """The backup's files on local disk, checksum verified."""

    dump: Path
    globals_file: Path | None
    sha256: str
    downloaded: bool
    size: int


def read_checksum_file(path: Path, dump_name: str) -> str:
    """Returns the sha256 a one-file `.sha256` names for `dump_name`."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RestoreError(f"{path}: cannot read the checksum file ({exc})") from None
    for line in text.splitlines():
        digest, _, name = line.partition(" ")
        name = name.lstrip(" *")
        if name == dump_name and SHA256_RE.match(digest.lower()):
            return digest.lower()
    raise RestoreError(f"{path}: holds no sha256 line for {dump_name}")


def sha256_file(path: Path, cancel: CancelToken | None = None) -> str:
    """Returns the hex sha256 of a file's content."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1024 * 1024):
            if cancel is not None:
                cancel.raise_if_cancelled()
            digest.update(block)
    return digest.hexdigest()


def verify_directory_dump(directory: Path, manifest: Path, expected: str = "") -> str:
    """Checks a directory-format dump against its manifest; returns the manifest's sha256.

    Every manifest line must name a file inside the directory whose sha256 matches, and the
    manifest's own sha256 must be `expected` when given (the report's checksum).
    """
    try:
        text = manifest.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RestoreError(f"{manifest}: cannot read the checksum manifest ({exc})") from None
    own = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if expected and own != expected:
        raise RestoreError(
            f"{manifest}: checksum mismatch: the manifest's sha256 is {own}, the report says "
            f"{expected}; the backup was changed after it was made"
        )
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise RestoreError(f"{manifest}: the checksum manifest is empty")
    root = directory.resolve()
    for line in lines:
        digest, _, name = line.partition("  ")
        prefix = f"{directory.name}/"
        if not name.startswith(prefix):
            raise RestoreError(f"{manifest}: line for a file outside {directory.name}: {name!r}")
        path = (directory / name[len(prefix) :]).resolve()
        if root not in path.parents or not path.is_file():
            raise RestoreError(f"{manifest}: {name!r} is not a file of this dump")
        actual = sha256_file(path)
        if actual != digest.lower():
            raise RestoreError(
                f"{path}: checksum mismatch (sha256 {actual}, expected {digest}); "
                "the backup is damaged and was not restored"
            )
    return own


def fetch(
    config: Config,
    source: BackupSource,
    workdir: Path,
    cancel: CancelToken | None = None,
    want_globals: bool = True,
) -> Fetched:
    """Makes the backup available on local disk and verifies its sha256; raises RestoreError.

    A remote dump is downloaded into `workdir` (CRC-64 checked). The sha256 must match the
    report and the `.sha256` file, whichever exist (both when both do); a dump with neither is
    refused.
    """
    globals_path: Path | None = None
    if source.local_dir is not None:
        dump = source.local_dir / source.dump_name
        checksum_path: Path | None = source.local_dir / source.checksum_name
        if source.globals_name and want_globals:
            candidate = source.local_dir / source.globals_name
            globals_path = candidate if candidate.is_file() else None
        downloaded = False
        if not dump.exists():
            raise RestoreError(f"{dump}: the dump is not there")
    else:
        dump, checksum_path, globals_path = _download(config, source, workdir, cancel, want_globals)
        downloaded = True
    if checksum_path is not None and not checksum_path.exists():
        checksum_path = None
    if source.dump_format == "directory":
        if checksum_path is None:
            raise RestoreError(f"{dump}: no {source.checksum_name} manifest to verify it against")
        sha = verify_directory_dump(dump, checksum_path, source.expected_sha256)
        size = sum(p.stat().st_size for p in dump.rglob("*") if p.is_file())
        return Fetched(dump, globals_path, sha, downloaded, size)
    expectations = []
    if source.expected_sha256:
        expectations.append((source.expected_sha256, f"the report {source.report_file}".strip()))
    if checksum_path is not None:
        expectations.append(
            (read_checksum_file(checksum_path, source.dump_name), str(checksum_path))
        )
    if not expectations:
        raise RestoreError(
            f"{source.description}: no report and no {source.checksum_name} to verify it "
            "against; refusing to restore an unverified dump"
        )
    actual = sha256_file(dump, cancel)
    for expected, where in expectations:
        if actual != expected:
            raise RestoreError(
                f"{source.description}: checksum mismatch: sha256 of the dump is {actual}, "
                f"{where} says {expected}. The backup is damaged or was changed; "
                "nothing was restored"
            )
    return Fetched(dump, globals_path, actual, downloaded, dump.stat().st_size)


def _download(
    config: Config,
    source: BackupSource,
    workdir: Path,
    cancel: CancelToken | None,
    want_globals: bool,
) -> tuple[Path, Path | None, Path | None]:
    from db_backup.restore.fetch import ObjectMissing, download, oss_target

    try:
        target = oss_target(config)
        workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        dump = workdir / source.dump_name
        if source.dump_format == "directory":
            _download_directory(target, source.remote_keys["dump"], dump, cancel)
        else:
            download(target, source.remote_keys["dump"], dump, cancel)
        checksum: Path | None = workdir / source.checksum_name
        try:
            download(target, source.remote_keys["checksum"], checksum, cancel)  # type: ignore[arg-type]
        except ObjectMissing:
            checksum = None
        globals_path: Path | None = None
        if want_globals and "globals" in source.remote_keys and source.globals_name:
            globals_path = workdir / source.globals_name
            try:
                download(target, source.remote_keys["globals"], globals_path, cancel)
            except ObjectMissing:
                globals_path = None
    except ObjectMissing as exc:
        raise RestoreError(f"{exc}: nothing to restore") from None
    except StorageError as exc:
        raise RestoreError(str(exc)) from None
    return dump, checksum, globals_path


def _download_directory(
    target: OssTarget, dir_key: str, destination: Path, cancel: CancelToken | None
) -> None:
    """Downloads every object under `dir_key` ("<prefix><name>.dump.d/") into `destination`."""
    from db_backup.restore.fetch import ObjectMissing, download

    prefix = target.settings.prefix
    if not dir_key.startswith(prefix):
        raise RestoreError(f"{target.url(dir_key)}: not under the configured prefix {prefix!r}")
    under = dir_key[len(prefix) :]
    names = target.list_names(under)
    if not names:
        raise ObjectMissing(f"{target.url(dir_key)}: no objects (missing)")
    destination.mkdir(mode=0o700, exist_ok=True)
    for name in names:
        member = split_member(name)
        if member is None:
            raise RestoreError(f"{target.url(target.key(name))}: not a directory dump member")
        download(target, target.key(name), destination / member[1], cancel)


# --------------------------------------------------------------------------- PostgreSQL side


@dataclass(frozen=True)
class Server:
    """Where a restore goes: a connection and the environment for libpq children."""

    connection: Connection
    env: dict[str, str]

    def conn_args(self) -> list[str]:
        """Returns the libpq connection options (never a password) for psql and pg_restore."""
        c = self.connection
        return ["--host", c.host, "--port", str(c.port), "--username", c.user, "--no-password"]

    def describe(self) -> str:
        """Returns e.g. `postgres@/var/run/postgresql:5432` for messages."""
        c = self.connection
        return f"{c.user}@{c.host}:{c.port}"


@contextlib.contextmanager
def server_env(config: Config, connection: Connection, job: JobConfig | None) -> Iterator[Server]:
    """Yields the target server with a libpq environment (password through pg.connection_env)."""
    template = job or config.jobs[0]
    stand_in = dataclasses.replace(template, name=template.name, connection=connection)
    with pg.connection_env(stand_in) as env:
        yield Server(connection, env)


def dbname_arg(database: str) -> str:
    """Returns a --dbname option that cannot be read as a connection string."""
    quoted = database.replace("\\", "\\\\").replace("'", "\\'")
    return f"--dbname=dbname='{quoted}'"


def psql_script(
    server: Server,
    database: str,
    script: str,
    variables: dict[str, str] | None = None,
    timeout: float | None = 600,
    nul_separated: bool = False,
) -> str:
    """Runs a SQL script (stdin, ON_ERROR_STOP) with psql variables; returns unaligned output.

    With `nul_separated`, fields and rows are separated by NUL bytes (names may hold any
    other character, newlines and `|` included).
    """
    from db_backup.util.execute import run

    argv = [
        "psql",
        *server.conn_args(),
        dbname_arg(database),
        "--no-psqlrc",
        "--tuples-only",
        "--no-align",
        "--quiet",
        "--set=ON_ERROR_STOP=1",
    ]
    if nul_separated:
        argv += ["--field-separator-zero", "--record-separator-zero"]
    for name, value in (variables or {}).items():
        argv.append(f"--set={name}={value}")
    argv += ["--file", "-"]
    return run(argv, env=server.env, timeout=timeout, input_bytes=script.encode("utf-8"))


def run_child(
    argv: list[str], env: dict[str, str], cancel: CancelToken | None, stdin: int | None = None
) -> None:
    """Runs a long child (pg_restore, psql -f) to the end; a cancel stops it; raises on failure.

    `stdin` is a file descriptor the child reads (a decrypted stream), else nothing.
    """
    child = StreamingChild(argv, env=env, stdin=stdin)
    try:
        for _ in child.chunks(64 * 1024, cancel):
            pass
        child.check()
    except BaseException:
        child.terminate()
        raise


def database_exists(server: Server, database: str) -> bool:
    """Returns whether `database` exists on the server."""
    out = psql_script(
        server,
        "postgres",
        "SELECT 1 FROM pg_database WHERE datname = :'name';\n",
        {"name": database},
    )
    return out.strip() == "1"


def database_is_empty(server: Server, database: str) -> bool:
    """Returns whether `database` holds no user relation, function, type or extra schema."""
    out = psql_script(
        server,
        database,
        "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "          AND n.nspname NOT LIKE 'pg\\_toast%') "
        "     + (SELECT count(*) FROM pg_namespace WHERE nspname NOT IN "
        "        ('pg_catalog', 'information_schema', 'public') "
        "        AND nspname NOT LIKE 'pg\\_toast%' AND nspname NOT LIKE 'pg\\_temp%');\n",
    )
    return out.strip() == "0"


def create_database(server: Server, database: str) -> None:
    """Creates `database` from template0 (so nothing of template1 mixes in)."""
    psql_script(
        server, "postgres", 'CREATE DATABASE :"name" TEMPLATE template0;\n', {"name": database}
    )


def drop_database(server: Server, database: str) -> None:
    """Drops `database`, ending its sessions first."""
    psql_script(
        server, "postgres", 'DROP DATABASE IF EXISTS :"name" WITH (FORCE);\n', {"name": database}
    )


def globals_script(text: str, skip_tablespaces: bool = False) -> str:
    """Returns a globals file rewritten so that it runs on a live and on a fresh server.

    `pg_dumpall --globals-only` writes `CREATE ROLE x;` for every role, `postgres` included, so
    the plain file stops with ON_ERROR_STOP on every server. Each `CREATE ROLE x;` becomes a DO
    block that skips a role which exists already; the `ALTER ROLE x WITH ...` after it then
    sets the attributes either way. Any other error still stops the script.
    """
    out = []
    for line in text.splitlines():
        match = CREATE_ROLE_RE.match(line)
        if match:
            tag = "$dbbackup$"
            while tag in line:
                tag = tag[:-1] + "x$"
            out.append(
                f"DO {tag}BEGIN CREATE ROLE {match.group(1)}; "
                f"EXCEPTION WHEN duplicate_object THEN NULL; END{tag};"
            )
        elif skip_tablespaces and TABLESPACE_RE.match(line):
            out.append(f"-- skipped (tablespaces are not restored here): {line[:60]}")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def restore_globals(
    server: Server,
    globals_file: Path,
    skip_tablespaces: bool = False,
    existing_tablespaces: bool = True,
) -> None:
    """Restores roles (and tablespaces) from a globals file; existing roles are altered, not errors.

    Tablespaces that already exist on the server are left out (CREATE TABLESPACE cannot be
    made conditional); any other failure raises RestoreError.
    """
    try:
        text = globals_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RestoreError(f"{globals_file}: cannot read the globals file ({exc})") from None
    restore_globals_text(server, text, globals_file.name, skip_tablespaces, existing_tablespaces)


def restore_globals_text(
    server: Server,
    text: str,
    name: str,
    skip_tablespaces: bool = False,
    existing_tablespaces: bool = True,
) -> None:
    """Restores roles (and tablespaces) from the text of a globals file (see restore_globals)."""
    script = globals_script(text, skip_tablespaces)
    if existing_tablespaces and not skip_tablespaces:
        names = psql_script(server, "postgres", "SELECT spcname FROM pg_tablespace;\n").split("\n")
        existing = {_quote_ident(n) for n in names if n}
        kept = []
        for line in script.splitlines():
            m = re.match(r'^CREATE TABLESPACE ((?:"(?:[^"]|"")+")|\S+) ', line)
            if m and m.group(1) in existing:
                kept.append(f"-- tablespace {m.group(1)} exists already: {line[:40]}")
            else:
                kept.append(line)
        script = "\n".join(kept) + "\n"
    try:
        psql_script(server, "postgres", script)
    except CommandError as exc:
        raise RestoreError(f"restoring roles and tablespaces from {name} failed: {exc}") from None


def _quote_ident(name: str) -> str:
    """Returns `name` as pg_dumpall writes an identifier (quoted unless plain lower-case)."""
    if re.match(r"^[a-z_][a-z0-9_$]*$", name):
        return name
    return '"' + name.replace('"', '""') + '"'


def list_archive(fetched: Fetched, source: BackupSource, env: dict[str, str]) -> int:
    """Runs `pg_restore --list` (format and version check); returns the TOC entry count."""
    from db_backup.util.execute import run

    if source.dump_format == "plain":
        with fetched.dump.open("rb") as handle:
            head = handle.read(4096)
        if b"PostgreSQL database dump" not in head:
            raise RestoreError(f"{source.description}: not a plain-format pg_dump file")
        return 0
    try:
        out = run(["pg_restore", "--list", str(fetched.dump)], env=env, timeout=600)
    except CommandError as exc:
        raise RestoreError(explain_restore_error(str(exc), source)) from None
    return sum(1 for line in out.splitlines() if line and not line.startswith(";"))


def explain_restore_error(text: str, source: BackupSource) -> str:
    """Returns pg_restore's error with what it means and what to do, for the usual causes."""
    if "unsupported version" in text and "file header" in text:
        made_by = (source.report or {}).get("pgDumpVersion") or "a newer pg_dump"
        return (
            f"{text} -- this pg_restore is older than the pg_dump that wrote the dump "
            f"({made_by}); install the PostgreSQL client of that version or newer"
        )
    if "appears to be a text format dump" in text:
        return f"{text} -- this is a plain SQL dump; it is restored with psql, name it .sql"
    if "does not appear to be a valid archive" in text or "input file is too short" in text:
        return f"{text} -- not a pg_dump archive in custom or directory format (wrong format?)"
    missing = ROLE_MISSING_RE.findall(text)
    if missing:
        roles = ", ".join(sorted({m.replace('""', '"') for m in missing}))
        return (
            f"{text} -- roles the dump needs are missing on the target server ({roles}); "
            "run again with --globals to restore roles first"
        )
    return text


# --------------------------------------------------------------------------- the command


@dataclass
class RestoreOptions:
    """What `db-backup restore` was asked to do."""

    target_database: str | None = None
    clean: bool = False
    globals: bool = False
    jobs: int = 2
    dry_run: bool = False
    skip_tablespaces: bool = False
    prefer_remote: bool = False
    identity: SecretRef | None = None  # age identity (--identity); default: the job's


@dataclass
class RestoreResult:
    """What one restore did."""

    database: str
    source: str
    sha256: str
    created: bool
    seconds: float
    steps: list[str] = field(default_factory=list)


def restore_argv(
    server: Server,
    source: BackupSource,
    dump: Path | None,
    database: str,
    options: RestoreOptions,
) -> list[str]:
    """Returns the pg_restore (or psql, for plain dumps) command line of the restore.

    `dump` None: the dump arrives on stdin (decrypted on the way), so pg_restore cannot use
    parallel jobs (it needs to seek).
    """
    if source.dump_format == "plain":
        return [
            "psql",
            *server.conn_args(),
            dbname_arg(database),
            "--no-psqlrc",
            "--quiet",
            "--set=ON_ERROR_STOP=1",
            "--file",
            str(dump) if dump is not None else "-",
        ]
    argv = ["pg_restore", *server.conn_args(), dbname_arg(database), "--exit-on-error"]
    if dump is not None:
        argv.append(f"--jobs={max(options.jobs, 1)}")
    if options.clean:
        argv += ["--clean", "--if-exists"]
    if options.skip_tablespaces:
        argv.append("--no-tablespaces")
    if dump is not None:
        argv.append(str(dump))
    return argv


# --------------------------------------------------------------------------- encrypted backups


def identity_ref(
    config: Config, source: BackupSource, override: SecretRef | None = None
) -> SecretRef | None:
    """Returns the age identity for `source`: `override`, else its job's encryption.age.identity."""
    if override is not None:
        return override
    job_name = str((source.report or {}).get("job", ""))
    for job in config.jobs:
        if job.name == job_name and job.encryption is not None:
            return job.encryption.identity
    found = [j.encryption.identity for j in config.jobs if j.encryption and j.encryption.identity]
    return found[0] if len(set(found)) == 1 else None


def unlock(
    stack: contextlib.ExitStack,
    config: Config,
    source: BackupSource,
    fetched: Fetched,
    env: dict[str, str],
    override: SecretRef | None = None,
) -> Path | None:
    """Checks what can be checked before any database is touched; returns the identity file.

    An encrypted backup: the identity must match its recipients and decrypt its first bytes
    to the dump's format (else RestoreError). A plain one: `pg_restore --list` (format and
    version). The identity file lives in a 0700 directory until `stack` closes.
    """
    from db_backup.storage import crypto

    if not crypto.is_encrypted(source.report or {}):
        if source.dump_name.endswith(".age"):
            raise RestoreError(
                f"{source.description}: an age-encrypted dump without a report that says so; "
                "decrypt it by hand (age -d -i <key>) and restore the result"
            )
        list_archive(fetched, source, env)
        return None
    private = config.directories.state / "private" / f"restore-{os.getpid()}"
    try:
        ref = identity_ref(config, source, override)
        identity = stack.enter_context(crypto.identity_file(ref, private))
        magic = b"--" if source.dump_format == "plain" else crypto.PGDMP
        crypto.check_identity(identity, source.report or {}, fetched.dump, magic)
    except (crypto.EncryptionError, SecretError) as exc:
        raise RestoreError(f"{source.description}: {exc}") from None
    return identity


def plaintext_sha256(source: BackupSource, key: str = "plaintextSha256") -> str | None:
    """Returns the plaintext checksum an encrypted backup's report records, if any."""
    encryption = (source.report or {}).get("encryption")
    value = encryption.get(key) if isinstance(encryption, dict) else None
    return str(value) if value else None


def read_globals(fetched: Fetched, identity: Path | None, source: BackupSource) -> str:
    """Returns the text of the backup's globals file, decrypted when it is encrypted."""
    from db_backup.storage import crypto

    assert fetched.globals_file is not None
    if identity is None:
        try:
            return fetched.globals_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RestoreError(f"{fetched.globals_file}: cannot read ({exc})") from None
    expected = plaintext_sha256(source, "globalsPlaintextSha256")
    try:
        with (
            crypto.decrypted(
                fetched.globals_file, identity, expected_sha256=expected
            ) as decryption,
            os.fdopen(decryption.fd, "rb", closefd=False) as handle,
        ):
            data = handle.read()
    except crypto.EncryptionError as exc:
        raise RestoreError(str(exc)) from None
    return data.decode("utf-8", "replace")


def run_restore(
    server: Server,
    source: BackupSource,
    fetched: Fetched,
    database: str,
    options: RestoreOptions,
    identity: Path | None,
    cancel: CancelToken | None,
) -> None:
    """Runs pg_restore (or psql) into `database`; an encrypted dump is decrypted on the way.

    Nothing plaintext touches the disk: age's output is piped into pg_restore, and the
    plaintext's sha256 is checked against the report (EncryptionError becomes CommandError's
    sibling RestoreError at the caller).
    """
    from db_backup.storage import crypto

    if identity is None:
        run_child(restore_argv(server, source, fetched.dump, database, options), server.env, cancel)
        return
    with crypto.decrypted(
        fetched.dump,
        identity,
        expected_sha256=plaintext_sha256(source),
        name=source.dump_name,
        cancel=cancel,
    ) as decryption:
        argv = restore_argv(server, source, None, database, options)
        run_child(argv, server.env, cancel, stdin=decryption.fd)


def plan(source: BackupSource, server: Server, options: RestoreOptions) -> list[str]:
    """Returns the steps a restore would take, in order (what --dry-run prints)."""
    database = options.target_database or source.database
    where = Path(source.local_dir or "<download dir>") / source.dump_name
    steps = []
    if source.remote_keys:
        steps.append(f"download {source.description} (CRC-64 checked) and its .sha256")
    checks = [
        x
        for x in (
            "the report" if source.expected_sha256 else "",
            source.checksum_name if source.dump_format != "directory" else "",
            f"{source.checksum_name} manifest" if source.dump_format == "directory" else "",
        )
        if x
    ]
    steps.append(f"verify the sha256 of {source.dump_name} against {' and '.join(checks)}")
    if source.dump_format != "plain":
        steps.append(f"check the archive: pg_restore --list {where}")
    if options.globals:
        globals_name = source.globals_name or "(no globals file: this step would fail)"
        steps.append(
            f"restore roles and tablespaces from {globals_name} on {server.describe()} "
            "(existing roles are altered, not re-created)"
        )
    if options.clean:
        steps.append(f"restore over database {database!r} (dropping its objects first)")
    else:
        steps.append(f"create database {database!r} (refused if it exists and is not empty)")
    steps.append(shlex.join(restore_argv(server, source, where, database, options)))
    return steps


def restore(
    config: Config,
    source: BackupSource,
    server: Server,
    options: RestoreOptions,
    *,
    cancel: CancelToken | None = None,
    workdir: Path | None = None,
    say: OutputFn | None = None,
) -> RestoreResult:
    """Restores `source` into `server`; raises RestoreError (nothing half-made is left behind)."""
    say = say or (lambda _text: None)
    database = options.target_database or source.database
    started = time.monotonic()
    if options.dry_run:
        return RestoreResult(
            database, source.description, "", False, 0.0, plan(source, server, options)
        )
    scratch = _download_dir(workdir or config.directories.state / "restore", source)
    stack = contextlib.ExitStack()
    try:
        fetched = fetch(config, source, scratch, cancel, want_globals=options.globals)
        say(f"verified sha256 {fetched.sha256} of {source.description}")
        identity = unlock(stack, config, source, fetched, server.env, options.identity)
        if identity is not None:
            say(f"the age identity opens {source.dump_name}")
        if options.globals:
            if fetched.globals_file is None:
                raise RestoreError(
                    f"--globals: no globals file ({source.globals_name or '<stem>_globals.sql'}) "
                    f"was found for {source.description}"
                )
            text = read_globals(fetched, identity, source)
            restore_globals_text(server, text, fetched.globals_file.name, options.skip_tablespaces)
            say(f"restored roles and tablespaces from {fetched.globals_file.name}")
        created = _prepare_database(server, database, source, options)
        try:
            run_restore(server, source, fetched, database, options, identity, cancel)
        except (CommandError, Cancelled, EncryptionError) as exc:
            if created:
                with contextlib.suppress(CommandError):
                    drop_database(server, database)
            what = "was stopped" if isinstance(exc, Cancelled) else "failed"
            dropped = f"; database {database!r} was dropped again" if created else ""
            raise RestoreError(
                f"restore of {source.description} into {database!r} {what}{dropped}: "
                + explain_restore_error(mask(str(exc)), source)
            ) from None
        say(f"restored {source.description} into database {database!r} on {server.describe()}")
        return RestoreResult(
            database, source.description, fetched.sha256, created, time.monotonic() - started
        )
    except CommandError as exc:
        raise RestoreError(
            f"{server.describe()}: {explain_restore_error(str(exc), source)}"
        ) from None
    finally:
        stack.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _download_dir(parent: Path, source: BackupSource) -> Path:
    """Returns a private directory for downloads (an empty one for local sources: unused)."""
    try:
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return Path(tempfile.mkdtemp(prefix="download-", dir=parent))
    except OSError as exc:
        if not source.remote_keys:
            # A local dump needs no download directory: a user who may not write to the
            # state directory can still restore from a path.
            return Path(tempfile.mkdtemp(prefix="db-backup-restore-"))
        raise RestoreError(f"no place to download to: {describe_os_error(exc, parent)}") from None


def _prepare_database(
    server: Server, database: str, source: BackupSource, options: RestoreOptions
) -> bool:
    """Creates the target database, or checks that it may be restored over; returns 'created'."""
    if not database_exists(server, database):
        create_database(server, database)
        return True
    if options.clean:
        if source.dump_format == "plain":
            # A plain dump has no DROP statements: start from an empty database instead.
            drop_database(server, database)
            create_database(server, database)
            return True
        return False
    if not database_is_empty(server, database):
        raise RestoreError(
            f"database {database!r} already exists on {server.describe()} and is not empty; "
            "choose another name with --to-database, or replace its objects with --clean"
        )
    return False
