"""The HTML report in a real browser (headless Chromium from Debian's `chromium` package): the
DOM Chromium builds from the page holds one point per successful backup and one mark per failed
run in each chart, and its screenshot shows every point drawn.

Reports come from real backup runs (PostgreSQL, pg_dump) and, for a longer history, from
reports written as a run writes them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from db_backup.config import Config, load
from db_backup.observe.html_report import write_html_report
from db_backup.reports.model import FAILED, SUCCESS, Report, stem, write_report
from tests.conftest import RunCli, Setup
from tests.support import png
from tests.support.html_page import chart_marks, script_tags
from tests.support.pgcluster import Cluster

pytestmark = pytest.mark.integration
POINT_RGB = (0x1F, 0x5F, 0xD6)  # .chart-svg .point's fill, used by nothing else on the page
HISTORY_DAYS = 11
HISTORY_FAILED_DAYS = {4, 8}


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Returns the argv start of a headless Chromium that runs here; skips saying why not."""
    program = shutil.which("chromium") or shutil.which("chromium-browser")
    if program is None:
        pytest.skip("chromium not installed (Debian: apt-get install chromium)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    argv = [
        program,
        "--headless",
        "--no-sandbox",  # the tests run as root, which Chromium's sandbox refuses
        "--disable-gpu",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={profile}",
    ]
    probe = tmp_path_factory.mktemp("probe") / "probe.html"
    probe.write_text("<p id=probe>ok</p>")
    try:
        done = subprocess.run(
            [*argv, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"chromium cannot run here: {exc}")
    if 'id="probe"' not in done.stdout:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        pytest.skip(f"chromium cannot run here (exit {done.returncode}): {tail}")
    return argv


def dump_dom(chromium: list[str], page: Path) -> str:
    done = subprocess.run(
        [*chromium, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def screenshot(chromium: list[str], page: Path, out: Path, height: int) -> png.Image:
    done = subprocess.run(
        [*chromium, f"--screenshot={out}", f"--window-size=1400,{height}", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and out.exists(), done.stderr[-2000:]
    return png.read(out)


def add_history(config: Config) -> None:
    """Writes a job's longer history as its runs would: a report a day, two of them FAILED."""
    start = datetime(2026, 4, 1, 2, tzinfo=UTC)
    for day in range(HISTORY_DAYS):
        started = start + timedelta(days=day, minutes=7 * day)
        ok = day not in HISTORY_FAILED_DAYS
        report = Report(
            job="history",
            database="ledger",
            host="localhost",
            port=5432,
            mode="local",
            tool="pg_dump",
            stem=stem("ledger", started, "browser-test"),
            started=started,
            finished=started + timedelta(seconds=60 + 13 * day),
            status=SUCCESS if ok else FAILED,
            size_bytes=(40 + 3 * day + (day % 3)) * 1024 * 1024 if ok else 0,
            error_message="" if ok else "pg_dump: error: could not obtain lock",
        )
        write_report(config.directories.reports, report)


def expected_marks(
    reports: Path, job: str | None = None
) -> dict[tuple[str, str, str], dict[str, int]]:
    """Returns the marks each chart must hold, counted from the report files themselves."""
    outcomes: Counter[tuple[str, str, str]] = Counter()
    for path in reports.glob("*.json"):
        document = json.loads(path.read_text())
        if job is None or document["job"] == job:
            kind = "point" if document["status"] == SUCCESS else "failure"
            outcomes[(document["job"], document["database"], kind)] += 1
    expected = {}
    for job_name, database, _ in outcomes:
        counts = {kind: outcomes[(job_name, database, kind)] for kind in ("point", "failure")}
        for chart in ("size", "duration"):
            expected[(job_name, database, chart)] = counts
    return expected


def test_chromium_renders_every_chart_with_a_point_per_backup(
    setup: Setup, cluster: Cluster, run_cli: RunCli, chromium: list[str], tmp_path: Path
) -> None:
    setup.document["jobs"].append({**setup.job(), "name": "history", "databases": "ledger"})
    setup.job()["databases"] = ["shop", "crm"]
    setup.write()
    for _ in range(2):
        done = run_cli("--config", str(setup.path), "run", "nightly")
        assert done.returncode == 0, done.stderr
    setup.job()["databases"] = ["shop", "no_such_db"]
    setup.write()
    assert run_cli("--config", str(setup.path), "run", "nightly").returncode != 0
    config = load(str(setup.path))
    add_history(config)

    page = tmp_path / "report.html"
    assert write_html_report(config, page) == 3 + 2 + 1 + HISTORY_DAYS
    dom = dump_dom(chromium, page)
    assert script_tags(dom) == 0
    expected = expected_marks(setup.reports)
    assert expected[("nightly", "shop", "size")] == {"point": 3, "failure": 0}
    assert expected[("nightly", "no_such_db", "size")] == {"point": 0, "failure": 1}
    assert chart_marks(dom) == expected

    # One job's page, photographed: every point of both of its charts is a separate spot of
    # the points' colour (a day apart, they never touch), and nothing else has that colour.
    history_page = tmp_path / "history.html"
    assert write_html_report(config, history_page, job="history") == HISTORY_DAYS
    assert chart_marks(dump_dom(chromium, history_page)) == expected_marks(setup.reports, "history")
    image = screenshot(chromium, history_page, tmp_path / "history.png", height=1300)
    found = png.spots(image, POINT_RGB)
    successes = HISTORY_DAYS - len(HISTORY_FAILED_DAYS)
    assert len(found) == 2 * successes, found
    assert all(pixels >= 20 for _, _, pixels in found)  # whole dots, not stray pixels
    # The two charts stand side by side: each holds one point per success, left to right.
    middle = image.width // 2
    left = [spot for spot in found if spot[0] < middle]
    assert len(left) == successes
