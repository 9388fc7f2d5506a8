"""pg_dump's name patterns (`-n`, `-t`, `--exclude-table-data`, ...): checked, and read as pg_dump
reads them so that row counts can ask the server which tables a selection names.

A pattern is written as for psql's `\\d`: outside double quotes letters fold to lower case, `*`
is any run of characters, `?` one character, `.` separates the schema from the name, `$` is
literal and other regular-expression characters keep their meaning; inside double quotes
everything is literal (`""` is one quote). `regexes` is a port of PostgreSQL's
`patternToSQLRegex` (fe_utils/string_utils.c) for patterns of one or two parts.
"""

from __future__ import annotations

from dataclasses import dataclass

_SPECIAL = set("|*+?()[]{}.^$\\")


@dataclass(frozen=True)
class NamePattern:
    """A pattern as anchored regular expressions: `schema` is None when it names no schema."""

    schema: str | None
    name: str


def problem(pattern: str, *, qualified: bool) -> str | None:
    """Returns why pg_dump must not get `pattern` (None: it may), for a table pattern when
    `qualified` (at most `schema.table`), else a schema pattern (one part)."""
    if pattern.startswith("-"):
        return f"{pattern!r} starts with '-' (pg_dump would read it as an option)"
    if "\n" in pattern or "\r" in pattern or "\0" in pattern:
        return f"{pattern!r} holds a newline or a NUL character"
    parts = len(_split(pattern))
    if parts > (2 if qualified else 1):
        wanted = "schema.table" if qualified else "a schema name (no '.')"
        return f"{pattern!r} has {parts} dot-separated parts; write at most {wanted}"
    return None


def regexes(pattern: str) -> NamePattern:
    """Returns the anchored regular expressions pg_dump matches `pattern` with (1 or 2 parts)."""
    parts = _split(pattern)
    name = parts[-1]
    schema = parts[-2] if len(parts) > 1 else None
    return NamePattern(schema, name)


def _split(pattern: str) -> list[str]:
    """Returns one anchored regular expression per dot-separated part of `pattern`."""
    parts: list[list[str]] = [[]]
    in_quotes = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        current = parts[-1]
        if ch == '"':
            if in_quotes and pattern[i + 1 : i + 2] == '"':
                current.append('"')
                i += 1
            else:
                in_quotes = not in_quotes
        elif not in_quotes and ch.isascii() and ch.isupper():
            current.append(ch.lower())
        elif not in_quotes and ch == "*":
            current.append(".*")
        elif not in_quotes and ch == "?":
            current.append(".")
        elif not in_quotes and ch == ".":
            parts.append([])
        elif ch == "$":
            current.append("\\$")  # allowed in identifiers; the pattern is anchored anyway
        elif in_quotes and ch in _SPECIAL:
            current.append("\\" + ch)
        elif ch == "[" and pattern[i + 1 : i + 2] == "]":
            current.append("\\[")  # an array type name, not a bracket expression
        else:
            current.append(ch)
        i += 1
    return ["^(" + "".join(part) + ")$" for part in parts]
