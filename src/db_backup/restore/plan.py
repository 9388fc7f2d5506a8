"""What a restore will do, decided before anything is done: the plan and the database's fate.

`plan_restore` turns a backup, a target server and the options into a list of steps; `restore
--dry-run` prints their text, and the real run executes the same list, step by step (so what
the plan says is what happens). `database_action` decides what happens to the target database
once the server has said whether it exists and is empty. Both are pure: plain data in, plain
data out, no files, processes or SQL.
"""

from __future__ import annotations

import enum
import shlex
from dataclasses import dataclass
from pathlib import Path

from db_backup.postgres.server import Server
from db_backup.restore.dbdef import DefinitionPlan
from db_backup.restore.source import BackupSource
from db_backup.restore.steps import RestoreOptions, is_encrypted, restore_argv
from db_backup.restore.toc import LIST_FILE

DOWNLOAD_DIR = "<download dir>"  # where a remote dump lands, as a dry run names it
WORK_DIR = "<work dir>"  # where a partial restore's list file is written, as a dry run names it


class Action(enum.Enum):
    """The kinds of step a restore is made of, in the order they may appear."""

    CHECK_DEFINITION = "check database definition"
    DOWNLOAD = "download"
    VERIFY = "verify"
    CHECK_ARCHIVE = "check archive"
    CHECK_IDENTITY = "check identity"
    CHECK_GLOBALS = "check roles file"
    CHECK_DATABASE = "check database"
    LIST = "list"  # --list: print the table of contents, and stop
    SELECT = "select"  # --table/--schema: choose entries, check the target
    RESTORE_ROLES = "restore roles"
    PREPARE_DATABASE = "prepare database"
    RESTORE = "restore"
    DATABASE_PROPERTIES = "database properties"


@dataclass(frozen=True)
class Step:
    """One step of a restore: what it does, the line a dry run prints, the command it runs."""

    action: Action
    text: str
    argv: tuple[str, ...] = ()  # RESTORE: the pg_restore or psql command line


class DatabaseAction(enum.Enum):
    """What happens to the target database before the data goes in."""

    CREATE = "create"  # it does not exist: create it (and drop it again if the restore fails)
    RECREATE = "recreate"  # --clean of a plain dump (no DROP statements): drop, create anew
    REUSE = "reuse"  # restore into it as it is (empty, or --clean drops its objects)
    REFUSE = "refuse"  # it exists and holds objects, and --clean was not given


# The steps that change the server; every other step only checks, and all of them come first.
CHANGES = frozenset(
    {Action.RESTORE_ROLES, Action.PREPARE_DATABASE, Action.RESTORE, Action.DATABASE_PROPERTIES}
)


def plan_restore(
    source: BackupSource,
    server: Server,
    options: RestoreOptions,
    download_dir: Path | None = None,
    definition: DefinitionPlan | None = None,
) -> list[Step]:
    """Returns the steps a restore of `source` into `server` takes, in order.

    A remote dump is downloaded into `download_dir` (a dry run passes None: `<download dir>`).
    An encrypted dump is checked by opening it with the age identity instead of `pg_restore
    --list`, and reaches pg_restore decrypted on its stdin; a plain dump's header is checked
    as part of its verification. `definition` (restore.dbdef.check_target) is how the
    database is created: its check comes first, its properties after the data.
    """
    database = options.target_database or source.database
    where = Path(source.local_dir or download_dir or DOWNLOAD_DIR) / source.dump_name
    encrypted = is_encrypted(source)
    steps = []
    if definition is not None:
        steps.append(Step(Action.CHECK_DEFINITION, definition.check_text(server.describe())))
    if source.remote_keys:
        check = "size checked" if source.remote_target == "rclone" else "CRC-64 checked"
        text = f"download {source.description} ({check}) and its .sha256"
        steps.append(Step(Action.DOWNLOAD, text))
    steps.append(Step(Action.VERIFY, _verify_text(source)))
    if encrypted:
        text = f"check that the age identity opens {source.dump_name}"
        steps.append(Step(Action.CHECK_IDENTITY, text))
    elif source.dump_format != "plain":
        text = f"check the archive: pg_restore --list {where}"
        steps.append(Step(Action.CHECK_ARCHIVE, text))
    if options.list_only:
        steps.append(Step(Action.LIST, _list_text(options, where, encrypted)))
        return steps
    use_list = None
    if options.partial:
        use_list = Path(download_dir or WORK_DIR) / LIST_FILE
        steps.append(Step(Action.SELECT, _select_text(options, database, use_list)))
    if options.globals:
        steps += _roles_steps(source, server, database, options)
    if options.partial or options.data_only:
        text = f"create database {database!r} unless it exists (then restore into it as it is)"
        if options.data_only:
            text = f"use database {database!r} as it is (--data-only: it must exist)"
    elif options.clean:
        text = f"restore over database {database!r} (dropping its objects first)"
    else:
        what = definition.create_text(database) if definition else f"create database {database!r}"
        text = f"{what} (refused if it exists and is not empty)"
    steps.append(Step(Action.PREPARE_DATABASE, text))
    argv = restore_argv(server, source, None if encrypted else where, database, options, use_list)
    text = shlex.join(argv)
    if encrypted:
        text = f"decrypt {where} (age, plaintext sha256 checked) | {text}"
    steps.append(Step(Action.RESTORE, text, tuple(argv)))
    if definition is not None and definition.definition is not None:
        text = definition.properties_text(database) + " (on a database created here)"
        steps.append(Step(Action.DATABASE_PROPERTIES, text))
    return steps


