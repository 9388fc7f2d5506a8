"""Which statements of a roles file a restore runs: parsing pg_dumpall's output and the decision."""

from __future__ import annotations

import pytest

from db_backup.restore.roles import (
    GlobalsError,
    Kind,
    classify,
    describe,
    parse_globals,
    plan_roles,
    roles_sql,
    split_statements,
    tablespaces_sql,
)

OWNER_ALTER = (
    "ALTER ROLE zz_app_owner WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN "
    "NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 5 PASSWORD 'SCRAM-SHA-256$4096:lcjt==$nue=:Rym=';"
)
# What pg_dumpall --globals-only (15) writes, a comment with `;` and a newline included.
GLOBALS = '''--
-- PostgreSQL database cluster dump
--

\\restrict hmdpkBl4r5QvjxNdtstaOrfiebXlXnh00BbJfH5vjJMIZUIqnOhxvSxqcVbLEcV

SET default_transaction_read_only = off;

SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;

--
-- Roles
--

CREATE ROLE grp;
ALTER ROLE grp WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;
COMMENT ON ROLE grp IS 'a group; with ; semicolons -- and
a newline';
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;
CREATE ROLE "zz reader ""q""";
ALTER ROLE "zz reader ""q""" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;
CREATE ROLE zz_app_owner;
@OWNER_ALTER@

--
-- User Configurations
--

ALTER ROLE zz_app_owner SET search_path TO 'app', 'public';

--
-- Role memberships
--

GRANT grp TO zz_app_owner WITH ADMIN OPTION GRANTED BY postgres;
GRANT grp TO "zz reader ""q""" GRANTED BY postgres;

--
-- Tablespaces
--

CREATE TABLESPACE fast OWNER zz_app_owner LOCATION '/srv/fast';
GRANT CREATE ON TABLESPACE fast TO grp;
CREATE TABLESPACE slow OWNER postgres LOCATION '/srv/slow';
COMMENT ON TABLESPACE slow IS 'spinning';

\\unrestrict hmdpkBl4r5QvjxNdtstaOrfiebXlXnh00BbJfH5vjJMIZUIqnOhxvSxqcVbLEcV

--
-- PostgreSQL database cluster dump complete
--

'''.replace("@OWNER_ALTER@", OWNER_ALTER)
READER = 'zz reader "q"'


def test_statements_are_split_at_semicolons_outside_quotes_and_comments() -> None:
    statements = split_statements(GLOBALS)
    assert statements[0] == "SET default_transaction_read_only = off;"
    comment = next(s for s in statements if s.startswith("COMMENT ON ROLE"))
    assert comment == "COMMENT ON ROLE grp IS 'a group; with ; semicolons -- and\na newline';"
    assert OWNER_ALTER in statements
    assert not any(s.startswith("\\") or "restrict" in s for s in statements)
    assert len(statements) == 19


def test_each_statement_is_classified_with_the_names_it_concerns() -> None:
    assert classify('CREATE ROLE "zz reader ""q""";').name == READER
    alter = classify(OWNER_ALTER)
    assert (alter.kind, alter.name) == (Kind.ROLE, "zz_app_owner")
    grant = classify('GRANT grp TO "zz reader ""q""" GRANTED BY postgres;')
    assert (grant.kind, grant.name, grant.member) == (Kind.MEMBERSHIP, "grp", READER)
    assert classify("GRANT CREATE ON TABLESPACE fast TO grp;").kind is Kind.TABLESPACE
    assert classify("ALTER ROLE x IN DATABASE shop SET work_mem TO '8MB';").name == "x"
    assert classify("GRANT SET ON PARAMETER work_mem TO grp;").kind is Kind.OTHER
    assert classify("SET client_encoding = 'UTF8';").kind is Kind.SET


@pytest.mark.parametrize(
    ("cut", "why"),
    [
        (GLOBALS.index("CREATE ROLE zz_app_owner;"), "closing line"),  # at a line boundary
        (GLOBALS.index("PASSWORD 'SCRAM") + 20, "inside a quoted string"),  # in the password
        (GLOBALS.index("PASSWORD 'SCRAM") - 1, "inside a statement"),  # before the password
        (GLOBALS.index("\\unrestrict"), "closing line"),  # only the footer is missing
        (0, "closing line"),  # an empty file
    ],
)
def test_a_roles_file_cut_short_is_refused(cut: int, why: str) -> None:
    with pytest.raises(GlobalsError, match=why):
        parse_globals(GLOBALS[:cut])


def test_a_password_never_shows_in_the_message_of_a_cut_statement() -> None:
    text = GLOBALS[: GLOBALS.index("PASSWORD 'SCRAM") + 9] + "'"
    with pytest.raises(GlobalsError) as caught:
        parse_globals(text + "\n" + GLOBALS.splitlines()[-2])
    assert "SCRAM" not in str(caught.value) and "PASSWORD" not in str(caught.value)


