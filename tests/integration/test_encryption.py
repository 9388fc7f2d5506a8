"""Client-side encryption with age: real pg_dump, real `age`, real cluster, loopback OSS."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from db_backup.config import SecretRef
from db_backup.storage import crypto
from tests.conftest import RunCli, Setup
from tests.integration.test_job_remote import OSS_ENV, PREFIX, bucket, use_oss
from tests.support.oss_fixtures import OSS_BUCKET
from tests.support.oss_server import OssServer
from tests.support.pgcluster import Cluster, table_fingerprint
from tests.support.procs import start_run, wait_for_pg_dump

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("age") is None, reason="age is not installed (apt install age)"
    ),
]


@dataclass
class AgeKey:
    """An age identity file made by age-keygen, and its public key."""

    path: Path
    recipient: str

    @property
    def ref(self) -> SecretRef:
        return SecretRef("file", str(self.path))

    @property
    def secret(self) -> str:
        return next(
            line for line in self.path.read_text().splitlines() if line.startswith("AGE-SECRET")
        )


def make_key(directory: Path, name: str) -> AgeKey:
    path = directory / name
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    recipient = subprocess.run(
        ["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()
    return AgeKey(path, recipient)


@pytest.fixture
def keys(tmp_path: Path) -> list[AgeKey]:
    """Three age identities, kept away from the backup directories: two recipients, one stranger."""
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o700)
    return [make_key(directory, f"key{i}.txt") for i in range(3)]


def encrypt_to(setup: Setup, *recipients: AgeKey) -> None:
    storage: dict[str, Any] = setup.document["storage"]
    storage["encryption"] = {"age": {"recipients": [k.recipient for k in recipients]}}
    setup.write()


def restore_from_fd(cluster: Cluster, fd: int, database: str) -> None:
    """Restores a custom-format dump read from `fd` (pg_restore on stdin) into a new database."""
    cluster.psql(f'DROP DATABASE IF EXISTS "{database}"')
    cluster.psql(f'CREATE DATABASE "{database}"')
    done = subprocess.run(
        [
            str(cluster.bindir / "pg_restore"), "-h", str(cluster.socket_dir),
            "-p", str(cluster.port), "-U", "postgres", "-d", database, "--exit-on-error",
        ],
        stdin=fd, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"pg_restore failed: {done.stderr}")


def only_report(setup: Setup) -> dict[str, Any]:
    [report] = setup.reports_json()
    assert report["status"] == "SUCCESS", report["errorMessage"]
    return report


def assert_looks_encrypted(data: bytes) -> None:
    assert data.startswith(crypto.HEADER)
    assert crypto.PGDMP not in data
    assert b"CREATE ROLE" not in data


def test_encrypted_backup_to_two_recipients_restores_with_either_identity(
    setup: Setup, cluster: Cluster, run_cli: RunCli, keys: list[AgeKey]
) -> None:
    encrypt_to(setup, keys[0], keys[1])
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 0, done.stderr
    report = only_report(setup)
    stored = Path(report["local"]["file"])
    assert stored.name.endswith(".dump.age") and stored.stat().st_mode & 0o777 == 0o600
    assert {p.name for p in setup.data_files()} == {
        stored.name,
        f"{stored.name}.sha256",
        stored.name.replace(".dump.age", "_globals.sql.age"),
        stored.name.replace(".dump.age", "_globals.sql.age.sha256"),
    }
    data = stored.read_bytes()
    assert_looks_encrypted(data)
    assert report["local"]["sizeBytes"] == len(data)
    assert report["local"]["checksumSha256"] == hashlib.sha256(data).hexdigest()
    check = subprocess.run(
        ["sha256sum", "-c", f"{stored.name}.sha256"], cwd=stored.parent, capture_output=True
    )
    assert check.returncode == 0 and check.stdout.decode().strip() == f"{stored.name}: OK"
    encryption = report["encryption"]
    assert encryption["method"] == "age"
    assert encryption["recipientFingerprints"] == [
        crypto.fingerprint(keys[0].recipient),
        crypto.fingerprint(keys[1].recipient),
    ]
    assert encryption["plaintextSha256"] != report["local"]["checksumSha256"]
    # Only fingerprints: no key, public or private, is written into the report.
    text = json.dumps(report)
    assert all(k.recipient not in text and k.secret not in text for k in keys)
    for index, key in enumerate(keys[:2]):
        with crypto.identity_file(key.ref) as identity:
            crypto.check_identity(identity, report, stored)
            with crypto.decrypted(
                stored, identity, expected_sha256=encryption["plaintextSha256"]
            ) as plaintext:
                restore_from_fd(cluster, plaintext.fd, f"shop_age_{index}")
        assert plaintext.sha256 == encryption["plaintextSha256"]
        assert plaintext.size == encryption["plaintextSizeBytes"]
        assert table_fingerprint(cluster, f"shop_age_{index}") == table_fingerprint(cluster, "shop")


def test_encrypted_dump_streams_to_oss_and_the_object_restores_with_the_second_identity(
    setup: Setup,
    cluster: Cluster,
    oss_server: OssServer,
    run_cli: RunCli,
    keys: list[AgeKey],
    slow_db: str,
) -> None:
    setup.job()["databases"] = slow_db
    use_oss(setup, oss_server, mode="both")
    encrypt_to(setup, keys[0], keys[1])
    done = run_cli("--config", str(setup.path), "run", "nightly", env=OSS_ENV)
    assert done.returncode == 0, done.stderr
    report = only_report(setup)
    name = Path(report["local"]["file"]).name
    stem = name.removesuffix(".dump.age")
    assert report["remote"]["urls"] == [f"oss://{OSS_BUCKET}/{PREFIX}{name}"]
    assert report["targets"]["oss"]["parts"] > 2, "a multipart upload from the age stream"
    assert set(oss_server.objects(OSS_BUCKET)) == {
        f"{PREFIX}{name}",
        f"{PREFIX}{name}.sha256",
        f"{PREFIX}{stem}_globals.sql.age",
        f"{PREFIX}{stem}_globals.sql.age.sha256",
        f"{PREFIX}{stem}.json",
    }
    remote = bucket(oss_server)
    obj = remote.get_object(f"{PREFIX}{name}").read()
    assert_looks_encrypted(obj)
    assert hashlib.sha256(obj).hexdigest() == report["local"]["checksumSha256"]
    checksum_line = remote.get_object(f"{PREFIX}{name}.sha256").read().decode()
    assert checksum_line == f"{report['local']['checksumSha256']}  {name}\n"
    assert_looks_encrypted(remote.get_object(f"{PREFIX}{stem}_globals.sql.age").read())

    # Restore straight from the bucket: download -> age -d -> pg_restore, nothing on disk.
    download = remote.get_object(f"{PREFIX}{name}")
    chunks: Iterator[bytes] = iter(lambda: download.read(256 * 1024), b"")
    with crypto.identity_file(keys[1].ref) as identity:
        crypto.check_identity(identity, report)
        with crypto.decrypted(
            chunks,
            identity,
            expected_sha256=report["encryption"]["plaintextSha256"],
            name=name,
        ) as plaintext:
            restore_from_fd(cluster, plaintext.fd, "bulk_from_age_oss")
    assert table_fingerprint(cluster, "bulk_from_age_oss") == table_fingerprint(cluster, slow_db)


def test_wrong_or_missing_identity_is_refused_before_any_database_is_touched(
    setup: Setup, cluster: Cluster, run_cli: RunCli, keys: list[AgeKey]
) -> None:
    encrypt_to(setup, keys[0])
    assert run_cli("--config", str(setup.path), "run", "nightly").returncode == 0
    report = only_report(setup)
    stored = Path(report["local"]["file"])
    databases_before = cluster.psql("SELECT datname FROM pg_database ORDER BY 1")
    with crypto.identity_file(keys[2].ref) as stranger:
        with pytest.raises(crypto.EncryptionError) as by_fingerprint:
            crypto.check_identity(stranger, report, stored)
        # Even a report that names the stranger's key cannot make the stored file decrypt.
        forged = {
            **report,
            "encryption": {
                **report["encryption"],
                "recipientFingerprints": [crypto.fingerprint(keys[2].recipient)],
            },
        }
        with pytest.raises(crypto.EncryptionError) as by_content:
            crypto.check_identity(stranger, forged, stored)
    assert "the age identity does not match" in str(by_fingerprint.value)
    assert crypto.fingerprint(keys[0].recipient) in str(by_fingerprint.value)
    assert "does not match any recipient of this backup" in str(by_content.value)
    with pytest.raises(crypto.EncryptionError) as missing:
        crypto.check_identity(None, report, stored)
    assert "set encryption.age.identity" in str(missing.value)
    assert "restore --identity FILE" in str(missing.value)
    messages = str(by_fingerprint.value) + str(by_content.value) + str(missing.value)
    assert all(k.secret not in messages for k in keys)
    assert cluster.psql("SELECT datname FROM pg_database ORDER BY 1") == databases_before


def test_tampered_encrypted_dump_is_detected_with_a_clear_error(
    setup: Setup, cluster: Cluster, run_cli: RunCli, keys: list[AgeKey]
) -> None:
    encrypt_to(setup, keys[0])
    assert run_cli("--config", str(setup.path), "run", "nightly").returncode == 0
    report = only_report(setup)
    stored = Path(report["local"]["file"])
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, in the middle of the payload
    stored.write_bytes(bytes(data))
    check = subprocess.run(
        ["sha256sum", "-c", f"{stored.name}.sha256"], cwd=stored.parent, capture_output=True
    )
    assert check.returncode != 0
    with crypto.identity_file(keys[0].ref) as identity:
        crypto.check_identity(identity, report, stored)  # the header is intact
        with (
            pytest.raises(crypto.EncryptionError) as during_restore,
            crypto.decrypted(stored, identity) as plaintext,
        ):
            restore_from_fd(cluster, plaintext.fd, "shop_tampered")
        with pytest.raises(crypto.EncryptionError) as verified:
            crypto.verify_decryption(stored, identity)
    for caught in (during_restore, verified):
        message = str(caught.value)
        assert message.startswith(
            f"cannot decrypt {stored.name}: the file is damaged or was altered"
        )
        assert "failed to decrypt and authenticate payload chunk" in message


def test_checksum_mismatch_of_the_plaintext_is_reported(
    setup: Setup, run_cli: RunCli, keys: list[AgeKey]
) -> None:
    encrypt_to(setup, keys[0])
    assert run_cli("--config", str(setup.path), "run", "nightly").returncode == 0
    report = only_report(setup)
    stored = Path(report["local"]["file"])
    with crypto.identity_file(keys[0].ref) as identity:
        sha, size = crypto.verify_decryption(
            stored, identity, expected_sha256=report["encryption"]["plaintextSha256"]
        )
        assert (sha, size) == (
            report["encryption"]["plaintextSha256"],
            report["encryption"]["plaintextSizeBytes"],
        )
        with pytest.raises(crypto.EncryptionError) as caught:
            crypto.verify_decryption(stored, identity, expected_sha256="0" * 64)
    assert "it is not the backup the report describes" in str(caught.value)


def test_globals_file_is_encrypted_and_decrypts_to_the_roles(
    setup: Setup, run_cli: RunCli, keys: list[AgeKey]
) -> None:
    encrypt_to(setup, keys[0])
    assert run_cli("--config", str(setup.path), "run", "nightly").returncode == 0
    report = only_report(setup)
    globals_file = Path(report["local"]["globalsFile"])
    assert globals_file.name.endswith("_globals.sql.age")
    data = globals_file.read_bytes()
    assert_looks_encrypted(data)
    assert b"SCRAM-SHA-256" not in data
    assert report["encryption"]["globalsSha256"] == hashlib.sha256(data).hexdigest()
    with crypto.identity_file(keys[0].ref) as identity:
        crypto.check_identity(identity, report, globals_file, magic=b"--")
        with (
            crypto.decrypted(
                globals_file,
                identity,
                expected_sha256=report["encryption"]["globalsPlaintextSha256"],
            ) as plaintext,
            os.fdopen(os.dup(plaintext.fd), "rb") as reader,
        ):
            sql = reader.read().decode()
    assert "CREATE ROLE backup;" in sql and "SCRAM-SHA-256" in sql


@dataclass
class Sample:
    """What the watcher saw of one file while a run was going on."""

    path: Path
    head: bytes
    plaintext: bool


def watch(directories: list[Path], stop: threading.Event, seen: dict[str, Sample]) -> None:
    """Reads every file under `directories` over and over until `stop`, noting plaintext."""
    while not stop.is_set():
        for directory in directories:
            for path in list(directory.rglob("*")) if directory.exists() else []:
                try:
                    if not path.is_file():
                        continue
                    with path.open("rb") as handle:
                        content = handle.read(4 * 1024 * 1024)
                except OSError:
                    continue  # renamed or removed between listing and reading
                plaintext = content.startswith(crypto.PGDMP) or b"CREATE ROLE" in content
                previous = seen.get(str(path))
                if previous is None or plaintext or len(content) > len(previous.head):
                    seen[str(path)] = Sample(
                        path, content[:64], plaintext or bool(previous and previous.plaintext)
                    )
        time.sleep(0.005)


def test_no_plaintext_file_appears_in_the_data_state_or_bucket_during_an_encrypted_run(
    setup: Setup, oss_server: OssServer, keys: list[AgeKey], slow_db: str
) -> None:
    setup.job()["databases"] = slow_db
    use_oss(setup, oss_server, mode="both")
    encrypt_to(setup, keys[0])
    watched = [setup.data, setup.state, oss_server.root]
    seen: dict[str, Sample] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(watched, stop, seen), daemon=True)
    watcher.start()
    try:
        run = start_run(setup, env=OSS_ENV)
        wait_for_pg_dump(run.pid)
        _, stderr = run.communicate(timeout=300)
    finally:
        stop.set()
        watcher.join()
    assert run.returncode == 0, stderr
    only_report(setup)
    assert not [s.path for s in seen.values() if s.plaintext]
    # The watcher really saw the dump while it was being written, and the staged globals.
    temporaries = [
        s
        for s in seen.values()
        if ".db-backup-tmp" in s.path.parts and s.path.name.endswith((".dump.age", ".sql.age"))
    ]
    assert any(s.path.name.endswith(".dump.age") for s in temporaries)
    assert all(s.head.startswith(crypto.HEADER) for s in temporaries)
    assert any(s.path.name == "globals.sql.age" for s in seen.values())
    assert any(s.path.is_relative_to(oss_server.root) for s in seen.values())


def test_a_killed_age_fails_the_run_and_leaves_nothing_that_looks_like_a_backup(
    setup: Setup, keys: list[AgeKey], slow_db: str
) -> None:
    setup.job()["databases"] = slow_db
    setup.job()["globals"] = False
    encrypt_to(setup, keys[0])
    run = start_run(setup)
    dump_pid = wait_for_pg_dump(run.pid)
    age_pid = wait_for_child(run.pid, "age", exclude=dump_pid)
    time.sleep(0.5)
    os.kill(age_pid, 9)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 1, stderr
    [report] = setup.reports_json()
    assert report["status"] == "FAILED"
    assert "age was killed by signal SIGKILL" in report["errorMessage"]
    assert setup.data_files() == []


def wait_for_child(parent: int, name: str, exclude: int = 0, timeout: float = 30) -> int:
    """Returns the pid of the child of `parent` whose command is `name`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == exclude:
                continue
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if f"({name})" in stat and int(fields[1]) == parent:
                return int(pid)
        time.sleep(0.02)
    raise AssertionError(f"{name} did not start")


