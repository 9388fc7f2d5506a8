"""Prometheus metrics: a node_exporter textfile after every run and drill, and /metrics.

The metrics are computed from the sources of truth every time, never kept in memory: the reports
directory (through the report index: the newest report and the newest SUCCESS of each job and
database, two JSON files each), the drill reports, the daemon's stale state (`stale.json`) and the
consumers' failure counts (`events.failure_counts`). So a file written by a one-shot
`db-backup run` is as complete as one written by the daemon. The daemon's HTTP endpoint
(`metrics_http`) serves a snapshot of the same families, renewed when the sources change.

The file is replaced atomically (temporary file in the same directory, mode 0644 so the
node_exporter user can read it, fsync, rename): a reader sees the old file or the new one.
Label values are escaped by prometheus-client (a database name may hold quotes, backslashes or
newlines).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from db_backup.reports.model import SUCCESS, NotAReport, read_report
from db_backup.util.clock import parse_utc, utc_now

if TYPE_CHECKING:
    from db_backup.config import Config, MetricsSettings
    from db_backup.observe.events import Event
    from db_backup.observe.metrics_http import MetricsServer

log = structlog.get_logger("db_backup.observe.metrics")

NAME = "metrics"
FILE_MODE = 0o644  # node_exporter runs as its own user; the service's umask is 0077
# `job` is Prometheus's own target label (a scraped `job` would become `exported_job`): the
# db-backup job is `backup_job`.
LABELS = ["backup_job", "database"]
# The `name` of every consumer in events.CONSUMERS: db_backup_consumer_failures_total is exported
# at 0 for each from the first write, so the first failure is an increase a rule can see.
CONSUMER_NAMES = ("hooks", "metrics", "notify", "sink")


class MetricsError(Exception):
    """The metrics cannot be written or served; the message names the place and the cause."""


# --- what the metrics say ---------------------------------------------------------------------


def _ts(text: object) -> float | None:
    try:
        return parse_utc(str(text)).timestamp()
    except ValueError:
        return None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return read_report(path).document
    except NotAReport:
        return None


@dataclass
class _Reports:
    """The newest report and newest SUCCESS per (job, database), stale keys, skipped files."""

    newest: dict[tuple[str, str], dict[str, Any]]
    success: dict[tuple[str, str], dict[str, Any]]
    stale: set[tuple[str, str]]
    problems: int


def _newest_reports(config: Config) -> _Reports:
    """Returns what the metrics say of the backup reports, through the report index."""
    from db_backup.observe import staleness
    from db_backup.reports.index import Match, default_path, snapshot

    reports_dir = config.directories.reports
    found = _Reports({}, {}, set(), 0)
    with snapshot(reports_dir, default_path(config.directories.state), _quiet) as snap:
        _, latest = snap.page(latest=True, limit=-1, offset=0)
        _, good = snap.page(Match(status=SUCCESS), latest=True, limit=-1, offset=0)
        by_job = staleness.reports_by_job(snap)
        found.problems = len(snap.warnings())
    for names, into in ((latest, found.newest), (good, found.success)):
        for name in names:
            document = _read(reports_dir / name)
            if document is not None:
                into[(str(document.get("job", "")), str(document["database"]))] = document
    found.stale = set(staleness.current_stale(config.directories.state, by_job))
    _drop_hidden(found, config)
    return found


def _drop_hidden(found: _Reports, config: Config) -> None:
    """Leaves out what is no longer configured and job-level records cleared since (scope)."""
    from db_backup.observe.scope import configured, hidden

    started = {}
    for key, doc in found.newest.items():
        try:
            started[key] = parse_utc(str(doc.get("startedAt")))
        except ValueError:  # no start to compare: kept, as before
            continue
    for key in hidden(started, configured(config)):
        found.newest.pop(key, None)
        found.success.pop(key, None)
        found.stale.discard(key)


def _quiet(_event: str, _fields: dict[str, str]) -> None:
    """The index's notes (rebuilt, not usable) are not the metrics' to log on every scrape."""


def _newest_drills(config: Config) -> dict[tuple[str, str], dict[str, Any]]:
    from db_backup.reports.drills import latest_drills

    return {(str(d.get("job")), str(d.get("database"))): d for d in latest_drills(config)}


def _gauge(name: str, doc: str, labels: list[str] = LABELS) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def families(config: Config, now: datetime | None = None) -> list[Metric]:
    """Returns every metric family of `config`'s reports, drills, stale state and failures."""
    from db_backup.observe import events

    reports = _newest_reports(config)
    run_time, run_ok, run_duration, stale_flag = _last_runs(reports.newest, reports.stale)
    ok_time, ok_started, ok_size, uploaded = _last_successes(reports.success)
    drill_time, drill_ok = _last_drills(_newest_drills(config))
    failures = CounterMetricFamily(
        "db_backup_consumer_failures",
        "Failures of report consumers (notifiers, database sink, metrics) so far.",
        labels=["consumer"],
    )
    counts = dict.fromkeys(CONSUMER_NAMES, 0)  # a series from the start: increase() needs it
    counts.update(events.failure_counts(config.directories.state))
    for consumer, count in sorted(counts.items()):
        failures.add_metric([consumer], float(count))
    problems = _gauge("db_backup_report_problems", "Report files skipped as malformed.", [])
    problems.add_metric([], float(reports.problems))
    return [
        run_time,
        run_ok,
        run_duration,
        ok_time,
        ok_started,
        ok_size,
        uploaded,
        drill_time,
        drill_ok,
        stale_flag,
        _max_ages(config, now or utc_now()),
        failures,
        problems,
    ]


