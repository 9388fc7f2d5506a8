"""A roles file read as statements, and which of them a restore runs: pure functions.

`pg_dumpall --globals-only` writes one statement per role fact: `CREATE ROLE x;`, `ALTER ROLE x
WITH ... PASSWORD '...';`, comments, per-role settings, `GRANT role TO member`, then the
tablespaces. `parse_globals` splits that text into statements (quotes, comments and psql's
meta-commands understood) and refuses a file that was cut short: it must end with pg_dumpall's
closing comment, and no statement may be left open. `plan_roles` decides, from the roles and
tablespaces the server has, which statements run: by default only what creates a missing role
(with its attributes, password, comment, settings and memberships) or a missing tablespace;
existing roles are left as they are unless `reset` is asked for.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

# pg_dumpall's last words; a file without them was cut short.
FOOTER = "-- PostgreSQL database cluster dump complete"
_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_ROLE_RES = (
    re.compile(rf"^ALTER ROLE ({_IDENT})\s", re.S),
    re.compile(rf"^COMMENT ON ROLE ({_IDENT})\s", re.S),
    re.compile(rf"^SECURITY LABEL (?:FOR \S+ )?ON ROLE ({_IDENT})\s", re.S),
)
_CREATE_ROLE_RE = re.compile(rf"^CREATE ROLE ({_IDENT});$", re.S)
_MEMBERSHIP_RE = re.compile(rf"^GRANT ({_IDENT}) TO ({_IDENT})[\s;]", re.S)
_CREATE_TABLESPACE_RE = re.compile(rf"^CREATE TABLESPACE ({_IDENT})\s", re.S)
_TABLESPACE_RES = (
    re.compile(rf"^ALTER TABLESPACE ({_IDENT})\s", re.S),
    re.compile(rf"^COMMENT ON TABLESPACE ({_IDENT})\s", re.S),
    re.compile(rf"^SECURITY LABEL (?:FOR \S+ )?ON TABLESPACE ({_IDENT})\s", re.S),
    re.compile(rf"^(?:GRANT|REVOKE) .* ON TABLESPACE ({_IDENT}) (?:TO|FROM) ", re.S),
)


_DOLLAR_TAG_RE = re.compile(r"\$[A-Za-z_]*\$")


class GlobalsError(ValueError):
    """A roles file that cannot be used as it is; the message says why."""


class Kind(enum.Enum):
    """What a statement of a roles file is about."""

    SET = "set"  # session settings (client_encoding, ...): run before the rest
    CREATE_ROLE = "create role"
    ROLE = "role"  # ALTER ROLE (attributes, password, settings), COMMENT / SECURITY LABEL
    MEMBERSHIP = "membership"  # GRANT role TO member
    CREATE_TABLESPACE = "create tablespace"
    TABLESPACE = "tablespace"  # ALTER / COMMENT / SECURITY LABEL / GRANT on a tablespace
    OTHER = "other"


@dataclass(frozen=True)
class Statement:
    """One statement of a roles file, what it is about and the names it concerns."""

    kind: Kind
    sql: str
    name: str = ""  # the role or tablespace (MEMBERSHIP: the role granted)
    member: str = ""  # MEMBERSHIP: the role it is granted to


def unquote(identifier: str) -> str:
    """Returns the name an identifier stands for (`"a""b"` -> `a"b`, `abc` -> `abc`)."""
    if identifier.startswith('"'):
        return identifier[1:-1].replace('""', '"')
    return identifier.lower()


def split_statements(text: str) -> list[str]:
    """Returns the SQL statements of `text`, each ending in `;`, without comments or meta-commands.

    Raises GlobalsError when the text ends inside a quoted string or a statement.
    """
    statements: list[str] = []
    current: list[str] = []
    started = False  # whether the current statement has begun (a meta-command must not)
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if not started and not char.isspace() and char != "\\" and not text.startswith("--", i):
            started = True
        if char == "-" and text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
            current.append("\n")
        elif char == "\\" and not started:  # a psql meta-command (\restrict, \connect): one line
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif char in "'\"":
            end = _closing_quote(text, i)
            current.append(text[i:end])
            i = end
        elif char == "$" and (tag := _DOLLAR_TAG_RE.match(text, i)):
            close = text.find(tag.group(0), i + len(tag.group(0)))
            if close < 0:
                raise GlobalsError("it ends inside a dollar-quoted string (cut short?)")
            end = close + len(tag.group(0))
            current.append(text[i:end])
            i = end
        elif char == ";":
            current.append(";")
            statements.append("".join(current).strip())
            current, started = [], False
            i += 1
        else:
            current.append(char)
            i += 1
    rest = "".join(current).strip()
    if rest:
        raise GlobalsError(f"it ends inside a statement ({_first_words(rest)} ...; cut short?)")
    return statements


def _closing_quote(text: str, start: int) -> int:
    """Returns the index after the quote closing the string or identifier opened at `start`."""
    quote = text[start]
    backslashes = quote == "'" and start > 0 and text[start - 1] in "Ee"
    i = start + 1
    while True:
        end = text.find(quote, i)
        if end < 0:
            what = "a quoted string" if quote == "'" else "a quoted name"
            raise GlobalsError(f"it ends inside {what} (cut short?)")
        if backslashes and _escaped(text, end):
            i = end + 1
        elif text.startswith(quote * 2, end):
            i = end + 2
        else:
            return end + 1


def _escaped(text: str, index: int) -> bool:
    """Returns whether the character at `index` follows an odd number of backslashes."""
    count = 0
    while index - count - 1 >= 0 and text[index - count - 1] == "\\":
        count += 1
    return count % 2 == 1


def _first_words(sql: str, words: int = 3) -> str:
    """Returns the first words of a statement, for messages (never a password)."""
    return " ".join(sql.split()[:words])


def classify(sql: str) -> Statement:
    """Returns what one statement of a roles file is about."""
    if sql.upper().startswith("SET "):
        return Statement(Kind.SET, sql)
    if match := _CREATE_ROLE_RE.match(sql):
        return Statement(Kind.CREATE_ROLE, sql, unquote(match.group(1)))
    for pattern in _ROLE_RES:
        if match := pattern.match(sql):
            return Statement(Kind.ROLE, sql, unquote(match.group(1)))
    if match := _CREATE_TABLESPACE_RE.match(sql):
        return Statement(Kind.CREATE_TABLESPACE, sql, unquote(match.group(1)))
    for pattern in _TABLESPACE_RES:
        if match := pattern.match(sql):
            return Statement(Kind.TABLESPACE, sql, unquote(match.group(1)))
    if match := _MEMBERSHIP_RE.match(sql):
        granted, member = unquote(match.group(1)), unquote(match.group(2))
        return Statement(Kind.MEMBERSHIP, sql, granted, member)
    return Statement(Kind.OTHER, sql)


def parse_globals(text: str) -> list[Statement]:
    """Returns the statements of a roles file; raises GlobalsError when it was cut short.

    A complete file ends with pg_dumpall's closing comment and leaves no statement open.
    """
    statements = split_statements(text)
    tail = text.rstrip().splitlines()[-2:] if text.strip() else []
    if not any(line.strip() == FOOTER for line in tail):
        raise GlobalsError(
            "it does not end with pg_dumpall's closing line "
            f"({FOOTER.lstrip('- ')!r}): it was cut short"
        )
    return [classify(sql) for sql in statements]


@dataclass
class RolePlan:
    """What restoring the roles file does on one server, decided before anything runs."""

    roles_script: list[str] = field(default_factory=list)  # one transaction
    tablespace_script: list[str] = field(default_factory=list)  # after it, no transaction
    created: list[str] = field(default_factory=list)
    left_alone: list[str] = field(default_factory=list)
    reset: list[str] = field(default_factory=list)
    tablespaces_created: list[str] = field(default_factory=list)
    tablespaces_left_alone: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # first words of statements not run

    def has_work(self) -> bool:
        """Returns whether any statement other than session settings runs."""
        return bool(self.created or self.reset or self.tablespaces_created)


def plan_roles(
    statements: list[Statement],
    existing_roles: set[str],
    existing_tablespaces: set[str],
    *,
    reset: bool = False,
    skip_tablespaces: bool = False,
) -> RolePlan:
    """Returns which statements of a roles file run on a server with these roles and tablespaces.

    A role missing on the server is created with everything the file says about it (attributes,
    password, comment, settings) and the memberships it takes part in. A role that exists is
    left alone, memberships included, unless `reset`: then its attributes, password, comment,
    settings and memberships are set as the file says. Statements of other kinds run only with
    `reset`. A tablespace that exists is left alone; `skip_tablespaces` leaves them all out.
    """
    plan = RolePlan()
    created = {s.name for s in statements if s.kind is Kind.CREATE_ROLE} - existing_roles
    new_spaces = {s.name for s in statements if s.kind is Kind.CREATE_TABLESPACE}
    new_spaces = set() if skip_tablespaces else new_spaces - existing_tablespaces
    settings = [s.sql for s in statements if s.kind is Kind.SET]
    for statement in statements:
        kind, name = statement.kind, statement.name
        if kind is Kind.CREATE_ROLE:
            target = plan.created if name in created else plan.reset if reset else plan.left_alone
            _add_once(target, name)
        elif kind is Kind.CREATE_TABLESPACE and not skip_tablespaces:
            new = name in new_spaces
            _add_once(plan.tablespaces_created if new else plan.tablespaces_left_alone, name)
        if _runs(statement, created, new_spaces, reset):
            is_space = kind in (Kind.CREATE_TABLESPACE, Kind.TABLESPACE)
            (plan.tablespace_script if is_space else plan.roles_script).append(statement.sql)
        elif kind is Kind.OTHER:
            plan.skipped.append(_first_words(statement.sql, 4))
    if plan.roles_script:
        plan.roles_script = [*settings, *plan.roles_script]
    if plan.tablespace_script:
        plan.tablespace_script = [*settings, *plan.tablespace_script]
    return plan


def _runs(statement: Statement, created: set[str], new_spaces: set[str], reset: bool) -> bool:
    """Returns whether `statement` runs (see plan_roles)."""
    kind, name = statement.kind, statement.name
    if kind is Kind.CREATE_ROLE:
        return name in created
    if kind is Kind.ROLE:
        return reset or name in created
    if kind is Kind.MEMBERSHIP:
        return reset or name in created or statement.member in created
    if kind in (Kind.CREATE_TABLESPACE, Kind.TABLESPACE):
        return name in new_spaces
    return kind is Kind.OTHER and reset


def _add_once(names: list[str], name: str) -> None:
    if name not in names:
        names.append(name)


def roles_sql(plan: RolePlan) -> str:
    """Returns the roles part of `plan` as one transaction ("" when nothing runs)."""
    if not plan.roles_script:
        return ""
    return "BEGIN;\n" + "\n".join(plan.roles_script) + "\nCOMMIT;\n"


def tablespaces_sql(plan: RolePlan) -> str:
    """Returns the tablespace part of `plan` ("" when nothing runs); CREATE TABLESPACE cannot
    run inside a transaction."""
    return "\n".join(plan.tablespace_script) + "\n" if plan.tablespace_script else ""


def describe(plan: RolePlan, *, done: bool = True) -> list[str]:
    """Returns lines saying which roles and tablespaces a plan creates, resets and leaves alone.

    `done` False: the same, as what a restore would do (for a dry run).
    """
    verb = {
        True: ("created", "reset", "left alone", "not run"),
        False: ("to create", "to reset", "to leave alone", "not to run"),
    }[done]
    lines = [f"roles {verb[0]}: {_names(plan.created)}"]
    if plan.reset:
        lines.append(f"roles {verb[1]} (attributes, passwords, memberships): {_names(plan.reset)}")
    if plan.left_alone:
        lines.append(
            f"roles {verb[2]} (they exist; --reset-roles resets them): {_names(plan.left_alone)}"
        )
    if plan.tablespaces_created:
        lines.append(f"tablespaces {verb[0]}: {_names(plan.tablespaces_created)}")
    if plan.tablespaces_left_alone:
        lines.append(f"tablespaces {verb[2]} (they exist): {_names(plan.tablespaces_left_alone)}")
    if plan.skipped:
        lines.append(f"statements {verb[3]} (--reset-roles runs them): " + "; ".join(plan.skipped))
    return lines


def _names(names: list[str]) -> str:
    return ", ".join(names) if names else "none"
