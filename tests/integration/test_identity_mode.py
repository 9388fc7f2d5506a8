"""An age identity file others can read or change is said so (issue 21, item 9).

A real key from `age-keygen`, chmod'ed: `check-config` warns (and still passes: the key must stay
usable for a restore), and using the identity logs the event.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import structlog.testing

from db_backup.config import SecretRef
from db_backup.storage import crypto
from db_backup.storage.keyfile import identity_mode_problem
from tests.conftest import RunCli, Setup

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("age-keygen") is None, reason="age is not installed"),
]


@pytest.mark.parametrize("mode", [0o100600, 0o100400, 0o100640, 0o100440])
def test_a_private_or_group_readable_identity_is_fine(mode: int) -> None:
    assert identity_mode_problem("/etc/db-backup/age.key", mode) is None


@pytest.mark.parametrize(
    ("mode", "said"),
    [
        (0o100644, "readable by every user (mode 0644)"),
        (0o100604, "readable by every user (mode 0604)"),
        (0o100660, "writable by its group (mode 0660)"),
        (0o100602, "writable by every user (mode 0602)"),
        (0o100666, "readable by every user and writable by every user and writable by its group"),
    ],
)
def test_an_identity_others_can_read_or_change_is_named_with_its_mode(mode: int, said: str) -> None:
    problem = identity_mode_problem("/etc/db-backup/age.key", mode)
    assert problem is not None and said in problem
    assert "chmod 600 /etc/db-backup/age.key" in problem


def _key(directory: Path) -> tuple[Path, str]:
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / "age.key"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    recipient = subprocess.run(
        ["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()
    return path, recipient


def test_check_config_warns_about_a_world_readable_identity_and_still_passes(
    setup: Setup, run_cli: RunCli
) -> None:
    path, recipient = _key(setup.root / "keys")
    setup.document["storage"]["encryption"] = {
        "age": {"recipients": [recipient], "identity": {"file": str(path)}}
    }
    setup.write()
    path.chmod(0o644)
    loose = run_cli("--config", str(setup.path), "check-config")
    assert loose.returncode == 0, loose.stderr
    assert (
        f"db-backup: warning: At 'storage.encryption.age.identity': the age identity {path} "
        "is readable by every user (mode 0644)"
    ) in loose.stderr
    assert "AGE-SECRET-KEY" not in loose.stderr + loose.stdout
    path.chmod(0o600)
    private = run_cli("--config", str(setup.path), "check-config")
    assert private.returncode == 0 and "warning" not in private.stderr


def test_using_a_group_writable_identity_logs_it(tmp_path: Path) -> None:
    path, _ = _key(tmp_path / "keys")
    path.chmod(0o660)
    with (
        structlog.testing.capture_logs() as logged,
        crypto.identity_file(SecretRef("file", str(path))) as identity,
    ):
        assert identity.read_text().startswith("AGE-SECRET-KEY-1")
    [event] = [e for e in logged if e["event"] == "age identity file not private"]
    assert event["log_level"] == "warning" and event["path"] == str(path)
    assert "writable by its group (mode 0660)" in event["problem"]
    path.chmod(0o600)
    with (
        structlog.testing.capture_logs() as quiet,
        crypto.identity_file(SecretRef("file", str(path))),
    ):
        pass
    assert not [e for e in quiet if e["event"] == "age identity file not private"]