def test_check_config_has_age_check_every_recipient(
    setup: Setup, run_cli: RunCli, keys: list[AgeKey], tmp_path: Path
) -> None:
    good = keys[0].recipient
    bad_checksum = good[:-1] + ("q" if good[-1] != "q" else "p")
    recipients_file = tmp_path / "recipients.txt"
    recipients_file.write_text(f"# ops team\n{keys[1].recipient}\n\n{keys[2].secret}\n")
    setup.document["storage"]["encryption"] = {"age": {"recipients": [good, bad_checksum]}}
    setup.document["jobs"].append(
        {
            **setup.job(),
            "name": "weekly",
            "encryption": {"age": {"recipients_file": str(recipients_file)}},
        }
    )
    setup.write()
    done = run_cli("--config", str(setup.path), "check-config")
    assert done.returncode == 78  # EX_CONFIG: the config cannot be used
    assert "At 'storage.encryption.age': age refuses the recipients" in done.stderr
    assert "invalid checksum" in done.stderr
    assert f"At 'jobs[1].encryption.age': {recipients_file} line 4 is a private key" in done.stderr
    assert keys[2].secret not in done.stderr
    setup.document["storage"]["encryption"] = {"age": {"recipients": [good]}}
    recipients_file.write_text(f"{keys[1].recipient}\n")
    setup.write()
    done = run_cli("--config", str(setup.path), "check-config")
    assert done.returncode == 0, done.stderr


