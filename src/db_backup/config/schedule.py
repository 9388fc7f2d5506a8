"""Cron schedule arithmetic for backup jobs: validation, next runs, catch-up and DST rules.

Everything here is pure: callers pass the wall-clock "now" (UTC) and the last run (UTC) and get
UTC instants back, so the rules can be tested without sleeping or touching the clock.

Rules
-----
Schedules are 5-field Vixie-cron expressions (or the ``@hourly``/``@daily``/``@midnight``/
``@weekly``/``@monthly``/``@yearly``/``@annually`` aliases) evaluated in the job's IANA time zone.
Day-of-month and day-of-week are OR-ed when both are restricted, as in Vixie cron. Expressions that
can never fire (``0 0 31 2 *``) are rejected. Seconds fields and ``@reboot`` are not supported,
and neither are croniter's extensions (``L``, ``W``, ``#``, ``?``, ``H``): a schedule means the
same here as in any crontab, so a DBA can read it and move it (``validate_cron`` names the
extension and the field).

1. *Every run is a real instant.* Slots are computed by croniter from time-zone aware datetimes and
   compared as UTC instants. A returned slot is always strictly after the last run and strictly
   after "now" (``next_run_after``), so the same instant never runs twice.
2. *Spring forward* (a wall-clock hour does not exist): a slot that falls in the gap fires once, at
   the first existing wall-clock time after it (croniter's behaviour: ``30 2 * * *`` in
   Europe/Berlin fires at 03:00 CEST on the changeover day). The job still runs that day.
3. *Fall back* (a wall-clock hour happens twice): a job whose hour field names particular hours
   (``30 1 * * *``, ``0 */6 * * *``, ``*/15 2 * * *``) runs on the first pass through the repeated
   hour only; the second occurrence of the same wall-clock time is skipped, so a daily job runs
   exactly once. A job whose hour field is ``*`` (``0 * * * *``, ``*/10 * * * *``) is about elapsed
   time rather than wall-clock time, so it runs in each real hour, including both passes through
   the repeated hour (25 hourly runs on that day, each at a different UTC instant), as Vixie cron
   does for wildcard jobs.
4. *Missed slots collapse into one run.* After downtime (or a long job, or a forward clock jump)
   the job runs once, not once per missed slot. At start-up ``missed_run`` decides whether the most
   recent missed slot is recent enough (``window``) to be worth catching up; a job that has never
   run does not run immediately on first start.
5. *Wall-clock jumps.* The daemon sleeps on the monotonic clock but at most ``max_sleep`` seconds
   (``sleep_seconds_until``), and on each wake-up compares the wall clock with the job's due
   instant. A jump forward past the due instant therefore triggers the run at the next wake-up,
   once. A jump backwards cannot rerun a job: ``next_run_after`` counts from
   ``max(last_run, now)``, so a last run that now lies "in the future" still blocks its slot.

The daemon loop these helpers are designed for::

    due = due_at_start(expr, tz, last_run, now, catch_up_window)     # at start and on reload
    while True:
        now = wall clock (UTC)
        if now >= due:
            run the job; last_run = now (persisted, UTC)
            due = next_run_after(expr, tz, last_run, now)
        sleep(sleep_seconds_until(due, now, max_sleep))                # monotonic sleep
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from db_backup.util import children

# croniter's import runs `file -b` (platform.architecture) with the whole environment, secrets
# included: refused, platform answers from the interpreter instead.
with children.refused():
    from croniter import CroniterError, croniter

_ALIASES = frozenset(
    {"@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually"}
)

_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_MONTH_NAMES = frozenset(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
)
_DAY_NAMES = frozenset(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])
# One element of a Vixie cron field list: `*`, a value or a range, optionally with a step.
_VIXIE_ELEMENT = re.compile(r"^(?:\*|[0-9a-z]+(?:-[0-9a-z]+)?)(?:/[0-9]+)?$")
# croniter's extensions, told apart by the character or the letters (lower-cased) that mark them.
_EXTENSIONS = (
    ("#", "'#' (nth weekday of the month)"),
    ("?", "'?' (no specific value; Vixie cron uses '*')"),
    ("l", "'L' (last day of the month, or last such weekday)"),
    ("lw", "'LW' (last weekday of the month)"),
    ("w", "'W' (nearest weekday)"),
    ("h", "'H' (hashed value)"),
)

# Bounds that keep a scan finite: the catch-up scan even for `* * * * *` with a window of weeks,
# and the DST filter (a repeated hour skips at most 60 minute-slots in a row).
_MAX_SCAN_SLOTS = 100_000
_MAX_SKIPPED = 10_000


def validate_cron(expr: str) -> str | None:
    """Return an error message for a cron expression a person can act on, or None if it is valid."""
    if not isinstance(expr, str) or not expr.strip():
        return (
            "empty cron expression; expected 5 fields like '30 1 * * *' or an alias like '@daily'"
        )
    text = expr.strip()
    if text.startswith("@"):
        if text.lower() in _ALIASES:
            return None
        return (
            f"unknown cron alias {text!r}; use one of "
            + ", ".join(sorted(_ALIASES))
            + " or 5 fields like '30 1 * * *'"
        )
    fields = text.split()
    if len(fields) != 5:
        return (
            f"cron expression {text!r} has {len(fields)} fields; expected 5 "
            "(minute hour day-of-month month day-of-week), e.g. '30 1 * * *'"
        )
    vixie_error = _vixie_problem(fields)
    if vixie_error:
        return f"not a valid cron expression: {text!r} ({vixie_error})"
    try:
        croniter.expand(text, strict=True)
    except CroniterError as exc:
        return f"not a valid cron expression: {text!r} ({exc})"
    return None


def _vixie_problem(fields: list[str]) -> str | None:
    """Returns what in `fields` is not Vixie cron syntax (croniter accepts more), or None."""
    for index, (field, field_name) in enumerate(zip(fields, _FIELDS, strict=True)):
        names = _MONTH_NAMES if index == 3 else _DAY_NAMES if index == 4 else frozenset()
        for element in field.lower().split(","):
            words = re.findall(r"[a-z]+", element)
            if _VIXIE_ELEMENT.match(element) and all(word in names for word in words):
                continue
            unknown = {w for w in words if w not in names}
            for marker, meaning in _EXTENSIONS:
                if marker in unknown or (not marker.isalpha() and marker in element):
                    return (
                        f"{field_name} field {field!r}: {meaning} is a croniter extension, not "
                        "Vixie cron; use numbers, month or day names, '*', ',', '-' and '/'"
                    )
            return (
                f"{field_name} field {field!r} is not Vixie cron syntax; use numbers, month or "
                "day names, '*', ',', '-' and '/'"
            )
    return None


def validate_timezone(name: str) -> str | None:
    """Return an error message for an IANA time zone name, or None if zoneinfo knows it."""
    if not isinstance(name, str) or not name.strip():
        return "empty time zone; expected an IANA name like 'Asia/Shanghai' or 'UTC'"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return (
            f"unknown time zone {name!r}; expected an IANA name like 'Asia/Shanghai' or 'UTC' "
            "(see /usr/share/zoneinfo)"
        )
    return None


def _require_aware(value: datetime, name: str) -> datetime:
    """Return ``value`` converted to UTC, refusing naive datetimes (they are always a bug here)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {value!r}")
    return value.astimezone(UTC)


