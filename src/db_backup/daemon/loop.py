"""`db-backup daemon`: starts jobs at croniter-computed times and keeps systemd informed.

One loop in the main thread owns everything: it computes when each job is due, starts due jobs in
worker threads (at most `daemon.max_parallel`, never a job twice), feeds the watchdog only while
the loop and every running job make progress, keeps STATUS current, and handles SIGHUP (reload)
and SIGTERM/SIGINT (stop: running dumps are terminated, reported FAILED and run again at the next
start, see `daemon.owed`). Signal handlers only set flags; the loop acts on them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import structlog

from db_backup.backup.run import (
    RunResult,
    check_directories,
    describe_error,
    run_job,
)
from db_backup.config import Config, ConfigError, JobConfig, load
from db_backup.config.schedule import due_at_start, next_run_after, sleep_seconds_until
from db_backup.daemon.drills import DrillScheduler
from db_backup.daemon.owed import OwedRuns
from db_backup.daemon.sd_notify import SdNotifier, Watchdog
from db_backup.daemon.state import Pending, RunMark, StateStore
from db_backup.observe.staleness import StaleWatch
from db_backup.reports.model import FAILED, SUCCESS
from db_backup.storage.crypto import check_config as check_encryption
from db_backup.util.background import Background
from db_backup.util.cancel import CancelToken
from db_backup.util.clock import utc_now
from db_backup.util.locks import JobBusy, JobSetupError
from db_backup.util.units import format_age, format_size

if TYPE_CHECKING:
    from db_backup.observe.metrics_http import MetricsServer

log = structlog.get_logger("db_backup.daemon.loop")

IDLE_MAX_SLEEP = 30.0  # wake at least this often to notice wall-clock jumps
BUSY_MAX_SLEEP = 2.0  # while jobs run: refresh the bytes/rate in STATUS
STOP_EXTEND_SECONDS = 30.0


class Clock:
    """Where the loop reads the time and sleeps; tests drive the real loop with their own."""

    def now(self) -> datetime:
        """Returns the wall-clock time in UTC (schedules are computed from it)."""
        return utc_now()

    def monotonic(self) -> float:
        """Returns the monotonic time in seconds (progress, watchdog and STATUS pacing)."""
        return time.monotonic()

    def wait(self, wake: threading.Event, seconds: float) -> None:
        """Sleeps up to `seconds`, returning early when `wake` is set."""
        wake.wait(seconds)


JobRunner = Callable[..., RunResult]


@dataclass
class Running:
    """A job running in a worker thread, with what STATUS and the watchdog need to know."""

    job: JobConfig
    attempt: int
    started_utc: datetime
    token: CancelToken
    trigger: str = "schedule"
    thread: threading.Thread | None = None
    database: str = ""
    bytes: int = 0
    outcome: str = ""  # SUCCESS, FAILED, or "" when it did not run (lock held elsewhere)
    monotonic: Callable[[], float] = time.monotonic
    last_progress: float = field(init=False)
    # database -> (bytes so far, monotonic start) of every dump of this job running now
    dumps: dict[str, tuple[int, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.last_progress = self.monotonic()

    def progress(self, _job: str, database: str, size: int) -> None:
        """Records dump progress (called from worker threads); a negative size ends a dump."""
        now = self.monotonic()
        self.last_progress = now
        if size < 0:
            self.dumps.pop(database, None)
            return
        started = self.dumps.get(database, (0, now))[1]
        self.dumps[database] = (size, started)
        self.database = database
        self.bytes = size

    def describe(self) -> list[str]:
        """Returns `job/database size rate/s` for every dump running now (the job alone if none)."""
        now = self.monotonic()
        if not (dumps := dict(self.dumps)):  # one copy: workers add and remove dumps meanwhile
            if self.database:
                return [f"running {self.job.name}/{self.database}"]
            # Before the first dump: the roles (pg_dumpall --globals-only), space and
            # connection checks; a job name twice ("nightly/nightly") read as a database.
            return [f"running {self.job.name}: roles and checks before the first dump"]
        return [
            f"running {self.job.name}/{database} {format_size(size)} "
            f"{format_size(int(size / max(now - started, 1e-6)))}/s"
            for database, (size, started) in sorted(dumps.items())
        ]


class Daemon:
    """The scheduler loop; `run()` returns the process exit status."""

    def __init__(
        self,
        config_path: str,
        config: Config,
        notifier: SdNotifier | None = None,
        clock: Clock | None = None,
        runner: JobRunner = run_job,
    ) -> None:
        self.config_path = config_path
        self.config = config
        self.notifier = notifier or SdNotifier()
        self.clock = clock or Clock()
        self.run_job = runner
        self.watchdog = Watchdog(self.notifier, clock=self.clock.monotonic)
        self.state = StateStore(config.directories.state / "state.json")
        self.due: dict[str, datetime] = {}
        self.drills = DrillScheduler()  # restore drills (drill.schedule), beside the jobs
        self.owed = OwedRuns(self.state)  # retries and re-runs, kept in the state file
        self.retries: dict[str, Pending] = self.owed.runs
        self.running: dict[str, Running] = {}
        self.last: dict[str, tuple[str, datetime]] = {}
        self.reload_error = ""
        self.stop_token = CancelToken()
        self._stop_signal = ""
        self._stopping = False  # shutdown() has begun: a run ending FAILED now was cut short
        self._reload_requested = False
        self._wake = threading.Event()
        self._signal_fd: int | None = None  # write end of the signal pipe, once installed
        self._last_status = ""
        self._last_status_sent = 0.0
        self.stale = StaleWatch(config, self.clock.now())  # jobs without a recent SUCCESS
        self.metrics_server: MetricsServer | None = None
        self._stale_checker = Background("staleness", 2.0)  # reads the index a job may hold

    # --- signals -----------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Routes SIGHUP to a reload and SIGTERM/SIGINT to a stop, both handled by the loop.

        A handler only sets a flag and writes a byte into a pipe; a small thread turns the byte
        into `_wake.set()`. Setting the event in the handler itself could deadlock the daemon:
        the handler runs in the main thread, possibly just while that thread holds the event's
        lock inside `Event.wait`, and the lock is not reentrant.
        """
        read_fd, self._signal_fd = os.pipe()
        os.set_blocking(self._signal_fd, False)

        def relay() -> None:
            while os.read(read_fd, 64):
                self._wake.set()

        threading.Thread(target=relay, name="signal-relay", daemon=True).start()
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)

    def _on_hup(self, _signum: int, _frame: object) -> None:
        self._reload_requested = True
        self._poke()

    def _on_stop(self, signum: int, _frame: object) -> None:
        self._stop_signal = signal.Signals(signum).name
        self._poke()

    def _poke(self) -> None:
        """Wakes the loop from a signal handler (directly when no handler is installed)."""
        if self._signal_fd is None:
            self._wake.set()
            return
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
            os.write(self._signal_fd, b"\0")

    # --- main loop ---------------------------------------------------------------------------

    def start(self) -> None:
        """Checks directories, loads state and computes the first due times; raises on trouble."""
        for job in self.config.jobs:
            check_directories(self.config, job)
        self.state.load()
        now = self.clock.now()
        self.owed.settle_interrupted(now)  # before the schedule: it counts from those runs
        for name, job_state in self.state.all().items():
            if job_state.last_status is not None and job_state.last_run_utc is not None:
                self.last[name] = (
                    job_state.last_status,
                    job_state.last_finished_utc or job_state.last_run_utc,
                )
        self._schedule_all(now, catch_up=True)
        window = timedelta(hours=self.config.daemon.catch_up_window_hours)
        self.owed.take_up(self.config.jobs, self.due, now, window)
        self._start_metrics()

    def _start_metrics(self) -> None:
        """Writes the metrics file now and starts /metrics when configured (raises on trouble)."""
        from db_backup.observe import metrics

        try:
            self.metrics_server = metrics.serve(lambda: self.config)
        except metrics.MetricsError as exc:
            raise JobSetupError(str(exc)) from None
        found = metrics.consumer(self.config)
        if found is not None:
            try:
                metrics.write_textfile(self.config, found.target)
            except metrics.MetricsError as exc:  # the next backup tries again
                log.error("metrics file not written", error=str(exc))

    def run(self) -> int:
        """Runs until SIGTERM/SIGINT and returns 0 after running jobs were stopped and reported."""
        self.notifier.ready(self.status_text())
        log.info(
            "daemon started",
            jobs=[j.name for j in self.config.jobs],
            next={name: due.isoformat() for name, due in self.due.items()},
            config=self.config_path,
        )
        while not self._stop_signal:
            if self._reload_requested:
                self._reload_requested = False
                self.reload()
            self.tick(self.clock.now())
            self.clock.wait(self._wake, self._sleep_seconds(self.clock.now()))
            self._wake.clear()
        return self.shutdown()

    def tick(self, now: datetime) -> None:
        """One loop iteration: reap finished jobs, start due ones, feed the watchdog, STATUS."""
        self._reap(now)
        drilling = self.drills.busy()  # a job whose drill runs starts once the drill is done
        for job in self.config.jobs:
            if job.name in self.running or len(self.running) >= self.config.daemon.max_parallel:
                continue
            if job.name in drilling:
                continue
            retry = self.retries.get(job.name)
            if retry is not None and now >= retry.due_utc:
                self._start(job, retry.attempt, now, trigger=retry.trigger)
            elif now >= self.due[job.name]:
                self.retries.pop(job.name, None)
                self.due[job.name] = next_run_after(job.schedule, job.zone(), now, now)
                self._start(job, 1, now, trigger="schedule")
        self.drills.tick(self.config, now, set(self.running))
        self._check_staleness(now)
        self.watchdog.maybe_ping(self.healthy())
        self._update_status()

    def _check_staleness(self, now: datetime) -> None:
        monotonic = self.clock.monotonic()
        if not self._stale_checker.busy() and self.stale.due(monotonic):
            self._stale_checker.start(self._stale_check, now, monotonic)

    def _stale_check(self, now: datetime, monotonic: float) -> None:
        try:
            self.stale.check(now, monotonic)
        except Exception as exc:  # the check must never stop the scheduler
            log.error("staleness check failed", error=describe_error(exc))

    def healthy(self) -> bool:
        """Returns False when a running job produced no byte for `daemon.stall_seconds`."""
        limit = self.config.daemon.stall_seconds
        now = self.clock.monotonic()
        return all(now - r.last_progress < limit for r in self.running.values())

    def _sleep_seconds(self, now: datetime) -> float:
        cap = BUSY_MAX_SLEEP if self.running else IDLE_MAX_SLEEP
        watchdog_cap = self.watchdog.max_sleep()
        if watchdog_cap is not None:
            cap = min(cap, watchdog_cap)
        upcoming = [*self.due.values(), *(r.due_utc for r in self.retries.values())]
        if self.drills.next_due() is not None:
            upcoming.append(self.drills.next_due())  # type: ignore[arg-type]
        if not upcoming:
            return cap
        return max(0.05, sleep_seconds_until(min(upcoming), now, cap))

    # --- jobs --------------------------------------------------------------------------------

    def _start(self, job: JobConfig, attempt: int, now: datetime, trigger: str) -> None:
        token = CancelToken.for_job(job.timeout_seconds, parent=self.stop_token)
        running = Running(job, attempt, now, token, trigger, monotonic=self.clock.monotonic)
        self.owed.started(job.name, now, attempt, trigger)  # in the state file before it runs
        thread = threading.Thread(
            target=self._work, args=(running, trigger), name=f"job-{job.name}", daemon=True
        )
        running.thread = thread
        self.running[job.name] = running
        log.info("job started", job=job.name, attempt=attempt, trigger=trigger)
        thread.start()

    def _work(self, running: Running, trigger: str) -> None:
        try:
            result = self.run_job(
                self.config,
                running.job,
                cancel=running.token,
                progress=running.progress,
                trigger=trigger,
                attempt=running.attempt,
            )
            running.outcome = SUCCESS if result.ok else FAILED
        except JobBusy as exc:
            log.warning(
                "job skipped: another run holds its lock", job=running.job.name, error=str(exc)
            )
        except JobSetupError as exc:
            log.error("job could not start", job=running.job.name, error=str(exc))
            running.outcome = FAILED
        except Exception as exc:  # a bug must not kill the scheduler; it is logged loudly
            # Never repr(exc): it can carry bytes of a file (a secret); the message is masked.
            log.error("job crashed", job=running.job.name, error=describe_error(exc))
            running.outcome = FAILED
        finally:
            self._wake.set()

    def _reap(self, now: datetime) -> None:
        for name, running in list(self.running.items()):
            if running.thread is not None and running.thread.is_alive():
                continue
            del self.running[name]
            self.stale.request()  # a new report may end (or start) a stale condition
            mark = RunMark(running.started_utc, running.attempt, running.trigger)
            # Records the end (and the retry or, when stopping, the re-run it leaves owed).
            self.owed.finished(
                running.job, mark, running.outcome, now,
                stopping=self._stopping, next_slot=self.due.get(name),
            )  # fmt: skip
            if running.outcome:
                self.last[name] = (running.outcome, now)

    def _schedule_all(self, now: datetime, catch_up: bool) -> None:
        window = timedelta(hours=self.config.daemon.catch_up_window_hours)
        due: dict[str, datetime] = {}
        for job in self.config.jobs:
            last_run = self.state.last_run_utc(job.name)
            job_window = window if (catch_up and job.catch_up) else timedelta(0)
            due[job.name] = due_at_start(job.schedule, job.zone(), last_run, now, job_window)
            if due[job.name] <= now:
                log.info("catching up a missed run", job=job.name, missed=due[job.name].isoformat())
        self.due = due
        self.owed.forget_others(due)
        self.drills.schedule(self.config, now)

    # --- reload and stop ---------------------------------------------------------------------

    def reload(self) -> None:
        """Loads the config again; a bad one is refused and the running one kept."""
        self.notifier.reloading()
        try:
            new = load(self.config_path)
            check_encryption(new)
            for job in new.jobs:
                check_directories(new, job)
        except ConfigError as exc:
            self.reload_error = _first_problem(exc)
            log.error(
                "config reload refused; keeping the running config",
                error=str(exc),
                problems=exc.problems,
            )
        except JobSetupError as exc:
            self.reload_error = str(exc).splitlines()[0]
            log.error("config reload refused; keeping the running config", error=str(exc))
        else:
            self.config = new
            self.reload_error = ""
            self.stale.reconfigure(new, self.clock.now())
            self._schedule_all(self.clock.now(), catch_up=False)
            log.info(
                "config reloaded",
                jobs=[j.name for j in new.jobs],
                next={name: due.isoformat() for name, due in self.due.items()},
            )
        self.notifier.ready(self.status_text())

    def shutdown(self) -> int:
        """Stops running jobs (their reports say so), waits for them, and returns 0."""
        reason = f"db-backup daemon stopping ({self._stop_signal})"
        self._stopping = True
        log.info("daemon stopping", running=list(self.running), signal=self._stop_signal)
        self.notifier.stopping(f"stopping; {len(self.running)} job(s) being stopped")
        self.stop_token.cancel(reason)
        self.drills.stop(reason)
        while any(r.thread is not None and r.thread.is_alive() for r in self.running.values()):
            self.notifier.extend_timeout(STOP_EXTEND_SECONDS)
            for running in self.running.values():
                if running.thread is not None:
                    running.thread.join(timeout=5)
        self._reap(self.clock.now())
        if self.metrics_server is not None:
            self.metrics_server.stop()
        log.info("daemon stopped")
        return 0

    # --- status ------------------------------------------------------------------------------

    def status_text(self, now: datetime | None = None) -> str:
        """Returns the one-line STATUS: jobs, what runs, what is next, the last result."""
        now = now or self.clock.now()
        parts = [f"{len(self.config.jobs)} job(s)"]
        if self.reload_error:
            parts.append(f"RELOAD FAILED, old config kept: {self.reload_error}")
        parts.extend(self.stale.status_parts(now))  # before what runs: a line may be cut
        for running in self.running.values():
            parts.extend(running.describe())
        if self.due:
            name = min(self.due, key=lambda n: self.due[n])
            job = next(j for j in self.config.jobs if j.name == name)
            local = self.due[name].astimezone(job.zone())
            parts.append(f"next {name} {local:%Y-%m-%d %H:%M %Z}")
        if self.last:
            name = max(self.last, key=lambda n: self.last[n][1])
            status, when = self.last[name]
            parts.append(f"last {name} {status} {format_age(now - when, minutes=True)} ago")
        return "; ".join(parts)

    def _update_status(self) -> None:
        text = self.status_text()
        if text != self._last_status or self.clock.monotonic() - self._last_status_sent > 60:
            self.notifier.status(text)
            self._last_status = text
            self._last_status_sent = self.clock.monotonic()


def _first_problem(exc: ConfigError) -> str:
    """Returns the STATUS text of a refused config: its first problem and how many follow."""
    if not exc.problems:
        return exc.source
    more = len(exc.problems) - 1
    tail = f" (+{more} more problem(s), see the journal)" if more else ""
    return f"{exc.source}: {exc.problems[0]}{tail}"


def run_daemon(config_path: str) -> int:
    """Entry point of `db-backup daemon`: runs until SIGTERM/SIGINT and returns 0.

    Raises ConfigError for a config it refuses (the command exits 78, which the unit does not
    restart on) and JobSetupError, logged, when it cannot start (directories, metrics).
    """
    config = load(config_path)
    check_encryption(config)
    daemon = Daemon(config_path, config)
    daemon.install_signal_handlers()
    try:
        daemon.start()
    except JobSetupError as exc:
        log.error("daemon cannot start", error=str(exc))
        raise
    return daemon.run()