def _last_runs(
    newest: dict[tuple[str, str], dict[str, Any]], stale: set[tuple[str, str]]
) -> list[GaugeMetricFamily]:
    """Returns when the newest run finished, whether it succeeded, its duration, and staleness."""
    run_time = _gauge(
        "db_backup_last_run_timestamp_seconds", "When the newest backup report finished."
    )
    run_ok = _gauge(
        "db_backup_last_run_success", "1 when the newest backup report is SUCCESS, else 0."
    )
    run_duration = _gauge(
        "db_backup_last_run_duration_seconds", "Duration of the newest backup (its report)."
    )
    stale_flag = _gauge(
        "db_backup_stale",
        "1 when the daemon found no SUCCESS within the job's max_age (database '' = the job "
        "has reported nothing), else 0.",
    )
    for (job, database), document in sorted(newest.items()):
        labels = [job, database]
        finished = _ts(document.get("finishedAt"))
        if finished is not None:
            run_time.add_metric(labels, finished)
        run_ok.add_metric(labels, 1.0 if document.get("status") == SUCCESS else 0.0)
        run_duration.add_metric(labels, float(document.get("durationSeconds") or 0))
        stale_flag.add_metric(labels, 1.0 if (job, database) in stale else 0.0)
    for key in sorted(stale - set(newest)):
        stale_flag.add_metric(list(key), 1.0)  # a job or database with no report at all
    return [run_time, run_ok, run_duration, stale_flag]


def _last_successes(success: dict[tuple[str, str], dict[str, Any]]) -> list[GaugeMetricFamily]:
    """Returns when the newest SUCCESS finished and started, its size, and what it uploaded."""
    ok_time = _gauge(
        "db_backup_last_success_timestamp_seconds",
        "When the newest successful backup finished.",
    )
    ok_started = _gauge(
        "db_backup_last_success_started_timestamp_seconds",
        "When the newest successful backup started (its snapshot; staleness counts from it).",
    )
    ok_size = _gauge("db_backup_last_success_size_bytes", "Size of the newest successful backup.")
    uploaded = _gauge(
        "db_backup_last_success_uploaded_bytes",
        "Bytes the newest successful backup stored on each remote target.",
        [*LABELS, "target"],
    )
    for (job, database), document in sorted(success.items()):
        labels = [job, database]
        finished = _ts(document.get("finishedAt"))
        if finished is not None:
            ok_time.add_metric(labels, finished)
        started = _ts(document.get("startedAt"))
        if started is not None:
            ok_started.add_metric(labels, started)
        ok_size.add_metric(labels, float(document["local"].get("sizeBytes") or 0))
        targets = document.get("targets")
        for target, result in sorted((targets if isinstance(targets, dict) else {}).items()):
            if target == "local" or not isinstance(result, dict):
                continue
            if result.get("status") == SUCCESS:
                uploaded.add_metric([*labels, target], float(result.get("sizeBytes") or 0))
    return [ok_time, ok_started, ok_size, uploaded]


def _last_drills(drills: dict[tuple[str, str], dict[str, Any]]) -> list[GaugeMetricFamily]:
    """Returns when the newest drill started and whether it succeeded."""
    drill_time = _gauge(
        "db_backup_last_drill_timestamp_seconds", "When the newest restore drill started."
    )
    drill_ok = _gauge(
        "db_backup_last_drill_success", "1 when the newest restore drill is SUCCESS, else 0."
    )
    for (job, database), document in sorted(drills.items()):
        started = _ts(document.get("startedAt"))
        if started is not None:
            drill_time.add_metric([job, database], started)
        drill_ok.add_metric([job, database], 1.0 if document.get("status") == SUCCESS else 0.0)
    return [drill_time, drill_ok]


def _max_ages(config: Config, now: datetime) -> GaugeMetricFamily:
    """Returns each job's max_age (its own or its schedule's default) in seconds."""
    from db_backup.observe import staleness

    max_age = _gauge(
        "db_backup_max_age_seconds", "The job's max_age (staleness limit).", ["backup_job"]
    )
    for job_config in config.jobs:
        limit = staleness.max_age(job_config, now)
        if limit is not None:
            max_age.add_metric([job_config.name], limit.total_seconds())
    return max_age


class ReportsCollector:
    """A prometheus-client collector computing `families` on every collection."""

    def __init__(self, config: Callable[[], Config]) -> None:
        self.config = config

    def collect(self) -> Iterator[Metric]:
        """Yields the metric families as they are now."""
        yield from families(self.config())


