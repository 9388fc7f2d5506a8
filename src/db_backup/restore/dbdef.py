"""The database definition on the day of the restore: can the target honour it, and did it?

A backup's report records its database's definition (postgres.dbdef). Before a restore touches
anything, `check_target` reads what the target server has (roles, tablespaces, whether it can
load each locale) and `definition_problems` decides, as a pure function, what it cannot honour:
each problem names the property and the way out (`--owner`, `--locale`, `--globals`,
`--no-tablespaces`). The restore then creates the database as recorded (`create_recorded`) and,
after the data, sets the rest (`apply_properties`). A drill compares the restored database's
definition with the recorded one (`differences`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from db_backup.postgres.dbdef import (
    DatabaseDefinition,
    DefinitionError,
    apply_sql,
    create_sql,
    from_json,
    literal,
    properties_sql,
)
from db_backup.postgres.server import Server, psql_script
from db_backup.util.execute import CommandError

ALWAYS_THERE = {"C", "POSIX"}  # libc locales every server has


@dataclass(frozen=True)
class TargetFacts:
    """What the target server has, as far as a definition needs it."""

    roles: frozenset[str]
    tablespaces: frozenset[str]
    # (provider, locale) -> None when the server loads it, else the server's error.
    locales: dict[tuple[str, str], str | None]


@dataclass(frozen=True)
class DefinitionPlan:
    """The definition a restore will give the database, and what stops it (if anything)."""

    definition: DatabaseDefinition | None  # None: the backup recorded none
    problems: tuple[str, ...] = ()
    note: str = ""  # why no definition is applied, when none is

    @property
    def refused(self) -> bool:
        """Returns True when the target cannot honour the definition."""
        return bool(self.problems)

    def refusal(self) -> str:
        """Returns the message of a refused restore."""
        problems = "; ".join(self.problems)
        return f"the target server cannot recreate the database as it was: {problems}"

    def check_text(self, where: str) -> str:
        """Returns the plan's line for the check."""
        if self.definition is None:
            return f"check the database definition: {self.note}"
        if self.problems:
            return f"check the database definition on {where}: REFUSED: {'; '.join(self.problems)}"
        return f"check the database definition on {where}: roles, tablespace and locales are there"

    def create_text(self, database: str) -> str:
        """Returns the plan's words for creating `database` as recorded."""
        d = self.definition
        if d is None:
            return f"create database {database!r} with the server's defaults"
        locale = d.collate if d.collate == d.ctype else f"{d.collate}/{d.ctype}"
        if d.provider != "libc":
            locale += f", {d.provider} locale {d.locale}"
        return (
            f"create database {database!r} as recorded: owner {d.owner}, encoding "
            f"{d.encoding}, locale {locale}, tablespace {d.tablespace}"
        )

    def properties_text(self, database: str) -> str:
        """Returns the plan's line for the properties set after the data."""
        d = self.definition
        assert d is not None
        parts = [
            f"connection limit {d.connection_limit}",
            f"{len(d.settings)} setting(s)",
            f"{sum(len(s) for s in d.role_settings.values())} role setting(s)",
            "a comment" if d.comment is not None else "no comment",
            f"ACL of {len(d.acl)} entries" if d.acl is not None else "the default ACL",
        ]
        return f"set the properties of database {database!r} as recorded: {', '.join(parts)}"


# --------------------------------------------------------------------------- decisions


def recorded(report: dict[str, Any] | None) -> DatabaseDefinition | None:
    """Returns the definition a backup report records (None: made before it was recorded)."""
    document = (report or {}).get("databaseDefinition")
    if document is None:
        return None
    return from_json(document)


def effective(
    definition: DatabaseDefinition, owner: str | None, locale: str | None
) -> DatabaseDefinition:
    """Returns `definition` with the restore's overrides: `--owner ROLE`, `--locale LOCALE`."""
    if owner is not None and owner != definition.owner:
        definition = definition.with_owner(owner)
    if locale is not None:
        provider_locale = locale if definition.provider != "libc" else definition.locale
        definition = replace(definition, collate=locale, ctype=locale, locale=provider_locale)
    return definition


def locales_to_probe(definition: DatabaseDefinition) -> list[tuple[str, str]]:
    """Returns the (provider, locale) pairs the target must be able to load."""
    wanted = [("libc", definition.collate), ("libc", definition.ctype)]
    if definition.provider == "icu" and definition.locale is not None:
        wanted.append(("icu", definition.locale))
    pairs = [p for p in wanted if not (p[0] == "libc" and p[1] in ALWAYS_THERE)]
    return list(dict.fromkeys(pairs))