def _hour_is_wildcard(expr: str) -> bool:
    """Return True when the expression fires in every hour of the day (hour field is ``*``)."""
    expanded, _ = croniter.expand(expr.strip())
    return bool(expanded[1] == ["*"])


def _slots_after(expr: str, tz: ZoneInfo, after_utc: datetime) -> Iterator[datetime]:
    """Yield the slots strictly after ``after_utc`` as UTC datetimes, applying the DST rules."""
    keep_repeated_hour = _hour_is_wildcard(expr)
    previous = after_utc
    iterator = croniter(expr.strip(), after_utc.astimezone(tz))
    skipped = 0
    while skipped < _MAX_SKIPPED:
        candidate: datetime = iterator.get_next(datetime)
        slot_utc = candidate.astimezone(UTC)
        # fromutc() marks the second pass through a repeated wall-clock hour with fold=1.
        repeated = not keep_repeated_hour and slot_utc.astimezone(tz).fold == 1
        if slot_utc <= previous or repeated:
            skipped += 1
            continue
        skipped = 0
        previous = slot_utc
        yield slot_utc
    raise RuntimeError(f"cron expression {expr!r} stopped producing slots after {previous}")


def next_runs(expr: str, tz: ZoneInfo, after_utc: datetime, count: int) -> list[datetime]:
    """Return the next ``count`` slots strictly after ``after_utc`` as aware datetimes in ``tz``."""
    start = _require_aware(after_utc, "after_utc")
    result: list[datetime] = []
    if count <= 0:
        return result
    for slot in _slots_after(expr, tz, start):
        result.append(slot.astimezone(tz))
        if len(result) >= count:
            break
    return result


