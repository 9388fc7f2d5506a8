"""`db-backup status` grows: last success and its age, the stale marker, the last drill; and
`check-config` knows the metrics' listen rule. Through the installed command."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from db_backup.config import load
from db_backup.observe import staleness
from db_backup.reports.model import FAILED, SUCCESS
from db_backup.util.clock import format_utc
from tests.conftest import RunCli, Setup
from tests.integration.test_metrics import add_report

pytestmark = pytest.mark.integration


def write_drill(setup: Setup, database: str, started: datetime, status: str) -> Path:
    drills = setup.reports / "drills"
    drills.mkdir(parents=True, exist_ok=True)
    path = drills / f"drill_{database}_{started:%Y%m%dT%H%M%SZ}.json"
    document: dict[str, object] = {
        "kind": "drill",
        "job": "nightly",
        "database": database,
        "status": status,
        "startedAt": format_utc(started),
        "errorMessage": "" if status == SUCCESS else "row counts differ",
        "tablesChecked": 4,
        "mismatches": [],
        "checks": [],
        "restoreSeconds": 3,
    }
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def history(setup: Setup) -> datetime:
    """shop: SUCCESS 3 h ago, FAILED 1 h ago, drilled; crm: SUCCESS 3 days ago, found stale."""
    setup.job()["databases"] = ["shop", "crm"]
    setup.job()["max_age"] = "1d"
    setup.write()
    for directory in (setup.reports, setup.state, setup.data):
        directory.mkdir(exist_ok=True)
    config = load(str(setup.path))
    now = datetime.now(UTC).replace(microsecond=0)
    add_report(config, "nightly", "shop", now - timedelta(hours=3), SUCCESS)
    add_report(config, "nightly", "shop", now - timedelta(hours=1), FAILED)
    add_report(config, "nightly", "crm", now - timedelta(days=3), SUCCESS)
    write_drill(setup, "shop", now - timedelta(days=2), SUCCESS)
    write_drill(setup, "shop", now - timedelta(days=9), FAILED)
    watch = staleness.StaleWatch(config, now - timedelta(days=10), lambda c, e: None)
    watch.check(now, 0.0)
    assert set(watch.stale) == {("nightly", "crm")}
    return now


def test_status_shows_last_success_its_age_stale_marker_and_last_drill(
    setup: Setup, history: datetime, run_cli: RunCli
) -> None:
    done = run_cli("--config", str(setup.path), "status")
    assert done.returncode == 0, done.stderr
    header, *rows, footer, drill_line = done.stdout.splitlines()
    assert drill_line.startswith(f"drill {format_utc(history - timedelta(days=2))}  nightly/shop")
    assert header.split("  ")[:1] == ["STARTED (UTC)"]
    assert "LAST SUCCESS" in header and "LAST DRILL" in header
    by_db = {row.split()[2]: row for row in rows}
    drilled = (history - timedelta(days=2)).strftime("%Y-%m-%d")
    assert " FAILED " in by_db["shop"] and " 3h ago " in by_db["shop"]
    assert f"SUCCESS {drilled}" in by_db["shop"] and "STALE" not in by_db["shop"]
    assert by_db["crm"].endswith(" 3d ago STALE  -")  # no drill yet
    # The columns line up under their headers.
    column = header.index("LAST SUCCESS")
    assert all(row[column:].startswith(("3h ago", "3d ago")) for row in rows)
    assert footer == "page 1 of 1, 2 matching report(s)"


def test_status_json_carries_the_same_fields(
    setup: Setup, history: datetime, run_cli: RunCli
) -> None:
    done = run_cli("--config", str(setup.path), "status", "--json")
    document = json.loads(done.stdout)
    rows = {row["database"]: row for row in document["reports"]}
    shop, crm = rows["shop"], rows["crm"]
    assert shop["lastSuccessAt"] == format_utc(history - timedelta(hours=3))
    assert 3 * 3600 <= shop["lastSuccessAgeSeconds"] < 3 * 3600 + 300
    assert shop["stale"] is False and crm["stale"] is True
    assert shop["lastDrill"]["status"] == SUCCESS
    assert shop["lastDrill"]["startedAt"] == format_utc(history - timedelta(days=2))
    assert crm["lastDrill"] is None


def test_a_success_after_the_daemons_check_ends_the_stale_marker_at_once(
    setup: Setup, history: datetime, run_cli: RunCli
) -> None:
    add_report(load(str(setup.path)), "nightly", "crm", history - timedelta(minutes=5), SUCCESS)
    done = run_cli("--config", str(setup.path), "status", "--json")
    rows = {row["database"]: row for row in json.loads(done.stdout)["reports"]}
    assert rows["crm"]["stale"] is False


def test_history_view_keeps_its_columns(setup: Setup, history: datetime, run_cli: RunCli) -> None:
    done = run_cli("--config", str(setup.path), "status", "--history")
    header = done.stdout.splitlines()[0]
    assert "LAST SUCCESS" not in header and header.endswith("WHERE / ERROR")
    assert "page 1 of 1, 3 matching report(s)" in done.stdout.splitlines()


def test_status_never_imports_structlog_oss2_or_the_drill_module(
    setup: Setup, history: datetime
) -> None:
    probe = (
        "import sys; from db_backup.cli import main; code = main(['--config', sys.argv[1], "
        "'status']); heavy = [m for m in ('structlog', 'oss2', 'db_backup.restore.drill', "
        "'db_backup.backup.run', 'prometheus_client') if m in sys.modules]; "
        "print(code, heavy, file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(setup.path)], capture_output=True, text=True, check=False
    )
    assert done.stderr.strip().splitlines()[-1] == "0 []"


def test_check_config_refuses_a_metrics_port_open_to_the_network(
    setup: Setup, run_cli: RunCli
) -> None:
    setup.document["metrics"] = {"listen": "0.0.0.0:9187"}
    setup.write()
    done = run_cli("--config", str(setup.path), "check-config")
    assert done.returncode == 78
    assert "metrics.listen: '0.0.0.0:9187' is not a loopback address (0.0.0.0)" in done.stderr
    setup.document["metrics"] = {"listen": "127.0.0.1:9187"}
    setup.write()
    assert run_cli("--config", str(setup.path), "check-config").returncode == 0
    setup.document["metrics"] = {"listen": "[::1]:9187", "allow_remote": False}
    setup.write()
    assert run_cli("--config", str(setup.path), "check-config").returncode == 0
    setup.document["metrics"] = {"listen": "0.0.0.0:9187", "allow_remote": True}
    setup.write()
    assert run_cli("--config", str(setup.path), "check-config").returncode == 0
