"""Every metric and label the Grafana dashboard queries is one the exporter really exports:
checked against the daemon's live /metrics and the textfile after a real backup to local disk
and the loopback OSS server, a real drill and a real failing hook."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from db_backup.config import load
from db_backup.observe.hooks import AFTER_BACKUP, HookContext, run_event_hooks
from tests.conftest import CLI, RunCli, Setup
from tests.integration import test_drill
from tests.integration.test_metrics import Samples, parse, scrape, use_metrics
from tests.integration.test_restore import OSS_ENV, use_oss
from tests.support import grafana
from tests.support.pgcluster import Cluster, free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration
drill_dir = test_drill.drill_dir

# What the dashboard must show (issue 24): results and ages, sizes and durations, drills,
# staleness, consumer failures.
REQUIRED = {
    "db_backup_last_run_success",
    "db_backup_last_run_timestamp_seconds",
    "db_backup_last_run_duration_seconds",
    "db_backup_last_success_started_timestamp_seconds",
    "db_backup_last_success_size_bytes",
    "db_backup_last_success_uploaded_bytes",
    "db_backup_last_drill_success",
    "db_backup_last_drill_timestamp_seconds",
    "db_backup_stale",
    "db_backup_max_age_seconds",
    "db_backup_consumer_failures_total",
    "db_backup_report_problems",
}
SCRAPE_LABELS = {"instance", "job"}  # added by Prometheus to every series it scrapes


def families(text: str) -> set[str]:
    """Returns the metric names a scrape declares (`# TYPE` lines; counters end in _total)."""
    return set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))


def labels_by_metric(samples: Samples) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name, labels in samples:
        found.setdefault(name, set()).update(label for label, _ in labels)
    return found


def real_metrics(setup: Setup, run_cli: RunCli, oss_server: Any, drill_dir: Path) -> str:
    """Returns the daemon's /metrics after a backup, a drill and a failing hook; checks that the
    textfile written by those runs declares the same metrics."""
    port = free_port()
    prom = use_metrics(setup, listen=f"127.0.0.1:{port}")
    use_oss(setup, oss_server, "both")
    test_drill.enable_drill(setup, drill_dir)
    setup.document["hooks"] = {"after_backup": [{"command": ["sh", "-c", "exit 4"]}]}
    setup.job()["schedule"] = "0 0 1 1 *"  # the daemon runs nothing while it is scraped
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly", env=OSS_ENV)
    assert done.returncode == 0, done.stderr
    done = run_cli("--config", str(setup.path), "drill", "nightly", env=OSS_ENV)
    assert done.returncode == 0, done.stderr
    config = load(str(setup.path))
    [failed] = run_event_hooks(config, HookContext(AFTER_BACKUP, "nightly", "shop", "SUCCESS"))
    assert failed.exit_code == 4
    daemon = subprocess.Popen(
        [CLI, "--config", str(setup.path), "daemon"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **OSS_ENV, "DB_BACKUP_LOG_FORMAT": "json"},
    )
    try:

        def answers() -> str | None:
            try:
                return scrape(port)
            except (urllib.error.URLError, ConnectionError):
                assert daemon.poll() is None, "the daemon ended"
                return None

        text = wait_until(answers, "the daemon's /metrics")
        assert text is not None
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    assert families(prom.read_text()) == families(text)
    return text


def test_every_query_of_the_dashboard_names_exported_metrics_and_labels(
    setup: Setup, cluster: Cluster, run_cli: RunCli, oss_server: Any, drill_dir: Path
) -> None:
    text = real_metrics(setup, run_cli, oss_server, drill_dir)
    exported = families(text)
    samples = parse(text)
    labels = labels_by_metric(samples)
    assert exported >= REQUIRED
    # Each metric the dashboard uses has series in this scrape, so its labels can be checked.
    assert set(labels) >= REQUIRED, REQUIRED - set(labels)
    dashboard = grafana.load()
    used: set[str] = set()
    for query in grafana.queries(dashboard):
        names = set(grafana.METRIC.findall(query))
        assert names <= exported, (query, names - exported)
        used |= names
        available = SCRAPE_LABELS.union(*(labels[name] for name in names))
        for name, matchers in grafana.SELECTOR.findall(query):
            matched = set(grafana.MATCHER_LABEL.findall(matchers))
            assert matched <= labels[name] | SCRAPE_LABELS, (query, matched - labels[name])
        for grouping in grafana.GROUPING.findall(query):
            grouped = {label.strip() for label in grouping.split(",") if label.strip()}
            assert grouped <= available, (query, grouped - available)
    for panel, target in grafana.targets(dashboard):
        names = set(grafana.METRIC.findall(target["expr"]))
        available = SCRAPE_LABELS.union(*(labels[name] for name in names))
        legend = set(grafana.LEGEND_LABEL.findall(target.get("legendFormat", "")))
        assert legend <= available, (panel["title"], legend - available)
    assert used >= REQUIRED, REQUIRED - used


def test_promtool_parses_every_query_of_the_dashboard(tmp_path: Path) -> None:
    import yaml

    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not installed (Debian: the prometheus package; or set PROMTOOL)")
    rules = []
    for index, query in enumerate(grafana.queries(grafana.load())):
        if query.startswith("label_values("):
            continue  # Grafana's own variable function, not PromQL
        expr = query.replace("$__rate_interval", "5m")
        expr = re.sub(r"\$\{?[A-Za-z_]+\}?", ".*", expr)
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
