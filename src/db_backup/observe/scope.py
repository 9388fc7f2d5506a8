"""Which (job, database) pairs the latest views show: those still configured, and a job-level
failure only until the job runs again.

A run that fails before it knows its databases (`databases: all` and the server down, a refused
hook) writes one FAILED report for database `*`: a job-level record. `status`, `status --from-db`
and the metrics show it while it is the job's newest news; any later report of the same job (the
run that recovered) clears it. Reports of a job, or of a listed database, no longer in the config
leave the latest views; `status --history` and the files keep them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from db_backup.config import Config

JOB_LEVEL = "*"  # the database of a job-level record
Key = tuple[str, str]  # (job, database)
Scope = Mapping[str, "frozenset[str] | None"]  # job -> its listed databases (None: discovered)


def configured(config: Config) -> dict[str, frozenset[str] | None]:
    """Returns each configured job with its listed databases (None for `databases: all`)."""
    return {
        job.name: frozenset(job.databases) if isinstance(job.databases, tuple) else None
        for job in config.jobs
    }


def hidden(newest: Mapping[Key, datetime], scope: Scope | None) -> set[Key]:
    """Returns the keys the latest views leave out, given each key's newest report start.

    Without a `scope` (no config to compare with, e.g. other hosts) only the cleared
    job-level records are left out.
    """
    latest_of_job: dict[str, datetime] = {}
    for (job, database), started in newest.items():
        if database != JOB_LEVEL and (job not in latest_of_job or started > latest_of_job[job]):
            latest_of_job[job] = started
    gone: set[Key] = set()
    for key, started in newest.items():
        job, database = key
        if scope is not None and job not in scope:
            gone.add(key)
        elif database == JOB_LEVEL:
            if job in latest_of_job and latest_of_job[job] > started:
                gone.add(key)  # the job ran again since: the record is cleared
        elif scope is not None and (listed := scope[job]) is not None and database not in listed:
            gone.add(key)
    return gone