def definition_problems(
    definition: DatabaseDefinition,
    facts: TargetFacts,
    *,
    owner_given: bool,
    locale_given: bool,
    roles_restored: bool,
    skip_tablespaces: bool,
) -> list[str]:
    """Returns what the target cannot honour, each naming the property and the way out.

    `roles_restored`: --globals will create the backup's roles and tablespaces first, so
    those are not asked of the server as it is now.
    """
    problems = []
    if not roles_restored and definition.owner not in facts.roles:
        if owner_given:
            problems.append(f"--owner: role {definition.owner!r} does not exist")
        else:
            problems.append(
                f"owner: role {definition.owner!r} does not exist; give the database "
                "another owner with --owner ROLE, or restore the roles first with --globals"
            )
    if not roles_restored:
        missing = sorted(definition.roles() - facts.roles - {definition.owner})
        for role in missing:
            what = "role settings" if role in definition.role_settings else "ACL"
            problems.append(
                f"{what}: role {role!r} does not exist; restore the roles first with --globals"
            )
    if (
        definition.tablespace != "pg_default"
        and not skip_tablespaces
        and not roles_restored
        and definition.tablespace not in facts.tablespaces
    ):
        problems.append(
            f"tablespace: {definition.tablespace!r} does not exist; restore it with --globals, "
            "or leave tablespaces out with --no-tablespaces"
        )
    names = {"collate": definition.collate, "ctype": definition.ctype}
    for (provider, locale), error in sorted(facts.locales.items()):
        if error is None:
            continue
        if provider == "icu":
            prop = "icu_locale"
        else:
            prop = "/".join(f"lc_{k}" for k, v in names.items() if v == locale) or "locale"
        way = "" if locale_given else "choose one it has with --locale LOCALE, or "
        problems.append(
            f"{prop}: {provider} locale {locale!r} is not available on the target ({error}); "
            f"{way}restore onto a server that has it"
        )
    return problems


def differences(recorded_def: DatabaseDefinition, restored: DatabaseDefinition) -> list[str]:
    """Returns each property of the restored database that is not the recorded one."""
    want, got = recorded_def.to_json(), restored.to_json()
    if want["acl"] is not None and got["acl"] is not None:
        key = sorted  # the order of ACL entries carries no meaning
        want["acl"] = key(want["acl"], key=repr)
        got["acl"] = key(got["acl"], key=repr)
    return [
        f"{name} (recorded {want[name]!r}, restored {got[name]!r})"
        for name in want
        if want[name] != got[name]
    ]


# --------------------------------------------------------------------------- effects


def probe_locale(server: Server, provider: str, locale: str) -> str | None:
    """Returns None when the server can load `locale`, else its error.

    A collation is created in a transaction that is rolled back: the server loads the locale
    as CREATE DATABASE would, and nothing of it stays.
    """
    script = (
        "BEGIN;\n"
        f"CREATE COLLATION pg_temp.db_backup_probe (provider = {provider}, "
        f"locale = {literal(locale)});\n"
        "ROLLBACK;\n"
    )
    try:
        psql_script(server, "postgres", script)
    except CommandError as exc:
        text = str(exc)
        return text.split("ERROR:", 1)[-1].strip().splitlines()[0] if text else "refused"
    return None


def target_facts(server: Server, definition: DatabaseDefinition) -> TargetFacts:
    """Returns what the target server has of what `definition` names (reads only)."""
    roles = psql_script(server, "postgres", "SELECT rolname FROM pg_roles;\n", nul_separated=True)
    spaces = psql_script(
        server, "postgres", "SELECT spcname FROM pg_tablespace;\n", nul_separated=True
    )
    return TargetFacts(
        roles=frozenset(r.lstrip("\n") for r in roles.split("\0") if r.strip("\n")),
        tablespaces=frozenset(t.lstrip("\n") for t in spaces.split("\0") if t.strip("\n")),
        locales={p: probe_locale(server, *p) for p in locales_to_probe(definition)},
    )


def check_target(
    server: Server,
    report: dict[str, Any] | None,
    *,
    owner: str | None = None,
    locale: str | None = None,
    roles_restored: bool = False,
    skip_tablespaces: bool = False,
) -> DefinitionPlan:
    """Returns the definition the restore will apply and what the target cannot honour."""
    try:
        definition = recorded(report)
    except DefinitionError as exc:
        return DefinitionPlan(None, (f"the backup report's database definition: {exc}",))
    if definition is None:
        note = (
            "the backup records no database definition (made before it was recorded): "
            "the database gets the server's defaults"
        )
        return DefinitionPlan(None, note=note)
    definition = effective(definition, owner, locale)
    facts = target_facts(server, definition)
    problems = definition_problems(
        definition,
        facts,
        owner_given=owner is not None,
        locale_given=locale is not None,
        roles_restored=roles_restored,
        skip_tablespaces=skip_tablespaces,
    )
    return DefinitionPlan(definition, tuple(problems))


def create_recorded(
    server: Server,
    plan: DefinitionPlan,
    database: str,
    skip_tablespaces: bool = False,
    owner: str | None = None,
) -> None:
    """Creates `database` as the plan's definition says (server defaults without one).

    `owner` (--owner) matters only without a definition: a definition has it applied already.
    """
    if plan.definition is None:
        owned = ' OWNER :"owner"' if owner is not None else ""
        psql_script(
            server,
            "postgres",
            f'CREATE DATABASE :"name"{owned} TEMPLATE template0;\n',
            {"name": database, **({"owner": owner} if owner is not None else {})},
        )
        return
    apply_sql(server, create_sql(plan.definition, database, not skip_tablespaces))


def apply_properties(server: Server, plan: DefinitionPlan, database: str) -> None:
    """Sets what follows the data: connection limit, settings, comment, ACL (raises CommandError)."""
    if plan.definition is not None:
        apply_sql(server, properties_sql(plan.definition, database), database)
