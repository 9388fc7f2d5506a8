"""A job's cron schedule as systemd `OnCalendar=` lines that fire at the same instants.

Pure: the caller passes the expression, the zone and "now"; nothing here reads the clock or the
system. `db-backup timers` writes what `to_on_calendar` returns into timer drop-ins.

How the translation keeps the daemon's schedule (`db_backup.config.schedule`):

- Every field is taken from croniter's own expansion (the daemon's source of truth) and written
  as a systemd list, range (`a..b`) or repetition (`a/step`); the time zone becomes the calendar
  spec's suffix (systemd 252 accepts `... 02:00:00 Asia/Shanghai`).
- Day-of-month and day-of-week both restricted are OR-ed by croniter (Vixie cron); one systemd
  spec ANDs them, so that case becomes two `OnCalendar=` lines, one per field.
- Daylight-saving time. systemd fires a wall-clock time that a spring-forward change skips on
  no day at all, where the daemon runs it at the first time after the gap (`30 2 * * *` in
  Europe/Berlin: 03:00 on that day). A schedule with such a slot in the next years is refused
  (a timer would lose that day's backup). In a repeated (fall-back) hour both run a job pinned
  to hours once, on the first pass; a job whose hour field is `*` runs in both passes under the
  daemon and in the first only under a timer: accepted, with a note saying so.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from db_backup.config.schedule import validate_cron
from db_backup.util import children

with children.refused():  # croniter's import may start a child (see config/schedule.py)
    from croniter import croniter

# Weekday names as systemd writes them, by cron number (0 = Sunday); printed Monday first.
_WEEKDAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")
_ISO_ORDER = (1, 2, 3, 4, 5, 6, 0)
# Highest value of minute, hour, day of month and month (for `a/step` to reach the end).
_MAXIMA = (59, 23, 31, 12)
DST_HORIZON_YEARS = 5


class NotExpressible(ValueError):
    """A cron schedule that no set of `OnCalendar=` lines fires at the same instants."""


@dataclass(frozen=True)
class TimerSchedule:
    """The `OnCalendar=` values for one schedule, and what differs from the daemon (notes)."""

    on_calendar: tuple[str, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Fields:
    """croniter's expansion of the five fields; None stands for `*` (every value)."""

    minutes: frozenset[int] | None
    hours: frozenset[int] | None
    days: frozenset[int] | None
    months: frozenset[int] | None
    weekdays: frozenset[int] | None  # 0 = Sunday

    @property
    def days_or_weekdays(self) -> bool:
        """Returns True when croniter OR-s day-of-month and day-of-week (both restricted)."""
        return self.days is not None and self.weekdays is not None

    def matches(self, local: datetime) -> bool:
        """Returns True when the wall-clock minute `local` (naive) is a slot of the schedule."""

        def hit(values: frozenset[int] | None, value: int) -> bool:
            return values is None or value in values

        weekday = (local.weekday() + 1) % 7
        if not (
            hit(self.minutes, local.minute)
            and hit(self.hours, local.hour)
            and hit(self.months, local.month)
        ):
            return False
        if self.days_or_weekdays:
            return hit(self.days, local.day) or hit(self.weekdays, weekday)
        return hit(self.days, local.day) and hit(self.weekdays, weekday)


def to_on_calendar(
    expr: str, zone: ZoneInfo, now_utc: datetime, years: int = DST_HORIZON_YEARS
) -> TimerSchedule:
    """Returns the `OnCalendar=` lines that fire `expr` in `zone` when the daemon would.

    Raises NotExpressible, saying which slot and why, for an invalid expression and for one that
    a daylight-saving change in the next `years` would make a timer skip.
    """
    problem = validate_cron(expr)
    if problem is not None:
        raise NotExpressible(problem)
    fields = _expand(expr)
    time = f"{_numbers(fields.hours, 1)}:{_numbers(fields.minutes, 0)}:00"
    month = _numbers(fields.months, 3)
    zone_name = zone.key
    lines: tuple[str, ...]
    if fields.days_or_weekdays:
        lines = (
            f"{_weekdays(fields.weekdays)} *-{month}-* {time} {zone_name}",
            f"*-{month}-{_numbers(fields.days, 2)} {time} {zone_name}",
        )
    else:
        prefix = "" if fields.weekdays is None else f"{_weekdays(fields.weekdays)} "
        lines = (f"{prefix}*-{month}-{_numbers(fields.days, 2)} {time} {zone_name}",)
    notes = _dst_differences(expr, fields, zone, now_utc, years)
    return TimerSchedule(lines, notes)


def _expand(expr: str) -> _Fields:
    """Returns croniter's expansion of `expr` (aliases included) as sets, `*` as None."""
    expanded, _ = croniter.expand(expr.strip())

    def values(field: list[int | str]) -> frozenset[int] | None:
        return None if field == ["*"] else frozenset(int(v) for v in field)

    weekdays = values(expanded[4])
    if weekdays is not None:
        weekdays = frozenset(day % 7 for day in weekdays)  # 7 is Sunday too
        if len(weekdays) == 7:
            weekdays = None
    return _Fields(
        values(expanded[0]), values(expanded[1]), values(expanded[2]), values(expanded[3]), weekdays
    )


