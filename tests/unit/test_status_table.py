"""One table renderer for `status` (this host) and `status --from-db` (the fleet, a HOST column)."""

from __future__ import annotations

from typing import Any

from db_backup.observe.status import StatusPage, render_table


def row(database: str, status: str = "SUCCESS", **extra: Any) -> dict[str, Any]:
    return {
        "startedAt": "2026-11-20T02:00:00Z",
        "job": "nightly",
        "database": database,
        "status": status,
        "errorMessage": "" if status == "SUCCESS" else "pg_dump: " + "x" * 200,
        "durationSeconds": 42,
        "local": {"file": f"/b/{database}.dump" if status == "SUCCESS" else "", "sizeBytes": 1536},
        "remote": {"urls": []},
        **extra,
    }


def test_the_history_view_aligns_columns_and_cuts_long_errors() -> None:
    page = StatusPage([row("shop"), row("crm", "FAILED")], total=2, page=1, pages=1, warnings=[])
    lines = render_table(page).splitlines()
    assert lines[0] == (
        "STARTED (UTC)         JOB      DATABASE  STATUS   SIZE     DURATION  WHERE / ERROR"
    )
    assert lines[1] == (
        "2026-11-20T02:00:00Z  nightly  shop      SUCCESS  1.5 KiB  42 s      /b/shop.dump"
    )
    assert lines[2].endswith("pg_dump: " + "x" * 111)  # 120 characters of the error
    assert lines[-1] == "page 1 of 1, 2 matching report(s)"
    assert len({line.index("FAILED") for line in lines if "FAILED" in line}) == 1


def test_the_latest_view_adds_last_success_and_last_drill() -> None:
    latest = row("shop", stale=True, lastSuccessAgeSeconds=3 * 86400, lastDrill=None)
    page = StatusPage([latest], total=1, page=1, pages=1, warnings=[])
    header, line, _ = render_table(page).splitlines()
    assert "LAST SUCCESS  LAST DRILL  WHERE / ERROR" in header
    assert "3d ago STALE  -" in line


def test_the_fleet_view_adds_a_host_column_and_says_where_nothing_matched() -> None:
    page = StatusPage([row("shop", hostname="db2")], total=1, page=1, pages=1, warnings=[])
    header, line, footer = render_table(page, hosts=True).splitlines()
    assert header.split()[:4] == ["STARTED", "(UTC)", "HOST", "JOB"]
    assert line.split()[1:4] == ["db2", "nightly", "shop"]
    assert "LAST SUCCESS" not in header
    assert footer == "page 1 of 1, 1 matching report(s)"
    empty = StatusPage([], total=0, page=1, pages=1, warnings=[])
    assert render_table(empty, hosts=True, empty="no matching reports in the database") == (
        "no matching reports in the database"
    )
    assert render_table(empty) == "no matching reports"
    beyond = StatusPage([], total=3, page=4, pages=1, warnings=[])
    assert render_table(beyond, hosts=True) == (
        "page 4 is empty: the 3 matching report(s) fill 1 page(s) of this size"
    )
