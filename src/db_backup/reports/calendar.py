"""Calendar retention: which backups `days`, `keep_last` and borg's `keep_*` rules keep, and why.

Per database, over its successful backups (their start instants), as borg's `prune` does:

1. `days`: every backup that started within the last `days` days (an age, as before), and
   `keep_last`: the newest `keep_last` successful backups. Both keep what they name, overlapping.
2. Then `keep_hourly`, `keep_daily`, `keep_weekly`, `keep_monthly`, `keep_yearly`, in that order.
   Going from the newest backup to the oldest, each rule takes the newest backup of every period
   (an hour, a day, an ISO week, a month, a year, in the job's time zone) until it has kept its
   count. A period whose newest backup an earlier rule already keeps is passed over and does not
   count: "backups selected by previous rules do not count towards those of later rules" (borg),
   so `keep_daily: 7` beside `days: 2` reaches about nine days back.
3. A rule that runs out of periods before its count keeps the oldest backup too (borg's
   `[oldest]`), so a young history is not cut shorter than the rule asks.
4. The newest successful backup is always kept.

A backup kept by any rule is kept. Failed runs never count; they go once older than `days`.

Periods are wall-clock periods of the zone: a day is 23 or 25 hours on the days the clocks
change. An hour repeated when the clocks go back is two hours here (each is an hour of backups;
borg's local-time label would merge them); the hour skipped when they go forward holds nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, tzinfo
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from db_backup.config import JobConfig
    from db_backup.reports.retention import Backup  # which imports this module to decide

DAYS = "days"
KEEP_LAST = "keep_last"
NEWEST = "newest"
OLDEST_SUFFIX = "[oldest]"


def _hour(local: datetime) -> Hashable:
    # The offset tells the two 02:00 hours of the night the clocks go back apart.
    return (local.date(), local.hour, local.utcoffset())


def _day(local: datetime) -> Hashable:
    return local.date()


def _iso_week(local: datetime) -> Hashable:
    year, week, _ = local.isocalendar()
    return (year, week)


def _month(local: datetime) -> Hashable:
    return (local.year, local.month)


def _year(local: datetime) -> Hashable:
    return local.year


# The calendar rules in borg's order (finest first) and the period each one counts.
CALENDAR_RULES: tuple[tuple[str, Callable[[datetime], Hashable]], ...] = (
    ("keep_hourly", _hour),
    ("keep_daily", _day),
    ("keep_weekly", _iso_week),
    ("keep_monthly", _month),
    ("keep_yearly", _year),
)


@dataclass(frozen=True)
class Policy:
    """A job's `retention` section: the age and count rules and the calendar counts."""

    days: int = 7
    keep_last: int = 3
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0

    @property
    def by_calendar(self) -> bool:
        """Returns whether any calendar rule is on."""
        return any(getattr(self, rule) > 0 for rule, _ in CALENDAR_RULES)


def policy_for(job: JobConfig) -> Policy:
    """Returns the retention policy of `job` (its typed `retention` section)."""
    retention = job.retention
    return Policy(**{f.name: getattr(retention, f.name) for f in fields(Policy)})


def keep_reasons(
    starts: Sequence[datetime], policy: Policy, zone: tzinfo, now: datetime
) -> list[tuple[str, ...]]:
    """Returns, for each start instant of `starts` (successful backups of one database, any
    order), the rules that keep it, in the same order; an empty tuple means it may go.

    Rule names are the config keys (`days`, `keep_last`, `keep_daily`, ...), `keep_<x>[oldest]`
    for a rule's oldest-backup keep, and `newest` for the newest backup kept by no rule.
    """
    order = sorted(range(len(starts)), key=lambda i: starts[i], reverse=True)
    reasons: list[list[str]] = [[] for _ in starts]
    cutoff = now - timedelta(days=policy.days)
    for rank, index in enumerate(order):
        if starts[index] >= cutoff:
            reasons[index].append(DAYS)
        if rank < policy.keep_last:
            reasons[index].append(KEEP_LAST)
    local = [start.astimezone(zone) for start in starts]
    for rule, period in CALENDAR_RULES:
        count = getattr(policy, rule)
        if count > 0:
            _apply_rule(rule, count, order, [period(moment) for moment in local], reasons)
    if order and not reasons[order[0]]:
        reasons[order[0]].append(NEWEST)
    return [tuple(found) for found in reasons]


def _apply_rule(
    rule: str, count: int, order: list[int], periods: list[Hashable], reasons: list[list[str]]
) -> None:
    """Adds `rule` to the reasons of the newest backup of each of its `count` newest periods
    whose newest backup no earlier rule keeps (borg's prune_split); `order` is newest first."""
    kept = 0
    last: Hashable = object()  # equal to no period
    for index in order:
        if periods[index] == last:
            continue  # not the newest backup of its period
        last = periods[index]
        if reasons[index]:
            continue  # an earlier rule keeps it: this period does not count
        reasons[index].append(rule)
        kept += 1
        if kept == count:
            return
    if order and not reasons[order[-1]]:
        reasons[order[-1]].append(rule + OLDEST_SUFFIX)


@dataclass(frozen=True)
class Plan:
    """What retention keeps (with the rules that keep each) and deletes, over one job's reports."""

    kept: dict[str, tuple[str, ...]]  # report file name -> rules that keep it
    expired: list[Backup]
    still_named: set[str]  # file names a kept backup still names (never deleted)


def plan(backups: Sequence[Backup], policy: Policy, zone: tzinfo, now: datetime) -> Plan:
    """Returns the retention plan of `backups` (any databases): per database, successful backups
    by `keep_reasons`, failed runs kept only while younger than `days`.

    Without calendar rules only `days` and `keep_last` decide (`retention.choose_expired`).
    """
    cutoff = now - timedelta(days=policy.days)
    by_database: dict[str, list[Backup]] = {}
    for backup in backups:
        by_database.setdefault(backup.database, []).append(backup)
    kept: dict[str, tuple[str, ...]] = {}
    expired: list[Backup] = []
    for group in by_database.values():
        good = [b for b in group if b.successful]
        verdicts = keep_reasons([b.started for b in good], policy, zone, now)
        decided = {id(b): why for b, why in zip(good, verdicts, strict=True)}
        for backup in group:
            if backup.successful:
                why = decided[id(backup)]
            else:
                why = (DAYS,) if backup.started >= cutoff else ()
            if why:
                kept[backup.key] = why
            else:
                expired.append(backup)
    still_named = {name for b in backups if b.key in kept for name in b.files}
    return Plan(kept=kept, expired=expired, still_named=still_named)


def describe(backups: Sequence[Backup], found: Plan) -> list[str]:
    """Returns one line per backup, newest first, saying whether it stays and which rules keep
    it, or that it goes (for `db-backup retention --dry-run`)."""
    lines = []
    for backup in sorted(backups, key=lambda b: (b.database, b.started), reverse=True):
        why = found.kept.get(backup.key)
        state = "" if backup.successful else " (FAILED)"
        if why:
            lines.append(f"keep    {backup.key}{state}: {', '.join(why)}")
        else:
            lines.append(f"delete  {backup.key}{state}: no rule keeps it")
    return lines


def rule_counts(found: Plan) -> list[tuple[str, int]]:
    """Returns how many backups each rule keeps (a backup kept by two rules counts for both),
    in the rules' order: days, keep_last, the calendar rules, their [oldest] keeps, newest."""
    order = [DAYS, KEEP_LAST, *(rule for rule, _ in CALENDAR_RULES)]
    order += [rule + OLDEST_SUFFIX for rule, _ in CALENDAR_RULES] + [NEWEST]
    counts = dict.fromkeys(order, 0)
    for reasons in found.kept.values():
        for reason in reasons:
            counts[reason] = counts.get(reason, 0) + 1
    return [(rule, n) for rule, n in counts.items() if n or rule in order[:7]]
