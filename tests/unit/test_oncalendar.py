"""cron -> OnCalendar: the timer fires when the daemon would, checked against systemd itself.

The pure translation (`db_backup.config.oncalendar`) is checked two ways: its text for known
expressions, and, where `systemd-analyze` is installed, the next 20 elapses systemd computes for
the lines against the next 20 slots the daemon computes with croniter (`schedule.next_runs`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from db_backup.config.oncalendar import NotExpressible, to_on_calendar
from db_backup.config.schedule import next_runs

NOW = datetime(2026, 12, 6, 0, 0, tzinfo=UTC)
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

# (cron, zone, base instant): daily, steps, OR-ed days, croniter's OR for */2, names, aliases,
# months, a fall-back night for a job pinned to hours, a spring-forward night that misses the gap.
CASES = [
    ("0 2 * * *", "Asia/Shanghai", NOW),
    ("*/15 * * * *", "UTC", NOW),
    ("30 1 1,15 * 1-5", "Europe/Berlin", NOW),
    ("0 2 */2 * 1", "UTC", NOW),
    ("5-50/10 3 * * *", "America/New_York", NOW),
    ("@weekly", "UTC", NOW),
    ("@monthly", "Asia/Shanghai", NOW),
    ("0 0 1 1,4,7,10 *", "UTC", NOW),
    ("0 */6 * * 6,0", "Asia/Shanghai", NOW),
    ("15 3 * * sun,wed", "UTC", NOW),
    ("0 4 * * 0", "Asia/Shanghai", NOW),
    ("45 23 * jan-mar 1-5", "UTC", NOW),
    ("30 2 * * *", "Europe/Berlin", datetime(2026, 10, 20, tzinfo=UTC)),
    ("0 3 * * *", "Europe/Berlin", datetime(2027, 3, 20, tzinfo=UTC)),
    ("*/20 1-3 * * *", "Europe/Berlin", datetime(2026, 10, 24, 20, tzinfo=UTC)),
]


@pytest.mark.parametrize(
    ("expr", "zone", "expected"),
    [
        ("0 2 * * *", "Asia/Shanghai", ("*-*-* 02:00:00 Asia/Shanghai",)),
        ("*/15 * * * *", "UTC", ("*-*-* *:00/15:00 UTC",)),
        (
            "30 1 1,15 * 1-5",
            "UTC",
            ("Mon..Fri *-*-* 01:30:00 UTC", "*-*-01,15 01:30:00 UTC"),
        ),
        ("0 2 */2 * 1", "UTC", ("Mon *-*-* 02:00:00 UTC", "*-*-01/2 02:00:00 UTC")),
        ("5-50/10 3 * * *", "UTC", ("*-*-* 03:05,15,25,35,45:00 UTC",)),
        ("@weekly", "UTC", ("Sun *-*-* 00:00:00 UTC",)),
        ("0 0 1 1,4,7,10 *", "UTC", ("*-01/3-01 00:00:00 UTC",)),
        ("0 */6 * * 6,0", "UTC", ("Sat,Sun *-*-* 00/6:00:00 UTC",)),
        ("0 0 * * 0,7", "UTC", ("Sun *-*-* 00:00:00 UTC",)),
        ("0 0 * * 0-6", "UTC", ("*-*-* 00:00:00 UTC",)),
        ("0 9-17 * * *", "UTC", ("*-*-* 09..17:00:00 UTC",)),
    ],
)
def test_known_expressions_give_these_lines(
    expr: str, zone: str, expected: tuple[str, ...]
) -> None:
    assert to_on_calendar(expr, ZoneInfo(zone), NOW).on_calendar == expected


def test_a_run_in_the_spring_forward_gap_is_refused_naming_the_day_and_why() -> None:
    with pytest.raises(NotExpressible) as caught:
        to_on_calendar("30 2 * * *", ZoneInfo("Europe/Berlin"), NOW)
    message = str(caught.value)
    assert "2027-03-28 02:30" in message
    assert "daylight-saving time skips (02:00-03:00)" in message
    assert "a systemd timer would skip it" in message


def test_a_gap_slot_that_the_gap_end_also_fires_is_accepted() -> None:
    # The daemon runs 02:xx at 03:00, which is a slot anyway: the timer runs 03:00 too.
    result = to_on_calendar("*/15 * * * *", ZoneInfo("Europe/Berlin"), NOW)
    assert result.on_calendar == ("*-*-* *:00/15:00 Europe/Berlin",)


def test_weekday_jobs_whose_days_miss_the_changes_are_accepted() -> None:
    # Europe/Berlin changes on Sundays: a Monday-to-Friday 02:30 job never meets the gap.
    result = to_on_calendar("30 2 * * 1-5", ZoneInfo("Europe/Berlin"), NOW)
    assert result.on_calendar == ("Mon..Fri *-*-* 02:30:00 Europe/Berlin",)
    assert result.notes == ()


def test_a_wildcard_hour_job_gets_one_note_about_the_repeated_hour() -> None:
    result = to_on_calendar("0 * * * *", ZoneInfo("Europe/Berlin"), NOW)
    assert len(result.notes) == 1
    assert (
        "2027-10-31" in result.notes[0] and "once where the daemon runs it twice" in result.notes[0]
    )
    assert to_on_calendar("0 * * * *", ZoneInfo("UTC"), NOW).notes == ()


@pytest.mark.parametrize("expr", ["0 2 L * *", "* * * *", "@reboot", "61 * * * *"])
def test_an_expression_the_daemon_refuses_is_refused(expr: str) -> None:
    with pytest.raises(NotExpressible):
        to_on_calendar(expr, ZoneInfo("UTC"), NOW)


def _systemd_elapses(lines: tuple[str, ...], base: datetime, count: int) -> list[datetime]:
    """Returns the first `count` elapses of all `lines` together, as systemd-analyze prints them."""
    assert SYSTEMD_ANALYZE is not None
    moments: set[datetime] = set()
    for line in lines:
        done = subprocess.run(
            [
                SYSTEMD_ANALYZE,
                "calendar",
                f"--iterations={count}",
                f"--base-time=@{int(base.timestamp())}",
                line,
            ],
            capture_output=True,
            text=True,
            check=True,
            env={"TZ": "UTC", "LC_ALL": "C", "PATH": "/usr/bin:/bin"},
        )
        for stamp in re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\S+ \S+) UTC", done.stdout):
            moments.add(datetime.fromisoformat(stamp).replace(tzinfo=UTC))
    return sorted(moments)[:count]


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed here")
@pytest.mark.parametrize(("expr", "zone", "base"), CASES)
def test_systemd_fires_the_next_20_runs_when_croniter_does(
    expr: str, zone: str, base: datetime
) -> None:
    tz = ZoneInfo(zone)
    try:
        lines = to_on_calendar(expr, tz, base).on_calendar
    except NotExpressible:
        # Refused for a later year: the 20 runs from this base are still compared.
        lines = to_on_calendar(expr, tz, base, years=0).on_calendar
    daemon = [moment.astimezone(UTC) for moment in next_runs(expr, tz, base, 20)]
    assert _systemd_elapses(lines, base, 20) == daemon


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed here")
def test_the_refused_gap_run_is_one_systemd_really_skips() -> None:
    # What the refusal guards against, shown with systemd's own arithmetic.
    tz = ZoneInfo("Europe/Berlin")
    base = datetime(2027, 3, 27, 12, tzinfo=UTC)
    lines = to_on_calendar("30 2 * * *", tz, base, years=0).on_calendar
    daemon = [moment.astimezone(UTC) for moment in next_runs("30 2 * * *", tz, base, 2)]
    assert daemon[0] == datetime(2027, 3, 28, 1, 0, tzinfo=UTC)  # 03:00 CEST on the day
    assert _systemd_elapses(lines, base, 1) == [datetime(2027, 3, 29, 0, 30, tzinfo=UTC)]
