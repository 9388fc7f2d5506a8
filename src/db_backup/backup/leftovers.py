"""What killed runs left behind: their multipart uploads, and files no report ever named.

A run records each multipart upload in its claim as it starts (`watch_uploads`); the next run
of the job aborts exactly those of a killed run. The age-based sweep of the target is the
fallback, for uploads whose claim is gone: only this program's own names under its prefix.
"""

from __future__ import annotations

import structlog

from db_backup.backup.claims import LiveClaims, StaleClaim, stale_claims
from db_backup.config import Config
from db_backup.storage.base import StorageError, Target
from db_backup.util.secrets import mask

log = structlog.get_logger("db_backup.backup.leftovers")


def watch_uploads(targets: list[Target], claims: LiveClaims) -> None:
    """Makes every target that starts multipart uploads record each one in its stem's claim."""
    for target in targets:
        if hasattr(target, "upload_listener"):
            name = target.name

            def record(filename: str, key: str, upload_id: str, name: str = name) -> None:
                claim = claims.owner(filename)
                if claim is not None:
                    claim.record_upload(name, key, upload_id)

            target.upload_listener = record


def abort_uploads(job: str, stale: StaleClaim, targets: list[Target]) -> None:
    """Aborts the multipart uploads a killed run recorded in its claim (kept on failure)."""
    by_name = {target.name: target for target in targets}
    for upload in stale.uploads:
        abort = getattr(by_name.get(upload.target), "abort_upload", None)
        if abort is None:
            continue  # the target is no longer configured: its lifecycle rule is the fallback
        try:
            if abort(upload.key, upload.upload_id):
                log.warning(
                    "aborted an interrupted run's multipart upload",
                    job=job,
                    stem=stale.stem,
                    key=upload.key,
                )
        except StorageError as exc:
            stale.keep = True
            log.error(
                "could not abort an interrupted run's multipart upload",
                job=job,
                key=upload.key,
                error=mask(str(exc)),
            )


def remove_leftovers(config: Config, job: str, targets: list[Target]) -> None:
    """Removes what killed runs of this job created under names no report ever named.

    Aborts the multipart uploads their claims name, then this program's uploads that were
    left open more than a day ago (their parts are billed until someone aborts them); a
    failure here is logged, never fatal.
    """
    reports = config.directories.reports
    for stale in stale_claims(config.directories.state, job):
        abort_uploads(job, stale, targets)
        if (reports / f"{stale.stem}.json").exists():
            continue  # the run got as far as its report: nothing is a leftover
        for target in targets:
            names = stale.targets.get(target.name, [])
            try:
                removed = target.delete(names) if names else []
            except StorageError as exc:
                stale.keep = True
                log.error(
                    "could not remove an interrupted run's files",
                    job=job,
                    target=target.name,
                    error=mask(str(exc)),
                )
                continue
            if removed:
                log.warning(
                    "removed files of an interrupted run",
                    job=job,
                    stem=stale.stem,
                    removed=removed,
                )
    for target in targets:
        abort_stale = getattr(target, "abort_stale_uploads", None)
        if abort_stale is None:
            continue
        try:
            aborted = abort_stale()
        except StorageError as exc:
            log.warning(
                "could not list stale multipart uploads",
                job=job,
                target=target.name,
                error=mask(str(exc)),
            )
            continue
        if aborted:
            log.warning("aborted stale multipart uploads", job=job, uploads=aborted)
