"""`{credential:}` references outside the unit: read from db-backup.service's own sources.

The integration tier has no systemd as PID 1, so the service manager is played by a `busctl` on
PATH that answers exactly what systemd 252 answers to
`busctl --json=short get-property ... LoadCredential LoadCredentialEncrypted SetCredential
SetCredentialEncrypted` (captured on Debian 12, 252.39) for a unit with a drop-in:

    [Service]
    LoadCredential=oss-secret:<root-only dir>/oss-secret
    SetCredential=oss-id:<the key id>

and records how it was called. Everything else is real: root reads the 0600 file before the
command becomes `run_as` (postgres, who could not read it), oss2 signs with the keys against the
loopback OSS server, pg_dump dumps the cluster.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import sys
from pathlib import Path

import pytest

from db_backup.cli import EXIT_CONFIG
from tests.conftest import Setup
from tests.integration.test_run_as import (  # noqa: F401 (fixtures)
    as_service,
    run_from,
    service_user,
    shared_root,
)
from tests.support.oss_fixtures import (
    OSS_ACCESS_KEY_ID,
    OSS_ACCESS_KEY_SECRET,
    OSS_BUCKET,
    OSS_REGION,
)
from tests.support.oss_server import OssServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="reading root-only credentials needs root"),
]

FAKE_BUSCTL = """#!{python}
import json, os, sys
with open({calls!r}, "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
sys.stdout.write(open({answer!r}).read())
"""


def busctl_answer(load: list[list[str]], set_: dict[str, bytes]) -> str:
    """Returns systemd 252's `busctl --json=short get-property` answer for the four properties."""
    lines = [
        {"type": "a(ss)", "data": load},
        {"type": "a(ss)", "data": []},
        {"type": "a(say)", "data": [[name, list(value)] for name, value in set_.items()]},
        {"type": "a(say)", "data": []},
    ]
    return "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)


@pytest.fixture
def fake_systemd(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A `busctl` on PATH; returns (its bin dir, the answer file to fill, its call log)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.chmod(tmp_path, 0o755)  # postgres never needs it, but the script must run for root
    answer, calls = tmp_path / "busctl.answer", tmp_path / "busctl.calls"
    script = bin_dir / "busctl"
    script.write_text(
        FAKE_BUSCTL.format(python=sys.executable, calls=str(calls), answer=str(answer))
    )
    script.chmod(0o755)
    return bin_dir, answer, calls


def root_only_secret(tmp_path: Path, name: str, value: str) -> Path:
    """Writes `value` to a 0600 root file in a 0700 directory, as /etc/db-backup/credentials."""
    directory = tmp_path / "credentials"
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def use_oss_credentials(setup: Setup, server: OssServer) -> None:
    setup.document["storage"] = {
        "mode": "both",
        "oss": {
            "endpoint": server.endpoint,
            "bucket": OSS_BUCKET,
            "region": OSS_REGION,
            "signature_version": "v4",
            "access_key_id": {"credential": "oss-id"},
            "access_key_secret": {"credential": "oss-secret"},
            "retries": 1,
            "connect_timeout_seconds": 3,
        },
    }
    setup.write()


def run_with_path(bin_dir: Path, cwd: Path, *args: str) -> object:
    old = os.environ["PATH"]
    os.environ["PATH"] = f"{bin_dir}:{old}"
    os.environ.pop("CREDENTIALS_DIRECTORY", None)
    try:
        return run_from(cwd, *args)
    finally:
        os.environ["PATH"] = old


def test_root_run_reads_the_units_credentials_before_becoming_the_service_user(
    as_service: Setup,  # noqa: F811
    oss_server: OssServer,
    fake_systemd: tuple[Path, Path, Path],
    tmp_path: Path,
) -> None:
    bin_dir, answer, calls = fake_systemd
    secret_file = root_only_secret(tmp_path, "oss-secret", OSS_ACCESS_KEY_SECRET)
    answer.write_text(
        busctl_answer([["oss-secret", str(secret_file)]], {"oss-id": OSS_ACCESS_KEY_ID.encode()})
    )
    use_oss_credentials(as_service, oss_server)
    postgres = pwd.getpwnam("postgres")
    assert stat.S_IMODE(secret_file.parent.stat().st_mode) == 0o700  # closed to postgres

    checked = run_with_path(bin_dir, Path("/"), "--config", str(as_service.path), "check-config")
    assert checked.returncode == 0, checked.stderr  # type: ignore[attr-defined]
    out = checked.stdout  # type: ignore[attr-defined]
    assert (
        "At 'storage.oss.access_key_id': credential 'oss-id' from "
        "SetCredential=oss-id of db-backup.service"
    ) in out
    assert (
        "At 'storage.oss.access_key_secret': credential 'oss-secret' from "
        f"LoadCredential=oss-secret:{secret_file} of db-backup.service"
    ) in out
    assert OSS_ACCESS_KEY_SECRET not in out + checked.stderr  # type: ignore[attr-defined]

    done = run_with_path(bin_dir, Path("/"), "--config", str(as_service.path), "run", "nightly")
    assert done.returncode == 0, done.stderr  # type: ignore[attr-defined]
    [report] = as_service.reports_json()
    assert report["status"] == "SUCCESS"
    assert report["remote"]["urls"][0].startswith(f"oss://{OSS_BUCKET}/")
    assert Path(report["local"]["file"]).stat().st_uid == postgres.pw_uid  # ran as postgres
    assert OSS_ACCESS_KEY_SECRET not in done.stderr  # type: ignore[attr-defined]
    call = json.loads(calls.read_text().splitlines()[-1])
    assert call == [
        "--system", "--json=short", "get-property", "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1/unit/db_2dbackup_2eservice", "org.freedesktop.systemd1.Service",
        "LoadCredential", "LoadCredentialEncrypted", "SetCredential", "SetCredentialEncrypted",
    ]  # fmt: skip


def test_manual_run_without_its_secret_fails_clearly_and_writes_no_report(
    as_service: Setup,  # noqa: F811
    oss_server: OssServer,
    fake_systemd: tuple[Path, Path, Path],
    tmp_path: Path,
) -> None:
    bin_dir, answer, _calls = fake_systemd
    # The unit loads oss-id only: oss-secret was never added to it.
    answer.write_text(busctl_answer([], {"oss-id": OSS_ACCESS_KEY_ID.encode()}))
    use_oss_credentials(as_service, oss_server)
    done = run_with_path(bin_dir, Path("/"), "--config", str(as_service.path), "run", "nightly")
    assert done.returncode == EXIT_CONFIG  # type: ignore[attr-defined]
    stderr = done.stderr  # type: ignore[attr-defined]
    assert (
        "nightly: not run, no report written: At 'storage.oss.access_key_secret': credential "
        "'oss-secret' is not loaded by db-backup.service (no LoadCredential=oss-secret:..."
    ) in stderr
    assert "systemctl edit db-backup.service" in stderr
    assert "Traceback" not in stderr
    assert as_service.reports_json() == []

    # A file the unit names but that is gone: said with its path.
    missing = tmp_path / "credentials" / "gone"
    answer.write_text(
        busctl_answer([["oss-secret", str(missing)]], {"oss-id": OSS_ACCESS_KEY_ID.encode()})
    )
    again = run_with_path(bin_dir, Path("/"), "--config", str(as_service.path), "run", "nightly")
    assert again.returncode == EXIT_CONFIG  # type: ignore[attr-defined]
    assert (
        f"credential 'oss-secret' cannot be read: LoadCredential=oss-secret:{missing} of "
        f"db-backup.service: cannot read {missing}: No such file or directory"
    ) in again.stderr  # type: ignore[attr-defined]
    assert as_service.reports_json() == []


def test_without_a_service_manager_credentials_cannot_be_checked_here(
    setup: Setup, tmp_path: Path, run_cli: object
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    broken = bin_dir / "busctl"
    broken.write_text(
        "#!/bin/sh\necho 'Failed to connect to bus: No such file or directory' >&2\nexit 1\n"
    )
    broken.chmod(0o755)
    setup.job()["connection"]["password"] = {"credential": "pgpass"}
    setup.write()
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = run_cli("check-config", "--config", str(setup.path), env=env)  # type: ignore[operator]
    assert done.returncode == EXIT_CONFIG
    assert (
        "At 'jobs[0].connection.password': credential 'pgpass' cannot be checked here: "
        "$CREDENTIALS_DIRECTORY is not set, and cannot ask systemd for the credentials of "
        "db-backup.service: busctl exited with status 1: Failed to connect to bus"
    ) in done.stderr
