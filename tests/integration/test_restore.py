"""`db-backup restore` against real clusters, the real pg_restore/psql and the loopback OSS server.

The source database has roles that sort after `postgres` (one owning a schema and its tables,
one with quotes and a space in its name), so a globals file that stops at `CREATE ROLE postgres`
would lose them; the target is a second, fresh cluster where those roles do not exist yet.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunCli, Setup
from tests.support.oss_fixtures import OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET, OSS_BUCKET
from tests.support.oss_fixtures import OSS_REGION as REGION
from tests.support.oss_server import OssServer
from tests.support.pgcluster import Cluster, start_cluster, table_fingerprint

pytestmark = pytest.mark.integration

OWNER = "zz_app_owner"
READER = 'zz reader "q"'
READER_SQL = '"zz reader ""q"""'
OSS_ENV = {"TEST_OSS_ID": OSS_ACCESS_KEY_ID, "TEST_OSS_SECRET": OSS_ACCESS_KEY_SECRET}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def owned_db(cluster: Cluster) -> str:
    """A database whose schema `app` and its tables belong to a role sorting after postgres."""
    name = "owned"
    if name not in cluster.psql("SELECT datname FROM pg_database").split():
        cluster.psql(f"CREATE ROLE {OWNER} LOGIN")
        cluster.psql(f"CREATE ROLE {READER_SQL}")
        cluster.psql(f'CREATE DATABASE "{name}"')
        cluster.psql(
            f"CREATE SCHEMA app AUTHORIZATION {OWNER};"
            f"SET ROLE {OWNER};"
            "CREATE TABLE app.accounts (id int PRIMARY KEY, name text NOT NULL);"
            "CREATE TABLE app.events (id bigserial PRIMARY KEY, account int REFERENCES "
            "app.accounts(id), what text);"
            "INSERT INTO app.accounts SELECT i, 'account ' || i FROM generate_series(1, 500) i;"
            "INSERT INTO app.events (account, what) SELECT 1 + i % 500, md5(i::text) "
            "FROM generate_series(1, 3000) i;"
            f"GRANT USAGE ON SCHEMA app TO {READER_SQL};"
            f"GRANT SELECT ON app.accounts TO {READER_SQL};"
            "RESET ROLE;",
            name,
        )
    return name


@pytest.fixture
def fresh() -> Iterator[Cluster]:
    """A second cluster of its own, where the source's roles do not exist yet."""
    started = start_cluster()
    try:
        yield started
    finally:
        started.stop()
        shutil.rmtree(started.root, ignore_errors=True)


def target_args(target: Cluster) -> list[str]:
    return ["--host", str(target.socket_dir), "--port", str(target.port), "--username", "postgres"]


def databases(target: Cluster) -> set[str]:
    return set(target.psql("SELECT datname FROM pg_database").split("\n"))


def roles(target: Cluster) -> set[str]:
    return set(target.psql("SELECT rolname FROM pg_roles").split("\n"))


def backup(setup: Setup, run_cli: RunCli, database: str, env: dict[str, str] | None = None) -> dict:
    setup.job()["databases"] = database
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly", env=env)
    assert done.returncode == 0, done.stderr
    report: dict = setup.reports_json()[-1]
    assert report["status"] == "SUCCESS"
    return report


def use_oss(setup: Setup, server: OssServer, mode: str) -> None:
    setup.document["storage"] = {
        "mode": mode,
        "oss": {
            "endpoint": server.endpoint,
            "bucket": OSS_BUCKET,
            "region": REGION,
            "access_key_id": {"env": "TEST_OSS_ID"},
            "access_key_secret": {"env": "TEST_OSS_SECRET"},
            "part_size_mib": 1,
            "retries": 1,
        },
    }
    setup.write()


def assert_same_owned_db(source: Cluster, target: Cluster, name: str) -> None:
    assert table_fingerprint(target, name) == table_fingerprint(source, name)
    owner = "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'app'"
    assert target.psql(owner, name) == OWNER
    tables = "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'app'"
    assert target.psql(tables, name) == OWNER
    grant = "SELECT has_table_privilege(%s, 'app.accounts', 'SELECT')"
    assert target.psql(grant % f"'{READER}'", name) == "t"


