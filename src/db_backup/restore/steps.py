"""The steps a restore is made of, shared by `restore` and the drill.

Checking the archive (or, for an encrypted backup, that the age identity opens it) and running
pg_restore (or psql) with the dump decrypted on the way when it is encrypted (the roles file:
restore.globals_file). Each raises RestoreError with a message for a person.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from db_backup.config import Config, SecretRef
from db_backup.postgres.server import (
    Server,
    dbname_arg,
    run_child,
)
from db_backup.restore.fetch import Fetched
from db_backup.restore.select import Relation
from db_backup.restore.source import BackupSource, RestoreError
from db_backup.storage import crypto
from db_backup.util.cancel import CancelToken
from db_backup.util.execute import CommandError, run
from db_backup.util.secrets import SecretError

ROLE_MISSING_RE = re.compile(r'role "((?:[^"]|"")+)" does not exist')


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
    # Partial restore (issue 20): pg_restore's own selection through --use-list.
    tables: tuple[Relation, ...] = ()  # --table schema.table
    schemas: tuple[str, ...] = ()  # --schema S
    data_only: bool = False  # --data-only: rows into tables that exist
    list_only: bool = False  # --list: print the table of contents, change nothing
    owner: str | None = None  # --owner: the database (and its objects) belong to this role
    locale: str | None = None  # --locale: instead of the recorded LC_COLLATE/LC_CTYPE
    reset_roles: bool = False  # --globals: also reset existing roles (restore.roles.plan_roles)

    @property
    def partial(self) -> bool:
        """Returns whether only part of the archive is restored (a --use-list file)."""
        return bool(self.tables or self.schemas)


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


def is_encrypted(source: BackupSource) -> bool:
    """Returns whether the report of `source` says its backup is encrypted (age)."""
    return crypto.is_encrypted(source.report or {})


def restore_argv(
    server: Server,
    source: BackupSource,
    dump: Path | None,
    database: str,
    options: RestoreOptions,
    use_list: Path | None = None,
) -> list[str]:
    """Returns the pg_restore (or psql, for plain dumps) command line of the restore.

    `dump` None: the dump arrives on stdin (decrypted on the way), so pg_restore cannot use
    parallel jobs (it needs to seek). `use_list`: the file of the entries a partial restore
    takes (pg_restore --use-list).
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
    if options.data_only:
        # Rows of tables that reference each other load in any order (-j): their foreign key
        # triggers are off while they load, as pg_restore's manual advises (needs a superuser).
        argv += ["--data-only", "--disable-triggers"]
    if use_list is not None:
        argv.append(f"--use-list={use_list}")
    if options.owner is not None:
        # The objects are created by the new owner instead of being given to the old one.
        argv += ["--no-owner", f"--role={options.owner}"]
    if dump is not None:
        argv.append(str(dump))
    return argv


# --------------------------------------------------------------------------- checks


def check_archive(fetched: Fetched, source: BackupSource, env: dict[str, str]) -> int:
    """Checks an unencrypted dump's structure; returns pg_restore's TOC entry count (plain: 0).

    Custom and directory dumps: `pg_restore --list` (format and version). Plain dumps: the
    header pg_dump writes. A `.age` file without a report saying it is encrypted is refused.
    """
    if source.dump_name.endswith(".age"):
        raise RestoreError(
            f"{source.description}: an age-encrypted dump without a report that says so; "
            "decrypt it by hand (age -d -i <key>) and restore the result"
        )
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


def open_identity(
    stack: contextlib.ExitStack,
    config: Config,
    source: BackupSource,
    fetched: Fetched,
    override: SecretRef | None = None,
) -> Path:
    """Returns the age identity file of an encrypted backup, proven to open it.

    The identity must match the backup's recipients and decrypt its first bytes to the dump's
    format (else RestoreError). The file lives in a 0700 directory until `stack` closes.
    """
    private = config.directories.state / "private" / f"restore-{os.getpid()}"
    try:
        ref = identity_ref(config, source, override)
        identity = stack.enter_context(crypto.identity_file(ref, private))
        magic = b"--" if source.dump_format == "plain" else crypto.PGDMP
        crypto.check_identity(identity, source.report or {}, fetched.dump, magic)
    except (crypto.EncryptionError, SecretError) as exc:
        raise RestoreError(f"{source.description}: {exc}") from None
    return identity


def unlock(
    stack: contextlib.ExitStack,
    config: Config,
    source: BackupSource,
    fetched: Fetched,
    env: dict[str, str],
    override: SecretRef | None = None,
) -> Path | None:
    """Checks what can be checked before any database is touched; returns the identity file.

    An encrypted backup: open_identity. A plain one: check_archive (and None).
    """
    if not is_encrypted(source):
        check_archive(fetched, source, env)
        return None
    return open_identity(stack, config, source, fetched, override)


# --------------------------------------------------------------------------- roles and data


def plaintext_sha256(source: BackupSource, key: str = "plaintextSha256") -> str | None:
    """Returns the plaintext checksum an encrypted backup's report records, if any."""
    encryption = (source.report or {}).get("encryption")
    value = encryption.get(key) if isinstance(encryption, dict) else None
    return str(value) if value else None


def run_restore_argv(
    argv: list[str],
    server: Server,
    source: BackupSource,
    fetched: Fetched,
    identity: Path | None,
    cancel: CancelToken | None,
) -> None:
    """Runs the restore command `argv`; with an identity, the dump is decrypted into its stdin.

    Nothing plaintext touches the disk: age's output is piped into pg_restore, and the
    plaintext's sha256 is checked against the report. Raises CommandError, Cancelled or
    EncryptionError (the callers say what failed).
    """
    with dump_input(source, fetched, identity, cancel) as stdin:
        run_child(argv, server.env, cancel, stdin=stdin)


@contextlib.contextmanager
def dump_input(
    source: BackupSource, fetched: Fetched, identity: Path | None, cancel: CancelToken | None
) -> Iterator[int | None]:
    """Yields what pg_restore reads the dump from: None for a plain file (named in its argv),
    or the descriptor age decrypts it into, the plaintext's sha256 checked against the report."""
    if identity is None:
        yield None
        return
    with crypto.decrypted(
        fetched.dump,
        identity,
        expected_sha256=plaintext_sha256(source),
        name=source.dump_name,
        cancel=cancel,
    ) as decryption:
        yield decryption.fd


def run_restore(
    server: Server,
    source: BackupSource,
    fetched: Fetched,
    database: str,
    options: RestoreOptions,
    identity: Path | None,
    cancel: CancelToken | None,
) -> None:
    """Runs pg_restore (or psql) into `database`; an encrypted dump is decrypted on the way."""
    dump = fetched.dump if identity is None else None
    argv = restore_argv(server, source, dump, database, options)
    run_restore_argv(argv, server, source, fetched, identity, cancel)
