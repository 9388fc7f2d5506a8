"""Which entries of an archive's table of contents a partial restore takes (pure).

`pg_restore --list` prints one line per entry: `id; tableoid oid DESC namespace tag owner`.
A `--table s.t` takes the table, its data and what hangs off it (constraints, defaults,
triggers, policies, rules, comments and privileges, its indexes and the sequences it owns);
a `--schema s` takes the schema and everything in it. Which table an index or a sequence
belongs to, and which table a foreign key points at, is not on the line: it is read from the
SQL that `pg_restore --schema-only -f -` prints for those entries (`script_links`). A foreign
key to a table that is not restored is left out and named, so the restore does not fail on it.
The chosen lines go to `pg_restore --use-list`: the selection is pg_restore's own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from db_backup.restore.select import Relation

LIST_FILE = "selection.list"  # the --use-list file, in the restore's scratch directory
# Descriptions with spaces first, so "SEQUENCE OWNED BY" is not read as "SEQUENCE".
KNOWN_DESCS = sorted(
    (
        "TABLE DATA", "MATERIALIZED VIEW DATA", "MATERIALIZED VIEW", "FOREIGN TABLE",
        "SEQUENCE OWNED BY", "SEQUENCE SET", "FK CONSTRAINT", "CHECK CONSTRAINT",
        "ROW SECURITY", "SECURITY LABEL", "DEFAULT ACL", "INDEX ATTACH", "LARGE OBJECT",
        "BLOB METADATA", "BLOBS", "EVENT TRIGGER", "FOREIGN DATA WRAPPER", "SERVER",
        "USER MAPPING", "TEXT SEARCH CONFIGURATION", "TEXT SEARCH DICTIONARY",
        "TEXT SEARCH PARSER", "TEXT SEARCH TEMPLATE", "PUBLICATION TABLE",
        "PUBLICATION TABLES IN SCHEMA", "ACCESS METHOD", "OPERATOR CLASS", "OPERATOR FAMILY",
        "PROCEDURAL LANGUAGE", "SHELL TYPE", "STATISTICS DATA",
    ),
    key=len,
    reverse=True,
)  # fmt: skip
RELATION_DESCS = frozenset(
    {"TABLE", "TABLE DATA", "VIEW", "MATERIALIZED VIEW", "MATERIALIZED VIEW DATA",
     "FOREIGN TABLE", "ROW SECURITY"}
)  # fmt: skip
DEFINING_DESCS = frozenset({"TABLE", "VIEW", "MATERIALIZED VIEW", "FOREIGN TABLE"})
ATTACHED_DESCS = frozenset(
    {"CONSTRAINT", "CHECK CONSTRAINT", "TRIGGER", "DEFAULT", "POLICY", "RULE"}
)
SEQUENCE_DESCS = frozenset({"SEQUENCE", "SEQUENCE OWNED BY", "SEQUENCE SET"})
LABEL_DESCS = frozenset({"COMMENT", "ACL", "SECURITY LABEL"})
LINKED_DESCS = frozenset({"INDEX", "SEQUENCE", "SEQUENCE OWNED BY", "FK CONSTRAINT"})

LINE_RE = re.compile(r"^(\d+); \d+ \d+ (.*)$")
HEADER_RE = re.compile(r"^-- Name: (.*); Type: (.*); Schema: (.*); Owner: .*$", re.M)
_IDENT = r'(?:"(?:[^"]|"")+"|[^\s."(),;]+)'
_QUALIFIED = rf"({_IDENT})\.({_IDENT})"
LINK_RES = {
    "INDEX": re.compile(rf"\bINDEX\b.*?\bON (?:ONLY )?{_QUALIFIED}", re.S),
    "SEQUENCE OWNED BY": re.compile(rf"\bOWNED BY {_QUALIFIED}\.{_IDENT}"),
    "SEQUENCE": re.compile(rf"\bALTER TABLE (?:ONLY )?{_QUALIFIED} ALTER COLUMN"),
    "FK CONSTRAINT": re.compile(rf"\bREFERENCES {_QUALIFIED}"),
}


@dataclass(frozen=True)
class TocEntry:
    """One line of `pg_restore --list`: its description, `namespace tag` part and owner."""

    line: str
    dump_id: int
    desc: str
    body: str  # "<namespace> <tag>", namespace "-" when there is none
    owner: str

    def tag_in(self, schema: str) -> str | None:
        """Returns the entry's tag if it lies in `schema` (`-` for none), else None."""
        prefix = f"{schema} "
        return self.body[len(prefix) :] if self.body.startswith(prefix) else None


