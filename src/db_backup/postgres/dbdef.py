"""A database's own definition: read from the catalog, recorded with a backup, turned into SQL.

What `CREATE DATABASE` and the statements after it decide, and `pg_restore` without `--create`
does not bring back: owner, encoding, locale (libc LC_COLLATE/LC_CTYPE, the ICU or builtin
locale), tablespace, connection limit, ACL, comment, `ALTER DATABASE ... SET` and `ALTER ROLE
... IN DATABASE ... SET`. The backup reads them from the catalog when it dumps (`capture`), the
report records them (`databaseDefinition`), a restore recreates them under any name
(`create_sql`, `properties_sql`) and a drill reads them back from the restored database
(`read_definition`) to compare.

The SQL is built here, never from text found in a dump: every name is quoted as an identifier
(`ident`) and every value as a literal (`literal`), so a name holding quotes, semicolons or
newlines stays one name. A setting's value is split as pg_dump splits it (`setting_sql`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from db_backup.config import JobConfig
from db_backup.postgres import tools as pg
from db_backup.postgres.server import Server, psql_script
from db_backup.util.execute import CommandError, run

# One JSON document per database. The pg_database row goes whole (to_jsonb) so that the
# columns each major version has (daticulocale in 15-16, datlocale from 17) are picked in
# Python; role and tablespace oids are turned into names here, on the server that has them.
READ_SQL = """
SELECT json_build_object(
  'row', to_jsonb(d) - 'datacl' - 'datfrozenxid' - 'datminmxid',
  'owner', pg_catalog.pg_get_userbyid(d.datdba),
  'encoding', pg_catalog.pg_encoding_to_char(d.encoding),
  'tablespace', (SELECT t.spcname FROM pg_catalog.pg_tablespace t WHERE t.oid = d.dattablespace),
  'acl', CASE WHEN d.datacl IS NULL THEN NULL ELSE (
    SELECT coalesce(json_agg(json_build_object(
             'grantor', pg_catalog.pg_get_userbyid(a.grantor),
             'grantee', CASE WHEN a.grantee = 0 THEN NULL
                             ELSE pg_catalog.pg_get_userbyid(a.grantee) END,
             'privilege', a.privilege_type,
             'grantable', a.is_grantable)), '[]'::json)
      FROM pg_catalog.aclexplode(d.datacl) a) END,
  'comment', pg_catalog.shobj_description(d.oid, 'pg_database'),
  'settings', (SELECT s.setconfig FROM pg_catalog.pg_db_role_setting s
                WHERE s.setdatabase = d.oid AND s.setrole = 0),
  'roleSettings', (SELECT json_object_agg(pg_catalog.pg_get_userbyid(s.setrole), s.setconfig)
                     FROM pg_catalog.pg_db_role_setting s
                    WHERE s.setdatabase = d.oid AND s.setrole <> 0))
  FROM pg_catalog.pg_database d
 WHERE d.datname = pg_catalog.current_database();
"""

PROVIDERS = {"c": "libc", "i": "icu", "b": "builtin", "d": "libc"}
PRIVILEGES = {"CREATE", "CONNECT", "TEMPORARY"}
# The settings whose value pg_dump splits into a list of quoted elements (GUC_LIST_QUOTE);
# any other value is one literal.
LIST_QUOTE_SETTINGS = {
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
}


class DefinitionError(ValueError):
    """A recorded definition that cannot be used (a report edited by hand, say)."""


@dataclass(frozen=True)
class Grant:
    """One entry of a database's ACL: `grantee` None is PUBLIC."""

    grantee: str | None
    privilege: str
    grantable: bool
    grantor: str

    def to_json(self) -> dict[str, Any]:
        """Returns the entry as the report records it."""
        return {
            "grantee": self.grantee,
            "privilege": self.privilege,
            "grantable": self.grantable,
            "grantor": self.grantor,
        }


