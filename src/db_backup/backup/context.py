"""What one run carries from step to step: its job and environment, targets, history, result.

`RunContext` is filled by the run's set-up (`backup.run`) and read by the steps that dump a
database (`backup.database`), write its report (`backup.finish`) and prune (`backup.prune`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from db_backup.backup.claims import LiveClaims
from db_backup.backup.history import JobHistory
from db_backup.config import Config, JobConfig
from db_backup.postgres import tools as pg
from db_backup.reports.model import SUCCESS
from db_backup.storage.base import StorageError, Target
from db_backup.storage.crypto import EncryptionError
from db_backup.util.cancel import Cancelled, CancelToken
from db_backup.util.execute import CommandError
from db_backup.util.fsutil import describe_os_error
from db_backup.util.locks import JobSetupError
from db_backup.util.secrets import SecretError, mask

ProgressCallback = Callable[[str, str, int], None]  # job, database, bytes so far
DUMP_DONE = -1  # the bytes a progress callback gets when a database's dump is over

# Errors a run expects and reports in words; anything else is a bug, reported all the same.
EXPECTED_ERRORS = (
    JobSetupError,
    SecretError,
    CommandError,
    StorageError,
    EncryptionError,
    Cancelled,
    OSError,
)


def describe_error(exc: BaseException, where: Path | str = "") -> str:
    """Returns the masked message for a run's error; never an exception's repr."""
    if isinstance(exc, Cancelled):
        return f"stopped before the dump started: {exc}"
    if isinstance(exc, OSError):
        return mask(describe_os_error(exc, exc.filename or where))
    if isinstance(exc, EXPECTED_ERRORS):
        return mask(str(exc))
    return mask(f"internal error ({type(exc).__name__}): {exc}; please report this as a bug")


@dataclass
class RunResult:
    """What one run produced: a report per database and whether they all succeeded."""

    job: str
    reports: list[dict[str, Any]] = field(default_factory=list)
    report_paths: list[Path] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        """Returns True when every database's report says SUCCESS."""
        return (
            not self.error
            and bool(self.reports)
            and all(r["status"] == SUCCESS for r in self.reports)
        )


@dataclass
class RunContext:
    """One run of one job: what every step of it needs, in one place."""

    config: Config
    job: JobConfig
    cancel: CancelToken
    progress: ProgressCallback | None
    trigger: str
    attempt: int
    result: RunResult
    # This machine's short name as it appears in file names (the report's `host` is the
    # database server; its `hostname` the machine's full name).
    machine_label: str = field(default_factory=pg.host_label)
    env: dict[str, str] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    versions: tuple[str, str] = ("", "")
    globals_staged: Path | None = None  # this run's pg_dumpall output, stored per database
    globals_error: str = ""
    recipients: list[str] = field(default_factory=list)  # age public keys; empty: no encryption
    globals_checksums: dict[str, str] = field(default_factory=dict)  # when encrypted
    reported: set[str] = field(default_factory=set)
    claims: LiveClaims = field(default_factory=LiveClaims)  # their multipart uploads recorded
    # The job's reports, read once the databases are known (asking before raises).
    history: JobHistory = field(init=False)

    def __post_init__(self) -> None:
        self.history = JobHistory.unread(self.config.directories.reports)

    @property
    def staging(self) -> Path:
        """Returns the private directory for small files (globals, .sha256) before upload."""
        return self.config.directories.state / "staging" / self.job.name

    @property
    def private(self) -> Path:
        """Returns the 0700 directory of this job's password file (cleared by every run)."""
        return self.config.directories.state / "private" / self.job.name

    @property
    def encrypted(self) -> bool:
        """Returns whether this run's dumps and globals are encrypted (age recipients given)."""
        return bool(self.recipients)
