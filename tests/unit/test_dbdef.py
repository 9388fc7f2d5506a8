"""The database definition: its record, the SQL that recreates it, and the decisions around it."""

from __future__ import annotations

from pathlib import Path

import pytest

from db_backup.config import Connection
from db_backup.postgres.dbdef import (
    DatabaseDefinition,
    DefinitionError,
    Grant,
    create_sql,
    from_catalog,
    from_json,
    properties_sql,
    setting_sql,
    split_list,
)
from db_backup.postgres.server import Server
from db_backup.restore.dbdef import (
    DefinitionPlan,
    TargetFacts,
    definition_problems,
    differences,
    effective,
    locales_to_probe,
    recorded,
)
from db_backup.restore.drill_report import verdict
from db_backup.restore.plan import Action, plan_restore
from db_backup.restore.source import BackupSource
from db_backup.restore.steps import RestoreOptions, restore_argv

OWNER = 'app "owner"'
DEFINITION = DatabaseDefinition(
    owner=OWNER,
    encoding="LATIN1",
    collate="de_DE.ISO-8859-1",
    ctype="C",
    connection_limit=7,
    comment="it's the ledger",
    acl=(
        Grant(None, "TEMPORARY", False, OWNER),
        Grant(OWNER, "CONNECT", False, OWNER),
        Grant(OWNER, "CREATE", False, OWNER),
        Grant("reader", "CONNECT", True, OWNER),
        Grant("clerk", "CONNECT", False, "reader"),
    ),
    settings=('search_path=app, "My Schema", public', "statement_timeout=5s"),
    role_settings={"reader": ("work_mem=8MB",)},
)
ALL_ROLES = frozenset({OWNER, "reader", "clerk", "postgres"})
FACTS = TargetFacts(ALL_ROLES, frozenset({"pg_default"}), {})


def problems(facts: TargetFacts = FACTS, definition: DatabaseDefinition = DEFINITION, **kw: bool):
    options = {"owner_given": False, "locale_given": False, "roles_restored": False}
    options["skip_tablespaces"] = False
    options.update(kw)
    return definition_problems(definition, facts, **options)


# --------------------------------------------------------------------------- the SQL


@pytest.mark.parametrize(
    ("value", "elements"),
    [
        ('app, "My Schema", public', ["app", "My Schema", "public"]),
        ('""', [""]),
        ('"a""b", c', ['a"b', "c"]),
        ("", []),
        ('"open', None),
        ("a b", None),
        ("a,,b", None),
    ],
)
def test_list_settings_are_split_as_pg_dump_splits_them(value: str, elements: object) -> None:
    assert split_list(value) == elements


def test_settings_become_quoted_set_clauses() -> None:
    assert setting_sql('search_path=app, "My Schema"') == (
        "SET \"search_path\" TO 'app', 'My Schema'"
    )
    assert setting_sql("statement_timeout=5s") == "SET \"statement_timeout\" TO '5s'"
    assert setting_sql("app.x=it's; DROP x") == "SET \"app.x\" TO 'it''s; DROP x'"
    assert setting_sql("DateStyle=ISO, MDY") == "SET \"DateStyle\" TO 'ISO, MDY'"


def test_create_quotes_every_name_and_value() -> None:
    sql = create_sql(DEFINITION, 'x"; DROP DATABASE postgres; --')
    assert sql == (
        'CREATE DATABASE "x""; DROP DATABASE postgres; --" WITH OWNER = "app ""owner""" '
        "TEMPLATE = template0 ENCODING = 'LATIN1' LC_COLLATE = 'de_DE.ISO-8859-1' "
        "LC_CTYPE = 'C';\n"
    )
    icu = DatabaseDefinition("o", "UTF8", "C", "C", provider="icu", locale="de-DE", tablespace="t")
    assert "LOCALE_PROVIDER = icu" in create_sql(icu, "d")
    assert "ICU_LOCALE = 'de-DE'" in create_sql(icu, "d")
    assert 'TABLESPACE = "t"' in create_sql(icu, "d")
    assert "TABLESPACE" not in create_sql(icu, "d", tablespaces=False)