@dataclass(frozen=True)
class DatabaseDefinition:
    """What a database is, apart from its name and its contents."""

    owner: str
    encoding: str
    collate: str
    ctype: str
    provider: str = "libc"  # libc | icu | builtin
    locale: str | None = None  # the ICU (or builtin) locale
    icu_rules: str | None = None
    tablespace: str = "pg_default"
    connection_limit: int = -1
    comment: str | None = None
    acl: tuple[Grant, ...] | None = None  # None: the default ACL (never granted nor revoked)
    settings: tuple[str, ...] = ()  # `name=value`, as pg_db_role_setting holds them
    role_settings: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Returns the definition as the report's `databaseDefinition` holds it."""
        return {
            "owner": self.owner,
            "encoding": self.encoding,
            "localeProvider": self.provider,
            "collate": self.collate,
            "ctype": self.ctype,
            "locale": self.locale,
            "icuRules": self.icu_rules,
            "tablespace": self.tablespace,
            "connectionLimit": self.connection_limit,
            "comment": self.comment,
            "acl": [g.to_json() for g in self.acl] if self.acl is not None else None,
            "settings": list(self.settings),
            "roleSettings": {role: list(s) for role, s in sorted(self.role_settings.items())},
        }

    def roles(self) -> set[str]:
        """Returns every role the definition names (owner, grantees, grantors, role settings)."""
        named = {self.owner, *self.role_settings}
        for grant in self.acl or ():
            named.add(grant.grantor)
            if grant.grantee is not None:
                named.add(grant.grantee)
        return named

    def with_owner(self, owner: str) -> DatabaseDefinition:
        """Returns the definition owned by `owner`: the old owner's grants move with it."""
        old = self.owner

        def moved(name: str | None) -> str | None:
            return owner if name == old else name

        acl = None
        if self.acl is not None:
            acl = tuple(
                replace(g, grantee=moved(g.grantee), grantor=moved(g.grantor) or owner)
                for g in self.acl
            )
        return replace(self, owner=owner, acl=acl)


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or "\0" in value:
        raise DefinitionError(f"{what}: not a name ({value!r})")
    return value


def _optional(value: object, what: str) -> str | None:
    return None if value is None else _text(value, what)


