"""Calendar retention (borg's keep_hourly/daily/weekly/monthly/yearly beside days and keep_last).

The simulated year is checked against a reference computed here another way: periods are found
by bucketing instants between period boundaries built from the calendar (local midnights of
each day, of Mondays, of the 1st of each month, of January 1st), not from the keys the module
derives from each backup's local time.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from db_backup.reports.calendar import (
    Policy,
    describe,
    keep_reasons,
    plan,
    policy_for,
)
from db_backup.reports.retention import Backup, choose_expired

BERLIN = ZoneInfo("Europe/Berlin")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def kept_by(
    starts: Sequence[datetime], policy: Policy, zone: ZoneInfo, now: datetime
) -> dict[datetime, set[str]]:
    """Returns {start: rules} of the kept backups only."""
    found = keep_reasons(starts, policy, zone, now)
    return {start: set(why) for start, why in zip(starts, found, strict=True) if why}


# --- the reference: periods from calendar boundaries ------------------------------------------


def local_midnights(
    zone: ZoneInfo, first: date, last: date, wanted: Callable[[date], bool]
) -> list[datetime]:
    """Returns the UTC instants of local midnight of every date in [first, last] that is wanted."""
    out = []
    day = first
    while day <= last:
        if wanted(day):
            out.append(datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC))
        day += timedelta(days=1)
    return out


def bucketing(boundaries: list[datetime]) -> Callable[[datetime], int]:
    """Returns a function giving the index of the period (between boundaries) holding an instant."""

    def bucket(moment: datetime) -> int:
        index = bisect.bisect_right(boundaries, moment) - 1
        assert index >= 0, moment
        return index

    return bucket


def reference(
    starts: Sequence[datetime], policy: Policy, zone: ZoneInfo, now: datetime
) -> dict[datetime, set[str]]:
    """Returns {start: rules} as borg's prune documents it, periods found by bucketing."""
    first = min(starts).astimezone(zone).date() - timedelta(days=400)
    last = max(starts).astimezone(zone).date() + timedelta(days=1)
    buckets: list[tuple[str, int, Callable[[datetime], int]]] = [
        # Europe/Berlin's offsets are whole hours: its hours (both 02:00 hours of the autumn
        # night counted) are exactly the UTC hours.
        ("keep_hourly", policy.keep_hourly, lambda m: int(m.timestamp()) // 3600),
        ("keep_daily", policy.keep_daily, bucketing(local_midnights(zone, first, last, lambda d: True))),
        ("keep_weekly", policy.keep_weekly, bucketing(local_midnights(zone, first, last, lambda d: d.weekday() == 0))),
        ("keep_monthly", policy.keep_monthly, bucketing(local_midnights(zone, first, last, lambda d: d.day == 1))),
        ("keep_yearly", policy.keep_yearly, bucketing(local_midnights(zone, first, last, lambda d: d.month == d.day == 1))),
    ]  # fmt: skip
    kept: dict[datetime, set[str]] = {start: set() for start in starts}
    for start in starts:
        if start >= now - timedelta(days=policy.days):
            kept[start].add("days")
    for start in sorted(starts, reverse=True)[: policy.keep_last]:
        kept[start].add("keep_last")
    for rule, count, bucket in buckets:
        if count == 0:
            continue
        newest: dict[int, datetime] = {}
        for start in starts:
            period = bucket(start)
            newest[period] = max(newest.get(period, start), start)
        taken = 0
        for period in sorted(newest, reverse=True):
            if kept[newest[period]]:
                continue
            kept[newest[period]].add(rule)
            taken += 1
            if taken == count:
                break
        else:
            oldest = min(starts)
            if not kept[oldest]:
                kept[oldest].add(rule + "[oldest]")
    newest_start = max(starts)
    if not kept[newest_start]:
        kept[newest_start].add("newest")
    return {start: why for start, why in kept.items() if why}


def simulated_year() -> list[datetime]:
    """Hourly backups at :17 from mid-December 2025 into January 2027 (through both DST changes,
    two year boundaries and ISO week 2026-W53), some missing, some hours with a second backup."""
    rng = random.Random(24)
    starts = []
    moment = utc("2025-12-15T00:17:00")
    while moment < utc("2027-01-12T00:00:00"):
        if rng.random() > 0.03:  # a failed or missed hour now and then
            starts.append(moment)
        if rng.random() < 0.01:  # a manual run in the same hour
            starts.append(moment + timedelta(minutes=21))
        moment += timedelta(hours=1)
    rng.shuffle(starts)  # the order given must not matter
    return starts


YEAR_POLICIES = [
    Policy(days=2, keep_last=3, keep_hourly=24, keep_daily=14, keep_weekly=13, keep_monthly=12, keep_yearly=3),
    Policy(days=1, keep_last=1, keep_daily=7, keep_weekly=4, keep_monthly=6),
    Policy(days=1, keep_last=1, keep_hourly=100, keep_monthly=100),
    Policy(days=30, keep_last=5, keep_weekly=60),
    Policy(days=1, keep_last=2, keep_yearly=5),
    Policy(days=7, keep_last=3),
]  # fmt: skip


@pytest.mark.parametrize("policy", YEAR_POLICIES)
def test_a_simulated_year_of_hourly_backups_keeps_what_the_reference_keeps(policy: Policy) -> None:
    starts = simulated_year()
    now = max(starts) + timedelta(minutes=30)
    assert kept_by(starts, policy, BERLIN, now) == reference(starts, policy, BERLIN, now)


def test_the_usual_policy_over_a_year_keeps_month_ends_and_lets_rules_pass_over_each_other() -> (
    None
):
    starts = simulated_year()
    policy = YEAR_POLICIES[0]
    now = max(starts) + timedelta(minutes=30)
    kept = kept_by(starts, policy, BERLIN, now)
    alone = {rule: sorted(s for s, why in kept.items() if why == {rule}) for rule in (
        "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly[oldest]"
    )}  # fmt: skip
    assert [len(found) for found in alone.values()] == [24, 14, 13, 12, 1]
    for start in alone["keep_monthly"]:
        local = start.astimezone(BERLIN)
        # The newest backup of a Berlin month: its last day, 23:xx local, summer and winter.
        assert (local + timedelta(days=1)).day == 1 and local.hour == 23, local
    # December 2026 ends inside keep_daily's 14 days, so keep_monthly passes over it and reaches
    # back to December 2025; keep_yearly finds 2027, 2026 and 2025 kept already and keeps the
    # oldest backup instead.
    months = [s.astimezone(BERLIN).strftime("%Y-%m") for s in alone["keep_monthly"]]
    assert months[0] == "2025-12" and months[-1] == "2026-11"
    assert alone["keep_yearly[oldest]"] == [min(starts)]
    days = [s for s, why in kept.items() if "days" in why]
    assert min(days) >= now - timedelta(days=2) and len(days) == 46


# --- edge cases, by hand -----------------------------------------------------------------------

LATER = utc("2030-01-01T00:00:00")  # far after every backup: `days` keeps nothing


def test_the_hour_repeated_when_clocks_go_back_is_two_hours() -> None:
    # 2026-10-25 in Berlin: 02:00-03:00 CEST (00:00-01:00 UTC), then 02:00-03:00 CET again.
    starts = [
        utc("2026-10-25T00:10"),
        utc("2026-10-25T00:40"),
        utc("2026-10-25T01:10"),
        utc("2026-10-25T01:40"),
    ]
    assert {s.astimezone(BERLIN).hour for s in starts} == {2}
    kept = kept_by(starts, Policy(days=1, keep_last=1, keep_hourly=1), BERLIN, LATER)
    assert kept == {
        utc("2026-10-25T01:40"): {"keep_last"},
        utc("2026-10-25T00:40"): {"keep_hourly"},
    }
    # The whole night is one day: the day's newest is kept already and the history ends, so
    # keep_daily keeps the oldest backup (borg's [oldest]).
    kept = kept_by(starts, Policy(days=1, keep_last=1, keep_daily=1), BERLIN, LATER)
    assert kept == {
        utc("2026-10-25T01:40"): {"keep_last"},
        utc("2026-10-25T00:10"): {"keep_daily[oldest]"},
    }


def test_the_day_the_clocks_go_forward_has_23_hours() -> None:
    # 2026-03-29 in Berlin runs from 2026-03-28T23:00Z to 2026-03-29T22:00Z.
    before, first, last, after = (
        utc("2026-03-28T22:59"),  # 23:59 on the 28th
        utc("2026-03-28T23:01"),  # 00:01 on the 29th
        utc("2026-03-29T21:59"),  # 23:59 CEST on the 29th
        utc("2026-03-29T22:01"),  # 00:01 on the 30th
    )
    kept = kept_by(
        [before, first, last, after], Policy(days=1, keep_last=1, keep_daily=3), BERLIN, LATER
    )
    assert kept == {after: {"keep_last"}, last: {"keep_daily"}, before: {"keep_daily"}}
    # Either side of the skipped hour (02:00-03:00) are two consecutive hours.
    one, two = utc("2026-03-29T00:30"), utc("2026-03-29T01:30")
    assert (one.astimezone(BERLIN).hour, two.astimezone(BERLIN).hour) == (1, 3)
    kept = kept_by([one, two], Policy(days=1, keep_last=1, keep_hourly=1), BERLIN, LATER)
    assert kept == {two: {"keep_last"}, one: {"keep_hourly"}}


def test_years_turn_at_the_zones_midnight() -> None:
    late_2026, early_2027, newest = (
        utc("2026-12-31T22:30"),
        utc("2026-12-31T23:30"),
        utc("2027-06-01T12:00"),
    )
    in_2025 = utc("2025-05-01T12:00")
    policy = Policy(days=1, keep_last=1, keep_yearly=2)
    starts = [in_2025, late_2026, early_2027, newest]
    # In Berlin 23:30Z is already 2027: the newest of 2026 is 22:30Z.
    assert kept_by(starts, policy, BERLIN, LATER) == {
        newest: {"keep_last"},
        late_2026: {"keep_yearly"},
        in_2025: {"keep_yearly"},
    }
    assert kept_by(starts, policy, ZoneInfo("UTC"), LATER) == {
        newest: {"keep_last"},
        early_2027: {"keep_yearly"},
        in_2025: {"keep_yearly"},
    }


def test_iso_week_53_spans_the_new_year() -> None:
    sunday_w52, thursday_w53, saturday_w53, monday_w01, newest = (
        utc("2026-12-27T12:00"),
        utc("2026-12-31T12:00"),
        utc("2027-01-02T12:00"),
        utc("2027-01-04T12:00"),
        utc("2027-01-20T12:00"),
    )
    assert saturday_w53.isocalendar()[:2] == (2026, 53)
    starts = [sunday_w52, thursday_w53, saturday_w53, monday_w01, newest]
    kept = kept_by(starts, Policy(days=1, keep_last=1, keep_weekly=3), BERLIN, LATER)
    assert kept == {
        newest: {"keep_last"},
        monday_w01: {"keep_weekly"},
        saturday_w53: {"keep_weekly"},
        sunday_w52: {"keep_weekly"},
    }


def test_the_iso_week_of_late_december_can_belong_to_the_next_year() -> None:
    monday, friday, newest = (
        utc("2024-12-30T12:00"),
        utc("2025-01-03T12:00"),
        utc("2025-02-01T12:00"),
    )
    assert monday.isocalendar()[:2] == (2025, 1)
    kept = kept_by(
        [monday, friday, newest], Policy(days=1, keep_last=1, keep_weekly=1), BERLIN, LATER
    )
    assert kept == {newest: {"keep_last"}, friday: {"keep_weekly"}}


def test_backups_kept_by_a_finer_rule_do_not_count_for_a_coarser_one() -> None:
    starts = [utc(f"2026-06-{day:02d}T12:00") for day in range(1, 22)]  # Mon 1st .. Sun 21st
    kept = kept_by(starts, Policy(days=1, keep_last=1, keep_daily=3, keep_weekly=2), BERLIN, LATER)
    assert {s.day: why for s, why in kept.items()} == {
        21: {"keep_last"},
        20: {"keep_daily"},
        19: {"keep_daily"},
        18: {"keep_daily"},
        # The week of the 15th-21st is passed over: its newest backup is kept already.
        14: {"keep_weekly"},
        7: {"keep_weekly"},
    }


def test_days_and_keep_last_both_name_a_backup_they_both_keep() -> None:
    now = utc("2026-06-10T00:00")
    starts = [now - timedelta(hours=h) for h in (1, 30, 80)]
    kept = kept_by(starts, Policy(days=2, keep_last=2), BERLIN, now)
    assert kept == {starts[0]: {"days", "keep_last"}, starts[1]: {"days", "keep_last"}}


def test_the_newest_backup_is_kept_even_when_no_rule_would() -> None:
    starts = [utc("2026-01-01T00:00"), utc("2026-01-02T00:00")]
    kept = kept_by(starts, Policy(days=1, keep_last=0), BERLIN, LATER)
    assert kept == {starts[1]: {"newest"}}


def test_no_backups_keep_nothing() -> None:
    assert keep_reasons([], Policy(keep_daily=3), BERLIN, LATER) == []


def test_the_zone_decides_the_day() -> None:
    # 2026-06-01T17:00Z is already June 2nd in Shanghai (UTC+8).
    evening, late, newest = (
        utc("2026-06-01T15:00"),
        utc("2026-06-01T17:00"),
        utc("2026-06-03T12:00"),
    )
    before = utc("2026-05-30T12:00")
    starts = [before, evening, late, newest]
    policy = Policy(days=1, keep_last=1, keep_daily=2)
    shanghai = kept_by(starts, policy, ZoneInfo("Asia/Shanghai"), LATER)
    in_utc = kept_by(starts, policy, ZoneInfo("UTC"), LATER)
    assert shanghai == {newest: {"keep_last"}, late: {"keep_daily"}, evening: {"keep_daily"}}
    assert in_utc == {newest: {"keep_last"}, late: {"keep_daily"}, before: {"keep_daily"}}


# --- the plan over reports ----------------------------------------------------------------------


def backup(key: str, started: datetime, ok: bool = True, db: str = "shop") -> Backup:
    return Backup(key, db, started, ok, (key, f"{key}.dump"))


def age_and_count_reference(
    backups: list[Backup], days: int, keep_last: int, now: datetime
) -> tuple[set[str], set[str]]:
    """Returns (expired keys, still-named files) by the age and count rules as they were
    decided before the calendar plan became the one decision (the old `choose_expired`)."""
    cutoff = now - timedelta(days=days)
    expired: set[str] = set()
    by_database: dict[str, list[Backup]] = {}
    for b in backups:
        by_database.setdefault(b.database, []).append(b)
    for group in by_database.values():
        newest = sorted((b for b in group if b.successful), key=lambda b: b.started)[::-1]
        protected = {b.key for b in newest[:keep_last]}
        expired |= {b.key for b in group if b.key not in protected and b.started < cutoff}
    still_named = {n for b in backups if b.key not in expired for n in b.files}
    return expired, still_named


def test_without_calendar_rules_the_plan_expires_what_the_age_and_count_rules_did() -> None:
    rng = random.Random(7)
    now = utc("2026-11-23T12:00")
    for _ in range(300):
        backups = [
            Backup(
                f"r{i}",
                rng.choice(["shop", "crm"]),
                now - timedelta(hours=rng.uniform(0, 24 * 40)),
                rng.random() > 0.2,
                (f"r{i}", f"r{i}.dump", *(["shared_globals.sql"] if rng.random() < 0.3 else [])),
            )
            for i in range(rng.randint(0, 12))
        ]
        days, keep_last = rng.randint(1, 20), rng.randint(1, 4)
        expired, still_named = age_and_count_reference(backups, days, keep_last, now)
        found = plan(backups, Policy(days=days, keep_last=keep_last), BERLIN, now)
        assert {b.key for b in found.expired} == expired
        assert found.still_named == still_named
        chosen, named = choose_expired(backups, days=days, keep_last=keep_last, now=now)
        assert {b.key for b in chosen} == expired and named == still_named


def test_the_plan_keeps_failed_runs_only_while_younger_than_days_and_per_database() -> None:
    now = utc("2026-06-30T12:00")
    backups = [
        backup("shop_new", now - timedelta(days=1)),
        backup("shop_may", utc("2026-05-31T12:00")),
        backup("shop_may_early", utc("2026-05-10T12:00")),
        backup("shop_failed_old", utc("2026-05-31T13:00"), ok=False),
        backup("shop_failed_new", now - timedelta(hours=2), ok=False),
        backup("crm_may", utc("2026-05-20T12:00"), db="crm"),
    ]
    found = plan(backups, Policy(days=3, keep_last=1, keep_monthly=1), BERLIN, now)
    assert found.kept == {
        "shop_new": ("days", "keep_last"),
        "shop_failed_new": ("days",),
        "shop_may": ("keep_monthly",),
        "crm_may": ("keep_last",),
    }
    assert {b.key for b in found.expired} == {"shop_may_early", "shop_failed_old"}
    assert "shop_may.dump" in found.still_named and "shop_may_early.dump" not in found.still_named
    lines = describe(backups, found)
    assert lines[:2] == [  # newest first
        "keep    shop_failed_new (FAILED): days",
        "keep    shop_new: days, keep_last",
    ]
    assert "delete  shop_failed_old (FAILED): no rule keeps it" in lines
    assert "keep    shop_may: keep_monthly" in lines and len(lines) == len(backups)


def test_policy_defaults_are_the_schemas() -> None:
    from db_backup.config import loads

    config = loads(
        "storage: {mode: local}\njobs:\n  - name: nightly\n    schedule: '0 2 * * *'\n"
        "    databases: shop\n"
    )
    assert policy_for(config.job("nightly")) == Policy()
    assert not Policy().by_calendar and Policy(keep_yearly=1).by_calendar


def test_the_policy_of_a_loaded_job(tmp_path: Path) -> None:
    from db_backup.config import loads

    config = loads(
        "storage: {mode: local}\njobs:\n  - name: nightly\n    schedule: '0 2 * * *'\n"
        "    databases: shop\n    retention: {days: 2, keep_daily: 14, keep_weekly: 13, keep_monthly: 12}\n"
    )
    assert policy_for(config.job("nightly")) == Policy(
        days=2, keep_last=3, keep_daily=14, keep_weekly=13, keep_monthly=12
    )


def test_a_negative_count_is_refused_by_check_config() -> None:
    from db_backup.config import ConfigError, loads

    with pytest.raises(ConfigError) as caught:
        loads(
            "jobs:\n  - name: nightly\n    schedule: '0 2 * * *'\n    databases: shop\n"
            "    retention: {keep_hourly: -1}\n"
        )
    assert "jobs[0].retention.keep_hourly" in str(caught.value)


def test_the_run_s_retention_step_deletes_what_the_calendar_plan_expires() -> None:
    from db_backup.backup.prune import plan_deletions

    zone = ZoneInfo("Europe/Berlin")
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    backups = [backup(f"shop_{n}", now - timedelta(days=n), ok=n != 5) for n in range(0, 60)]
    policy = Policy(days=2, keep_last=1, keep_daily=7, keep_weekly=4)
    deleted = plan_deletions(backups, policy, now=now, zone=zone)
    expected = plan(backups, policy, zone, now)
    assert {d.key for d in deleted} == {b.key for b in expected.expired}
    assert "shop_0" not in {d.key for d in deleted}  # the newest is never deleted
    # Without calendar rules the age and count rules decide, as before.
    plain = plan_deletions(backups, Policy(days=2, keep_last=1), now=now)
    assert {d.key for d in plain} == age_and_count_reference(backups, 2, 1, now)[0]
    assert len(plain) > len(deleted)


def test_rule_counts_say_how_many_backups_each_rule_keeps_in_the_rules_order() -> None:
    from db_backup.reports.calendar import rule_counts

    now = utc("2026-06-30T12:00")
    backups = [backup(f"b{n}", now - timedelta(days=n)) for n in range(40)]
    found = plan(backups, Policy(days=2, keep_last=1, keep_weekly=2, keep_yearly=1), BERLIN, now)
    assert rule_counts(found) == [
        ("days", 3),
        ("keep_last", 1),
        ("keep_hourly", 0),
        ("keep_daily", 0),
        ("keep_weekly", 2),
        ("keep_monthly", 0),
        ("keep_yearly", 0),
        ("keep_yearly[oldest]", 1),
    ]
    assert sum(n for _, n in rule_counts(found)) >= len(found.kept)