def _numbers(values: frozenset[int] | None, index: int) -> str:
    """Returns a systemd calendar component for `values`: `*`, `a/step`, ranges and lists."""
    if values is None:
        return "*"
    ordered = sorted(values)
    if len(ordered) >= 3:
        step = ordered[1] - ordered[0]
        progression = all(b - a == step for a, b in itertools.pairwise(ordered))
        if progression and step > 1 and ordered[-1] + step > _MAXIMA[index]:
            return f"{ordered[0]:02d}/{step}"
    return ",".join(f"{a:02d}" if a == b else f"{a:02d}..{b:02d}" for a, b in _runs(ordered))


def _weekdays(values: frozenset[int] | None) -> str:
    """Returns the weekday component (`Mon..Fri`, `Sat,Sun`) for cron day numbers."""
    assert values is not None
    ordered = [_ISO_ORDER.index(day) for day in values]
    names = []
    for a, b in _runs(sorted(ordered)):
        first, last = _WEEKDAYS[_ISO_ORDER[a]], _WEEKDAYS[_ISO_ORDER[b]]
        names.append(first if a == b else f"{first}..{last}")
    return ",".join(names)


def _runs(ordered: list[int]) -> list[tuple[int, int]]:
    """Returns `ordered` as runs of consecutive values (first, last); a run of two is split."""
    runs: list[tuple[int, int]] = []
    for value in ordered:
        if runs and runs[-1][1] == value - 1:
            runs[-1] = (runs[-1][0], value)
        else:
            runs.append((value, value))
    split: list[tuple[int, int]] = []
    for a, b in runs:
        split.extend([(a, a), (b, b)] if b == a + 1 else [(a, b)])
    return split


def _dst_differences(
    expr: str, fields: _Fields, zone: ZoneInfo, now_utc: datetime, years: int
) -> tuple[str, ...]:
    """Returns notes on repeated hours; raises NotExpressible for a slot a timer would skip."""
    notes: list[str] = []
    for instant, before, after in _transitions(zone, now_utc, years):
        start = (instant + before).replace(tzinfo=None)  # wall clock just before the change
        change = after - before
        if change > timedelta(0):  # spring forward: [start, start + change) does not exist
            lost = [m for m in _minutes(start, start + change) if fields.matches(m)]
            if lost and not fields.matches(start + change):
                raise NotExpressible(
                    f"schedule {expr!r} in {zone.key} has a run at {lost[0]:%Y-%m-%d %H:%M}, "
                    f"a time that daylight-saving time skips ({start:%H:%M}-"
                    f"{start + change:%H:%M}): the daemon runs it at "
                    f"{start + change:%H:%M} that day, a systemd timer would skip it; move the "
                    f"run out of {start:%H:%M}-{start + change:%H:%M}, use a zone without "
                    "daylight-saving time (e.g. UTC), or keep this job on the daemon"
                )
        elif fields.hours is None:  # fall back: [start + change, start) happens twice
            repeated = [m for m in _minutes(start + change, start) if fields.matches(m)]
            if repeated and not notes:  # the same every year: said once
                notes.append(
                    f"from {start:%Y-%m-%d} on, in the hour that daylight-saving time repeats "
                    f"({start + change:%H:%M}-{start:%H:%M} {zone.key}) a timer runs this job "
                    "once where the daemon runs it twice (the hour field is '*')"
                )
    return tuple(notes)


def _transitions(
    zone: ZoneInfo, now_utc: datetime, years: int
) -> list[tuple[datetime, timedelta, timedelta]]:
    """Returns the zone's offset changes in the next `years`: (UTC instant, before, after)."""
    found = []
    moment = now_utc.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    end = moment + timedelta(days=366 * years)
    offset = _offset(zone, moment)
    while moment < end:
        following = moment + timedelta(hours=1)
        next_offset = _offset(zone, following)
        if next_offset != offset:
            low, high = moment, following  # changes happen on the minute: find it
            while high - low > timedelta(minutes=1):
                middle = low + (high - low) / 2
                middle = middle.replace(second=0, microsecond=0)
                if middle <= low:
                    break
                low, high = (middle, high) if _offset(zone, middle) == offset else (low, middle)
            found.append((high, offset, next_offset))
        moment, offset = following, next_offset
    return found


def _offset(zone: ZoneInfo, moment: datetime) -> timedelta:
    """Returns the zone's UTC offset at the UTC instant `moment`."""
    return moment.astimezone(zone).utcoffset() or timedelta(0)


def _minutes(start: datetime, end: datetime) -> list[datetime]:
    """Returns each wall-clock minute in [start, end)."""
    count = int((end - start) / timedelta(minutes=1))
    return [start + timedelta(minutes=n) for n in range(count)]