def _settings(value: object, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise DefinitionError(f"{what}: not a list of name=value settings")
    return tuple(value)


def from_json(document: object) -> DatabaseDefinition:
    """Returns the definition a report records; raises DefinitionError when it is malformed."""
    if not isinstance(document, dict):
        raise DefinitionError("databaseDefinition: not an object")
    acl = document.get("acl")
    grants = None
    if acl is not None:
        if not isinstance(acl, list):
            raise DefinitionError("databaseDefinition.acl: not a list")
        grants = tuple(_grant(entry) for entry in acl)
    role_settings = document.get("roleSettings") or {}
    if not isinstance(role_settings, dict):
        raise DefinitionError("databaseDefinition.roleSettings: not an object")
    limit = document.get("connectionLimit", -1)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < -1:
        raise DefinitionError(f"databaseDefinition.connectionLimit: {limit!r}")
    provider = document.get("localeProvider", "libc")
    if provider not in ("libc", "icu", "builtin"):
        raise DefinitionError(f"databaseDefinition.localeProvider: {provider!r}")
    comment = document.get("comment")
    if comment is not None and not isinstance(comment, str):
        raise DefinitionError("databaseDefinition.comment: not a string")
    return DatabaseDefinition(
        owner=_text(document.get("owner"), "databaseDefinition.owner"),
        encoding=_text(document.get("encoding"), "databaseDefinition.encoding"),
        collate=_text(document.get("collate"), "databaseDefinition.collate"),
        ctype=_text(document.get("ctype"), "databaseDefinition.ctype"),
        provider=provider,
        locale=_optional(document.get("locale"), "databaseDefinition.locale"),
        icu_rules=_optional(document.get("icuRules"), "databaseDefinition.icuRules"),
        tablespace=_text(document.get("tablespace", "pg_default"), "databaseDefinition.tablespace"),
        connection_limit=limit,
        comment=comment,
        acl=grants,
        settings=_settings(document.get("settings"), "databaseDefinition.settings"),
        role_settings={
            _text(role, "databaseDefinition.roleSettings"): _settings(
                value, f"databaseDefinition.roleSettings.{role}"
            )
            for role, value in role_settings.items()
        },
    )


def _grant(entry: object) -> Grant:
    if not isinstance(entry, dict):
        raise DefinitionError("databaseDefinition.acl: an entry is not an object")
    privilege = entry.get("privilege")
    if privilege not in PRIVILEGES:
        raise DefinitionError(f"databaseDefinition.acl: unknown privilege {privilege!r}")
    return Grant(
        grantee=_optional(entry.get("grantee"), "databaseDefinition.acl.grantee"),
        privilege=str(privilege),
        grantable=bool(entry.get("grantable")),
        grantor=_text(entry.get("grantor"), "databaseDefinition.acl.grantor"),
    )


def from_catalog(document: dict[str, Any]) -> DatabaseDefinition:
    """Returns the definition READ_SQL's document describes (any major version from 9.4)."""
    row = document["row"]
    provider = PROVIDERS.get(str(row.get("datlocprovider") or "c"), "libc")
    locale = row.get("datlocale") or row.get("daticulocale")
    settings = document.get("settings") or []
    return from_json(
        {
            "owner": document["owner"],
            "encoding": document["encoding"],
            "localeProvider": provider,
            "collate": row["datcollate"],
            "ctype": row["datctype"],
            "locale": locale if provider != "libc" else None,
            "icuRules": row.get("daticurules") or None,
            "tablespace": document.get("tablespace") or "pg_default",
            "connectionLimit": int(row.get("datconnlimit", -1)),
            "comment": document.get("comment"),
            "acl": _sorted_acl(document.get("acl")),
            "settings": sorted(settings),
            "roleSettings": {
                role: sorted(values)
                for role, values in (document.get("roleSettings") or {}).items()
            },
        }
    )


def _sorted_acl(acl: object) -> object:
    """Returns the ACL entries in a stable order (aclexplode gives them in storage order)."""
    if not isinstance(acl, list):
        return acl
    return sorted(acl, key=lambda g: json.dumps(g, sort_keys=True))


def _parse(out: str) -> DatabaseDefinition:
    try:
        return from_catalog(json.loads(out))
    except (ValueError, KeyError, TypeError) as exc:
        raise DefinitionError(f"the catalog's answer was not understood: {exc}") from None


def capture(job: JobConfig, env: dict[str, str], database: str) -> DatabaseDefinition:
    """Returns the definition of `database` on the job's server (raises CommandError)."""
    argv = [
        "psql",
        *pg._conn_args(job),
        pg._dbname_arg(database),
        "--no-psqlrc",
        "--tuples-only",
        "--no-align",
        "--set=ON_ERROR_STOP=1",
        "--file",
        "-",
    ]
    # UTF-8 on the wire whatever the database's encoding: the report is UTF-8 JSON.
    child = {**env, "PGCLIENTENCODING": "UTF8"}
    try:
        out = run(argv, env=child, input_bytes=READ_SQL.encode("utf-8"))
    except CommandError as exc:  # say what was being done, not which client tool did it
        what = f"reading the database's definition before pg_dump failed ({exc.program} "
        what += f"exited with status {exc.returncode})" if exc.returncode else "could not start)"
        raise CommandError(exc.program, exc.returncode, exc.stderr_tail, what) from None
    return _parse(out)


def read_definition(server: Server, database: str) -> DatabaseDefinition:
    """Returns the definition of `database` on a restore's target server (raises CommandError)."""
    return _parse(psql_script(server, database, "SET client_encoding = 'UTF8';\n" + READ_SQL))


# --------------------------------------------------------------------------- SQL


def ident(name: str) -> str:
    """Returns `name` as a quoted SQL identifier (always quoted: no keyword or case surprise)."""
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    """Returns `value` as a SQL string literal (standard_conforming_strings is set on)."""
    return "'" + value.replace("'", "''") + "'"


def split_list(value: str) -> list[str] | None:
    """Returns the elements of a list setting's value as pg_dump's SplitGUCList reads them.

    Elements are separated by commas; one in double quotes may hold anything (`""` is a quote).
    None: the value is not such a list (pg_dump then writes nothing; we write it as one literal).
    """
    names: list[str] = []
    pos, size = 0, len(value)
    while pos < size and value[pos].isspace():
        pos += 1
    if pos == size:
        return names
    while True:
        if value[pos] == '"':
            chars = []
            pos += 1
            while True:
                end = value.find('"', pos)
                if end < 0:
                    return None
                chars.append(value[pos:end])
                if value[end + 1 : end + 2] != '"':
                    break
                chars.append('"')
                pos = end + 2
            names.append("".join(chars))
            pos = end + 1
        else:
            start = pos
            while pos < size and value[pos] != "," and not value[pos].isspace():
                pos += 1
            if pos == start:
                return None
            names.append(value[start:pos])
        while pos < size and value[pos].isspace():
            pos += 1
        if pos == size:
            return names
        if value[pos] != ",":
            return None
        pos += 1
        while pos < size and value[pos].isspace():
            pos += 1


def setting_sql(setting: str) -> str:
    """Returns `SET name TO value` for one `name=value` of pg_db_role_setting, as pg_dump does."""
    name, value = setting.split("=", 1)
    elements = split_list(value) if name.lower() in LIST_QUOTE_SETTINGS else None
    values = ", ".join(literal(e) for e in elements) if elements is not None else literal(value)
    return f"SET {ident(name)} TO {values}"


def create_sql(definition: DatabaseDefinition, name: str, tablespaces: bool = True) -> str:
    """Returns the CREATE DATABASE of `name` as `definition` says (from template0)."""
    options = [
        f"OWNER = {ident(definition.owner)}",
        "TEMPLATE = template0",
        f"ENCODING = {literal(definition.encoding)}",
    ]
    if definition.provider != "libc":
        options.append(f"LOCALE_PROVIDER = {definition.provider}")
    options += [
        f"LC_COLLATE = {literal(definition.collate)}",
        f"LC_CTYPE = {literal(definition.ctype)}",
    ]
    if definition.provider == "icu" and definition.locale is not None:
        options.append(f"ICU_LOCALE = {literal(definition.locale)}")
    if definition.provider == "icu" and definition.icu_rules is not None:
        options.append(f"ICU_RULES = {literal(definition.icu_rules)}")
    if definition.provider == "builtin" and definition.locale is not None:
        options.append(f"BUILTIN_LOCALE = {literal(definition.locale)}")
    if tablespaces and definition.tablespace != "pg_default":
        options.append(f"TABLESPACE = {ident(definition.tablespace)}")
    return f"CREATE DATABASE {ident(name)} WITH {' '.join(options)};\n"


def properties_sql(definition: DatabaseDefinition, name: str) -> str:
    """Returns what follows the data: connection limit, settings, role settings, comment, ACL.

    They come after pg_restore, as in pg_dump's own order of work only where it is safe: a
    `default_transaction_read_only` or a connection limit set first would stop the restore.
    """
    db = ident(name)
    lines = []
    if definition.connection_limit != -1:
        lines.append(f"ALTER DATABASE {db} CONNECTION LIMIT = {int(definition.connection_limit)};")
    lines += [f"ALTER DATABASE {db} {setting_sql(s)};" for s in definition.settings]
    for role, settings in sorted(definition.role_settings.items()):
        lines += [f"ALTER ROLE {ident(role)} IN DATABASE {db} {setting_sql(s)};" for s in settings]
    if definition.comment is not None:
        lines.append(f"COMMENT ON DATABASE {db} IS {literal(definition.comment)};")
    if definition.acl is not None:
        lines += acl_sql(definition, db)
    return "".join(f"{line}\n" for line in lines)


def acl_sql(definition: DatabaseDefinition, db: str) -> list[str]:
    """Returns the REVOKEs and GRANTs that give database `db` (quoted) the recorded ACL.

    The owner's grants come first (others may rest on a grant option); a grant by another
    role is made as that role, so the grantor is the recorded one.
    """
    acl = definition.acl or ()
    lines = [f"REVOKE ALL ON DATABASE {db} FROM PUBLIC;"]
    lines.append(f"REVOKE ALL ON DATABASE {db} FROM {ident(definition.owner)};")
    ordered = sorted(acl, key=lambda g: (g.grantor != definition.owner, g.grantor))
    for grant in ordered:
        grantee = "PUBLIC" if grant.grantee is None else ident(grant.grantee)
        option = " WITH GRANT OPTION" if grant.grantable else ""
        statement = f"GRANT {grant.privilege} ON DATABASE {db} TO {grantee}{option};"
        if grant.grantor != definition.owner:
            statement = f"SET ROLE {ident(grant.grantor)}; {statement} RESET ROLE;"
        lines.append(statement)
    return lines


SCRIPT_HEAD = "SET client_encoding = 'UTF8';\nSET standard_conforming_strings = on;\n"


def apply_sql(server: Server, sql: str, database: str = "postgres") -> None:
    """Runs definition SQL on the target server, connected to `database`; raises CommandError.

    The properties are set from inside the restored database: the shared catalogs keep a
    comment's bytes as the session's database encoding gives them, so writing them from a
    database of the source's encoding gives back the source's bytes (as they were read).
    """
    psql_script(server, database, SCRIPT_HEAD + sql)