def test_run_with_a_refused_recipient_fails_before_dumping(
    setup: Setup, run_cli: RunCli, keys: list[AgeKey], tmp_path: Path
) -> None:
    recipients_file = tmp_path / "recipients.txt"
    recipients_file.write_text("age1notakey\n")
    setup.document["storage"]["encryption"] = {"age": {"recipients_file": str(recipients_file)}}
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 1
    [report] = setup.reports_json()
    assert report["status"] == "FAILED"
    assert f"{recipients_file} line 1 is not an age public key" in report["errorMessage"]
    assert setup.data_files() == []


def test_identity_file_holds_only_the_key_in_a_private_directory_and_is_removed(
    keys: list[AgeKey], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = tmp_path / "state" / "private" / "age"
    with crypto.identity_file(keys[0].ref, private) as identity:
        assert identity.parent == private
        assert private.stat().st_mode & 0o777 == 0o700
        assert identity.stat().st_mode & 0o777 == 0o600
        assert identity.read_text() == keys[0].secret + "\n"
        assert crypto.identity_recipients(identity) == [keys[0].recipient]
    assert not private.exists()
    monkeypatch.setenv("TEST_AGE_IDENTITY", keys[1].secret)
    with crypto.identity_file(SecretRef("env", "TEST_AGE_IDENTITY")) as identity:
        assert crypto.identity_recipients(identity) == [keys[1].recipient]
    not_a_key = tmp_path / "not-a-key"
    not_a_key.write_text("hunter2\n")
    with (
        pytest.raises(crypto.EncryptionError) as caught,
        crypto.identity_file(SecretRef("file", str(not_a_key))),
    ):
        pass
    assert "holds no age identity" in str(caught.value) and "hunter2" not in str(caught.value)


def test_a_failing_pg_dump_under_encryption_reports_pg_dumps_error_and_stores_nothing(
    setup: Setup, run_cli: RunCli, keys: list[AgeKey]
) -> None:
    setup.job()["databases"] = ["shop", "no_such_db"]
    encrypt_to(setup, keys[0])
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 1
    reports = {r["database"]: r for r in setup.reports_json()}
    assert reports["shop"]["status"] == "SUCCESS"
    failed = reports["no_such_db"]
    assert failed["status"] == "FAILED"
    # The database's definition is read before pg_dump starts: that read names the failure.
    assert failed["errorMessage"].startswith("reading the database's definition before pg_dump")
    assert 'database "no_such_db" does not exist' in failed["errorMessage"]
    assert failed["local"]["file"] == ""
    assert [name for name in failed["artefacts"] if not name.endswith(".json")] == []
    assert not [p for p in setup.data_files() if p.name.startswith("no_such_db")]


def test_an_encrypted_run_claims_its_age_names_and_a_stop_ends_age_and_pg_dump_cleanly(
    setup: Setup, keys: list[AgeKey], slow_db: str
) -> None:
    setup.job()["databases"] = slow_db
    setup.job()["globals"] = False
    encrypt_to(setup, keys[0])
    run = start_run(setup)
    dump_pid = wait_for_pg_dump(run.pid)
    age_pid = wait_for_child(run.pid, "age", exclude=dump_pid)
    time.sleep(0.5)
    # What a killed run would leave is found by its claim: it names the stored (.age) names.
    [claim_file] = [p for p in (setup.state / "claims").iterdir() if not p.name.startswith(".")]
    claim = json.loads(claim_file.read_text())
    assert claim["targets"] == {
        "local": [f"{claim['stem']}.dump.age", f"{claim['stem']}.dump.age.sha256"]
    }
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 1, stderr
    [report] = setup.reports_json()
    assert report["status"] == "FAILED"
    assert report["errorMessage"] == "stopped during the dump: received SIGTERM"
    assert setup.data_files() == []
    for pid in (dump_pid, age_pid):
        assert not Path(f"/proc/{pid}").exists(), f"child {pid} outlived the run"


def test_plain_format_is_encrypted_as_sql_age_and_restores_through_psql(
    setup: Setup, cluster: Cluster, run_cli: RunCli, keys: list[AgeKey]
) -> None:
    setup.job()["dump"] = {"format": "plain"}
    encrypt_to(setup, keys[0])
    assert run_cli("--config", str(setup.path), "run", "nightly").returncode == 0
    report = only_report(setup)
    stored = Path(report["local"]["file"])
    assert stored.name.endswith(".sql.age")
    data = stored.read_bytes()
    assert data.startswith(crypto.HEADER) and b"CREATE TABLE" not in data
    cluster.psql('DROP DATABASE IF EXISTS "shop_plain_age"')
    cluster.psql('CREATE DATABASE "shop_plain_age"')
    with crypto.identity_file(keys[0].ref) as identity:
        crypto.check_identity(identity, report, stored, magic=b"--")
        with crypto.decrypted(
            stored, identity, expected_sha256=report["encryption"]["plaintextSha256"]
        ) as plaintext:
            done = subprocess.run(
                [*cluster.psql_argv("shop_plain_age"), "-v", "ON_ERROR_STOP=1", "-q", "-f", "-"],
                stdin=plaintext.fd,
                capture_output=True,
                text=True,
                check=False,
            )
    assert done.returncode == 0, done.stderr
    assert table_fingerprint(cluster, "shop_plain_age") == table_fingerprint(cluster, "shop")


def test_daemon_refuses_a_recipient_age_rejects_at_start_and_on_reload(
    setup: Setup, keys: list[AgeKey], tmp_path: Path
) -> None:
    from tests.integration.test_daemon import NotifySocket, start_daemon, stop_daemon

    good = keys[0].recipient
    bad_checksum = good[:-1] + ("q" if good[-1] != "q" else "p")
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        encrypt_to(setup, keys[1])
        setup.document["storage"]["encryption"]["age"]["recipients"].append(bad_checksum)
        setup.write()
        refused = start_daemon(setup, notify)
        _, stderr = refused.communicate(timeout=60)
        assert refused.returncode == 78  # EX_CONFIG: systemd does not restart it in a loop
        assert "At 'storage.encryption.age': age refuses the recipients" in stderr

        encrypt_to(setup, keys[0])
        proc = start_daemon(setup, notify)
        try:
            notify.wait_for("READY")
            encrypt_to(setup, keys[1])
            setup.document["storage"]["encryption"]["age"]["recipients"].append(bad_checksum)
            setup.write()
            proc.send_signal(signal.SIGHUP)
            notify.wait_for("RELOADING")
            after = notify.wait_for("READY")
            assert "RELOAD FAILED, old config kept" in after["STATUS"]
            assert proc.poll() is None
        finally:
            _, stderr = stop_daemon(proc)
        assert "config reload refused" in stderr and "invalid checksum" in stderr
    finally:
        notify.sock.close()
