"""The operator's day with `{credential:}` secrets on the installed package (issue 22).

A fresh container: db-backup.service gets the OSS keys with `LoadCredential=` (a drop-in, as the
README says); the config refers to them as `{credential: ...}`. By hand, as root, every command
reads them from the unit's own settings; a reload refuses what the service cannot use; a
job-level failure and a removed job leave status and the metrics; a database name with a
newline cannot forge a status row.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.support.oss_fixtures import OssServerProcess

from .conftest import PSQL, BootContainer, Container, use_oss

UNIT = "db-backup.service"
CONFIG = "/etc/db-backup/config.yaml"
METRICS = "/var/lib/db-backup/metrics/db_backup.prom"
FORGED = "2001-01-01T00:00:00Z  nightly  forged  SUCCESS"


def config(storage: str, *, port: int = 5432, password: str = "", extra_job: str = "") -> str:
    password_line = f"      password: {{file: {password}}}\n" if password else ""
    return f"""run_as: postgres
directories:
  data: /data/db-backups/data
  reports: /data/db-backups/reports
  state: /var/lib/db-backup
  logs: /var/log/db-backup
{storage}metrics:
  textfile_dir: /var/lib/db-backup/metrics
jobs:
  - name: nightly
    schedule: "0 2 * * *"
    databases: all
    exclude_databases: ["evil\\n{FORGED}"]
    globals: false
    connection:
      host: /var/run/postgresql
      port: {port}
      user: postgres
{password_line}{extra_job}"""


def write_config(ct: Container, text: str) -> None:
    ct.sh(f"cat >{CONFIG}", input=text)  # in place: root:postgres 0640 stays


def db_backup(ct: Container, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs `db-backup ARGS` as root outside the unit (as `sudo db-backup ...` does)."""
    done = ct.exec(["db-backup", *args], check=False, timeout=300)
    print(f"$ db-backup {' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}")
    assert "Traceback" not in done.stderr
    return done


def status_keys(ct: Container) -> set[tuple[str, str, str]]:
    done = ct.exec(["db-backup", "status", "--json"])
    return {(r["job"], r["database"], r["status"]) for r in json.loads(done.stdout)["reports"]}


@pytest.fixture(scope="module")
def host(boot_container: BootContainer, oss: OssServerProcess) -> Iterator[tuple[Container, str]]:
    """A container whose service has the OSS keys as credentials; yields it and the storage."""
    with boot_container("operator-secrets", install=True) as ct:
        storage = use_oss(ct, oss, UNIT, "both")
        ct.exec(["install", "-d", "-o", "postgres", "-g", "postgres", "/var/lib/db-backup/metrics"])
        write_config(ct, config(storage))
        ct.systemctl("daemon-reload")
        ct.systemctl("restart", UNIT)
        ct.wait_active(UNIT)
        yield ct, storage


def test_by_hand_as_root_the_units_credentials_work(host: tuple[Container, str]) -> None:
    ct, _storage = host
    checked = db_backup(ct, "check-config")
    assert checked.returncode == 0
    assert (
        "At 'storage.oss.access_key_secret': credential 'oss-secret' from "
        "LoadCredential=oss-secret:/etc/db-backup/credentials/oss-secret of db-backup.service"
    ) in checked.stdout
    done = db_backup(ct, "run", "nightly")
    assert done.returncode == 0
    [path] = [p for p in done.stdout.splitlines() if p.endswith(".json")]
    report = json.loads(ct.read_file(path))
    assert report["status"] == "SUCCESS" and report["remote"]["urls"]
    assert db_backup(ct, "verify", "--remote").returncode == 0


def test_verify_remote_without_the_oss_secret_is_a_clear_refusal(
    host: tuple[Container, str],
) -> None:
    ct, storage = host
    broken = storage.replace("{credential: oss-secret}", "{credential: oss-gone}")
    ct.sh("cat >/etc/db-backup/broken.yaml && chgrp postgres /etc/db-backup/broken.yaml "
          "&& chmod 0640 /etc/db-backup/broken.yaml", input=config(broken))  # fmt: skip
    for flag in ("--remote", "--deep"):
        done = db_backup(ct, "--config", "/etc/db-backup/broken.yaml", "verify", flag)
        assert done.returncode == 78
        assert (
            "OSS copy(ies) not checked: storage.oss.access_key_secret: credential 'oss-gone' "
            "is not loaded by db-backup.service"
        ) in done.stderr


def test_reload_refuses_a_secret_the_service_cannot_read_and_keeps_its_config(
    host: tuple[Container, str],
) -> None:
    ct, storage = host
    before = json.loads(ct.read_file("/var/lib/db-backup/reload.json"))
    ct.write_file("/etc/db-backup/pg.pass", "secret\n", 0o600)  # root's: postgres cannot read it
    write_config(ct, config(storage, password="/etc/db-backup/pg.pass"))
    refused = ct.systemctl("reload", UNIT, check=False)
    assert refused.returncode != 0
    journal = ct.exec(["journalctl", "-u", UNIT, "--no-pager", "-n", "20"]).stdout
    assert "cannot read /etc/db-backup/pg.pass: Permission denied" in journal
    assert ct.is_active(UNIT) == "active"
    assert json.loads(ct.read_file("/var/lib/db-backup/reload.json")) == before  # no SIGHUP

    write_config(ct, config(storage))
    ct.systemctl("reload", UNIT)  # the good config again: reloaded, exit 0
    after = json.loads(ct.read_file("/var/lib/db-backup/reload.json"))
    assert after["serial"] == before["serial"] + 1 and after["outcome"] == "reloaded"


