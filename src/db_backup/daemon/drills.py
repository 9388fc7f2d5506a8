"""The daemon's drills: each job's `drill.schedule`, run in a worker thread beside the loop."""

from __future__ import annotations

import threading
from datetime import datetime

import structlog

from db_backup.config import Config, JobConfig
from db_backup.config.schedule import next_run_after
from db_backup.restore.drill import run_drill
from db_backup.util.execute import CancelToken
from db_backup.util.locks import JobBusy, JobSetupError

log = structlog.get_logger("db_backup.daemon.drills")


class DrillScheduler:
    """Runs the daemon's scheduled drills in worker threads, one per job at most.

    The daemon calls `tick` from its loop; `busy()` names the jobs whose drill runs, which the
    daemon must not start a backup of (the drill holds the job's lock anyway).
    """

    def __init__(self) -> None:
        self.due: dict[str, datetime] = {}
        self.threads: dict[str, threading.Thread] = {}
        self.stop_token = CancelToken()

    def schedule(self, config: Config, now: datetime) -> None:
        """Computes the next drill of every job that has drills enabled."""
        due = {}
        for job in config.jobs:
            settings = job.drill
            if settings.enabled:
                due[job.name] = next_run_after(settings.schedule, job.zone(), None, now)
        self.due = due

    def busy(self) -> set[str]:
        """Returns the names of jobs whose drill is running."""
        self.threads = {n: t for n, t in self.threads.items() if t.is_alive()}
        return set(self.threads)

    def tick(self, config: Config, now: datetime, running_jobs: set[str]) -> None:
        """Starts due drills of jobs that are not running a backup."""
        self.busy()
        for job in config.jobs:
            due = self.due.get(job.name)
            if due is None or now < due or job.name in running_jobs or job.name in self.threads:
                continue
            settings = job.drill
            self.due[job.name] = next_run_after(settings.schedule, job.zone(), now, now)
            thread = threading.Thread(
                target=self._work, args=(config, job), name=f"drill-{job.name}", daemon=True
            )
            self.threads[job.name] = thread
            log.info("drill started", job=job.name, trigger="schedule")
            thread.start()

    def next_due(self) -> datetime | None:
        """Returns the earliest scheduled drill, if any."""
        return min(self.due.values()) if self.due else None

    def _work(self, config: Config, job: JobConfig) -> None:
        """Runs one scheduled drill in its thread; what goes wrong is logged, never raised."""
        try:
            run_drill(config, job, cancel=self.stop_token, trigger="schedule")
        except JobBusy as exc:
            log.warning(
                "drill skipped: a backup of the job is running", job=job.name, error=str(exc)
            )
        except JobSetupError as exc:
            log.error("drill could not start", job=job.name, error=str(exc))
        except Exception as exc:  # a bug must not kill the scheduler; it is logged loudly
            log.exception("drill crashed", job=job.name, error=repr(exc))

    def stop(self, reason: str) -> None:
        """Stops running drills (they write FAILED drill reports) and waits for them."""
        self.stop_token.cancel(reason)
        for thread in list(self.threads.values()):
            thread.join(timeout=120)