@dataclass
class Selection:
    """The entries a partial restore takes, and what it left out or could not find."""

    entries: list[TocEntry] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)  # tables and views it defines
    schemas: list[str] = field(default_factory=list)  # schemas it creates
    left_out: list[str] = field(default_factory=list)  # why an entry was not taken
    missing: list[str] = field(default_factory=list)  # names asked for that the archive lacks

    def list_file(self) -> str:
        """Returns the text of the `pg_restore --use-list` file."""
        return "".join(f"{entry.line}\n" for entry in self.entries)


def parse_toc(text: str) -> list[TocEntry]:
    """Returns the entries of a `pg_restore --list` output (comments and blank lines skipped)."""
    entries = []
    for line in text.splitlines():
        match = LINE_RE.match(line)
        if match is None:
            continue
        rest = match.group(2)
        desc = next((d for d in KNOWN_DESCS if rest.startswith(f"{d} ")), rest.split(" ")[0])
        body, _, owner = rest[len(desc) + 1 :].rpartition(" ")
        entries.append(TocEntry(line, int(match.group(1)), desc, body, owner))
    return entries


def linked_entries(entries: list[TocEntry], schemas: set[str]) -> list[TocEntry]:
    """Returns the entries in `schemas` whose owning or referenced table only their SQL says."""
    return [
        e
        for e in entries
        if e.desc in LINKED_DESCS and any(e.tag_in(s) is not None for s in schemas)
    ]


def script_links(script: str) -> dict[tuple[str, str, str], Relation]:
    """Returns {(desc, schema, tag): table} from the SQL of linked entries.

    For an index, an owned or identity sequence: the table it belongs to; for a foreign key:
    the table it references.
    """
    links: dict[tuple[str, str, str], Relation] = {}
    headers = list(HEADER_RE.finditer(script))
    for number, header in enumerate(headers):
        end = headers[number + 1].start() if number + 1 < len(headers) else len(script)
        tag, desc, schema = header.group(1), header.group(2), header.group(3)
        pattern = LINK_RES.get(desc)
        found = pattern.search(script, header.end(), end) if pattern else None
        if found is not None:
            links[(desc, schema, tag)] = Relation(
                _unquote(found.group(1)), _unquote(found.group(2))
            )
    return links


def _unquote(identifier: str) -> str:
    """Returns an identifier as stored: `"a""b"` -> `a"b`, `abc` -> `abc`."""
    if identifier.startswith('"') and identifier.endswith('"'):
        return identifier[1:-1].replace('""', '"')
    return identifier


def select_entries(
    entries: list[TocEntry],
    tables: list[Relation],
    schemas: list[str],
    links: dict[tuple[str, str, str], Relation],
    existing_schemas: set[str],
) -> Selection:
    """Returns what a restore of `tables` and `schemas` takes from `entries`, in archive order.

    A table's schema is created too unless `existing_schemas` (the target's) has it.
    """
    chosen = _Chooser(tables, schemas, links, existing_schemas)
    selection = Selection()
    for entry in entries:
        why_not = chosen.left_out(entry)
        if why_not:
            selection.left_out.append(why_not)
        elif chosen.takes(entry):
            selection.entries.append(entry)
    for entry in selection.entries:
        if entry.desc == "SCHEMA":
            selection.schemas.append(entry.body[2:])
        elif entry.desc in DEFINING_DESCS:
            schema = next(s for s in chosen.all_schemas if entry.tag_in(s) is not None)
            selection.relations.append(Relation(schema, entry.tag_in(schema) or ""))
    defined = set(selection.relations)
    selection.missing = [f"table {t}" for t in tables if t not in defined]
    selection.missing += [
        f"schema {s}"
        for s in schemas
        if s not in selection.schemas and not any(e.tag_in(s) is not None for e in entries)
    ]
    return selection