def test_on_a_fresh_server_every_role_but_postgres_is_created_with_its_memberships() -> None:
    plan = plan_roles(parse_globals(GLOBALS), {"postgres"}, {"pg_default", "pg_global"})
    assert plan.created == ["grp", READER, "zz_app_owner"]
    assert plan.left_alone == ["postgres"] and plan.reset == []
    assert not any("ROLE postgres" in s for s in plan.roles_script)
    assert OWNER_ALTER in plan.roles_script
    assert sum(s.startswith("GRANT grp TO") for s in plan.roles_script) == 2
    assert plan.roles_script[:3] == [
        "SET default_transaction_read_only = off;",
        "SET client_encoding = 'UTF8';",
        "SET standard_conforming_strings = on;",
    ]
    assert plan.tablespaces_created == ["fast", "slow"]
    assert plan.tablespace_script[3:] == [
        "CREATE TABLESPACE fast OWNER zz_app_owner LOCATION '/srv/fast';",
        "GRANT CREATE ON TABLESPACE fast TO grp;",
        "CREATE TABLESPACE slow OWNER postgres LOCATION '/srv/slow';",
        "COMMENT ON TABLESPACE slow IS 'spinning';",
    ]
    assert roles_sql(plan).startswith("BEGIN;\n") and roles_sql(plan).endswith("COMMIT;\n")


def test_on_a_live_server_existing_roles_and_their_memberships_are_left_alone() -> None:
    existing = {"postgres", "grp", READER, "zz_app_owner"}
    plan = plan_roles(parse_globals(GLOBALS), existing, {"fast", "slow"})
    assert plan.created == [] and plan.roles_script == [] and roles_sql(plan) == ""
    assert plan.left_alone == ["grp", "postgres", READER, "zz_app_owner"]
    assert plan.tablespaces_left_alone == ["fast", "slow"] and tablespaces_sql(plan) == ""
    assert not plan.has_work()


def test_one_missing_role_is_created_with_its_own_memberships_only() -> None:
    existing = {"postgres", "grp", "zz_app_owner"}
    plan = plan_roles(parse_globals(GLOBALS), existing, set(), skip_tablespaces=True)
    assert plan.created == [READER]
    body = plan.roles_script[3:]
    assert body == [
        'CREATE ROLE "zz reader ""q""";',
        'ALTER ROLE "zz reader ""q""" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN '
        "NOREPLICATION NOBYPASSRLS;",
        'GRANT grp TO "zz reader ""q""" GRANTED BY postgres;',
    ]
    assert plan.tablespace_script == [] and plan.tablespaces_created == []


def test_reset_sets_existing_roles_attributes_passwords_and_memberships() -> None:
    existing = {"postgres", "grp", READER, "zz_app_owner"}
    plan = plan_roles(parse_globals(GLOBALS), existing, {"fast", "slow"}, reset=True)
    assert plan.reset == ["grp", "postgres", READER, "zz_app_owner"] and plan.created == []
    assert OWNER_ALTER in plan.roles_script
    assert "ALTER ROLE zz_app_owner SET search_path TO 'app', 'public';" in plan.roles_script
    assert not any(s.startswith("CREATE ROLE") for s in plan.roles_script)
    assert sum(s.startswith("GRANT grp TO") for s in plan.roles_script) == 2


def test_statements_of_unknown_kinds_run_only_with_reset_and_are_named() -> None:
    text = GLOBALS.replace("\n--\n-- Tablespaces", "\nGRANT SET ON PARAMETER work_mem TO grp;\n--")
    default = plan_roles(parse_globals(text), {"postgres"}, set())
    assert default.skipped == ["GRANT SET ON PARAMETER"]
    assert not any("PARAMETER" in s for s in default.roles_script)
    assert any("GRANT SET ON PARAMETER" in line for line in describe(default))
    reset = plan_roles(parse_globals(text), {"postgres"}, set(), reset=True)
    assert "GRANT SET ON PARAMETER work_mem TO grp;" in reset.roles_script


def test_the_description_names_created_and_left_alone_roles() -> None:
    plan = plan_roles(parse_globals(GLOBALS), {"postgres", "grp"}, set(), skip_tablespaces=True)
    assert describe(plan) == [
        f"roles created: {READER}, zz_app_owner",
        "roles left alone (they exist; --reset-roles resets them): grp, postgres",
    ]
    assert describe(plan, done=False)[0] == f"roles to create: {READER}, zz_app_owner"


def test_role_statements_inside_strings_or_odd_names_are_not_taken_for_roles() -> None:
    text = (
        'CREATE ROLE "a$dbbackup$b";\nCOMMENT ON ROLE "a$dbbackup$b" IS \'CREATE ROLE fake;\';\n'
        "COMMENT ON ROLE \"a$dbbackup$b\" IS E'it\\'s; CREATE ROLE other;';\n"
        "--\n-- PostgreSQL database cluster dump complete\n--\n"
    )
    statements = parse_globals(text)
    assert [s.kind for s in statements] == [Kind.CREATE_ROLE, Kind.ROLE, Kind.ROLE]
    assert {s.name for s in statements} == {"a$dbbackup$b"}
    plan = plan_roles(statements, {"postgres"}, set())
    assert plan.created == ["a$dbbackup$b"] and len(plan.roles_script) == 3
