"""The HTML report from reports written as a run writes them: one mark per run in each chart,
self-contained, escaped, filtered by job, capped, with retention and drills."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from db_backup.config import Config, loads
from db_backup.observe.html_report import HtmlReportError, collect, render, write_html_report
from db_backup.reports.model import FAILED, SUCCESS, Report, stem, write_report
from tests.support.html_page import chart_marks, script_tags

T0 = datetime(2026, 3, 1, 2, tzinfo=UTC)
NOW = T0 + timedelta(days=30)
HOSTILE = "<script>alert(\"x\")</script> & 'db'"


def make_config(tmp_path: Path, jobs: str = "") -> Config:
    for name in ("data", "reports", "state"):
        (tmp_path / name).mkdir(exist_ok=True)
    return loads(
        f"run_as: null\ndirectories: {{data: {tmp_path}/data, reports: {tmp_path}/reports, "
        f"state: {tmp_path}/state}}\nstorage: {{mode: local}}\njobs:\n"
        "  - name: nightly\n    schedule: '0 2 * * *'\n    databases: [shop, crm]\n"
        "    retention: {days: 7, keep_last: 2, keep_weekly: 3}\n"
        "  - name: hourly\n    schedule: '0 * * * *'\n    databases: shop\n" + jobs
    )


def add(config: Config, job: str, database: str, started: datetime, ok: bool = True) -> None:
    report = Report(
        job=job,
        database=database,
        host="localhost",
        port=5432,
        mode="local",
        tool="pg_dump",
        stem=stem(database, started, f"h{job}"),
        started=started,
        finished=started + timedelta(seconds=40),
        status=SUCCESS if ok else FAILED,
        size_bytes=1_000_000 + started.day if ok else 0,
        error_message="" if ok else "pg_dump: error: <connection> refused",
    )
    write_report(config.directories.reports, report)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    made = make_config(tmp_path)
    for day in range(12):
        add(made, "nightly", "shop", T0 + timedelta(days=day), ok=day not in {3, 7})
    for day in range(5):
        add(made, "nightly", "crm", T0 + timedelta(days=day, hours=1))
    add(made, "hourly", HOSTILE, T0, ok=False)
    add(made, "hourly", HOSTILE, T0 + timedelta(hours=1))
    return made


def test_each_chart_has_a_point_per_success_and_a_mark_per_failure(
    config: Config, tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    assert write_html_report(config, page, now=NOW) == 12 + 5 + 2
    marks = chart_marks(page.read_text(encoding="utf-8"))
    for chart in ("size", "duration"):
        assert marks[("nightly", "shop", chart)] == {"point": 10, "failure": 2}
        assert marks[("nightly", "crm", chart)] == {"point": 5, "failure": 0}
        assert marks[("hourly", HOSTILE, chart)] == {"point": 1, "failure": 1}
    assert len(marks) == 6
    assert page.stat().st_mode & 0o777 == 0o640


def test_the_page_is_self_contained_and_escapes_what_reports_hold(config: Config) -> None:
    html = render(collect(config, now=NOW))
    assert script_tags(html) == 0
    for external in ("http:", "https:", "src=", "<link", "url(", "@import", "//"):
        assert external not in html, external
    assert "<connection>" not in html and "&lt;connection&gt; refused" in html
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;db&#x27;" in html
    assert html == render(collect(config, now=NOW))  # the same reports give the same page


def test_one_job_only(config: Config) -> None:
    page = collect(config, job="hourly", now=NOW)
    assert [(h.job, h.database) for h in page.histories] == [("hourly", HOSTILE)]
    assert page.runs == 2
    assert set(chart_marks(render(page))) == {
        ("hourly", HOSTILE, "size"),
        ("hourly", HOSTILE, "duration"),
    }


def test_the_history_charted_is_capped_and_says_so(config: Config) -> None:
    page = collect(config, job="nightly", now=NOW, max_points=4)
    shop = next(h for h in page.histories if h.database == "shop")
    assert [run.started.day for run in shop.runs] == [9, 10, 11, 12]  # the newest, oldest first
    assert shop.total == 12
    html = render(page)
    assert "the newest 4 of 12 runs" in html and "5 runs" not in html.split("nightly / crm")[0]
    assert chart_marks(html)[("nightly", "shop", "size")] == {"point": 4, "failure": 0}


def test_retention_by_rule_and_a_job_gone_from_the_config(config: Config, tmp_path: Path) -> None:
    add(config, "retired", "old", T0)
    html = render(collect(config, now=NOW))
    shop = html.split("nightly / shop")[1].split("</section>")[0]
    # 30 days on, `days` keeps nothing; keep_last keeps March 11th and 12th; keep_weekly passes
    # over their ISO week and keeps the newest success of the two weeks before (March 7th: the
    # 8th failed; March 1st, a Sunday); no older week is left. Failed runs go.
    assert "Rules: days 7, keep_last 2, keep_weekly 3." in shop
    assert "Kept now: 4 of 12 reports (keep_last: 2, keep_weekly: 2); 8 would go." in shop
    retired = html.split("retired / old")[1].split("</section>")[0]
    assert "The job is no longer in the config." in retired


def test_drills_are_listed_newest_first_and_summarised(config: Config) -> None:
    drills = config.directories.reports / "drills"
    drills.mkdir()
    for day, status in ((5, SUCCESS), (12, FAILED)):
        document = {
            "kind": "drill",
            "job": "nightly",
            "database": "crm",
            "status": status,
            "startedAt": (T0 + timedelta(days=day)).isoformat().replace("+00:00", "Z"),
            "tablesChecked": 7,
            "mismatches": [{"table": "t", "expected": 1, "actual": 0}] if status == FAILED else [],
            "checks": [{"name": "c", "passed": True}],
            "restoreSeconds": 12.5,
            "errorMessage": "row counts differ" if status == FAILED else "",
        }
        (drills / f"crm_{day}.json").write_text(json.dumps(document))
    html = render(collect(config, now=NOW))
    crm = html.split("nightly / crm")[1].split("</section>")[0]
    rows = re.findall(
        r"<tr><td>(2026-[^<]+)</td>", crm.split('class="drills"')[1].split("</table>")[0]
    )
    assert rows == ["2026-03-13T02:00:00Z", "2026-03-06T02:00:00Z"]
    assert "row counts differ" in crm and "1/1" in crm
    shop = html.split("nightly / shop")[1].split("</section>")[0]
    assert "No restore drill yet." in shop


def test_no_reports_is_a_page_that_says_so(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    page = tmp_path / "empty.html"
    assert write_html_report(config, page, now=NOW) == 0
    assert "No backup reports yet." in page.read_text()


def test_a_page_that_cannot_be_written_names_the_file(config: Config, tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "dir" / "report.html"
    with pytest.raises(HtmlReportError, match=re.escape(str(target))):
        write_html_report(config, target, now=NOW)
