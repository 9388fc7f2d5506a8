"""Chooses which of a job's backups to delete: older than `days`, never the newest `keep_last`.

The choice is made from this program's own reports (one per database per run), so only files
and objects this program created are ever candidates. A file still named by a kept report (the
globals file a multi-database run shares) is never deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from db_backup.report import SUCCESS, StoredReport


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
    """Returns the backups to delete and the file names that must be kept (still referenced)."""
    cutoff = now - timedelta(days=days)
    expired: list[Backup] = []
    kept: list[Backup] = []
    by_database: dict[str, list[Backup]] = {}
    for backup in backups:
        by_database.setdefault(backup.database, []).append(backup)
    for group in by_database.values():
        group.sort(key=lambda b: b.started, reverse=True)
        protected = {b.key for b in [b for b in group if b.successful][:keep_last]}
        for backup in group:
            if backup.key not in protected and backup.started < cutoff:
                expired.append(backup)
            else:
                kept.append(backup)
    still_named = {name for backup in kept for name in backup.files}
    return expired, still_named


def backup_of(report: StoredReport) -> Backup:
    """Returns the retention view of a stored report.

    Reports are input (hand-edited, written by another version): only plain file names are
    kept, so a report cannot make retention delete outside the directories it manages, and a
    field of the wrong type is ignored instead of stopping retention.
    """
    doc = report.document
    artefacts = doc.get("artefacts", [])
    files = [report.path.name, *(artefacts if isinstance(artefacts, list) else [])]
    local = doc["local"]
    for location in (local.get("file"), local.get("globalsFile"), local.get("checksumFile")):
        if isinstance(location, str) and location:
            files.append(location.rsplit("/", 1)[-1])
    for url in doc["remote"].get("urls", []):
        files.append(url.rsplit("/", 1)[-1])
    return Backup(
        key=report.path.name,
        database=doc["database"],
        started=report.started,
        successful=doc["status"] == SUCCESS,
        files=tuple(dict.fromkeys(name for name in files if is_plain_file_name(name))),
    )


def is_plain_file_name(name: object) -> bool:
    """Returns whether `name` is a file name in one directory (no path, no NUL, not . or ..)."""
    return (
        isinstance(name, str)
        and name not in {"", ".", ".."}
        and "/" not in name
        and "\0" not in name
    )
