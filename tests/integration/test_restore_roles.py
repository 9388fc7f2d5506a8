"""The roles file on the restore day: checked before it is used, and kind to a live server.

Real clusters (the session's source cluster and fresh ones), the real pg_dumpall output, psql,
the loopback OSS server. `pg_authid` (attributes and password hashes) is compared before and
after every command that must not change a role.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import oss2
import pytest

from tests.conftest import RunCli, Setup
from tests.integration import test_restore
from tests.integration.test_drill import drill_dir, drill_reports, enable_drill  # noqa: F401
from tests.integration.test_encryption import AgeKey, encrypt_to, keys  # noqa: F401
from tests.integration.test_restore import (
    OSS_ENV,
    OWNER,
    READER,
    READER_SQL,
    backup,
    databases,
    fresh,  # noqa: F401
    target_args,
    use_oss,
)
from tests.support.oss_fixtures import OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET, OSS_BUCKET
from tests.support.oss_server import OssServer
from tests.support.pgcluster import Cluster, table_fingerprint

pytestmark = pytest.mark.integration
owned_db = test_restore.owned_db  # the fixture: roles sorting after postgres own its objects
PREFIX = "postgres/backups/"
AUTHID = (
    "SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, "
    "rolreplication, rolbypassrls, rolconnlimit, coalesce(rolpassword, '-'), "
    "coalesce(rolvaliduntil::text, '-') FROM pg_authid ORDER BY rolname"
)
MEMBERS = (
    "SELECT roleid::regrole::text || ' > ' || member::regrole::text FROM pg_auth_members ORDER BY 1"
)


def authid(cluster: Cluster) -> str:
    """Returns every role's attributes and password hash, and the memberships."""
    return cluster.psql(AUTHID) + "\n" + cluster.psql(MEMBERS)


def password_of(cluster: Cluster, role: str) -> str:
    return cluster.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'")


def restore(run_cli: RunCli, setup: Setup, target: Cluster, *args: str) -> Any:
    return run_cli(
        "--config", str(setup.path), "restore", *args, *target_args(target), env=OSS_ENV
    )  # fmt: skip


def bucket_of(server: OssServer) -> oss2.Bucket:
    auth = oss2.Auth(OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET)
    return oss2.Bucket(auth, server.endpoint, OSS_BUCKET, enable_crc=True)


def cut_point(text: bytes, how: str) -> int:
    """Returns where to cut a roles file: at the start of a line, or inside a password."""
    if how == "line":
        return text.index(f"CREATE ROLE {OWNER};".encode())
    return text.index(b"PASSWORD 'SCRAM-SHA-256$") + 30


