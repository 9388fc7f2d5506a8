"""Retention's view of a backup (`Backup`, from a report), and the age and count rules' choice.

The choice is made from this program's own reports (one per database per run), so only files
and objects this program created are ever candidates. A file still named by a kept report (the
globals file a multi-database run shares) is never deleted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from db_backup.reports.model import StoredReport
from db_backup.storage.base import is_plain_name, split_member


@dataclass(frozen=True)
class Backup:
    """What retention needs to know of one report."""

    key: str  # report file name
    database: str
    started: datetime
    successful: bool
    files: tuple[str, ...]  # artefact file names (dump, .sha256, globals, report)


def choose_expired(
    backups: list[Backup], *, days: int, keep_last: int, now: datetime
) -> tuple[list[Backup], set[str]]:
    """Returns the backups to delete and the file names that must be kept (still referenced),
    by the age and count rules alone: the calendar plan (`reports.calendar.plan`) without a
    calendar rule, the one decision retention makes.

    Per database, a backup goes when it started more than `days` ago and is not one of the
    newest `keep_last` successful ones (`keep_last` >= 1, so never the newest success).
    """
    from db_backup.reports.calendar import Policy, plan

    found = plan(backups, Policy(days=days, keep_last=keep_last), UTC, now)
    return found.expired, found.still_named


# What this program appends to a stem: the report, the dump (custom, plain or directory format),
# the globals file, each possibly encrypted (.age) and possibly with its .sha256.
OWN_SUFFIX = re.compile(r"\.json|(?:\.dump|\.sql|\.dump\.d|_globals\.sql)(?:\.age)?(?:\.sha256)?")


def backup_of(report: StoredReport) -> Backup:
    """Returns the retention view of a stored report.

    Only plain file names that belong to the report's own stem (`<stem>.dump`, `<stem>.dump.sha256`,
    `<stem>_globals.sql`, `<stem>.dump.age`, ...) and the members of its own directory dump on a
    remote (`<stem>.dump.d/<file>`) are ever candidates: any other name with a directory part,
    "..", or another backup's stem, whoever wrote it into the report, is ignored.
    """
    own_stem = report.name.removesuffix(".json")
    files = [name for name in report.named_files() if owned_by(name, own_stem)]
    return Backup(
        key=report.name,
        database=report.database,
        started=report.started,
        successful=report.successful,
        files=tuple(dict.fromkeys(files)),
    )


def owned_by(name: str, own_stem: str) -> bool:
    """Returns whether `name` is a plain file name of the backup whose stem is `own_stem`.

    A directory dump's member stored remotely (`<stem>.dump.d/<file>`) is owned too.
    """
    member = split_member(name)
    if member is not None:
        return bool(own_stem) and member[0] == f"{own_stem}.dump.d"
    if not is_plain_name(name) or not own_stem or not name.startswith(own_stem):
        return False
    return OWN_SUFFIX.fullmatch(name[len(own_stem) :]) is not None
