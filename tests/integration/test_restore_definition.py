"""A restore recreates the database as it was: owner, encoding, locale, ACL, comment, settings.

The source database has a non-default owner, encoding LATIN1, locale C, a connection limit,
`REVOKE CONNECT FROM PUBLIC` + `GRANT CONNECT` to a role whose name needs quoting, a comment,
two `ALTER DATABASE SET` and one `ALTER ROLE IN DATABASE SET`, and a name that needs quoting
too. Every property of the restored database is read from the target's catalog (pg_database,
pg_db_role_setting, shobj_description, aclexplode) by the test's own query and compared with
the source's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunCli, Setup
from tests.integration import test_drill, test_restore
from tests.integration.test_drill import drill_reports, enable_drill
from tests.integration.test_restore import backup, databases, roles, target_args
from tests.support.pgcluster import Cluster, start_cluster, table_fingerprint

pytestmark = pytest.mark.integration
fresh = test_restore.fresh  # fixtures: a second cluster, a drill directory postgres can reach
drill_dir = test_drill.drill_dir

DB = 'Defined "DB"; x'
DB_SQL = '"Defined ""DB""; x"'
OWNER = "dd_owner"
READER = 'dd reader "q"'
READER_SQL = '"dd reader ""q"""'
COMMENT = "the 'ledger' of the café"

# The test's own reading of a database's definition, role oids turned into names.
CATALOG_SQL = """
SELECT json_build_object(
  'owner', pg_get_userbyid(d.datdba),
  'encoding', pg_encoding_to_char(d.encoding),
  'collate', d.datcollate, 'ctype', d.datctype, 'provider', d.datlocprovider,
  'icu', d.daticulocale, 'connlimit', d.datconnlimit,
  'acl', (SELECT json_agg(json_build_array(pg_get_userbyid(a.grantor),
                 CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
                 a.privilege_type, a.is_grantable)) FROM aclexplode(d.datacl) a),
  'comment', shobj_description(d.oid, 'pg_database'),
  'settings', (SELECT json_agg(json_build_array(
                 CASE WHEN s.setrole = 0 THEN '' ELSE pg_get_userbyid(s.setrole) END,
                 s.setconfig) ORDER BY s.setrole)
                 FROM pg_db_role_setting s WHERE s.setdatabase = d.oid))
FROM pg_database d WHERE d.datname = '{name}'
"""


def catalog(cluster: Cluster, name: str) -> dict[str, Any]:
    """Returns the definition of database `name` as the cluster's catalog holds it."""
    out = cluster.psql(CATALOG_SQL.format(name=name.replace("'", "''")))
    assert out, f"database {name!r} is not there"
    document: dict[str, Any] = json.loads(out)
    if document["acl"] is not None:  # the order of ACL entries carries no meaning
        document["acl"] = sorted(document["acl"])
    return document


def create_roles(cluster: Cluster, *names: str) -> None:
    for name in names:
        cluster.psql(
            f"DO $$BEGIN CREATE ROLE {name} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$"
        )