def test_the_roles_file_has_a_checksum_beside_it_and_in_the_report(
    setup: Setup, run_cli: RunCli, owned_db: str
) -> None:
    report = backup(setup, run_cli, owned_db)
    name = report["globals"]["file"]
    path = setup.data / name
    assert name.endswith("_globals.sql") and name in report["artefacts"]
    assert f"{name}.sha256" in report["artefacts"]
    assert report["globals"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert report["globals"]["sizeBytes"] == path.stat().st_size
    for sums in (f"{name}.sha256", report["artefacts"][0] + ".sha256"):
        done = subprocess.run(
            ["sha256sum", "-c", sums], cwd=setup.data, capture_output=True, text=True
        )
        assert done.returncode == 0 and done.stdout.strip().endswith(": OK"), done.stdout


@pytest.mark.parametrize("how", ["line", "password"])
@pytest.mark.parametrize("where", ["local", "oss"])
def test_a_roles_file_cut_short_is_refused_by_restore_and_fails_verify_and_drill(
    setup: Setup,
    run_cli: RunCli,
    owned_db: str,
    fresh: Cluster,  # noqa: F811
    oss_server: OssServer,
    drill_dir: Path,  # noqa: F811
    where: str,
    how: str,
) -> None:
    if where == "oss":
        use_oss(setup, oss_server, "oss")
    enable_drill(setup, drill_dir)
    report = backup(setup, run_cli, owned_db, env=OSS_ENV)
    name = report["globals"]["file"]
    if where == "local":
        path = setup.data / name
        path.write_bytes(path.read_bytes()[: cut_point(path.read_bytes(), how)])
    else:
        data = oss_server.object_bytes(OSS_BUCKET, PREFIX + name)
        bucket_of(oss_server).put_object(PREFIX + name, data[: cut_point(data, how)])
    before, dbs = authid(fresh), databases(fresh)
    done = restore(run_cli, setup, fresh, report["id"], "--globals")
    assert done.returncode == 1
    assert "roles file checksum mismatch" in done.stderr and "nothing was changed" in done.stderr
    assert authid(fresh) == before and databases(fresh) == dbs
    dry = restore(run_cli, setup, fresh, report["id"], "--globals", "--dry-run")
    assert dry.returncode == 1 and "would be refused at step" in dry.stderr
    assert authid(fresh) == before and databases(fresh) == dbs
    checks = ["--deep"] if where == "local" else ["--remote", "--deep"]
    for flag in ["", *checks] if where == "local" else checks:
        found = run_cli(
            "--config", str(setup.path), "verify", "--json", *([flag] if flag else []),
            env=OSS_ENV,
        )  # fmt: skip
        assert found.returncode == 1, (flag, found.stdout)
        problems = " ".join(p for r in json.loads(found.stdout)["results"] for p in r["problems"])
        assert "roles file checksum mismatch" in problems and name in problems, problems
    drill = run_cli("--config", str(setup.path), "drill", "nightly", env=OSS_ENV, timeout=600)
    assert drill.returncode != 0
    [failed] = drill_reports(setup)
    assert failed["status"] == "FAILED" and "roles file" in failed["errorMessage"]


def test_a_cut_roles_file_whose_checksums_were_rewritten_is_still_refused(
    setup: Setup,
    run_cli: RunCli,
    owned_db: str,
    fresh: Cluster,  # noqa: F811
    drill_dir: Path,  # noqa: F811
) -> None:
    enable_drill(setup, drill_dir)
    report = backup(setup, run_cli, owned_db)
    name = report["globals"]["file"]
    path = setup.data / name
    path.write_bytes(path.read_bytes()[: cut_point(path.read_bytes(), "password")])
    # As if the backup were older than checksums of roles files: no report entry, no .sha256.
    (setup.data / f"{name}.sha256").unlink()
    report_file = next(setup.reports.glob("*.json"))
    document = json.loads(report_file.read_text())
    del document["globals"]
    report_file.write_text(json.dumps(document))
    before = authid(fresh)
    done = restore(run_cli, setup, fresh, report["id"], "--globals")
    assert done.returncode == 1
    assert "the roles file is incomplete" in done.stderr and "quoted string" in done.stderr
    assert "SCRAM" not in done.stderr
    assert authid(fresh) == before and owned_db not in databases(fresh)
    found = run_cli("--config", str(setup.path), "verify", "--json")
    assert found.returncode == 1 and "incomplete" in found.stdout
    drill = run_cli("--config", str(setup.path), "drill", "nightly", timeout=600)
    assert drill.returncode != 0
    [failed] = drill_reports(setup)
    assert "incomplete" in failed["errorMessage"]


def test_globals_onto_a_live_server_with_the_database_changes_no_role(
    setup: Setup,
    cluster: Cluster,
    run_cli: RunCli,
    owned_db: str,
    fresh: Cluster,  # noqa: F811
) -> None:
    report = backup(setup, run_cli, owned_db)
    first = restore(run_cli, setup, fresh, report["id"], "--globals")
    assert first.returncode == 0, first.stderr
    # After the backup, a leaked password was rotated on the live server.
    fresh.psql("ALTER ROLE limited PASSWORD 'rotated-after-the-leak'")
    rotated, before = password_of(fresh, "limited"), authid(fresh)
    assert rotated != password_of(cluster, "limited")
    again = restore(run_cli, setup, fresh, report["id"], "--globals")
    assert again.returncode == 1
    assert "already exists" in again.stderr and "restored roles" not in again.stdout
    assert authid(fresh) == before
    dry = restore(run_cli, setup, fresh, report["id"], "--globals", "--dry-run")
    assert dry.returncode == 1
    assert "plan (nothing was changed)" in dry.stdout
    assert "would be refused at step 5" in dry.stderr and "already exists" in dry.stderr
    assert authid(fresh) == before
    # Even --reset-roles changes nothing while the restore is refused.
    reset = restore(run_cli, setup, fresh, report["id"], "--globals", "--reset-roles")
    assert reset.returncode == 1 and authid(fresh) == before


def test_globals_onto_a_server_missing_one_role_creates_only_that_role(
    setup: Setup,
    cluster: Cluster,
    run_cli: RunCli,
    owned_db: str,
    fresh: Cluster,  # noqa: F811
) -> None:
    report = backup(setup, run_cli, owned_db)
    first = restore(run_cli, setup, fresh, report["id"], "--globals", "--to-database", "first")
    assert first.returncode == 0, first.stderr
    assert "roles created: " in first.stdout and OWNER in first.stdout
    fresh.psql(f"DROP OWNED BY {READER_SQL}", "first")
    fresh.psql(f"DROP ROLE {READER_SQL}")
    fresh.psql("ALTER ROLE limited PASSWORD 'rotated-after-the-leak' CREATEDB")
    before = authid(fresh)
    dry = restore(run_cli, setup, fresh, report["id"], "--globals", "--to-database", "second",
                  "--dry-run")  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert f"the roles step: roles to create: {READER}" in dry.stdout
    assert authid(fresh) == before and "second" not in databases(fresh)
    done = restore(run_cli, setup, fresh, report["id"], "--globals", "--to-database", "second")
    assert done.returncode == 0, done.stderr
    assert f"roles created: {READER}\n" in done.stdout
    [left] = [line for line in done.stdout.splitlines() if line.startswith("roles left alone")]
    assert "limited" in left and OWNER in left and "postgres" in left
    after = authid(fresh)
    assert READER in after and READER not in before
    without_reader = "\n".join(line for line in after.splitlines() if READER not in line)
    assert without_reader == "\n".join(line for line in before.splitlines() if READER not in line)
    assert table_fingerprint(fresh, "second") == table_fingerprint(cluster, owned_db)
    # --reset-roles puts the backup's password and attributes back.
    reset = restore(run_cli, setup, fresh, report["id"], "--globals", "--reset-roles",
                    "--to-database", "third")  # fmt: skip
    assert reset.returncode == 0, reset.stderr
    assert "roles reset (attributes, passwords, memberships): " in reset.stdout
    assert password_of(fresh, "limited") == password_of(cluster, "limited")
    assert fresh.psql("SELECT rolcreatedb FROM pg_roles WHERE rolname = 'limited'") == "f"


def test_verify_deep_names_a_directory_member_replaced_with_same_size_bytes(
    setup: Setup, run_cli: RunCli, oss_server: OssServer
) -> None:
    use_oss(setup, oss_server, "oss")
    setup.job()["dump"] = {"format": "directory", "jobs": 2}
    report = backup(setup, run_cli, "crm", env=OSS_ENV)
    members = [a for a in report["artefacts"] if ".dump.d/" in a and a.endswith(".dat.gz")]
    member = members[0]
    data = bytearray(oss_server.object_bytes(OSS_BUCKET, PREFIX + member))
    data[len(data) // 2] ^= 0xFF
    bucket_of(oss_server).put_object(PREFIX + member, bytes(data))
    shallow = run_cli("--config", str(setup.path), "verify", "--remote", env=OSS_ENV)
    assert shallow.returncode == 0, shallow.stdout  # same sizes: only the bytes tell
    deep = run_cli("--config", str(setup.path), "verify", "--deep", "--json", env=OSS_ENV)
    assert deep.returncode == 1
    [result] = json.loads(deep.stdout)["results"]
    assert any(member in p and "checksum mismatch" in p for p in result["problems"])
    # The manifest itself is checked against the report.
    manifest = PREFIX + report["artefacts"][0].split("/")[0] + ".sha256"
    text = oss_server.object_bytes(OSS_BUCKET, manifest)
    bucket_of(oss_server).put_object(manifest, text + b"\n")
    changed = run_cli("--config", str(setup.path), "verify", "--deep", "--json", env=OSS_ENV)
    [result] = json.loads(changed.stdout)["results"]
    assert any("the manifest's sha256 is" in p for p in result["problems"])


def test_plain_verify_says_how_many_oss_only_backups_it_skipped(
    setup: Setup, run_cli: RunCli, oss_server: OssServer
) -> None:
    use_oss(setup, oss_server, "oss")
    backup(setup, run_cli, "crm", env=OSS_ENV)
    plain = run_cli("--config", str(setup.path), "verify", "--job", "nightly")
    assert plain.returncode == 1
    assert "nothing was verified" in plain.stderr
    assert "1 backup stored only on OSS was skipped; check it with --remote" in plain.stderr
    setup.document["storage"]["mode"] = "both"
    setup.write()
    backup(setup, run_cli, "crm", env=OSS_ENV)
    mixed = run_cli("--config", str(setup.path), "verify")
    assert mixed.returncode == 0, mixed.stdout
    assert "1 backup stored only on OSS was skipped" in mixed.stdout
    remote = run_cli("--config", str(setup.path), "verify", "--remote", env=OSS_ENV)
    assert remote.returncode == 0, remote.stdout + remote.stderr
    assert "skipped" not in remote.stdout
    assert "roles file sha256 (report), sha256" in remote.stdout


def test_an_encrypted_roles_file_is_checked_against_its_plaintext_sha256(
    setup: Setup,
    run_cli: RunCli,
    owned_db: str,
    fresh: Cluster,  # noqa: F811
    keys: list[AgeKey],  # noqa: F811
) -> None:
    encrypt_to(setup, keys[0])
    setup.document["storage"]["encryption"]["age"]["identity"] = {"file": str(keys[0].path)}
    report = backup(setup, run_cli, owned_db)
    entry, encryption = report["globals"], report["encryption"]
    assert entry["file"].endswith("_globals.sql.age")
    assert entry["sha256"] == encryption["globalsSha256"]
    assert entry["plaintextSha256"] == encryption["globalsPlaintextSha256"]
    deep = run_cli("--config", str(setup.path), "verify", "--deep")
    assert deep.returncode == 0, deep.stdout
    assert "plaintext sha256 (report), complete" in deep.stdout
    done = restore(run_cli, setup, fresh, report["id"], "--globals", "--to-database", "enc")
    assert done.returncode == 0, done.stderr
    assert OWNER in fresh.psql("SELECT rolname FROM pg_roles")
    # A report whose plaintext checksum the roles file does not decrypt to.
    report_file = next(setup.reports.glob("*.json"))
    document = json.loads(report_file.read_text())
    document["globals"]["plaintextSha256"] = "0" * 64
    report_file.write_text(json.dumps(document))
    bad = run_cli("--config", str(setup.path), "verify", "--deep", "--json")
    assert bad.returncode == 1
    [result] = json.loads(bad.stdout)["results"]
    assert any(entry["file"] in p and "0" * 64 in p for p in result["problems"]), result
    shallow = run_cli("--config", str(setup.path), "verify")
    assert shallow.returncode == 0, shallow.stdout  # without --deep it is not decrypted
    before = authid(fresh)
    fresh.psql("DROP DATABASE enc")
    refused = restore(run_cli, setup, fresh, report["id"], "--globals", "--to-database", "enc")
    assert refused.returncode == 1 and "0" * 64 in refused.stderr
    assert authid(fresh) == before and "enc" not in databases(fresh)


def test_a_drill_checks_each_databases_own_roles_file(
    setup: Setup,
    run_cli: RunCli,
    owned_db: str,
    drill_dir: Path,  # noqa: F811
) -> None:
    setup.job()["databases"] = [owned_db, "shop"]
    enable_drill(setup, drill_dir)
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 0, done.stderr
    reports = {r["database"]: r for r in setup.reports_json()}
    # The drill goes through the databases by name: `owned` first, then `shop`, whose roles
    # file (cut mid-password) only its own drill reads.
    path = setup.data / reports["shop"]["globals"]["file"]
    path.write_bytes(path.read_bytes()[: cut_point(path.read_bytes(), "password")])
    drill = run_cli("--config", str(setup.path), "drill", "nightly", timeout=600)
    assert drill.returncode != 0
    results = {r["database"]: r for r in drill_reports(setup)}
    assert results[owned_db]["status"] == "SUCCESS", results[owned_db]["errorMessage"]
    assert results["shop"]["status"] == "FAILED"
    assert path.name in results["shop"]["errorMessage"]
    assert "roles file checksum mismatch" in results["shop"]["errorMessage"]
