"""`db-backup restore`: bring one backup back into a PostgreSQL server, checksum first.

Order of work, so that nothing touches a database before the backup is proven whole:
find the backup (restore.source) -> download the remote copy when needed (OSS: CRC-64 checked,
rclone: size checked; the sha256 computed as the bytes arrive) -> verify its sha256 against
the `.sha256` file and the report -> `pg_restore --list` (format and version check; an
encrypted backup: the age identity opens it) -> with `--globals`, the roles file checked
(restore.globals_file) and the target database checked -> only then changes: the missing roles
and tablespaces created (existing roles left alone unless `--reset-roles`) -> create the target
database (an existing non-empty one only with `--clean`) -> `pg_restore -j N --exit-on-error`
(plain dumps: `psql -v ON_ERROR_STOP=1`). These are the steps of restore.plan's plan, which
`--dry-run` prints (running its checks, never its changes) and this module executes one by one.
A restore that stops half-way is a failure; a database this command created for it is dropped
again, and nothing it did not create.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from db_backup.config import Config
from db_backup.postgres.server import (
    Server,
    database_exists,
    database_is_empty,
    drop_database,
)
from db_backup.restore.dbdef import (
    DefinitionPlan,
    apply_properties,
    check_target,
    create_recorded,
)
from db_backup.restore.fetch import BackupFiles, Fetched, download_files, local_files, verify_files
from db_backup.restore.globals_file import apply as apply_roles
from db_backup.restore.globals_file import check_roles_file, plan_on
from db_backup.restore.partial import archive_output, choose
from db_backup.restore.plan import (
    CHANGES,
    Action,
    DatabaseAction,
    Step,
    database_action,
    plan_restore,
)
from db_backup.restore.roles import RolePlan
from db_backup.restore.roles import describe as describe_roles
from db_backup.restore.select import check_request, check_target_database
from db_backup.restore.source import BackupSource, RestoreError
from db_backup.restore.steps import (
    RestoreOptions,
    check_archive,
    explain_restore_error,
    is_encrypted,
    open_identity,
    run_restore_argv,
)
from db_backup.restore.toc import Selection
from db_backup.storage.crypto import EncryptionError
from db_backup.storage.local import describe_os_error
from db_backup.util.cancel import Cancelled, CancelToken
from db_backup.util.execute import CommandError
from db_backup.util.secrets import mask

OutputFn = Callable[[str], None]


@dataclass
class RestoreResult:
    """What one restore did (a dry run: the plan, and the refusal the real run would meet)."""

    database: str
    source: str
    sha256: str
    created: bool
    seconds: float
    steps: list[str] = field(default_factory=list)
    refusal: str = ""  # dry run: why the real run would stop ("" when it would go ahead)
    refused_step: int = 0  # dry run: the step (1-based) that refuses


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
    """Restores `source` into `server`; raises RestoreError (nothing half-made is left behind).

    Every checking step of the plan runs before the first step that changes the server. With
    `options.dry_run`, only those checks run (a remote backup is downloaded to be checked);
    the result holds the plan's lines and, when a check fails, the refusal.
    """
    database = options.target_database or source.database
    if not options.list_only:
        check_target_database(database)
    check_request(
        source.dump_format,
        partial=options.partial,
        list_only=options.list_only,
        data_only=options.data_only,
        clean=options.clean,
        globals_=options.globals,
    )
    started = time.monotonic()
    # --list creates nothing: no definition to check, and no server to ask.
    if options.list_only:
        definition = DefinitionPlan(None, note="--list creates nothing")
    else:
        definition = _check_definition(server, source, options)
    shown = None if options.list_only else definition
    scratch = _download_dir(workdir or config.directories.state / "restore", source)
    execution = _Execution(config, source, server, options, scratch, cancel, say, definition)
    steps = plan_restore(source, server, options, scratch, shown)
    try:
        if options.dry_run:
            return _dry_run(execution, steps, plan_restore(source, server, options, None, shown))
        for step in steps:
            execution.do(step)
        fetched = execution.fetched
        assert fetched is not None  # every plan verifies the dump
        seconds = time.monotonic() - started
        return RestoreResult(
            database, source.description, fetched.sha256, execution.created, seconds
        )
    except CommandError as exc:
        raise RestoreError(
            f"{server.describe()}: {explain_restore_error(str(exc), source)}"
        ) from None
    except OSError as exc:  # an unreadable dump or checksum file: say which, no traceback
        where = exc.filename or source.description
        raise RestoreError(
            f"{where}: cannot read it ({exc.strerror or exc}); nothing was restored"
        ) from None
    finally:
        execution.stack.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _dry_run(execution: _Execution, steps: list[Step], shown: list[Step]) -> RestoreResult:
    """Runs the checks of `steps` (never a change); returns the lines of `shown` (the same
    plan, naming `<download dir>`) and any refusal."""
    source = execution.source
    lines = [step.text for step in shown]
    result = RestoreResult(execution.database, source.description, "", False, 0.0, lines)
    for number, step in enumerate(steps, 1):
        if step.action in CHANGES:
            continue
        try:
            execution.do(step)
        except RestoreError as exc:
            result.refusal, result.refused_step = str(exc), number
            break
    if execution.fetched is not None:
        result.sha256 = execution.fetched.sha256
    return result


def _check_definition(
    server: Server, source: BackupSource, options: RestoreOptions, roles: bool | None = None
) -> DefinitionPlan:
    """Returns the database definition the restore will apply, checked against the target.

    Reads only. `roles`: whether the backup's roles are still to come from its roles file
    (default: with --globals). A database restored into as it is keeps its own definition.
    """
    database = options.target_database or source.database
    try:
        if database_exists(server, database):
            if options.partial or options.data_only:  # part of a backup into it as it is
                note = f"database {database!r} exists: it keeps its own definition"
                return DefinitionPlan(None, note=note)
            plain = source.dump_format == "plain"
            empty = None if options.clean else database_is_empty(server, database)
            if database_action(True, options.clean, plain, empty) is DatabaseAction.REUSE:
                note = f"database {database!r} exists: it keeps its own definition"
                return DefinitionPlan(None, note=note)
        return check_target(
            server,
            source.report,
            owner=options.owner,
            locale=options.locale,
            roles_restored=options.globals if roles is None else roles,
            skip_tablespaces=options.skip_tablespaces,
        )
    except CommandError as exc:
        raise RestoreError(f"{server.describe()}: reading what the server has: {exc}") from None


@dataclass
class _Execution:
    """A restore being carried out: what its steps have found and made so far."""

    config: Config
    source: BackupSource
    server: Server
    options: RestoreOptions
    scratch: Path
    cancel: CancelToken | None
    say_to: OutputFn | None
    definition: DefinitionPlan
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    files: BackupFiles | None = None
    fetched: Fetched | None = None
    identity: Path | None = None
    created: bool = False
    roles: RolePlan | None = None  # --globals: what the roles step runs, decided by its check

    @property
    def database(self) -> str:
        """Returns the database restored into."""
        return self.options.target_database or self.source.database

    def say(self, text: str) -> None:
        """Tells the person running the restore what was done."""
        if self.say_to is not None:
            self.say_to(text)

    def do(self, step: Step) -> None:
        """Carries out one step of the plan."""
        handlers = {
            Action.CHECK_DEFINITION: self.check_definition,
            Action.DATABASE_PROPERTIES: self.database_properties,
            Action.DOWNLOAD: self.download,
            Action.VERIFY: self.verify,
            Action.CHECK_ARCHIVE: self.check_archive,
            Action.CHECK_IDENTITY: self.check_identity,
            Action.CHECK_GLOBALS: self.check_globals,
            Action.CHECK_DATABASE: self.check_database,
            Action.LIST: self.list_entries,
            Action.SELECT: self.select,
            Action.RESTORE_ROLES: self.restore_roles,
            Action.PREPARE_DATABASE: self.prepare_database,
            Action.RESTORE: lambda: self.restore(step),
        }
        handlers[step.action]()

    def check_definition(self, roles: bool | None = None) -> None:
        """Stops the restore, before any change, when the target cannot honour the definition."""
        plan = self.definition
        if roles is not None:  # asked again once the roles file has been applied
            plan = _check_definition(self.server, self.source, self.options, roles)
        if plan.refused:
            raise RestoreError(f"{self.server.describe()}: {plan.refusal()}")

    def database_properties(self) -> None:
        """Sets the recorded settings, comment and ACL on a database this restore created."""
        if not self.created:
            self.say(f"database {self.database!r} existed: its own properties are kept")
            return
        try:
            apply_properties(self.server, self.definition, self.database)
        except CommandError as exc:
            with contextlib.suppress(CommandError):
                drop_database(self.server, self.database)
            raise RestoreError(
                f"setting the properties of database {self.database!r} failed; it was dropped "
                f"again: {mask(str(exc))}"
            ) from None
        self.say(f"set the recorded properties of database {self.database!r}")

    def download(self) -> None:
        """Downloads the backup's files into the scratch directory (CRC-64 checked)."""
        self.files = download_files(
            self.config, self.source, self.scratch, self.cancel, self.options.globals
        )

    def verify(self) -> None:
        """Verifies the dump's sha256 (and a plain unencrypted dump's header)."""
        files = self.files or local_files(self.source, self.options.globals)
        self.fetched = verify_files(self.source, files, self.cancel)
        self.say(f"verified sha256 {self.fetched.sha256} of {self.source.description}")
        if self.source.dump_format == "plain" and not is_encrypted(self.source):
            check_archive(self.fetched, self.source, self.server.env)

    def check_archive(self) -> None:
        """Runs `pg_restore --list` on the dump (format and version)."""
        assert self.fetched is not None
        check_archive(self.fetched, self.source, self.server.env)

    def check_identity(self) -> None:
        """Proves that the age identity opens the encrypted dump; keeps the identity file."""
        assert self.fetched is not None
        self.identity = open_identity(
            self.stack, self.config, self.source, self.fetched, self.options.identity
        )
        self.say(f"the age identity opens {self.source.dump_name}")

    def list_entries(self) -> None:
        """Prints the archive's table of contents (or the entries a selection takes)."""
        assert self.fetched is not None
        if self.options.partial:
            selection = self.select()
            for line in selection.left_out:
                self.say(f"; {line}")
            for entry in selection.entries:
                self.say(entry.line)
            return
        args = ["--list"]
        text = archive_output(args, self.server, self.source, self.fetched, self.identity, None)
        for line in text.splitlines():
            self.say(line)

    def select(self) -> Selection:
        """Chooses the entries of a partial restore and checks the target; keeps the list file."""
        assert self.fetched is not None
        selection = choose(
            self.server,
            self.source,
            self.fetched,
            self.identity,
            self.options,
            self.database,
            self.scratch,
            self.cancel,
            check_target=not self.options.list_only,
        )
        if not self.options.list_only:
            for line in selection.left_out:
                self.say(line)
            self.say(f"chose {len(selection.entries)} entries of the archive to restore")
        return selection

    def check_globals(self) -> None:
        """Checks the roles file (checksums, decryption, complete) and decides what it does."""
        assert self.fetched is not None
        source = self.source
        if self.fetched.globals_file is None:
            raise RestoreError(
                f"--globals: no roles file ({source.globals_name or '<stem>_globals.sql'}) "
                f"was found for {source.description}"
            )
        try:
            checked = check_roles_file(self.fetched.globals_file, source.report, self.identity)
        except RestoreError as exc:
            raise RestoreError(f"{exc}; nothing was changed") from None
        self.say(f"checked the roles file {checked.name}: {', '.join(checked.checked)}")
        self.roles = plan_on(
            self.server,
            checked,
            reset=self.options.reset_roles,
            skip_tablespaces=self.options.skip_tablespaces,
        )
        if self.options.dry_run:
            for line in describe_roles(self.roles, done=False):
                self.say(f"the roles step: {line}")

    def check_database(self) -> None:
        """Refuses, before anything changes, a target database that exists and holds objects."""
        self.database_fate()

    def restore_roles(self) -> None:
        """Creates the missing roles and tablespaces the checked roles file holds."""
        assert self.roles is not None and self.fetched is not None
        assert self.fetched.globals_file is not None
        apply_roles(self.server, self.roles, self.fetched.globals_file.name)
        for line in describe_roles(self.roles):
            self.say(line)

    def database_fate(self) -> DatabaseAction:
        """Returns what happens to the target database; raises RestoreError to refuse it."""
        server, database = self.server, self.database
        exists = database_exists(server, database)
        # A partial restore was checked against what the database holds (SELECT step).
        partly = self.options.partial or self.options.data_only
        if self.options.data_only and not exists:
            raise RestoreError(
                f"--data-only restores rows into tables that exist; database {database!r} "
                f"does not exist on {server.describe()}"
            )
        empty = (
            database_is_empty(server, database)
            if exists and not self.options.clean and not partly
            else None
        )
        plain = self.source.dump_format == "plain"
        action = database_action(exists, self.options.clean or partly, plain, empty)
        if action is DatabaseAction.REFUSE:
            raise RestoreError(
                f"database {database!r} already exists on {server.describe()} and is not "
                "empty; choose another name with --to-database, or replace its objects with "
                "--clean"
            )
        return action

    def prepare_database(self) -> None:
        """Creates the target database as recorded, or checks that it may be restored over."""
        action = self.database_fate()  # again: the server may have changed since the check
        creating = action in (DatabaseAction.CREATE, DatabaseAction.RECREATE)
        if creating and self.options.globals:
            self.check_definition(roles=False)  # the roles file must have brought them
        if action is DatabaseAction.RECREATE:
            drop_database(self.server, self.database)
        if creating:
            create_recorded(
                self.server,
                self.definition,
                self.database,
                self.options.skip_tablespaces,
                self.options.owner,
            )
            self.created = True

    def restore(self, step: Step) -> None:
        """Runs the plan's pg_restore (or psql); a database it created is dropped on failure."""
        assert self.fetched is not None
        source, database = self.source, self.database
        try:
            run_restore_argv(
                list(step.argv), self.server, source, self.fetched, self.identity, self.cancel
            )
        except (CommandError, Cancelled, EncryptionError) as exc:
            if self.created:
                with contextlib.suppress(CommandError):
                    drop_database(self.server, database)
            what = "was stopped" if isinstance(exc, Cancelled) else "failed"
            dropped = f"; database {database!r} was dropped again" if self.created else ""
            if self.roles is not None and self.roles.created:  # roles are kept: others may use them
                dropped += f"; the roles it created stay ({', '.join(self.roles.created)})"
            raise RestoreError(
                f"restore of {source.description} into {database!r} {what}{dropped}: "
                + explain_restore_error(mask(str(exc)), source)
            ) from None
        self.say(
            f"restored {source.description} into database {database!r} on {self.server.describe()}"
        )


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
