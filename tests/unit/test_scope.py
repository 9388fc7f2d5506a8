"""What the latest views leave out (observe.scope.hidden): pure rules."""

from __future__ import annotations

from datetime import UTC, datetime

from db_backup.observe.scope import hidden


def at(hour: int) -> datetime:
    return datetime(2026, 12, 5, hour, tzinfo=UTC)


def test_a_job_level_record_is_cleared_by_any_later_report_of_the_job() -> None:
    newest = {("nightly", "*"): at(2), ("nightly", "shop"): at(3), ("other", "*"): at(4)}
    assert hidden(newest, None) == {("nightly", "*")}


def test_a_job_level_record_stays_while_it_is_the_jobs_newest_news() -> None:
    newest = {("nightly", "*"): at(5), ("nightly", "shop"): at(3)}
    assert hidden(newest, None) == set()


def test_jobs_and_listed_databases_no_longer_configured_are_left_out() -> None:
    newest = {
        ("nightly", "shop"): at(1),
        ("nightly", "dropped"): at(1),
        ("removed", "shop"): at(1),
        ("all", "anything"): at(1),
        ("nightly", "*"): at(2),
    }
    scope = {"nightly": frozenset({"shop"}), "all": None}
    assert hidden(newest, scope) == {("nightly", "dropped"), ("removed", "shop")}
