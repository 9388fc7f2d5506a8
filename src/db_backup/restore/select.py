"""Which backup and which target a restore means: names, `--before` and the target database.

Pure decisions over plain data, no files, processes or SQL: the checks of a target database
name, of `--table schema.table` and `--schema S` values, the moment `--before` names (in the
job's time zone unless the text gives a zone or offset) and the backup it picks, and that a
report id names exactly one report. The archive's table of contents is chosen in restore.toc.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from db_backup.restore.source import RestoreError
from db_backup.util.clock import format_utc

NAMEDATALEN = 63  # PostgreSQL's longest identifier, in bytes; a longer one is cut silently
RESERVED_TARGETS = ("template0", "template1", "postgres")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
OFFSET_RE = re.compile(r"(Z|[+-]\d{2}(?::?\d{2})?)$", re.IGNORECASE)


@dataclass(frozen=True, order=True)
class Relation:
    """A schema-qualified name, as the archive spells it (unquoted, case kept)."""

    schema: str
    name: str

    def __str__(self) -> str:
        return f"{_shown(self.schema)}.{_shown(self.name)}"


@dataclass(frozen=True)
class Candidate:
    """A report that could be restored: its file, when it started (UTC) and its document."""

    path: Path
    started: datetime
    document: Mapping[str, object]


def check_target_database(name: str) -> str:
    """Returns `name` if a restore may create or fill a database of that name; else raises.

    template0/template1/postgres are refused (template1 is copied into every later database,
    postgres is the maintenance database); a name longer than PostgreSQL keeps is refused
    instead of being cut to 63 bytes by the server.
    """
    if not name or "\0" in name:
        raise RestoreError("the target database name is empty or holds a NUL byte")
    if name in RESERVED_TARGETS:
        raise RestoreError(
            f"refusing to restore into {name!r}: template0, template1 and postgres are the "
            "server's own databases (template1 is copied into every database created later); "
            "name another with --to-database"
        )
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > NAMEDATALEN:
        raise RestoreError(
            f"the target database name {name!r} is {size} bytes; PostgreSQL keeps at most "
            f"{NAMEDATALEN} and would cut it silently; choose a shorter --to-database"
        )
    return name


def check_request(
    dump_format: str,
    *,
    partial: bool,
    list_only: bool,
    data_only: bool,
    clean: bool,
    globals_: bool,
) -> None:
    """Refuses combinations of restore options that cannot work, before anything is read."""
    if dump_format == "plain" and (partial or list_only or data_only):
        raise RestoreError(
            "--table, --schema, --data-only and --list need a custom or directory format dump; "
            "a plain SQL dump has no table of contents (restore it whole, or edit the SQL)"
        )
    if list_only and (clean or globals_):
        raise RestoreError("--list only prints the table of contents; drop --clean and --globals")
    if data_only and clean:
        raise RestoreError(
            "--data-only cannot be combined with --clean (pg_restore cannot drop what it does "
            "not create); empty the tables first (TRUNCATE) and restore with --data-only"
        )


def _check_identifier(value: str, what: str) -> str:
    """Returns `value` if it can be an identifier in a TOC line; else raises RestoreError."""
    if not value or CONTROL_RE.search(value):
        raise RestoreError(f"{what} {value!r}: an empty name or one with control characters")
    if len(value.encode("utf-8", "surrogateescape")) > NAMEDATALEN:
        raise RestoreError(f"{what} {value!r}: longer than {NAMEDATALEN} bytes, no such name")
    return value


def parse_schema(text: str) -> str:
    """Returns the schema name of a `--schema` value (`"..."` quotes removed)."""
    parts = _split_identifiers(text, "--schema")
    if len(parts) != 1:
        raise RestoreError(f"--schema {text!r}: give one schema name (no dot; quote it if it has)")
    return _check_identifier(parts[0], "--schema")


def parse_table(text: str) -> Relation:
    """Returns the relation of a `--table schema.table` value; the schema must be named.

    Names are taken as they are stored (no case folding); a part with a dot, or a name that
    should not be read as an option, can be written in double quotes: `"my.schema"."-x"`.
    """
    parts = _split_identifiers(text, "--table")
    if len(parts) != 2:
        raise RestoreError(
            f"--table {text!r}: name the table with its schema, e.g. public.orders "
            '(double quotes around a name that holds a dot: "my.schema".orders)'
        )
    return Relation(_check_identifier(parts[0], "--table"), _check_identifier(parts[1], "--table"))


def _split_identifiers(text: str, option: str) -> list[str]:
    """Returns the dot-separated parts of `text`, with SQL-style double quotes removed."""
    parts: list[str] = []
    current: list[str] = []
    index, quoted, was_quoted = 0, False, False
    while index < len(text):
        char = text[index]
        if quoted:
            if char == '"' and text[index + 1 : index + 2] == '"':
                current.append('"')
                index += 1
            elif char == '"':
                quoted = False
            else:
                current.append(char)
        elif char == '"':
            quoted = was_quoted = True
        elif char == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    if quoted:
        raise RestoreError(f"{option} {text!r}: a double quote is not closed")
    parts.append("".join(current))
    if not was_quoted and text.startswith("-"):
        raise RestoreError(
            f"{option} {text!r}: starts with '-'; if that really is the name, put it in "
            'double quotes ("-name")'
        )
    return parts


def _shown(name: str) -> str:
    """Returns `name` as a person would type it: quoted when it holds a dot, quote or space."""
    if re.fullmatch(r"[^\s.\"]+", name) and not name.startswith("-"):
        return name
    return '"' + name.replace('"', '""') + '"'


def parse_before(text: str, zone: ZoneInfo) -> datetime:
    """Returns the UTC moment of a `--before` value.

    `2026-11-30 14:05` is in `zone` (the job's schedule zone); an offset (`+08:00`, `Z`) or an
    IANA zone name after the time (`2026-11-30 14:05 Asia/Shanghai`) overrides it.
    """
    value = text.strip()
    given_zone: ZoneInfo | None = None
    head, _, last = value.rpartition(" ")
    if head and ("/" in last or last.upper() == "UTC"):
        try:
            given_zone = ZoneInfo("UTC" if last.upper() == "UTC" else last)
        except (ZoneInfoNotFoundError, ValueError):
            raise RestoreError(f"--before {text!r}: unknown time zone {last!r}") from None
        value = head.strip()
    if OFFSET_RE.search(value) and given_zone is None:
        value = re.sub(r"z$", "+00:00", value, flags=re.IGNORECASE)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise RestoreError(
            f"--before {text!r}: not a time; write it like '2026-11-30 14:05' (the job's zone), "
            "'2026-11-30 14:05+08:00' or '2026-11-30 14:05 Asia/Shanghai'"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=given_zone or zone)
    elif given_zone is not None:
        raise RestoreError(f"--before {text!r}: give an offset or a zone name, not both")
    return moment.astimezone(UTC)


def pick_before(
    candidates: Iterable[Candidate], moment: datetime, job: str, database: str
) -> Candidate:
    """Returns the newest SUCCESS backup of `job` and `database` that started before `moment`.

    Raises RestoreError naming the oldest one there is when none started before it.
    """
    matching = [
        c
        for c in candidates
        if c.document.get("status") == "SUCCESS"
        and str(c.document.get("job", "")) == job
        and str(c.document.get("database", "")) == database
    ]
    earlier = [c for c in matching if c.started < moment]
    if earlier:
        return max(earlier, key=lambda c: c.started)
    oldest = min(matching, key=lambda c: c.started, default=None)
    known = (
        f"; the oldest successful one started at {format_utc(oldest.started)}"
        if oldest is not None
        else ""
    )
    raise RestoreError(
        f"no successful backup of job {job!r}, database {database!r} started before "
        f"{format_utc(moment)}{known}"
    )


def only_report(matches: Sequence[Path], report_id: str, reports_dir: Path) -> Path:
    """Returns the one report file with `report_id`; refuses none, or several (naming them)."""
    if not matches:
        raise RestoreError(f"no report with id {report_id} in {reports_dir}")
    if len(matches) > 1:
        names = ", ".join(str(m) for m in sorted(matches))
        raise RestoreError(
            f"report id {report_id} is in {len(matches)} reports ({names}); refusing to choose "
            "one: name the report file instead"
        )
    return matches[0]


def describe_pick(candidate: Candidate, zone: ZoneInfo) -> str:
    """Returns the line naming the backup `--before` picked: its file and start in `zone`."""
    local = candidate.started.astimezone(zone)
    return (
        f"--before picked {candidate.path.name}: started {local:%Y-%m-%d %H:%M:%S} {zone.key} "
        f"({format_utc(candidate.started)}), report id {candidate.document.get('id', '?')}"
    )
