"""`db-backup restore` and `db-backup drill` of age-encrypted backups: decrypted on the way in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import RunCli, Setup
from tests.integration.test_drill import drill_dir, enable_drill  # noqa: F401
from tests.integration.test_encryption import AgeKey, encrypt_to, keys, only_report  # noqa: F401
from tests.support.pgcluster import Cluster, table_fingerprint

pytestmark = pytest.mark.integration


def database_exists(cluster: Cluster, name: str) -> bool:
    return cluster.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{name}'") == "1"


def test_restore_decrypts_with_the_identity_and_the_tables_come_back(
    setup: Setup,
    cluster: Cluster,
    run_cli: RunCli,
    keys: list[AgeKey],  # noqa: F811
) -> None:
    encrypt_to(setup, keys[0], keys[1])
    assert run_cli("--config", str(setup.path), "run", "nightly").returncode == 0
    report = only_report(setup)
    report_file = next(setup.reports.glob("*.json"))
    cluster.psql('DROP DATABASE IF EXISTS "shop_dec"')
    # A dry run makes the real run's checks: without an identity it is refused as the real
    # run would be.
    refused = run_cli(
        "--config", str(setup.path), "restore", str(report_file),
        "--to-database", "shop_dec", "--dry-run",
    )  # fmt: skip
    assert refused.returncode == 1 and "would be refused at step 3" in refused.stderr
    assert "encryption.age.identity" in refused.stderr
    dry = run_cli(
        "--config", str(setup.path), "restore", str(report_file),
        "--to-database", "shop_dec", "--dry-run", "--identity", str(keys[1].path),
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    # The plan shows what the real run does with an encrypted dump: the identity is tried
    # first, and the dump reaches pg_restore decrypted on its stdin (so without --jobs).
    assert "check that the age identity opens" in dry.stdout
    [restore_line] = [line for line in dry.stdout.splitlines() if "pg_restore" in line]
    assert "| pg_restore" in restore_line and "--jobs" not in restore_line
    assert not database_exists(cluster, "shop_dec")
    done = run_cli(
        "--config", str(setup.path), "restore", str(report_file),
        "--to-database", "shop_dec", "--identity", str(keys[1].path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "the age identity opens" in done.stdout + done.stderr
    assert table_fingerprint(cluster, "shop_dec") == table_fingerprint(cluster, "shop")
    # No plaintext copy was written anywhere under the test's directories.
    for path in setup.root.rglob("*"):
        if path.is_file() and path != Path(report["local"]["file"]):
            assert not path.read_bytes().startswith(b"PGDMP"), path


def test_restore_with_a_wrong_identity_is_refused_before_any_database_is_touched(
    setup: Setup,
    cluster: Cluster,
    run_cli: RunCli,
    keys: list[AgeKey],  # noqa: F811
) -> None:
    encrypt_to(setup, keys[0])
    assert run_cli("--config", str(setup.path), "run", "nightly").returncode == 0
    report_file = next(setup.reports.glob("*.json"))
    cluster.psql('DROP DATABASE IF EXISTS "shop_wrong"')
    done = run_cli(
        "--config", str(setup.path), "restore", str(report_file),
        "--to-database", "shop_wrong", "--identity", str(keys[2].path),
    )  # fmt: skip
    assert done.returncode != 0
    assert "does not match" in done.stderr
    assert not database_exists(cluster, "shop_wrong")
    missing = run_cli(
        "--config", str(setup.path), "restore", str(report_file), "--to-database", "shop_wrong"
    )
    assert missing.returncode != 0 and "encryption.age.identity" in missing.stderr
    assert not database_exists(cluster, "shop_wrong")


def test_drill_of_an_encrypted_backup_decrypts_with_the_jobs_identity(
    setup: Setup,
    run_cli: RunCli,
    keys: list[AgeKey],  # noqa: F811
    drill_dir: Path,  # noqa: F811
) -> None:
    encrypt_to(setup, keys[0])
    setup.document["storage"]["encryption"]["age"]["identity"] = {"file": str(keys[0].path)}
    enable_drill(setup, drill_dir)
    assert run_cli("--config", str(setup.path), "run", "nightly").returncode == 0
    done = run_cli("--config", str(setup.path), "drill", "nightly", timeout=600)
    assert done.returncode == 0, done.stderr
    [drill] = [json.loads(p.read_text()) for p in (setup.reports / "drills").glob("*.json")]
    assert drill["status"] == "SUCCESS" and drill["mismatches"] == []
    assert drill["tablesChecked"] > 0


def test_verify_checks_the_age_header_and_deep_decrypts_with_the_jobs_identity(
    setup: Setup,
    run_cli: RunCli,
    keys: list[AgeKey],  # noqa: F811
) -> None:
    encrypt_to(setup, keys[0])
    setup.document["storage"]["encryption"]["age"]["identity"] = {"file": str(keys[0].path)}
    setup.write()
    assert run_cli("--config", str(setup.path), "run", "nightly").returncode == 0
    cheap = run_cli("--config", str(setup.path), "verify", "--json")
    assert cheap.returncode == 0, cheap.stdout + cheap.stderr
    [result] = json.loads(cheap.stdout)["results"]
    assert "age header" in result["passed"]
    assert not any("pg_restore" in p for p in result["problems"])
    deep = run_cli("--config", str(setup.path), "verify", "--deep", "--json")
    assert deep.returncode == 0, deep.stdout + deep.stderr
    [result] = json.loads(deep.stdout)["results"]
    assert "decrypts, plaintext sha256 (report)" in result["passed"]
    # A report whose plaintext checksum does not match what the file decrypts to.
    report_file = next(setup.reports.glob("*.json"))
    report = json.loads(report_file.read_text())
    report["encryption"]["plaintextSha256"] = "0" * 64
    report_file.write_text(json.dumps(report))
    bad = run_cli("--config", str(setup.path), "verify", "--deep", "--json")
    assert bad.returncode == 1
    [result] = json.loads(bad.stdout)["results"]
    assert any(p.startswith("decryption:") for p in result["problems"])
    assert keys[0].secret not in bad.stdout + bad.stderr