@dataclass
class _Chooser:
    """Answers, entry by entry, whether a partial restore takes it."""

    tables: list[Relation]
    schemas: list[str]
    links: dict[tuple[str, str, str], Relation]
    existing_schemas: set[str]

    @property
    def all_schemas(self) -> list[str]:
        """Returns the schemas asked for and those of the tables asked for."""
        return [*self.schemas, *(t.schema for t in self.tables)]

    def wanted(self, relation: Relation) -> bool:
        """Returns whether `relation` is restored (asked for, or in a schema asked for)."""
        return relation in self.tables or relation.schema in self.schemas

    def left_out(self, entry: TocEntry) -> str:
        """Returns why a foreign key of a restored table is left out ("" if it is not)."""
        if entry.desc != "FK CONSTRAINT":
            return ""
        for schema in self.all_schemas:
            tag = entry.tag_in(schema)
            if tag is None or not self._owned_by_wanted(schema, tag):
                continue
            target = self.links.get((entry.desc, schema, tag))
            if target is not None and not self.wanted(target):
                return (
                    f"left out: foreign key {tag.partition(' ')[2]} of {schema}.{tag.split(' ')[0]}"
                    f" (it references {target}, which is not restored)"
                )
        return ""

    def _owned_by_wanted(self, schema: str, tag: str) -> bool:
        """Returns whether an entry tagged `<table> <name>` in `schema` belongs to a wanted table."""
        return schema in self.schemas or any(
            t.schema == schema and tag.startswith(f"{t.name} ") for t in self.tables
        )

    def takes(self, entry: TocEntry) -> bool:
        """Returns whether the restore takes `entry`."""
        if entry.desc == "SCHEMA":
            name = entry.tag_in("-")
            return name in self.schemas or (
                name in {t.schema for t in self.tables} and name not in self.existing_schemas
            )
        if entry.desc in LABEL_DESCS and entry.tag_in("-") is not None:
            label = entry.tag_in("-") or ""
            return any(
                label == f"SCHEMA {s}"
                for s in [*self.schemas, *(t.schema for t in self.tables)]
                if s in self.schemas or s not in self.existing_schemas
            )
        if any(entry.tag_in(s) is not None for s in self.schemas):
            return True
        return any(self._takes_for(entry, table) for table in self.tables)

    def _takes_for(self, entry: TocEntry, table: Relation) -> bool:
        """Returns whether `entry` belongs to `table` (a `--table` asked for)."""
        tag = entry.tag_in(table.schema)
        if tag is None:
            return False
        name = table.name
        if entry.desc in RELATION_DESCS:
            return tag == name
        if entry.desc in ATTACHED_DESCS or entry.desc == "FK CONSTRAINT":
            return tag.startswith(f"{name} ")
        if entry.desc == "INDEX":
            return self.links.get(("INDEX", table.schema, tag)) == table
        if entry.desc in SEQUENCE_DESCS:
            return self._sequence_of(table.schema, tag) == table
        if entry.desc in LABEL_DESCS:
            kind, _, what = tag.partition(" ")
            if tag in {f"{k} {name}" for k in ("TABLE", "VIEW", "MATERIALIZED VIEW")}:
                return True
            if kind == "COLUMN":
                return what.startswith(f"{name}.")
            if kind == "CONSTRAINT":
                return what.endswith(f" ON {name}")
            if kind == "INDEX":
                return self.links.get(("INDEX", table.schema, what)) == table
            if kind == "SEQUENCE":
                return self._sequence_of(table.schema, what) == table
        return False

    def _sequence_of(self, schema: str, sequence: str) -> Relation | None:
        """Returns the table that owns `sequence` (OWNED BY, or an identity column)."""
        return self.links.get(("SEQUENCE OWNED BY", schema, sequence)) or self.links.get(
            ("SEQUENCE", schema, sequence)
        )
