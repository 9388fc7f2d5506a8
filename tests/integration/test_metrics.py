"""Prometheus metrics: the textfile after real runs and drills, parsed back with
prometheus-client's own parser; atomic replacement; the daemon's HTTP endpoint; hostile labels."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from db_backup.config import Config, load
from db_backup.daemon.loop import Daemon
from db_backup.daemon.sd_notify import SdNotifier
from db_backup.observe import events, metrics, staleness
from db_backup.reports.model import FAILED, SUCCESS, Report, stem, write_report
from db_backup.util.clock import parse_utc
from db_backup.util.names import host_label
from tests.conftest import CLI, RunCli, Setup
from tests.integration import test_drill
from tests.support.pgcluster import Cluster, free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration
drill_dir = test_drill.drill_dir  # the fixture: a drill directory the postgres user can reach

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Returns {(sample name, sorted labels): value} of a metrics text, via prometheus-client."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def names_of(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


def use_metrics(setup: Setup, **extra: Any) -> Path:
    textfile_dir = setup.root / "textfile"
    textfile_dir.mkdir(exist_ok=True)
    setup.document["metrics"] = {"textfile_dir": str(textfile_dir), **extra}
    setup.write()
    return textfile_dir / "db_backup.prom"


def test_metrics_file_after_a_successful_and_a_failed_run(
    setup: Setup, cluster: Cluster, run_cli: RunCli
) -> None:
    prom = use_metrics(setup)
    setup.job()["databases"] = ["shop", "no_such_db"]
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode != 0  # no_such_db fails; shop succeeds
    reports = {r["database"]: r for r in setup.reports_json()}
    assert prom.stat().st_mode & 0o777 == 0o644  # node_exporter's user must read it
    samples = parse(prom.read_text())
    good, bad = reports["shop"], reports["no_such_db"]
    assert good["status"] == SUCCESS and bad["status"] == FAILED
    shop = {"backup_job": "nightly", "database": "shop"}
    missing = {"backup_job": "nightly", "database": "no_such_db"}
    assert value(samples, "db_backup_last_run_success", **shop) == 1
    assert value(samples, "db_backup_last_run_success", **missing) == 0
    assert value(samples, "db_backup_last_success_timestamp_seconds", **shop) == (
        parse_utc(good["finishedAt"]).timestamp()
    )
    assert value(samples, "db_backup_last_success_started_timestamp_seconds", **shop) == (
        parse_utc(good["startedAt"]).timestamp()
    )
    assert (
        value(samples, "db_backup_last_success_size_bytes", **shop)
        == (good["local"]["sizeBytes"])
        > 0
    )
    assert (
        value(samples, "db_backup_last_run_duration_seconds", **missing) == (bad["durationSeconds"])
    )
    assert value(samples, "db_backup_last_run_timestamp_seconds", **missing) == (
        parse_utc(bad["finishedAt"]).timestamp()
    )
    # A database that never succeeded has no last-success series at all (not a 0 = 1970).
    assert missing not in names_of(samples, "db_backup_last_success_timestamp_seconds")
    assert value(samples, "db_backup_stale", **shop) == 0
    assert value(samples, "db_backup_max_age_seconds", backup_job="nightly") == 48 * 3600
    assert value(samples, "db_backup_report_problems") == 0
    # Every consumer's failure counter exists from the first write, at 0 (increase() needs it).
    assert names_of(samples, "db_backup_consumer_failures_total") == [
        {"consumer": "hooks"},
        {"consumer": "metrics"},
        {"consumer": "notify"},
        {"consumer": "sink"},
    ]
    assert all(
        value(samples, "db_backup_consumer_failures_total", consumer=name) == 0
        for name in ("hooks", "metrics", "notify", "sink")
    )
    # A second run that succeeds for shop moves its timestamp; the failure stays the newest
    # report of no_such_db, still listed.
    setup.job()["databases"] = ["shop", "no_such_db"]
    setup.write()
    assert run_cli("--config", str(setup.path), "run", "nightly").returncode == 1
    newest = max(
        (r for r in setup.reports_json() if r["database"] == "shop"), key=lambda r: r["startedAt"]
    )
    again = parse(prom.read_text())
    assert value(again, "db_backup_last_success_timestamp_seconds", **shop) == (
        parse_utc(newest["finishedAt"]).timestamp()
    )
    assert value(again, "db_backup_last_run_success", **missing) == 0
    # Once no_such_db is no longer listed, its series are gone (the report stays on disk).
    setup.job()["databases"] = ["shop"]
    setup.write()
    assert run_cli("--config", str(setup.path), "run", "nightly").returncode == 0
    assert missing not in names_of(parse(prom.read_text()), "db_backup_last_run_success")


def test_uploaded_bytes_per_remote_target(
    setup: Setup, cluster: Cluster, run_cli: RunCli, oss_server: Any
) -> None:
    from tests.integration.test_restore import OSS_ENV, use_oss

    prom = use_metrics(setup)
    use_oss(setup, oss_server, "both")
    done = run_cli("--config", str(setup.path), "run", "nightly", env=OSS_ENV)
    assert done.returncode == 0, done.stderr
    [report] = setup.reports_json()
    samples = parse(prom.read_text())
    uploaded = {
        labels["target"]: value(samples, "db_backup_last_success_uploaded_bytes", **labels)
        for labels in names_of(samples, "db_backup_last_success_uploaded_bytes")
    }
    remote = {n: t["sizeBytes"] for n, t in report["targets"].items() if n != "local"}
    assert uploaded == remote and all(size > 0 for size in remote.values())


def test_metrics_file_after_a_drill(
    setup: Setup, cluster: Cluster, run_cli: RunCli, drill_dir: Path
) -> None:
    prom = use_metrics(setup)
    test_drill.enable_drill(setup, drill_dir)
    assert run_cli("--config", str(setup.path), "run", "nightly").returncode == 0
    before = parse(prom.read_text())
    assert names_of(before, "db_backup_last_drill_success") == []
    done = run_cli("--config", str(setup.path), "drill", "nightly")
    assert done.returncode == 0, done.stderr
    [drill] = test_drill.drill_reports(setup)
    samples = parse(prom.read_text())
    shop = {"backup_job": "nightly", "database": "shop"}
    assert value(samples, "db_backup_last_drill_success", **shop) == 1
    assert value(samples, "db_backup_last_drill_timestamp_seconds", **shop) == (
        parse_utc(drill["startedAt"]).timestamp()
    )


def test_an_unwritable_metrics_directory_never_fails_the_backup_and_is_counted(
    setup: Setup, cluster: Cluster, run_cli: RunCli
) -> None:
    setup.document["metrics"] = {"textfile_dir": str(setup.root / "no" / "such" / "dir")}
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 0, done.stderr
    assert "metrics.textfile_dir: cannot write" in done.stderr
    assert events.failure_counts(setup.state) == {"metrics": 1}
    # Once the directory exists, the next run writes the file and it shows the failure.
    (setup.root / "no" / "such" / "dir").mkdir(parents=True)
    assert run_cli("--config", str(setup.path), "run", "nightly").returncode == 0
    samples = parse((setup.root / "no" / "such" / "dir" / "db_backup.prom").read_text())
    assert value(samples, "db_backup_consumer_failures_total", consumer="metrics") == 1


# --- without PostgreSQL: reports written as a run writes them --------------------------------


def add_report(
    config: Config, job: str, database: str, started: datetime, status: str, size: int = 1000
) -> Path:
    host = host_label()
    report = Report(
        job=job,
        database=database,
        host="localhost",
        port=5432,
        mode="local",
        tool="pg_dump",
        stem=stem(database, started, host),
        started=started,
        finished=started + timedelta(seconds=42),
        status=status,
        size_bytes=size if status == SUCCESS else 0,
        error_message="" if status == SUCCESS else "pg_dump: server closed the connection",
    )
    return write_report(config.directories.reports, report)


@pytest.fixture
def offline(setup: Setup) -> Config:
    """The `setup` config with metrics, loaded (no PostgreSQL needed by these tests)."""
    use_metrics(setup)
    for directory in (setup.reports, setup.state, setup.data):
        directory.mkdir(exist_ok=True)
    return load(str(setup.path))


HOSTILE = [
    'quo"te',
    "back\\slash",
    "new\nline",
    "tab\tand space",
    "订单库",
    "}{,=",
]


def test_hostile_database_names_survive_as_label_values(offline: Config, setup: Setup) -> None:
    setup.job()["databases"] = HOSTILE  # listed: a database no longer listed has no series
    offline = load(str(setup.write()))
    started = datetime(2026, 5, 1, 2, tzinfo=UTC)
    for database in HOSTILE:
        add_report(offline, "nightly", database, started, SUCCESS, size=len(database))
    text = metrics.render(offline).decode()
    samples = parse(text)
    found = {
        labels["database"]: value(samples, "db_backup_last_success_size_bytes", **labels)
        for labels in names_of(samples, "db_backup_last_success_size_bytes")
    }
    assert found == {database: len(database) for database in HOSTILE}
    assert 'database="new\\nline"' in text and 'database="quo\\"te"' in text


def test_stale_flag_follows_the_daemon_and_a_newer_success_ends_it(offline: Config) -> None:
    add_report(offline, "nightly", "shop", datetime(2026, 5, 1, 2, tzinfo=UTC), SUCCESS)
    watch = staleness.StaleWatch(offline, datetime(2026, 5, 1, 3, tzinfo=UTC), lambda c, e: None)
    watch.check(datetime(2026, 5, 4, tzinfo=UTC), 0.0)
    samples = parse(metrics.render(offline).decode())
    assert value(samples, "db_backup_stale", backup_job="nightly", database="shop") == 1
    # A manual run's SUCCESS (written after the daemon's check) ends it at once.
    add_report(offline, "nightly", "shop", datetime(2026, 5, 4, 1, tzinfo=UTC), SUCCESS)
    samples = parse(metrics.render(offline).decode())
    assert value(samples, "db_backup_stale", backup_job="nightly", database="shop") == 0


def test_a_job_that_never_reported_is_flagged_with_an_empty_database(offline: Config) -> None:
    watch = staleness.StaleWatch(offline, datetime(2026, 5, 1, tzinfo=UTC), lambda c, e: None)
    watch.check(datetime(2026, 5, 9, tzinfo=UTC), 0.0)
    samples = parse(metrics.render(offline).decode())
    assert value(samples, "db_backup_stale", backup_job="nightly", database="shop") == 1


def test_the_file_is_replaced_atomically_never_seen_partial(offline: Config) -> None:
    started = datetime(2026, 5, 1, 2, tzinfo=UTC)
    for index in range(60):  # a file of some size: many series
        add_report(offline, f"job{index % 6}", f"database_{index}", started, SUCCESS)
    target = offline.directories.state.parent / "textfile" / "db_backup.prom"
    consumer = metrics.consumer(offline)
    assert consumer is not None and consumer.target == target
    consumer.interval = 0  # every event writes (bursts are coalesced otherwise)
    consumer.handle(events.Event(kind=events.BACKUP, job="job0"))
    expected = target.read_bytes()
    done = threading.Event()
    seen: list[bytes] = []
    inodes: set[int] = set()

    def read() -> None:
        while not done.is_set():
            with open(target, "rb") as handle:
                inodes.add(os.fstat(handle.fileno()).st_ino)
                seen.append(handle.read())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(40):
            consumer.handle(events.Event(kind=events.BACKUP, job="job0"))
    finally:
        done.set()
        reader.join()
    assert len(seen) > 40 and len(inodes) > 1  # it read while files were being replaced
    assert {content for content in seen} == {expected}  # every read saw one whole file
    assert [p.name for p in target.parent.iterdir()] == ["db_backup.prom"]  # no temporaries


# --- the daemon's endpoint ---------------------------------------------------------------------


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        return str(response.read().decode())


def test_daemon_serves_metrics_on_loopback_computed_on_each_scrape(
    offline: Config, setup: Setup
) -> None:
    port = free_port()
    setup.document["metrics"]["listen"] = f"127.0.0.1:{port}"
    setup.document["jobs"][0]["schedule"] = "0 0 1 1 *"  # nothing runs while the test scrapes
    setup.write()
    add_report(offline, "nightly", "shop", datetime(2026, 5, 1, 2, tzinfo=UTC), FAILED)
    env = {**os.environ, "DB_BACKUP_LOG_FORMAT": "json"}
    daemon = subprocess.Popen(
        [CLI, "--config", str(setup.path), "daemon"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:

        def answers() -> str | None:
            try:
                return scrape(port)
            except (urllib.error.URLError, ConnectionError):
                assert daemon.poll() is None, daemon.stderr.read() if daemon.stderr else ""
                return None

        text = wait_until(answers, "the daemon's /metrics")
        assert text is not None
        first = parse(text)
        shop = {"backup_job": "nightly", "database": "shop"}
        assert value(first, "db_backup_last_run_success", **shop) == 0
        # The textfile is written at start too.
        prom = setup.root / "textfile" / "db_backup.prom"
        assert value(parse(prom.read_text()), "db_backup_last_run_success", **shop) == 0
        # A report written by another process shows at the next scrape.
        add_report(offline, "nightly", "shop", datetime(2026, 5, 2, 2, tzinfo=UTC), SUCCESS)
        assert value(parse(scrape(port)), "db_backup_last_run_success", **shop) == 1
        # Only db-backup's metrics: no process or Python GC collectors of the daemon.
        assert all(name[0].startswith("db_backup_") for name in parse(scrape(port)))
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0


def test_daemon_refuses_a_non_loopback_listen_address(offline: Config, setup: Setup) -> None:
    setup.document["metrics"]["listen"] = f"0.0.0.0:{free_port()}"
    setup.write()
    done = subprocess.run(
        [CLI, "--config", str(setup.path), "daemon"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "metrics.listen: '0.0.0." in done.stderr and "is not a loopback address" in done.stderr
    assert "metrics.allow_remote: true" in done.stderr


def test_allow_remote_serves_on_any_address(offline: Config, setup: Setup) -> None:
    setup.document["metrics"].update(listen="0.0.0.0:0", allow_remote=True)
    setup.write()
    config = load(str(setup.path))
    daemon = Daemon(str(setup.path), config, SdNotifier({}))
    daemon.start()
    server = daemon.metrics_server
    assert server is not None
    try:
        host, port = server.address
        assert host == "0.0.0.0" and port > 0
        assert "db_backup_max_age_seconds" in scrape(port)
    finally:
        server.stop()


def test_the_documented_alert_rules_use_only_metrics_that_exist(offline: Config) -> None:
    import re

    import yaml

    docs = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    block = docs.split("```yaml\ngroups:", 1)[1].split("```", 1)[0]
    rules = yaml.safe_load("groups:" + block)["groups"][0]["rules"]
    assert {rule["alert"] for rule in rules} >= {"DbBackupFailed", "DbBackupStale"}
    text = metrics.render(offline).decode()
    names = set(re.findall(r"^# TYPE (db_backup_\w+) ", text, re.MULTILINE))
    used = {name for rule in rules for name in re.findall(r"db_backup_\w+", rule["expr"])}
    assert used and used <= names, used - names
    documented = set(re.findall(r"^\| `(db_backup_\w+)`", docs, re.MULTILINE))
    assert documented == names


def test_the_daemons_stale_event_rewrites_the_metrics_file(offline: Config) -> None:
    add_report(offline, "nightly", "shop", datetime(2026, 5, 1, 2, tzinfo=UTC), SUCCESS)
    target = offline.directories.state.parent / "textfile" / "db_backup.prom"
    watch = staleness.StaleWatch(offline, datetime(2026, 5, 1, 3, tzinfo=UTC))  # events.publish
    try:
        [raised] = watch.check(datetime(2026, 5, 4, tzinfo=UTC), 0.0)
    finally:
        events.shutdown(timeout=5)
    assert raised.kind == events.STALE and not raised.ok
    samples = parse(target.read_text())  # written by the metrics consumer, through the seam
    assert value(samples, "db_backup_stale", backup_job="nightly", database="shop") == 1


def test_promtool_accepts_the_rules_and_the_metrics(offline: Config, tmp_path: Path) -> None:
    import shutil

    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not installed (Debian: the prometheus package; or set PROMTOOL)")
    for database in HOSTILE:
        add_report(offline, "nightly", database, datetime(2026, 5, 1, tzinfo=UTC), SUCCESS)
    docs = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    rules = tmp_path / "rules.yml"
    rules.write_text("groups:" + docs.split("```yaml\ngroups:", 1)[1].split("```", 1)[0])
    checked = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    linted = subprocess.run(
        [promtool, "check", "metrics"],
        input=metrics.render(offline),
        capture_output=True,
        check=False,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr
