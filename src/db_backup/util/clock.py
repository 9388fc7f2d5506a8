"""The one clock and the one timestamp form: aware UTC datetimes, ISO 8601 with a `Z`."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """Returns the wall-clock time as an aware UTC datetime, to the microsecond."""
    return datetime.now(UTC)


def to_the_second(moment: datetime) -> datetime:
    """Returns `moment` without its fraction of a second (reports and file names use seconds)."""
    return moment.replace(microsecond=0)


def format_utc(moment: datetime) -> str:
    """Returns `moment` as ISO 8601 UTC with a `Z` suffix, e.g. 2025-10-11T18:00:00Z.

    Microseconds appear only when the moment has them. Refuses a naive datetime: which zone it
    meant cannot be known.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"timestamp must be timezone-aware, got naive {moment!r}")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_utc(text: str, *, naive_is_utc: bool = False) -> datetime:
    """Returns the aware UTC datetime of an ISO 8601 timestamp (`Z` or an offset).

    A timestamp without an offset is refused (ValueError), or taken as UTC with `naive_is_utc`.
    """
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        if not naive_is_utc:
            raise ValueError(f"timestamp {text!r} has no time zone")
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
