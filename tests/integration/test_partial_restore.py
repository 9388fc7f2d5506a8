"""Partial and point-in-time restore (issue 20 item 6) and the restore refusals of issue 21 item 8.

A job takes three backups of database `parts`, with rows changed in between, in the time zone
Asia/Shanghai; `--table`, `--schema`, `--data-only`, `--list` and `--before` are run against
that history with the real pg_restore into the session cluster.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import CLI, RunCli, Setup
from tests.integration.test_encryption import AgeKey, encrypt_to, keys  # noqa: F401
from tests.support.pgcluster import Cluster, table_fingerprint

pytestmark = pytest.mark.integration

DB = "parts"
ZONE = "Asia/Shanghai"
SCHEMA_SQL = """
CREATE SCHEMA app;
CREATE TABLE app.accounts (id int PRIMARY KEY, name text NOT NULL);
CREATE INDEX accounts_name ON app.accounts (name);
COMMENT ON TABLE app.accounts IS 'the accounts';
CREATE TABLE app.events (id bigserial PRIMARY KEY, account int REFERENCES app.accounts(id),
                         what text);
CREATE TABLE public.notes (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text);
CREATE SCHEMA audit;
CREATE TABLE audit.log (id serial PRIMARY KEY, msg text);
"""


def change(cluster: Cluster, version: int) -> None:
    """Brings `parts` to `version`: 10 x version accounts, notes saying v<version>."""
    cluster.psql(
        f"INSERT INTO app.accounts SELECT i, 'account ' || i FROM generate_series(1, {10 * version}) i "
        "ON CONFLICT DO NOTHING;"
        f"INSERT INTO app.events (account, what) VALUES ({version}, 'v{version}');"
        f"DELETE FROM public.notes; INSERT INTO public.notes (body) VALUES ('v{version}');"
        f"INSERT INTO audit.log (msg) VALUES ('v{version}');",
        DB,
    )


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Runs the installed db-backup (JSON logs on stderr)."""
    env = {"PATH": "/usr/bin:/bin", "DB_BACKUP_LOG_FORMAT": "json"}
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def history(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """A job `nightly` (zone Asia/Shanghai) with three SUCCESS backups of `parts`: v1, v2, v3."""
    root = tmp_path_factory.mktemp("history")
    cluster.psql(f"DROP DATABASE IF EXISTS {DB}")
    cluster.psql(f"CREATE DATABASE {DB}")
    cluster.psql(SCHEMA_SQL, DB)
    document: dict[str, Any] = {
        "run_as": None,
        "directories": {k: str(root / k) for k in ("data", "reports", "state")},
        "storage": {"mode": "local"},
        "jobs": [
            {
                "name": "nightly",
                "schedule": "0 2 * * *",
                "timezone": ZONE,
                "databases": DB,
                "connection": {
                    "host": str(cluster.socket_dir),
                    "port": cluster.port,
                    "user": "postgres",
                },
            }
        ],
    }
    made = Setup(
        root, root / "config.yaml", root / "data", root / "reports", root / "state", document
    )
    made.write()
    for version in (1, 2, 3):
        change(cluster, version)
        done = cli("--config", str(made.path), "run", "nightly")
        assert done.returncode == 0, done.stderr
        time.sleep(1.2)  # start times a second apart: --before at second precision
    yield made
    shutil.rmtree(root, ignore_errors=True)


def reports(setup: Setup) -> list[dict[str, Any]]:
    """Returns the three reports, oldest first."""
    found = sorted(setup.reports_json(), key=lambda r: r["startedAt"])
    assert [r["status"] for r in found] == ["SUCCESS"] * 3
    return found


def fresh(cluster: Cluster, name: str) -> str:
    cluster.psql(f'DROP DATABASE IF EXISTS "{name}"')
    return name


def relations(cluster: Cluster, database: str) -> set[str]:
    out = cluster.psql(
        "SELECT schemaname || '.' || tablename FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
        database,
    )
    return set(out.split()) if out else set()


def databases(cluster: Cluster) -> set[str]:
    return set(cluster.psql("SELECT datname FROM pg_database").split("\n"))


def restore(setup: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    return cli("--config", str(setup.path), "restore", "--job", "nightly", "--database", DB, *args)


def test_table_restores_that_table_with_its_index_and_comment_and_nothing_else(
    history: Setup, cluster: Cluster
) -> None:
    target = fresh(cluster, "parts_table")
    done = restore(history, "--table", "app.accounts", "--to-database", target)
    assert done.returncode == 0, done.stderr
    assert relations(cluster, target) == {"app.accounts"}
    assert cluster.psql("SELECT count(*) FROM app.accounts", target) == "30"
    indexes = cluster.psql("SELECT string_agg(indexname, ',' ORDER BY 1) FROM pg_indexes "
                           "WHERE schemaname = 'app'", target)  # fmt: skip
    assert indexes == "accounts_name,accounts_pkey"
    assert cluster.psql("SELECT obj_description('app.accounts'::regclass)", target) == (
        "the accounts"
    )
    # A table whose foreign key points at a table not restored: the key is left out and said.
    other = fresh(cluster, "parts_events")
    events = restore(
        history, "--table=app.events", "--table", "public.notes", "--to-database", other
    )
    assert events.returncode == 0, events.stderr
    assert relations(cluster, other) == {"app.events", "public.notes"}
    assert "events_account_fkey" in events.stdout and "app.accounts" in events.stdout
    # Its own sequence came along: a new row gets the next id.
    inserted = cluster.psql("INSERT INTO app.events (what) VALUES ('x') RETURNING id", other)
    assert inserted.splitlines()[0] == "4"
    assert cluster.psql("SELECT body FROM public.notes", other) == "v3"


def test_schema_restores_one_schema(history: Setup, cluster: Cluster) -> None:
    target = fresh(cluster, "parts_schema")
    done = restore(history, "--schema", "audit", "--to-database", target)
    assert done.returncode == 0, done.stderr
    assert relations(cluster, target) == {"audit.log"}
    assert cluster.psql("SELECT string_agg(msg, ',' ORDER BY id) FROM audit.log", target) == (
        "v1,v2,v3"
    )
    missing = restore(history, "--schema", "nosuch", "--to-database", fresh(cluster, "parts_x"))
    assert missing.returncode == 1 and "no schema nosuch" in missing.stderr
    assert "parts_x" not in databases(cluster)


def test_data_only_fills_a_database_whose_schema_is_there(history: Setup, cluster: Cluster) -> None:
    target = fresh(cluster, "parts_data")
    absent = restore(history, "--data-only", "--to-database", target)
    assert absent.returncode == 1 and "does not exist" in absent.stderr
    assert target not in databases(cluster)
    cluster.psql(f"CREATE DATABASE {target}")
    schema = subprocess.run(
        [str(cluster.bindir / "pg_dump"), "-h", str(cluster.socket_dir), "-p", str(cluster.port),
         "-U", "postgres", "--schema-only", DB],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    subprocess.run(
        cluster.psql_argv(target, "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"),
        input=schema, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert cluster.psql("SELECT count(*) FROM app.accounts", target) == "0"
    done = restore(history, "--data-only", "--to-database", target)
    assert done.returncode == 0, done.stderr
    assert table_fingerprint(cluster, target) == table_fingerprint(cluster, DB)
    clean = restore(history, "--data-only", "--clean", "--to-database", target)
    assert clean.returncode == 1 and "--data-only cannot be combined with --clean" in clean.stderr


def test_list_prints_the_entries_and_changes_nothing(history: Setup, cluster: Cluster) -> None:
    before = databases(cluster)
    whole = restore(history, "--list", "--to-database", "parts_list")
    assert whole.returncode == 0, whole.stderr
    assert "TABLE app accounts postgres" in whole.stdout
    assert "TABLE DATA audit log postgres" in whole.stdout
    chosen = restore(history, "--list", "--table", "app.accounts")
    assert chosen.returncode == 0, chosen.stderr
    lines = [line for line in chosen.stdout.splitlines() if line[:1].isdigit()]
    assert any("TABLE DATA app accounts" in line for line in lines)
    assert any("INDEX app accounts_name" in line for line in lines)
    assert not any("audit" in line or "events" in line for line in lines)
    # A name that looks like an option is refused; quoted, it is a name (never an argument).
    smuggled = restore(history, "--list", "--table=-n.x")
    assert smuggled.returncode == 2 and "starts with '-'" in smuggled.stderr
    quoted = restore(history, "--list", '--table="-n".x')
    assert quoted.returncode == 1 and 'has no table "-n".x' in quoted.stderr
    assert databases(cluster) == before


def test_before_picks_the_newest_backup_started_before_the_moment(
    history: Setup, cluster: Cluster
) -> None:
    first, second, third = reports(history)
    started = datetime.fromisoformat(third["startedAt"].replace("Z", "+00:00"))
    local = started.astimezone(ZoneInfo(ZONE)).strftime("%Y-%m-%d %H:%M:%S")
    target = fresh(cluster, "parts_before")
    dry = restore(history, "--before", local, "--table", "public.notes", "--to-database", target,
                  "--dry-run")  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert second["artefacts"][0].removesuffix(".dump") in dry.stdout
    assert ZONE in dry.stdout and second["id"] in dry.stdout
    assert target not in databases(cluster)
    done = restore(history, "--before", local, "--table", "public.notes", "--to-database", target)
    assert done.returncode == 0, done.stderr
    assert cluster.psql("SELECT body FROM public.notes", target) == "v2"
    # The same moment written in UTC picks the same backup.
    utc = started.strftime("%Y-%m-%dT%H:%M:%SZ")
    again = restore(history, "--before", utc, "--dry-run")
    assert second["id"] in again.stdout, again.stderr
    early = datetime.fromisoformat(first["startedAt"].replace("Z", "+00:00"))
    none = restore(history, "--before", early.strftime("%Y-%m-%dT%H:%M:%S+00:00"), "--dry-run")
    assert none.returncode == 1 and "started before" in none.stderr


def test_a_table_that_exists_in_the_target_is_refused_unless_clean(
    history: Setup, cluster: Cluster
) -> None:
    copy = fresh(cluster, "parts_copy")
    cluster.psql(f"CREATE DATABASE {copy} TEMPLATE {DB}")
    cluster.psql("UPDATE public.notes SET body = 'changed'", copy)
    refused = restore(history, "--table", "public.notes", "--to-database", copy)
    assert refused.returncode == 1
    assert "table public.notes already exist" in refused.stderr and "--clean" in refused.stderr
    assert cluster.psql("SELECT body FROM public.notes", copy) == "changed"
    cleaned = restore(history, "--table", "public.notes", "--to-database", copy, "--clean")
    assert cleaned.returncode == 0, cleaned.stderr
    assert cluster.psql("SELECT body FROM public.notes", copy) == "v3"
    # The table dropped by mistake: restored into the database it came from.
    cluster.psql("DROP TABLE app.accounts CASCADE", copy)
    back = restore(history, "--table", "app.accounts", "--to-database", copy)
    assert back.returncode == 0, back.stderr
    assert cluster.psql("SELECT count(*) FROM app.accounts", copy) == "30"


def test_directory_format_backup_restores_one_table(
    setup: Setup, cluster: Cluster, run_cli: RunCli
) -> None:
    setup.job()["dump"] = {"format": "directory", "jobs": 2}
    setup.write()
    assert run_cli("--config", str(setup.path), "run", "nightly").returncode == 0
    target = fresh(cluster, "shop_dir_orders")
    done = run_cli(
        "--config", str(setup.path), "restore", "--job", "nightly", "--database", "shop",
        "--table", "public.customers", "--to-database", target,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert relations(cluster, target) == {"public.customers"}
    source = table_fingerprint(cluster, "shop")["public.customers"]
    assert table_fingerprint(cluster, target)["public.customers"] == source


def test_encrypted_backup_lists_and_restores_one_table(
    setup: Setup,
    cluster: Cluster,
    run_cli: RunCli,
    keys: list[AgeKey],  # noqa: F811
) -> None:
    encrypt_to(setup, keys[0])
    assert run_cli("--config", str(setup.path), "run", "nightly").returncode == 0
    base = ["--config", str(setup.path), "restore", "--job", "nightly", "--database", "shop",
            "--identity", str(keys[0].path)]  # fmt: skip
    listed = run_cli(*base, "--list")
    assert listed.returncode == 0, listed.stderr
    assert "TABLE DATA public orders" in listed.stdout
    target = fresh(cluster, "shop_enc_orders")
    done = run_cli(*base, "--table", "public.orders", "--to-database", target)
    assert done.returncode == 0, done.stderr
    assert relations(cluster, target) == {"public.orders"}
    source = table_fingerprint(cluster, "shop")["public.orders"]
    assert table_fingerprint(cluster, target)["public.orders"] == source


# --------------------------------------------------------------------------- issue 21 item 8


def test_refused_target_names(history: Setup, cluster: Cluster) -> None:
    for name in ("template1", "template0", "postgres"):
        done = restore(history, "--to-database", name)
        assert done.returncode == 1, name
        assert f"refusing to restore into {name!r}" in done.stderr
        assert "Traceback" not in done.stderr
    assert relations(cluster, "template1") == set()
    assert relations(cluster, "postgres") == set()
    long_name = "r" * 70
    done = restore(history, "--to-database", long_name)
    assert done.returncode == 1 and "70 bytes" in done.stderr and "at most 63" in done.stderr
    assert not any(name.startswith("r" * 63) for name in databases(cluster))


def test_a_report_id_in_two_reports_is_refused_naming_both(
    setup: Setup, cluster: Cluster, run_cli: RunCli
) -> None:
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 0, done.stderr
    [original] = setup.reports.glob("*.json")
    report = original.read_text()
    copy = original.with_name("shop_20200101T000000Z_copy.json")
    copy.write_text(report)
    report_id = setup.reports_json()[0]["id"]
    target = fresh(cluster, "shop_twice")
    refused = run_cli("--config", str(setup.path), "restore", report_id, "--to-database", target)
    assert refused.returncode == 1
    assert str(original) in refused.stderr and str(copy) in refused.stderr
    assert target not in databases(cluster)


def test_an_unreadable_dump_is_a_clear_error(
    setup: Setup, cluster: Cluster, run_cli: RunCli
) -> None:
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 0, done.stderr
    dump = Path(setup.reports_json()[0]["local"]["file"])
    dump.unlink()
    dump.mkdir()  # the name is there, but its bytes cannot be read (EISDIR)
    target = fresh(cluster, "shop_unreadable")
    refused = run_cli(
        "--config", str(setup.path), "restore", "--job", "nightly", "--database", "shop",
        "--to-database", target,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    assert f"{dump}: cannot read it (Is a directory)" in refused.stderr
    assert target not in databases(cluster)