def test_round_trip_from_local_with_globals_into_a_cluster_without_the_roles(
    setup: Setup, cluster: Cluster, run_cli: RunCli, owned_db: str, fresh: Cluster
) -> None:
    backup(setup, run_cli, owned_db)
    assert OWNER not in roles(fresh) and READER not in roles(fresh)
    done = run_cli(
        "--config", str(setup.path), "restore", "--job", "nightly", "--database", owned_db,
        "--globals", *target_args(fresh),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert {OWNER, READER} <= roles(fresh)
    assert_same_owned_db(cluster, fresh, owned_db)
    assert "verified sha256" in done.stdout
    assert not list((setup.state / "restore").glob("*/*")), "downloads must not stay behind"


def test_round_trip_from_oss_with_globals_into_a_cluster_without_the_roles(
    setup: Setup,
    cluster: Cluster,
    run_cli: RunCli,
    owned_db: str,
    fresh: Cluster,
    oss_server: OssServer,
) -> None:
    use_oss(setup, oss_server, "oss")
    report = backup(setup, run_cli, owned_db, env=OSS_ENV)
    assert report["local"]["file"] == "" and report["remote"]["urls"]
    done = run_cli(
        "--config", str(setup.path), "restore", report["id"], "--globals", *target_args(fresh),
        env=OSS_ENV,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert_same_owned_db(cluster, fresh, owned_db)
    gets = [r for r in oss_server.requests_for("GetObject") if r["key"].endswith(".dump")]
    assert gets, "the dump must come from the bucket"
    # An oss:// URL works as the source too (globals found next to the dump by name).
    url = report["remote"]["urls"][0]
    again = run_cli(
        "--config", str(setup.path), "restore", url, "--to-database", "owned_from_url",
        *target_args(fresh), env=OSS_ENV,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert table_fingerprint(fresh, "owned_from_url") == table_fingerprint(cluster, owned_db)


def test_missing_roles_fail_with_the_globals_hint_and_leave_no_database(
    setup: Setup, run_cli: RunCli, owned_db: str, fresh: Cluster
) -> None:
    backup(setup, run_cli, owned_db)
    done = run_cli(
        "--config", str(setup.path), "restore", "--job", "nightly", "--database", owned_db,
        *target_args(fresh),
    )  # fmt: skip
    assert done.returncode == 1
    assert f'role "{OWNER}" does not exist' in done.stderr
    assert "--globals" in done.stderr
    assert owned_db not in databases(fresh), "a partial restore must not stay behind"


def test_checksum_mismatch_is_refused_before_any_database_is_touched(
    setup: Setup, run_cli: RunCli, owned_db: str, fresh: Cluster
) -> None:
    report = backup(setup, run_cli, owned_db)
    dump = setup.data / report["artefacts"][0]
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    before_dbs, before_roles = databases(fresh), roles(fresh)
    done = run_cli(
        "--config", str(setup.path), "restore", "--job", "nightly", "--database", owned_db,
        "--globals", *target_args(fresh),
    )  # fmt: skip
    assert done.returncode == 1
    assert "checksum mismatch" in done.stderr and "nothing was restored" in done.stderr
    assert databases(fresh) == before_dbs and roles(fresh) == before_roles


def test_existing_database_is_refused_and_clean_restores_over_it(
    setup: Setup, cluster: Cluster, run_cli: RunCli
) -> None:
    report = backup(setup, run_cli, "shop")
    target = "shop_clean_target"
    cluster.psql(f"DROP DATABASE IF EXISTS {target}")
    args = ["--config", str(setup.path), "restore", report["id"], "--to-database", target]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    cluster.psql(
        "DELETE FROM order_items WHERE quantity > 2; UPDATE customers SET name = 'x'", target
    )
    refused = run_cli(*args)
    assert refused.returncode == 1
    assert "already exists" in refused.stderr and "--clean" in refused.stderr
    assert table_fingerprint(cluster, target) != table_fingerprint(cluster, "shop")
    cleaned = run_cli(*args, "--clean", "-j", "1")
    assert cleaned.returncode == 0, cleaned.stderr
    assert table_fingerprint(cluster, target) == table_fingerprint(cluster, "shop")


def test_an_existing_empty_database_is_restored_into(
    setup: Setup, cluster: Cluster, run_cli: RunCli
) -> None:
    report = backup(setup, run_cli, "crm")
    cluster.psql("DROP DATABASE IF EXISTS crm_precreated")
    cluster.psql("CREATE DATABASE crm_precreated")
    done = run_cli(
        "--config", str(setup.path), "restore", str(setup.reports / f"{report['artefacts'][-1]}"),
        "--to-database", "crm_precreated",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert table_fingerprint(cluster, "crm_precreated") == table_fingerprint(cluster, "crm")


@pytest.mark.parametrize("fmt", ["plain", "directory"])
def test_plain_and_directory_dumps_restore_from_their_paths(
    setup: Setup, cluster: Cluster, run_cli: RunCli, fmt: str
) -> None:
    setup.job()["dump"] = {"format": fmt, "jobs": 2} if fmt == "directory" else {"format": fmt}
    report = backup(setup, run_cli, "crm")
    target = f"crm_from_{fmt}"
    cluster.psql(f"DROP DATABASE IF EXISTS {target}")
    done = run_cli(
        "--config", str(setup.path), "restore", str(setup.data / report["artefacts"][0]),
        "--to-database", target,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert table_fingerprint(cluster, target) == table_fingerprint(cluster, "crm")
    # --clean over it works for both (plain: the database is made anew).
    again = run_cli(
        "--config", str(setup.path), "restore", report["id"], "--to-database", target, "--clean"
    )
    assert again.returncode == 0, again.stderr
    assert table_fingerprint(cluster, target) == table_fingerprint(cluster, "crm")


def test_dry_run_prints_the_plan_and_changes_nothing(
    setup: Setup, cluster: Cluster, run_cli: RunCli
) -> None:
    report = backup(setup, run_cli, "crm")
    done = run_cli(
        "--config", str(setup.path), "restore", report["id"], "--to-database", "crm_dry",
        "--globals", "--dry-run",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "plan (nothing was changed)" in done.stdout
    assert "verify the sha256" in done.stdout and "pg_restore" in done.stdout
    assert "crm_dry" not in databases(cluster)


def test_pg_restore_older_than_the_dump_is_named_as_the_cause(
    setup: Setup, run_cli: RunCli, tmp_path: Path
) -> None:
    report = backup(setup, run_cli, "crm")
    data = bytearray((setup.data / report["artefacts"][0]).read_bytes())
    assert data[:5] == b"PGDMP"
    data[5] = 9  # archive format 9.x: what a far newer pg_dump would write
    future = tmp_path / "crm_20991231T000000Z_future.dump"
    future.write_bytes(bytes(data))
    digest = subprocess.run(
        ["sha256sum", future.name], cwd=tmp_path, capture_output=True, text=True
    )
    (tmp_path / f"{future.name}.sha256").write_text(digest.stdout)
    done = run_cli("--config", str(setup.path), "restore", str(future), "--to-database", "crm_x")
    assert done.returncode == 1
    assert "older than the pg_dump" in done.stderr


def test_wrong_format_and_missing_checksum_are_clear_errors(
    setup: Setup, run_cli: RunCli, tmp_path: Path
) -> None:
    text = tmp_path / "notes_20260101T000000Z_h.dump"
    text.write_text("hello, this is not a dump\n")
    digest = subprocess.run(["sha256sum", text.name], cwd=tmp_path, capture_output=True, text=True)
    (tmp_path / f"{text.name}.sha256").write_text(digest.stdout)
    done = run_cli("--config", str(setup.path), "restore", str(text))
    assert done.returncode == 1 and "wrong format" in done.stderr
    (tmp_path / f"{text.name}.sha256").unlink()
    unverified = run_cli("--config", str(setup.path), "restore", str(text))
    assert unverified.returncode == 1 and "unverified" in unverified.stderr


def test_object_missing_on_oss_is_a_clear_error(
    setup: Setup, run_cli: RunCli, oss_server: OssServer
) -> None:
    use_oss(setup, oss_server, "oss")
    url = f"oss://{OSS_BUCKET}/postgres/backups/gone_20260101T000000Z_h.dump"
    done = run_cli("--config", str(setup.path), "restore", url, env=OSS_ENV)
    assert done.returncode == 1
    assert "does not exist" in done.stderr and "gone_20260101T000000Z_h.dump" in done.stderr


@pytest.mark.parametrize(
    "name", ["../../../etc/passwd.dump", "/etc/passwd.dump", ".hidden.dump", "a/b.dump"]
)
def test_a_report_naming_a_path_outside_the_data_directory_is_refused(
    setup: Setup, run_cli: RunCli, tmp_path: Path, name: str
) -> None:
    report = backup(setup, run_cli, "crm")
    report["artefacts"][0] = name
    report["local"]["file"] = "/etc/passwd"
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(report))
    done = run_cli("--config", str(setup.path), "restore", str(forged))
    assert done.returncode == 1
    assert "unusable file" in done.stderr


# --------------------------------------------------------------------------- README guide


def readme_manual_steps() -> list[str]:
    """Returns the shell commands of the manual restore guide (docs/restore-by-hand.md), in order."""
    text = (REPO / "docs" / "restore-by-hand.md").read_text(encoding="utf-8")
    match = re.search(
        r"<!-- manual-restore:begin -->\s*```sh\n(.*?)```\s*<!-- manual-restore:end -->",
        text,
        re.S,
    )
    assert match, "docs/restore-by-hand.md must keep the manual restore guide between its markers"
    commands = []
    for line in match.group(1).splitlines():
        line = line.split("  #", 1)[0].rstrip()
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


def test_readme_manual_restore_guide_works_step_by_step(
    setup: Setup,
    cluster: Cluster,
    run_cli: RunCli,
    owned_db: str,
    fresh: Cluster,
    request: pytest.FixtureRequest,
) -> None:
    report = backup(setup, run_cli, owned_db)
    stem = report["artefacts"][0][: -len(".dump")]
    # The steps run as the postgres user, as a DBA would, in a directory it owns (pytest's
    # tmp_path is private to root).
    workdir = Path(tempfile.mkdtemp(prefix="db-backup-manual-restore-"))
    request.addfinalizer(lambda: shutil.rmtree(workdir, ignore_errors=True))
    shutil.chown(workdir, "postgres", "postgres")
    steps = readme_manual_steps()
    assert any("sha256sum -c" in s for s in steps) and any("pg_restore" in s for s in steps)
    env = {
        "PATH": f"{fresh.bindir}:/usr/sbin:/usr/bin:/sbin:/bin",
        "PGPORT": str(fresh.port),
        "HOME": "/tmp",
    }
    for step in steps:
        command = (
            step.replace("/data/db-backups/data", str(setup.data))
            .replace("<stem>", stem)
            .replace("<db>", owned_db)
            .replace("<host>", str(fresh.socket_dir))
            .replace("<port>", str(fresh.port))
        )
        assert "<" not in command, f"unsubstituted placeholder in {step!r}"
        if command.startswith("cp "):
            done = subprocess.run(
                ["bash", "-c", command], cwd=workdir, env=env, capture_output=True, text=True
            )
            for path in workdir.iterdir():
                shutil.chown(path, "postgres", "postgres")
        else:
            done = subprocess.run(
                ["runuser", "-u", "postgres", "--", "bash", "-c", f"set -o pipefail; {command}"],
                cwd=workdir, env=env, capture_output=True, text=True,
            )  # fmt: skip
        assert done.returncode == 0, f"step {step!r} failed: {done.stdout} {done.stderr}"
        if "sha256sum -c" in command:
            assert done.stdout.strip().endswith(": OK")
    assert_same_owned_db(cluster, fresh, owned_db)
    # The same guide on a live server (the roles exist now) must work as well.
    fresh.psql(f'DROP DATABASE "{owned_db}"')
    for step in steps:
        if "createdb" in step or "pg_restore" in step or "psql" in step:
            command = (
                step.replace("<stem>", stem).replace("<db>", owned_db)
                .replace("<host>", str(fresh.socket_dir)).replace("<port>", str(fresh.port))
            )  # fmt: skip
            done = subprocess.run(
                ["runuser", "-u", "postgres", "--", "bash", "-c", f"set -o pipefail; {command}"],
                cwd=workdir, env=env, capture_output=True, text=True,
            )  # fmt: skip
            assert done.returncode == 0, f"step {step!r} on a live server: {done.stderr}"
    assert_same_owned_db(cluster, fresh, owned_db)
