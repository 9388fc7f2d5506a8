"""What killed runs left behind: stale multipart uploads, and files no report ever named."""

from __future__ import annotations

import structlog

from db_backup.backup.claims import stale_claims
from db_backup.config import Config
from db_backup.storage.base import StorageError, Target
from db_backup.util.secrets import mask

log = structlog.get_logger("db_backup.backup.leftovers")


def remove_leftovers(config: Config, job: str, targets: list[Target]) -> None:
    """Removes what killed runs of this job created under names no report ever named.

    Also aborts this program's multipart uploads that a SIGKILL left open more than a day
    ago (their parts are billed until someone does); a failure here is logged, never fatal.
    """
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
    reports = config.directories.reports
    for stale in stale_claims(config.directories.state, job):
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