def test_a_credential_added_after_the_start_fails_the_reload_until_a_restart(
    host: tuple[Container, str],
) -> None:
    ct, storage = host
    ct.write_file("/etc/db-backup/credentials/pg-new", "unused-by-peer-auth\n", 0o600)
    dropin = f"/etc/systemd/system/{UNIT}.d/e2e-new.conf"
    ct.write_file(dropin, "[Service]\nLoadCredential=pg-new:/etc/db-backup/credentials/pg-new\n")
    ct.systemctl("daemon-reload")
    with_new = config(storage).replace(
        "      user: postgres\n", "      user: postgres\n      password: {credential: pg-new}\n", 1
    )
    write_config(ct, with_new)
    # By hand it works at once: read from the unit's (new) LoadCredential=.
    assert db_backup(ct, "check-config").returncode == 0
    refused = ct.systemctl("reload", UNIT, check=False)
    assert refused.returncode != 0
    journal = ct.exec(["journalctl", "-u", UNIT, "--no-pager", "-n", "20"]).stdout
    assert "reload refused by the daemon, old config kept" in journal
    assert "credential 'pg-new' is not in $CREDENTIALS_DIRECTORY" in journal
    assert "systemctl restart db-backup" in journal
    assert "RELOAD FAILED" in ct.unit_property(UNIT, "StatusText")
    ct.systemctl("restart", UNIT)
    ct.wait_active(UNIT)
    ct.systemctl("reload", UNIT)  # now the service has it
    write_config(ct, config(storage))
    ct.exec(["rm", dropin])
    ct.systemctl("daemon-reload")
    ct.systemctl("restart", UNIT)
    ct.wait_active(UNIT)


def test_job_level_failure_is_cleared_by_the_next_run_and_removed_jobs_leave_the_views(
    host: tuple[Container, str],
) -> None:
    ct, storage = host
    write_config(ct, config(storage, port=5499))  # nothing listens: the databases are unknown
    assert db_backup(ct, "run", "nightly").returncode == 1
    assert ("nightly", "*", "FAILED") in status_keys(ct)
    assert 'database="*"' in ct.read_file(METRICS)

    write_config(ct, config(storage))
    assert db_backup(ct, "run", "nightly").returncode == 0
    assert not [k for k in status_keys(ct) if k[1] == "*"]
    assert 'database="*"' not in ct.read_file(METRICS)

    # A second job on a database whose name holds a newline: one row, the newline escaped.
    name = f"evil\n{FORGED}"
    ct.exec([*PSQL, "-c", f'CREATE DATABASE "{name}"'])
    extra = f"""  - name: evil
    schedule: "0 3 * * *"
    databases: ["evil\\n{FORGED}"]
    globals: false
    connection: {{host: /var/run/postgresql, port: 5432, user: postgres}}
"""
    write_config(ct, config(storage, extra_job=extra))
    assert db_backup(ct, "run", "evil").returncode == 0
    lines = ct.exec(["db-backup", "status", "--job", "evil"]).stdout.splitlines()
    assert len(lines) == 3, lines  # header, one row, footer
    assert f"evil\\n{FORGED}" in lines[1]
    assert not any(line.startswith("2001-") for line in lines)
    assert 'backup_job="evil"' in ct.read_file(METRICS)

    write_config(ct, config(storage))  # job evil removed
    assert not [k for k in status_keys(ct) if k[0] == "evil"]
    assert db_backup(ct, "run", "nightly").returncode == 0
    assert 'backup_job="evil"' not in ct.read_file(METRICS)


def test_encrypted_credentials_are_decrypted_by_systemd_creds_for_a_command_by_hand(
    host: tuple[Container, str],
) -> None:
    ct, storage = host
    ct.sh(
        "printf 'enc-load-value' | systemd-creds encrypt --name=pg-enc - "
        "/etc/db-backup/credentials/pg-enc.cred && "
        "printf 'enc-set-value' | systemd-creds encrypt -p --name=pg-set - - >/tmp/set.conf"
    )
    dropin = f"/etc/systemd/system/{UNIT}.d/e2e-encrypted.conf"
    ct.sh(
        f"{{ printf '[Service]\\nLoadCredentialEncrypted=pg-enc:/etc/db-backup/credentials/"
        f"pg-enc.cred\\n'; cat /tmp/set.conf; }} >{dropin}"
    )
    ct.systemctl("daemon-reload")
    second = """  - name: second
    schedule: "0 4 * * *"
    databases: postgres
    globals: false
    connection:
      host: /var/run/postgresql
      port: 5432
      user: postgres
      password: {credential: pg-set}
"""
    text = config(storage, extra_job=second).replace(
        "      user: postgres\n", "      user: postgres\n      password: {credential: pg-enc}\n", 1
    )
    write_config(ct, text)
    try:
        checked = db_backup(ct, "check-config")
        assert checked.returncode == 0
        assert (
            "At 'jobs[0].connection.password': credential 'pg-enc' from LoadCredentialEncrypted="
            "pg-enc:/etc/db-backup/credentials/pg-enc.cred of db-backup.service"
        ) in checked.stdout
        assert (
            "At 'jobs[1].connection.password': credential 'pg-set' from "
            "SetCredentialEncrypted=pg-set of db-backup.service"
        ) in checked.stdout
        assert "enc-load-value" not in checked.stdout + checked.stderr
    finally:
        write_config(ct, config(storage))
        ct.exec(["rm", "-f", dropin])
        ct.systemctl("daemon-reload")