def next_run_after(
    expr: str, tz: ZoneInfo, last_run_utc: datetime | None, now_utc: datetime
) -> datetime:
    """Return the first slot (UTC) strictly after both the last run and now.

    Counting from ``max(last_run_utc, now_utc)`` means a backwards wall-clock jump never reruns a
    slot that already ran, and missed slots are not replayed (see ``missed_run`` for catch-up).
    """
    now = _require_aware(now_utc, "now_utc")
    reference = now
    if last_run_utc is not None:
        reference = max(reference, _require_aware(last_run_utc, "last_run_utc"))
    return next(_slots_after(expr, tz, reference))


def missed_run(
    expr: str,
    tz: ZoneInfo,
    last_run_utc: datetime | None,
    now_utc: datetime,
    window: timedelta,
) -> datetime | None:
    """Return the most recent slot (UTC) in ``(last_run_utc, now_utc]`` no older than ``window``.

    None when nothing was missed, when the missed slot is older than ``window`` or when the job
    has never run (a first start does not run the job immediately).
    """
    if last_run_utc is None:
        return None
    now = _require_aware(now_utc, "now_utc")
    last = _require_aware(last_run_utc, "last_run_utc")
    if last >= now or window <= timedelta(0):
        return None
    # Slots exactly `window` old still count, hence the microsecond before the window opens.
    lower = max(last, now - window - timedelta(microseconds=1))
    found: datetime | None = None
    for count, slot in enumerate(_slots_after(expr, tz, lower)):
        if slot > now or count >= _MAX_SCAN_SLOTS:
            break
        found = slot
    return found


def due_at_start(
    expr: str,
    tz: ZoneInfo,
    last_run_utc: datetime | None,
    now_utc: datetime,
    catch_up_window: timedelta,
) -> datetime:
    """Return the instant (UTC) a job is next due when the daemon starts or reloads its config.

    A recently missed slot (``missed_run``) is due immediately (the returned instant is <= now);
    otherwise this is ``next_run_after``.
    """
    missed = missed_run(expr, tz, last_run_utc, now_utc, catch_up_window)
    if missed is not None:
        return missed
    return next_run_after(expr, tz, last_run_utc, now_utc)


def sleep_seconds_until(target_utc: datetime, now_utc: datetime, max_sleep: float) -> float:
    """Return the seconds (>= 0) to sleep before re-checking the wall clock for ``target_utc``.

    Capped at ``max_sleep`` so that a wall-clock jump is noticed at the next wake-up and the
    watchdog keeps being fed.
    """
    target = _require_aware(target_utc, "target_utc")
    now = _require_aware(now_utc, "now_utc")
    remaining = (target - now).total_seconds()
    return max(0.0, min(remaining, float(max_sleep)))