@pytest.fixture(scope="module", autouse=True)
def _shared_cluster_left_as_found(cluster: Cluster) -> Iterator[None]:
    """Drops the databases this module made in the shared cluster: later modules that back up
    `databases: all` must not meet names like `Defined "DB"; x`."""
    before = set(databases(cluster))
    yield
    for name in set(databases(cluster)) - before:
        quoted = '"' + name.replace('"', '""') + '"'
        cluster.psql(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")


@pytest.fixture(scope="module")
def defined_db(cluster: Cluster) -> str:
    """The database with every property a restore used to lose."""
    if DB in databases(cluster):
        return DB
    create_roles(cluster, OWNER, READER_SQL)
    cluster.psql(
        f"CREATE DATABASE {DB_SQL} OWNER {OWNER} ENCODING 'LATIN1' LOCALE 'C' "
        "TEMPLATE template0 CONNECTION LIMIT 12"
    )
    for statement in (
        f"REVOKE CONNECT ON DATABASE {DB_SQL} FROM PUBLIC",
        f"GRANT CONNECT ON DATABASE {DB_SQL} TO {READER_SQL}",
        f"COMMENT ON DATABASE {DB_SQL} IS 'the ''ledger'' of the café'",
        f'ALTER DATABASE {DB_SQL} SET search_path = app, "My Schema", public',
        f"ALTER DATABASE {DB_SQL} SET statement_timeout = '5min'",
        f"ALTER ROLE {READER_SQL} IN DATABASE {DB_SQL} SET work_mem = '8MB'",
    ):
        cluster.psql(statement)
    cluster.psql(
        f"CREATE SCHEMA app AUTHORIZATION {OWNER}; SET ROLE {OWNER};"
        "CREATE TABLE app.ledger (id int PRIMARY KEY, what text);"
        "INSERT INTO app.ledger SELECT i, 'café ' || i FROM generate_series(1, 200) i;"
        "RESET ROLE;",
        DB,
    )
    return DB


def restore(setup: Setup, run_cli: RunCli, target: Cluster, *extra: str) -> Any:
    return run_cli(
        "--config", str(setup.path), "restore", "--job", "nightly", "--database", DB,
        *extra, *target_args(target),
    )  # fmt: skip


def test_restore_under_its_own_name_and_another_recreates_every_property(
    setup: Setup, cluster: Cluster, run_cli: RunCli, defined_db: str, fresh: Cluster
) -> None:
    report = backup(setup, run_cli, defined_db)
    recorded = report["databaseDefinition"]
    assert recorded["owner"] == OWNER and recorded["encoding"] == "LATIN1"
    assert "'ledger'" in recorded["comment"]  # read through the database's own encoding
    source = catalog(cluster, DB)
    assert source["acl"] and source["comment"] == COMMENT and len(source["settings"]) == 2

    plan = restore(setup, run_cli, fresh, "--globals", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert f"as recorded: owner {OWNER}, encoding LATIN1, locale C" in plan.stdout
    assert "2 setting(s), 1 role setting(s), a comment, ACL of" in plan.stdout
    assert DB not in databases(fresh), "a dry run changes nothing"

    done = restore(setup, run_cli, fresh, "--globals")
    assert done.returncode == 0, done.stderr
    assert catalog(fresh, DB) == source
    assert table_fingerprint(fresh, DB) == table_fingerprint(cluster, DB)

    # Under another name (one a careless quoting would split), on the same server.
    other = "copy'; DROP DATABASE postgres; --\"x"
    done = restore(setup, run_cli, fresh, "--to-database", other)
    assert done.returncode == 0, done.stderr
    assert catalog(fresh, other) == source
    assert table_fingerprint(fresh, other) == table_fingerprint(cluster, DB)
    assert "postgres" in databases(fresh)
    reader_can = "SELECT has_database_privilege('{r}', '{d}', 'CONNECT')"
    assert fresh.psql(reader_can.format(r=READER, d=other.replace("'", "''"))) == "t"
    assert fresh.psql(reader_can.format(r=OWNER, d=other.replace("'", "''"))) == "t"
    fresh.psql("CREATE ROLE dd_stranger")
    assert fresh.psql(reader_can.format(r="dd_stranger", d=other.replace("'", "''"))) == "f"


def test_missing_owner_refuses_before_any_change_and_owner_override_succeeds(
    setup: Setup, cluster: Cluster, run_cli: RunCli, defined_db: str, fresh: Cluster
) -> None:
    backup(setup, run_cli, defined_db)
    create_roles(fresh, READER_SQL, "dd_new_owner")  # the owner is the one role missing
    before = (databases(fresh), roles(fresh))

    plan = restore(setup, run_cli, fresh, "--dry-run")
    assert plan.returncode == 1
    assert "REFUSED" in plan.stdout and "restore would be refused" in plan.stderr
    done = restore(setup, run_cli, fresh)
    assert done.returncode == 1
    assert f"owner: role {OWNER!r} does not exist" in done.stderr
    assert "--owner ROLE" in done.stderr and "--globals" in done.stderr
    assert "Traceback" not in done.stderr
    assert (databases(fresh), roles(fresh)) == before, "nothing may change before the refusal"

    ghost = restore(setup, run_cli, fresh, "--owner", "dd_ghost")
    assert ghost.returncode == 1 and "--owner: role 'dd_ghost' does not exist" in ghost.stderr
    assert (databases(fresh), roles(fresh)) == before

    done = restore(setup, run_cli, fresh, "--owner", "dd_new_owner")
    assert done.returncode == 0, done.stderr
    restored, source = catalog(fresh, DB), catalog(cluster, DB)
    assert restored["owner"] == "dd_new_owner"
    moved = json.loads(json.dumps(source["acl"]).replace(f'"{OWNER}"', '"dd_new_owner"'))
    assert sorted(restored["acl"]) == sorted(moved)
    for key in ("encoding", "collate", "ctype", "connlimit", "comment", "settings"):
        assert restored[key] == source[key], key
    tables = "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'app'"
    assert fresh.psql(tables, DB) == "dd_new_owner"
    assert table_fingerprint(fresh, DB) == table_fingerprint(cluster, DB)


def test_drill_compares_the_definition_and_passes_when_it_is_recreated(
    setup: Setup, cluster: Cluster, run_cli: RunCli, defined_db: str, drill_dir: Path
) -> None:
    setup.job()["databases"] = defined_db
    enable_drill(setup, drill_dir)
    backup(setup, run_cli, defined_db)
    done = run_cli("--config", str(setup.path), "drill", "nightly")
    assert done.returncode == 0, done.stderr
    [report] = drill_reports(setup)
    assert report["status"] == "SUCCESS", report["errorMessage"]


# --------------------------------------------------------------------------- a missing locale


@pytest.fixture(scope="module")
def locale_cluster() -> Iterator[Cluster]:
    """A cluster that can load a locale no other server here has (its own LOCPATH)."""
    if not shutil.which("localedef") or not Path("/usr/share/i18n/locales/en_US").exists():
        pytest.skip("localedef and the en_US locale source are needed")
    locales = Path(tempfile.mkdtemp(prefix="db-backup-locales-"))
    os.chmod(locales, 0o755)
    subprocess.run(
        ["localedef", "-i", "en_US", "-f", "ISO-8859-1", str(locales / "en_US.ISO-8859-1")],
        check=False,  # localedef warns (exit 1) about some definitions, yet writes the locale
        capture_output=True,
    )
    assert (locales / "en_US.ISO-8859-1").is_dir(), "localedef wrote no locale"
    for path in locales.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    started = start_cluster(env={"LOCPATH": str(locales)})
    try:
        started.psql(
            "CREATE DATABASE local_sort ENCODING 'LATIN1' LC_COLLATE 'en_US.ISO-8859-1' "
            "LC_CTYPE 'C' TEMPLATE template0"
        )
        started.psql("CREATE TABLE words AS SELECT 'w' || i AS w FROM generate_series(1, 50) i",
                     "local_sort")  # fmt: skip
        yield started
    finally:
        started.stop()
        shutil.rmtree(started.root, ignore_errors=True)
        shutil.rmtree(locales, ignore_errors=True)


def use_cluster(setup: Setup, source: Cluster, database: str) -> None:
    setup.job()["connection"] = {
        "host": str(source.socket_dir), "port": source.port, "user": "postgres",
    }  # fmt: skip
    setup.job()["databases"] = database
    setup.write()


def test_missing_locale_fails_the_drill_and_refuses_the_restore_naming_it(
    setup: Setup, run_cli: RunCli, locale_cluster: Cluster, fresh: Cluster, drill_dir: Path
) -> None:
    use_cluster(setup, locale_cluster, "local_sort")
    enable_drill(setup, drill_dir)
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 0, done.stderr

    drill = run_cli("--config", str(setup.path), "drill", "nightly")
    assert drill.returncode != 0
    [report] = drill_reports(setup)
    assert report["status"] == "FAILED"
    assert "lc_collate" in report["errorMessage"]
    assert "'en_US.ISO-8859-1' is not available" in report["errorMessage"]

    args = ("--config", str(setup.path), "restore", "--job", "nightly", "--database")
    before = databases(fresh)
    refused = run_cli(*args, "local_sort", *target_args(fresh))
    assert refused.returncode == 1
    assert "lc_collate" in refused.stderr and "--locale LOCALE" in refused.stderr
    assert databases(fresh) == before
    done = run_cli(*args, "local_sort", "--locale", "C", *target_args(fresh))
    assert done.returncode == 0, done.stderr
    restored = catalog(fresh, "local_sort")
    assert (restored["collate"], restored["ctype"], restored["encoding"]) == ("C", "C", "LATIN1")
    assert table_fingerprint(fresh, "local_sort") == table_fingerprint(locale_cluster, "local_sort")
    # Restored over as it is (--clean), the database keeps its own locale: nothing to refuse.
    again = run_cli(*args, "local_sort", "--clean", *target_args(fresh))
    assert again.returncode == 0, again.stderr
    assert catalog(fresh, "local_sort")["collate"] == "C"


def test_icu_database_round_trips_under_another_name(
    setup: Setup, cluster: Cluster, run_cli: RunCli
) -> None:
    name = "icu_sorted"
    if name not in databases(cluster):
        try:
            cluster.psql(
                f"CREATE DATABASE {name} LOCALE_PROVIDER icu ICU_LOCALE 'de-DE' LOCALE 'C.UTF-8' "
                "ENCODING 'UTF8' TEMPLATE template0"
            )
        except RuntimeError as exc:
            pytest.skip(f"this server has no ICU: {exc}")
        cluster.psql(f"ALTER DATABASE {name} SET default_text_search_config = 'pg_catalog.german'")
    report = backup(setup, run_cli, name)
    assert report["databaseDefinition"]["localeProvider"] == "icu"
    done = run_cli(
        "--config", str(setup.path), "restore", report["id"], "--to-database", "icu_copy",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    restored = catalog(cluster, "icu_copy")
    assert (restored["provider"], restored["icu"]) == ("i", "de-DE")
    assert restored == catalog(cluster, name)


def test_properties_the_target_refuses_drop_the_new_database_again(
    setup: Setup, cluster: Cluster, run_cli: RunCli, fresh: Cluster
) -> None:
    name = "suset_setting"
    if name not in databases(cluster):
        cluster.psql(f"CREATE DATABASE {name}")
        cluster.psql(f"ALTER DATABASE {name} SET log_statement = 'all'")
        cluster.psql("CREATE TABLE t AS SELECT 1 AS x", name)
    backup(setup, run_cli, name)
    # A restore by a role that may create databases but not set a superuser-only parameter.
    fresh.psql("CREATE ROLE dd_restorer LOGIN CREATEDB")
    done = run_cli(
        "--config", str(setup.path), "restore", "--job", "nightly", "--database", name,
        "--host", str(fresh.socket_dir), "--port", str(fresh.port), "--username", "dd_restorer",
        "--owner", "dd_restorer",
    )  # fmt: skip
    assert done.returncode == 1
    assert f"setting the properties of database {name!r} failed; it was dropped again" in (
        done.stderr
    )
    assert 'permission denied to set parameter "log_statement"' in done.stderr
    assert "Traceback" not in done.stderr
    assert name not in databases(fresh)
