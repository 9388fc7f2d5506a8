"""The runs the daemon owes its jobs, kept in the state file so that no restart loses them.

Two kinds: the retry of a FAILED run (`job.retry`), and the re-run of a run that a stop of the
daemon cut short (an upgrade's restart, `systemctl restart`, a shutdown) or that the daemon died
in (a crash, SIGKILL, the watchdog). Every run is marked in the state file before it starts and
recorded, with what it leaves owed, when it ends; at start-up a mark still there is a run the
daemon died in. An owed run is taken up at the next start unless the job's next slot comes
first or it is older than the catch-up window. An interrupted run is run again once: a re-run
that is interrupted too is not (a run that every start kills cannot loop).

The decisions are the pure functions of `daemon.state`; this module applies them to the state
file and says what it decided in the log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

import structlog

from db_backup.config import JobConfig
from db_backup.daemon.state import (
    RERUN,
    Pending,
    RunMark,
    StateStore,
    rerun_after_stop,
    retry_after,
    why_dropped,
)
from db_backup.reports.model import FAILED

log = structlog.get_logger("db_backup.daemon.loop")


class OwedRuns:
    """The owed runs (`runs`: job name -> Pending) and their marks in the state file."""

    def __init__(self, state: StateStore) -> None:
        """Keeps the owed runs in `state` (already loaded or loaded later by the daemon)."""
        self.state = state
        self.runs: dict[str, Pending] = {}

    def settle_interrupted(self, now: datetime) -> None:
        """Settles the runs the state file still marks as running: the daemon died in them."""
        try:
            settled = self.state.settle_interrupted(now)
        except OSError as exc:
            log.error("state file not written", error=str(exc))
            return
        for name, job_state in settled.items():
            started = job_state.last_run_utc
            log.warning(
                "the daemon stopped during a run without recording it; it counts as FAILED",
                job=name,
                started=None if started is None else started.isoformat(),
                rerun=job_state.pending is not None,
            )

    def take_up(
        self,
        jobs: Iterable[JobConfig],
        due: Mapping[str, datetime],
        now: datetime,
        window: timedelta,
    ) -> None:
        """Plans the runs owed from before the start, or drops them saying why (daemon start)."""
        for job in jobs:
            job_state = self.state.get(job.name)
            owed = None if job_state is None else job_state.pending
            if owed is None:
                continue
            why = why_dropped(owed, now, due[job.name], window)
            fields = {"job": job.name, "trigger": owed.trigger, "attempt": owed.attempt}
            if why:
                log.info("owed run dropped", reason=why, **fields)
                self._save(job.name, None)
            else:
                self.runs[job.name] = owed
                log.info("owed run planned", at=max(owed.due_utc, now).isoformat(), **fields)

    def started(self, job: str, now: datetime, attempt: int, trigger: str) -> None:
        """Marks a run of `job` as started in the state file, before it does anything."""
        self.runs.pop(job, None)  # this run is what was owed, if anything
        try:
            self.state.mark_running(job, now, attempt, trigger)
        except OSError as exc:
            log.error("state file not written", job=job, error=str(exc))

    def finished(
        self,
        job: JobConfig,
        mark: RunMark,
        outcome: str,
        now: datetime,
        *,
        stopping: bool,
        next_slot: datetime | None,
    ) -> None:
        """Records a run's end and what it leaves owed: a retry, or a re-run when `stopping`.

        `next_slot` is the job's next scheduled run (None: the job left the config meanwhile).
        An empty `outcome` is a run that did not happen (its lock was held elsewhere).
        """
        if not outcome:
            try:
                self.state.clear_running(job.name)
            except OSError as exc:
                log.error("state file not written", job=job.name, error=str(exc))
            return
        owed = None
        if outcome == FAILED and stopping:
            owed = self._rerun(job, mark, now)
        elif outcome == FAILED and next_slot is not None:
            owed = self._retry(job, mark, now, next_slot)
        try:
            self.state.record(job.name, mark.started_utc, outcome, now, owed)  # type: ignore[arg-type]
        except OSError as exc:
            log.error("state file not written", job=job.name, error=str(exc))
        if owed is not None:
            self.runs[job.name] = owed

    def forget_others(self, jobs: Iterable[str]) -> None:
        """Drops what is owed to jobs not in `jobs` (they left the config in a reload)."""
        keep = set(jobs)
        for name in [name for name in self.runs if name not in keep]:
            del self.runs[name]
            self._save(name, None)

    def _retry(
        self, job: JobConfig, mark: RunMark, now: datetime, next_slot: datetime
    ) -> Pending | None:
        delay = timedelta(seconds=job.retry.delay_seconds)
        retry, why = retry_after(mark.attempt, job.retry.attempts, delay, now, next_slot)
        if retry is not None:
            log.info(
                "retry planned", job=job.name, attempt=retry.attempt, at=retry.due_utc.isoformat()
            )
        elif mark.attempt <= job.retry.attempts:
            log.info(f"retry dropped: {why}", job=job.name)
        return retry

    def _rerun(self, job: JobConfig, mark: RunMark, now: datetime) -> Pending | None:
        rerun = rerun_after_stop(mark, now)
        if rerun is not None:
            log.info("run cut short by the stop; it runs again at the next start", job=job.name)
        elif mark.trigger == RERUN:
            log.warning("a re-run was cut short too; it is not run a third time", job=job.name)
        return rerun

    def _save(self, job: str, pending: Pending | None) -> None:
        try:
            self.state.set_pending(job, pending)
        except OSError as exc:
            log.error("state file not written", job=job, error=str(exc))
