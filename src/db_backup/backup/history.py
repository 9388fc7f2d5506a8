"""A run's view of its job's reports: read once at the run's start, then asked in memory.

The capacity estimate (before each dump), the size guard and retention (after each good one)
all need the job's earlier reports of one database. Asking the report index each time would
list the reports directory twice per database (2,000 stat calls a time with 1,000 reports
present, whoever they belong to); a run reads the index once, for every database it will dump,
and answers from that afterwards.

The view stays true while the run goes on because the run records what it changes itself
(`add` after a report is written, `remove` after retention deleted one), and nobody else
writes this job's reports meanwhile: every run of the job holds the job's lock (`util.locks`)
for its whole length, and other jobs, `status`, restores and drills never touch them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from db_backup.config import Config
from db_backup.reports import index as report_index
from db_backup.reports.model import SUCCESS, NotAReport, Report, read_report
from db_backup.reports.retention import Backup


def current_backup(report: Report) -> Backup:
    """Returns retention's view of a report this run just wrote."""
    return Backup(
        key=f"{report.stem}.json",
        database=report.database,
        started=report.started,
        successful=report.status == SUCCESS,
        files=(*report.artefacts, f"{report.stem}.json"),
    )


def _order(backup: Backup) -> tuple[Any, str]:
    return backup.started, backup.key


@dataclass
class JobHistory:
    """The job's reports per database, newest first, as of the run's start plus its own changes.

    `error` set: the index could not be read; every question raises it, so each decision fails
    the way it did when it read the index itself (the estimate is skipped, retention reports the
    error and deletes nothing).
    """

    reports_dir: Path
    by_database: dict[str, list[Backup]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # malformed reports, as the index said
    error: Exception | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def unread(cls, reports_dir: Path) -> JobHistory:
        """Returns the history of a run that has not read the reports yet (every question raises)."""
        return cls(reports_dir, error=RuntimeError("the job's reports were not read yet"))

    @classmethod
    def read(cls, config: Config, job: str, databases: list[str]) -> JobHistory:
        """Returns the reports of `job` and each of `databases`, from one index snapshot.

        Never raises: a failure is kept in `error` (see the class).
        """
        directories = config.directories
        history = cls(directories.reports)
        try:
            index = report_index.default_path(directories.state)
            with report_index.snapshot(directories.reports, index) as snap:
                for database in dict.fromkeys(databases):
                    history.by_database[database] = snap.backups(job, database)
                history.warnings = snap.warnings()
        except Exception as exc:  # kept, and raised where the history is asked
            history.by_database.clear()
            history.error = exc
        return history

    def backups(self, database: str) -> list[Backup]:
        """Returns every report of `database` (retention's view of each), newest first."""
        if self.error is not None:
            raise self.error
        with self._lock:
            return list(self.by_database.get(database, []))

    def successful(self, database: str, limit: int, exclude: str = "") -> list[dict[str, Any]]:
        """Returns up to `limit` newest SUCCESS documents of `database`, but the report `exclude`.

        The documents are read from their files now: a report gone or rewritten into something
        unreadable since the run started is skipped, the others still tell.
        """
        documents: list[dict[str, Any]] = []
        for backup in self.backups(database):
            if len(documents) == limit:
                break
            if not backup.successful or backup.key == exclude:
                continue
            try:
                documents.append(read_report(self.reports_dir / backup.key).document)
            except NotAReport:
                continue
        return documents

    def add(self, backup: Backup) -> None:
        """Records a report this run wrote (replacing one of the same key)."""
        with self._lock:
            group = [b for b in self.by_database.get(backup.database, []) if b.key != backup.key]
            group.append(backup)
            group.sort(key=_order, reverse=True)
            self.by_database[backup.database] = group

    def remove(self, database: str, key: str) -> None:
        """Records that this run deleted the report `key` of `database`."""
        with self._lock:
            group = self.by_database.get(database, [])
            self.by_database[database] = [b for b in group if b.key != key]