def _roles_steps(
    source: BackupSource, server: Server, database: str, options: RestoreOptions
) -> list[Step]:
    """Returns the steps of --globals: the roles file and the database checked, roles restored.

    The target database is checked before the roles step, so a restore that will be refused
    changes no role.
    """
    name = source.globals_name or "(no roles file: this step would fail)"
    checks = "sha256 against the report and its .sha256, complete"
    if is_encrypted(source):
        checks += ", decrypted, plaintext sha256 against the report"
    steps = [Step(Action.CHECK_GLOBALS, f"check the roles file {name} ({checks})")]
    if not (options.clean or options.partial or options.data_only):
        text = f"check that database {database!r} does not exist or is empty (else refused)"
        steps.append(Step(Action.CHECK_DATABASE, text))
    if options.reset_roles:
        how = "existing roles get the backup's attributes, passwords and memberships"
    else:
        how = "existing roles are left alone; --reset-roles resets them"
    text = f"restore roles and tablespaces from {name} on {server.describe()}: missing ones are "
    steps.append(Step(Action.RESTORE_ROLES, f"{text}created, {how}"))
    return steps


def _list_text(options: RestoreOptions, where: Path, encrypted: bool) -> str:
    """Returns the --list step's line: what is printed."""
    reader = f"decrypt {where} | pg_restore --list" if encrypted else f"pg_restore --list {where}"
    if options.partial:
        return f"print the entries {_wanted(options)} would restore ({reader}); change nothing"
    return f"print the archive's table of contents ({reader}); change nothing"


def _select_text(options: RestoreOptions, database: str, use_list: Path) -> str:
    """Returns the select step's line: what is chosen and what would be refused."""
    refused = (
        "the tables must exist there (--data-only)"
        if options.data_only
        else "replacing what exists there (--clean)"
        if options.clean
        else "refused if one of them exists there (use --clean to replace it)"
    )
    return (
        f"choose {_wanted(options)} from the archive's table of contents into {use_list} "
        f"(pg_restore --list; with their indexes, constraints, sequences and grants); "
        f"check database {database!r}: {refused}"
    )


def _wanted(options: RestoreOptions) -> str:
    """Returns 'table a.b, schema c' for the plan's lines."""
    return ", ".join(
        [*(f"table {t}" for t in options.tables), *(f"schema {s}" for s in options.schemas)]
    )


def _verify_text(source: BackupSource) -> str:
    """Returns the verify step's line: the dump against the report and the checksum file."""
    directory = source.dump_format == "directory"
    checks = [
        x
        for x in (
            "the report" if source.expected_sha256 else "",
            source.checksum_name if not directory else "",
            f"{source.checksum_name} manifest" if directory else "",
        )
        if x
    ]
    return f"verify the sha256 of {source.dump_name} against {' and '.join(checks)}"


def database_action(exists: bool, clean: bool, plain: bool, empty: bool | None) -> DatabaseAction:
    """Returns what to do with the target database before restoring into it.

    `empty` (whether it holds no objects) is only needed when it exists and `clean` is off;
    None there counts as not empty.
    """
    if not exists:
        return DatabaseAction.CREATE
    if clean:
        # A plain dump has no DROP statements: start from an empty database instead.
        return DatabaseAction.RECREATE if plain else DatabaseAction.REUSE
    return DatabaseAction.REUSE if empty else DatabaseAction.REFUSE