def test_properties_follow_the_record_in_order() -> None:
    lines = properties_sql(DEFINITION, "new db").splitlines()
    assert lines == [
        'ALTER DATABASE "new db" CONNECTION LIMIT = 7;',
        "ALTER DATABASE \"new db\" SET \"search_path\" TO 'app', 'My Schema', 'public';",
        'ALTER DATABASE "new db" SET "statement_timeout" TO \'5s\';',
        'ALTER ROLE "reader" IN DATABASE "new db" SET "work_mem" TO \'8MB\';',
        "COMMENT ON DATABASE \"new db\" IS 'it''s the ledger';",
        'REVOKE ALL ON DATABASE "new db" FROM PUBLIC;',
        'REVOKE ALL ON DATABASE "new db" FROM "app ""owner""";',
        'GRANT TEMPORARY ON DATABASE "new db" TO PUBLIC;',
        'GRANT CONNECT ON DATABASE "new db" TO "app ""owner""";',
        'GRANT CREATE ON DATABASE "new db" TO "app ""owner""";',
        'GRANT CONNECT ON DATABASE "new db" TO "reader" WITH GRANT OPTION;',
        'SET ROLE "reader"; GRANT CONNECT ON DATABASE "new db" TO "clerk"; RESET ROLE;',
    ]


def test_a_default_definition_sets_nothing_after_the_data() -> None:
    assert properties_sql(DatabaseDefinition("o", "UTF8", "C", "C"), "d") == ""


def test_the_record_round_trips_and_refuses_what_it_cannot_use() -> None:
    assert from_json(DEFINITION.to_json()) == DEFINITION
    bad: object
    for bad in (
        [],
        {**DEFINITION.to_json(), "owner": ""},
        {**DEFINITION.to_json(), "connectionLimit": "7"},
        {**DEFINITION.to_json(), "localeProvider": "other"},
        {**DEFINITION.to_json(), "acl": [{"privilege": "ALL", "grantor": "x"}]},
        {**DEFINITION.to_json(), "settings": ["no equals sign"]},
    ):
        with pytest.raises(DefinitionError):
            from_json(bad)
    assert recorded({"status": "SUCCESS"}) is None


def test_the_catalog_row_of_each_major_version_is_read() -> None:
    base = {"owner": "o", "encoding": "UTF8", "acl": None, "comment": None}
    row15 = {"datcollate": "C", "datctype": "C", "datlocprovider": "i", "daticulocale": "und"}
    row17 = {"datcollate": "C", "datctype": "C", "datlocprovider": "b", "datlocale": "C.UTF-8"}
    assert from_catalog({**base, "row": row15}).locale == "und"
    assert from_catalog({**base, "row": row17}).provider == "builtin"
    old = from_catalog({**base, "row": {"datcollate": "C", "datctype": "C"}})
    assert (old.provider, old.locale, old.connection_limit) == ("libc", None, -1)


# --------------------------------------------------------------------------- decisions


def test_owner_override_moves_the_owners_grants_and_locale_override_both_locales() -> None:
    moved = effective(DEFINITION, "new", "C")
    assert moved.owner == "new" and (moved.collate, moved.ctype) == ("C", "C")
    assert Grant("new", "CONNECT", False, "new") in (moved.acl or ())
    assert Grant("clerk", "CONNECT", False, "reader") in (moved.acl or ())
    assert OWNER not in moved.roles()


def test_locales_probed_are_the_ones_that_may_be_missing() -> None:
    assert locales_to_probe(DEFINITION) == [("libc", "de_DE.ISO-8859-1")]
    icu = DatabaseDefinition("o", "UTF8", "en_US.UTF-8", "en_US.UTF-8", "icu", "de-DE")
    assert locales_to_probe(icu) == [("libc", "en_US.UTF-8"), ("icu", "de-DE")]


def test_a_target_that_has_everything_raises_nothing() -> None:
    assert problems() == []


def test_a_missing_owner_names_the_property_and_both_ways_out() -> None:
    facts = TargetFacts(ALL_ROLES - {OWNER}, frozenset(), {})
    [problem] = problems(facts)
    assert problem.startswith(f"owner: role {OWNER!r} does not exist")
    assert "--owner ROLE" in problem and "--globals" in problem
    assert problems(facts, roles_restored=True) == []
    [given] = problems(facts, owner_given=True)
    assert given == f"--owner: role {OWNER!r} does not exist"


