"""The effects of a partial restore and of `--list`: reading the archive's table of contents,
choosing entries (restore.toc decides), and checking the target before anything changes.

The archive is read with pg_restore itself (`--list`, and `--schema-only -f -` for the few
entries whose table only their SQL names); an encrypted dump is decrypted into its stdin, as
for the restore (nothing plaintext is written). What exists in the target is asked from the
server with one query; a table or schema the restore would create that is already there is
refused unless `--clean`, and `--data-only` needs every table it fills to be there.
"""

from __future__ import annotations

import json
from pathlib import Path

from db_backup.postgres.server import Server, psql_script
from db_backup.restore.fetch import Fetched
from db_backup.restore.select import Relation
from db_backup.restore.source import BackupSource, RestoreError
from db_backup.restore.steps import RestoreOptions, dump_input, explain_restore_error
from db_backup.restore.toc import (
    LIST_FILE,
    Selection,
    linked_entries,
    parse_toc,
    script_links,
    select_entries,
)
from db_backup.storage import crypto
from db_backup.util.cancel import CancelToken
from db_backup.util.execute import CommandError, StreamingChild

LINKED_FILE = "linked.list"


def archive_output(
    args: list[str],
    server: Server,
    source: BackupSource,
    fetched: Fetched,
    identity: Path | None,
    cancel: CancelToken | None,
) -> str:
    """Returns the stdout of `pg_restore ARGS DUMP` (an encrypted dump decrypted into stdin)."""
    argv = ["pg_restore", *args] + ([] if identity else [str(fetched.dump)])
    try:
        with dump_input(source, fetched, identity, cancel) as stdin:
            return _capture(argv, server, cancel, stdin)
    except CommandError as exc:
        raise RestoreError(
            f"{source.description}: {explain_restore_error(str(exc), source)}"
        ) from None
    except crypto.EncryptionError as exc:
        raise RestoreError(str(exc)) from None


def _capture(argv: list[str], server: Server, cancel: CancelToken | None, stdin: int | None) -> str:
    """Runs `argv` to the end and returns its stdout as text; raises CommandError on failure."""
    child = StreamingChild(argv, env=server.env, stdin=stdin)
    try:
        out = b"".join(child.chunks(64 * 1024, cancel))
        child.check()
    except BaseException:
        child.terminate()
        raise
    return out.decode("utf-8", "replace")


def choose(
    server: Server,
    source: BackupSource,
    fetched: Fetched,
    identity: Path | None,
    options: RestoreOptions,
    database: str,
    scratch: Path,
    cancel: CancelToken | None,
    check_target: bool = True,
) -> Selection:
    """Returns the entries a partial restore takes; writes them to `scratch`/selection.list.

    Refuses (RestoreError, nothing changed) a name the archive does not have, and a table or
    schema that exists in the target without `--clean`. Without `check_target` (--list), the
    target is taken to be a new database and not asked.
    """
    entries = parse_toc(archive_output(["--list"], server, source, fetched, identity, cancel))
    schemas = {t.schema for t in options.tables} | set(options.schemas)
    linked = linked_entries(entries, schemas)
    links = {}
    if linked:
        linked_file = scratch / LINKED_FILE
        linked_file.write_text("".join(f"{e.line}\n" for e in linked), encoding="utf-8")
        args = ["--schema-only", "--file=-", f"--use-list={linked_file}"]
        links = script_links(archive_output(args, server, source, fetched, identity, cancel))
    exists = check_target and database_exists_here(server, database)
    present = _present(server, database, schemas, options.tables) if exists else ({"public"}, [])
    existing_schemas, existing_relations = present
    selection = select_entries(
        entries, list(options.tables), list(options.schemas), links, existing_schemas
    )
    if selection.missing:
        raise RestoreError(
            f"{source.description} has no {', no '.join(selection.missing)}; "
            "`db-backup restore ... --list` prints what it holds"
        )
    if check_target:
        _check_target(selection, options, database, exists, existing_schemas, existing_relations)
    (scratch / LIST_FILE).write_text(selection.list_file(), encoding="utf-8")
    return selection


def database_exists_here(server: Server, database: str) -> bool:
    """Returns whether `database` exists on the server."""
    from db_backup.postgres.server import database_exists

    try:
        return database_exists(server, database)
    except CommandError as exc:
        raise RestoreError(f"{server.describe()}: {exc}") from None


def _present(
    server: Server, database: str, schemas: set[str], tables: tuple[Relation, ...]
) -> tuple[set[str], list[Relation]]:
    """Returns which of `schemas` and which relations of those schemas exist in `database`."""
    script = (
        "SELECT 's', nspname, '-' FROM pg_namespace WHERE nspname = ANY "
        "(SELECT json_array_elements_text(:'schemas'::json)) "
        "UNION ALL SELECT 'r', n.nspname, c.relname FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN "
        "('r', 'p', 'v', 'm', 'f') AND n.nspname = ANY "
        "(SELECT json_array_elements_text(:'schemas'::json));\n"
    )
    variables = {"schemas": json.dumps(sorted(schemas | {t.schema for t in tables}))}
    try:
        out = psql_script(server, database, script, variables, nul_separated=True)
    except CommandError as exc:
        raise RestoreError(f"{server.describe()}: database {database!r}: {exc}") from None
    fields = out.rstrip("\0").split("\0") if out.strip("\0") else []
    rows = [fields[i : i + 3] for i in range(0, len(fields) - 2, 3)]
    found_schemas = {row[1] for row in rows if row[0] == "s"}
    relations = [Relation(row[1], row[2]) for row in rows if row[0] == "r"]
    return found_schemas, relations


def _check_target(
    selection: Selection,
    options: RestoreOptions,
    database: str,
    exists: bool,
    existing_schemas: set[str],
    existing_relations: list[Relation],
) -> None:
    """Refuses what would collide with the target (or, for --data-only, what is not there)."""
    there = set(existing_relations)
    if options.data_only:
        if not exists:
            raise RestoreError(
                f"--data-only restores rows into tables that exist; database {database!r} "
                "does not exist (restore without --data-only, or create its schema first)"
            )
        absent = [str(r) for r in selection.relations if r not in there]
        if absent:
            raise RestoreError(
                f"--data-only: {', '.join(absent)} not in database {database!r}; "
                "create the tables first or restore without --data-only"
            )
        return
    if options.clean:
        return
    clashes = [f"table {r}" for r in selection.relations if r in there]
    clashes += [f"schema {s}" for s in selection.schemas if s in existing_schemas]
    if clashes:
        raise RestoreError(
            f"{', '.join(clashes)} already exist(s) in database {database!r}; nothing was "
            "changed. Restore into another database with --to-database, or replace them with "
            "--clean"
        )