def registry(config: Callable[[], Config]) -> CollectorRegistry:
    """Returns a registry holding only db-backup's collector (no process or GC metrics)."""
    found = CollectorRegistry(auto_describe=False)
    found.register(ReportsCollector(config))
    return found


def render(config: Config) -> bytes:
    """Returns the metrics of `config` in the Prometheus text format."""
    return generate_latest(registry(lambda: config))


def write_textfile(config: Config, target: Path) -> Path:
    """Replaces `target` atomically with the metrics now; raises MetricsError naming the cause."""
    from db_backup.util.fsutil import describe_os_error, write_atomically

    data = render(config)
    try:
        write_atomically(target, data, FILE_MODE)
    except OSError as exc:
        raise MetricsError(
            f"metrics.textfile_dir: cannot write {describe_os_error(exc, target)}"
        ) from None
    return target


# --- the consumer -----------------------------------------------------------------------------


class MetricsConsumer:
    """Rewrites the textfile after backups, drills and staleness changes, coalescing bursts.

    The metrics are computed from the whole report index, so rewriting them after each of the
    200 databases of a run costs more than the dumps do. The first event writes at once; the
    events of the next `interval` seconds share one write at its end (a timer), and `close`
    (the end of a command) writes what is still owed. node_exporter reads the file once a
    scrape anyway.
    """

    name = NAME
    kinds = frozenset({"backup", "drill", "stale"})
    interval = 10.0  # seconds between two writes while events keep coming

    def __init__(self, config: Config, target: Path) -> None:
        self.config = config
        self.target = target
        self._lock = threading.Lock()  # guards the fields below
        self._write_lock = threading.Lock()  # one writer per process at a time
        self._owed = False
        self._timer: threading.Timer | None = None
        self._last = float("-inf")

    def handle(self, event: Event) -> None:
        """Writes the metrics file now, or at the end of the current interval."""
        if event.kind not in self.kinds:
            return
        with self._lock:
            self._owed = True
            if self._timer is not None:
                return  # the pending write will include this event
            wait = self._last + self.interval - time.monotonic()
            if wait > 0:
                self._timer = threading.Timer(wait, self._timed_write)
                self._timer.daemon = True
                self._timer.name = "db-backup-metrics"
                self._timer.start()
                return
        self._write()

    def _write(self) -> None:
        """Writes the file if a write is owed; raises MetricsError."""
        with self._write_lock:
            with self._lock:
                if not self._owed:
                    return
                self._owed = False
                self._last = time.monotonic()
            write_textfile(self.config, self.target)

    def _timed_write(self) -> None:
        """The timer's write: a failure is logged and counted (no dispatcher is there)."""
        from db_backup.observe import events

        with self._lock:
            self._timer = None
        try:
            self._write()
        except MetricsError as exc:
            log.error("metrics file not written", error=str(exc))
            events.count_failure(self.config.directories.state, NAME)

    def close(self, timeout: float) -> None:
        """Writes what is still owed (raises MetricsError, which the dispatcher logs)."""
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self._write()


def consumer(config: Config) -> MetricsConsumer | None:
    """Returns the textfile writer, None when no `metrics.textfile_dir` is configured."""
    found = config.metrics
    if found is None or found.textfile is None:
        return None
    return MetricsConsumer(config, found.textfile)


# --- the daemon's HTTP endpoint -------------------------------------------------------------


def parse_listen(listen: str) -> tuple[str, int]:
    """Returns (host, port) of `host:port` or `[v6]:port`; raises MetricsError."""
    host, _, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise MetricsError(f"metrics.listen: {listen!r} is not host:port (e.g. 127.0.0.1:9187)")
    return host, int(port)


def check_listen(found: MetricsSettings) -> tuple[str, int] | None:
    """Returns where to serve /metrics (None: not served); refuses a non-loopback address."""
    if not found.listen:
        return None
    host, port = parse_listen(found.listen)
    if found.allow_remote:
        return host, port
    try:
        addresses = {
            str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        }
    except OSError as exc:
        raise MetricsError(f"metrics.listen: cannot resolve {host!r}: {exc}") from None
    remote = sorted(a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if remote:
        raise MetricsError(
            f"metrics.listen: {found.listen!r} is not a loopback address ({', '.join(remote)}); "
            "serve on 127.0.0.1 or ::1, or set metrics.allow_remote: true"
        )
    return host, port


def check_config(config: Config) -> None:
    """Raises MetricsError when `metrics.listen` would be refused by the daemon."""
    found = config.metrics
    if found is not None:
        check_listen(found)


def serve(config: Callable[[], Config]) -> MetricsServer | None:
    """Starts /metrics when `metrics.listen` is set; raises MetricsError on a bad address."""
    from db_backup.observe import metrics_http

    found = config().metrics
    where = check_listen(found) if found is not None else None
    if where is None:
        return None
    host, port = where
    try:
        return metrics_http.serve(host, port, config, families)
    except OSError as exc:
        raise MetricsError(
            f"metrics.listen: cannot listen on {host}:{port}: {exc.strerror}"
        ) from None