def test_missing_grantees_role_settings_and_tablespace_are_named() -> None:
    definition = DatabaseDefinition(
        "o", "UTF8", "C", "C", tablespace="fast", role_settings={"gone": ("work_mem=1MB",)}
    )
    facts = TargetFacts(frozenset({"o"}), frozenset({"pg_default"}), {})
    found = problems(facts, definition)
    assert found[0].startswith("role settings: role 'gone' does not exist")
    assert found[1].startswith("tablespace: 'fast' does not exist")
    assert "--no-tablespaces" in found[1]
    assert problems(facts, definition, skip_tablespaces=True) == found[:1]
    [acl] = problems(TargetFacts(ALL_ROLES - {"clerk"}, frozenset(), {}))
    assert acl.startswith("ACL: role 'clerk' does not exist")


def test_a_locale_the_server_cannot_load_names_the_property() -> None:
    facts = TargetFacts(ALL_ROLES, frozenset(), {("libc", "de_DE.ISO-8859-1"): "no such locale"})
    [problem] = problems(facts)
    assert problem.startswith("lc_collate: libc locale 'de_DE.ISO-8859-1' is not available")
    assert "(no such locale)" in problem and "--locale LOCALE" in problem
    [given] = problems(facts, locale_given=True)
    assert "--locale" not in given
    both = DatabaseDefinition("o", "UTF8", "xx", "xx")
    [problem] = problems(TargetFacts(frozenset({"o"}), frozenset(), {("libc", "xx"): "e"}), both)
    assert problem.startswith("lc_collate/lc_ctype:")


def test_differences_name_each_property_and_ignore_acl_order() -> None:
    shuffled = DatabaseDefinition(**{**DEFINITION.__dict__, "acl": DEFINITION.acl[::-1]})  # type: ignore[index]
    assert differences(DEFINITION, shuffled) == []
    other = DatabaseDefinition(**{**DEFINITION.__dict__, "collate": "C", "comment": None})
    found = differences(DEFINITION, other)
    assert [f.split(" ")[0] for f in found] == ["collate", "comment"]
    assert "recorded 'de_DE.ISO-8859-1', restored 'C'" in found[0]


def test_a_drill_whose_definition_differs_fails_naming_it() -> None:
    status, message = verdict([], [], ["collate (recorded 'x', restored 'C')"])
    assert status == "FAILED" and "database definition differs: collate" in message
    assert verdict([], [], [])[0] == "SUCCESS"


# --------------------------------------------------------------------------- the plan


SERVER = Server(Connection("/run/pg", 5432, "postgres", None, 10), {})
SOURCE = BackupSource("d_20260101T000000Z_h.dump", "custom", "d", "a" * 64, local_dir=Path("/x"))


def test_the_plan_checks_first_creates_as_recorded_and_sets_properties_last() -> None:
    plan = DefinitionPlan(DEFINITION)
    steps = plan_restore(SOURCE, SERVER, RestoreOptions(), definition=plan)
    assert steps[0].action is Action.CHECK_DEFINITION
    assert "roles, tablespace and locales are there" in steps[0].text
    [create] = [s.text for s in steps if s.action is Action.PREPARE_DATABASE]
    assert f"as recorded: owner {OWNER}, encoding LATIN1, locale de_DE.ISO-8859-1/C" in create
    assert steps[-1].action is Action.DATABASE_PROPERTIES
    assert "2 setting(s), 1 role setting(s), a comment, ACL of 5 entries" in steps[-1].text
    refused = DefinitionPlan(DEFINITION, ("owner: role 'x' does not exist",))
    first = plan_restore(SOURCE, SERVER, RestoreOptions(), definition=refused)[0]
    assert "REFUSED: owner: role 'x' does not exist" in first.text
    assert refused.refusal().endswith("owner: role 'x' does not exist")


def test_owner_override_restores_the_objects_as_that_role() -> None:
    argv = restore_argv(SERVER, SOURCE, Path("/x/d.dump"), "d", RestoreOptions(owner="app"))
    assert "--no-owner" in argv and "--role=app" in argv
