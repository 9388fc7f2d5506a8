"""`sudo db-backup ...`: a root-started db-backup becomes the `run_as` user before doing anything.

The service runs as postgres (User=postgres); a manual run as root must use the same identity
(peer authentication, ~/.pgpass) and leave only files that the service can use.
"""

from __future__ import annotations

import os
import pwd
import shutil
import site
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from db_backup.cli import EXIT_CONFIG
from tests.conftest import CLI, RunCli, Setup

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root"),
]

SERVICE_USER = "postgres"


def _cli_for_every_user() -> tuple[list[str], dict[str, str]]:
    """Return (argv prefix, extra environment) of a db-backup command that postgres can run.

    That is the installed command, unless its interpreter lives where postgres cannot read it
    (a pyenv under root's 0700 home, as on the development machines): then Debian's python3 of
    the same minor version runs the same code and site-packages (-S keeps its dist-packages out).
    The switch happens inside the process, so every import after it needs a readable stdlib.
    """
    stdlib_os = Path(os.__file__).resolve()
    readable = subprocess.run(
        ["runuser", "-u", SERVICE_USER, "--", "test", "-r", str(stdlib_os)], check=False
    )
    if readable.returncode == 0:
        return [CLI], {}
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system.exists():
        pytest.skip(f"{SERVICE_USER} cannot read {stdlib_os} and there is no {system}")
    import db_backup

    paths = [str(Path(db_backup.__file__).resolve().parents[1]), *site.getsitepackages()]
    return [str(system), "-S", "-m", "db_backup.cli"], {"PYTHONPATH": os.pathsep.join(paths)}


@pytest.fixture
def service_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        pytest.skip(f"no {SERVICE_USER} user on this machine (apt-get install postgresql)")


@pytest.fixture
def shared_root(service_user: pwd.struct_passwd) -> Iterator[Path]:
    """A directory owned by the service user, outside root's 0700 pytest temp directory."""
    root = Path(tempfile.mkdtemp(prefix="db-backup-run-as-", dir="/tmp"))
    os.chown(root, service_user.pw_uid, service_user.pw_gid)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def as_service(setup: Setup, shared_root: Path, service_user: pwd.struct_passwd) -> Setup:
    """`setup` with `run_as: postgres`, laid out as the package does it under `shared_root`.

    The config is root:postgres 0640, the directories belong to postgres (the logs directory
    exists, as /var/log/db-backup does); root's pytest temp directory plays no part.
    """
    logs = shared_root / "logs"
    logs.mkdir(mode=0o750)
    os.chown(logs, service_user.pw_uid, service_user.pw_gid)
    setup.document["run_as"] = SERVICE_USER
    setup.document["directories"] = {
        "data": str(shared_root / "data"),
        "reports": str(shared_root / "reports"),
        "state": str(shared_root / "state"),
        "logs": str(logs),
    }
    setup.root = shared_root
    setup.path = shared_root / "config.yaml"
    setup.data, setup.reports, setup.state = (
        shared_root / "data",
        shared_root / "reports",
        shared_root / "state",
    )
    setup.write()
    os.chown(setup.path, 0, service_user.pw_gid)
    os.chmod(setup.path, 0o640)
    return setup


def run_from(cwd: Path, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI in `cwd` as root (as `sudo` from root's home would), or as `user`."""
    prefix, extra_env = _cli_for_every_user()
    argv = [*prefix, *args]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(
        argv,
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "DB_BACKUP_LOG_FORMAT": "json", "HOME": "/root", **extra_env},
        timeout=300,
        check=False,
    )


def not_owned_by(root: Path, uid: int) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.lstat().st_uid != uid]


def test_root_run_becomes_the_service_user_and_leaves_only_its_files(
    as_service: Setup, shared_root: Path, service_user: pwd.struct_passwd, tmp_path: Path
) -> None:
    root_home = tmp_path / "root-home"
    root_home.mkdir(mode=0o700)
    done = run_from(root_home, "--config", str(as_service.path), "run", "nightly")
    assert done.returncode == 0, done.stderr
    [report] = as_service.reports_json()
    assert report["status"] == "SUCCESS"
    # pg_dumpall found pg_dump although root's working directory is closed to postgres.
    assert Path(report["local"]["globalsFile"]).is_file()
    assert list((shared_root / "logs").glob("backup_*.log")), "the daily log file was written"
    assert not_owned_by(shared_root, service_user.pw_uid) == [str(as_service.path)]

    # The service's user runs the same job next, with the same lock, state and directories,
    # and a root run after that again: neither is in the other's way.
    again = run_from(Path("/"), "--config", str(as_service.path), "run", "nightly", user="postgres")
    assert again.returncode == 0, again.stderr
    time.sleep(1.1)  # distinct second-resolution report names
    third = run_from(root_home, "--config", str(as_service.path), "run", "nightly")
    assert third.returncode == 0, third.stderr
    assert [r["status"] for r in as_service.reports_json()] == ["SUCCESS"] * 3
    assert not_owned_by(shared_root, service_user.pw_uid) == [str(as_service.path)]


def _child_named(parent: int, comm: str, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{parent}/task").iterdir():
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in children:
                try:
                    if Path(f"/proc/{child}/comm").read_text().strip() == comm:
                        return int(child)
                except OSError:
                    continue
        time.sleep(0.05)
    raise AssertionError(f"no {comm} child of {parent} within {timeout} s")


def _ids(pid: int) -> dict[str, list[int]]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"Uid", "Gid", "Groups"}:
            fields[key] = [int(v) for v in value.split()]
    return fields


def test_root_run_takes_uid_gid_groups_and_home_of_the_service_user_like_runuser(
    as_service: Setup, slow_db: str, service_user: pwd.struct_passwd
) -> None:
    as_service.job()["databases"] = slow_db
    as_service.job()["globals"] = False
    as_service.write()
    prefix, extra_env = _cli_for_every_user()
    proc = subprocess.Popen(
        [*prefix, "--config", str(as_service.path), "run", "nightly"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DB_BACKUP_LOG_FORMAT": "json", "HOME": "/root", **extra_env},
    )
    try:
        dump_pid = _child_named(proc.pid, "pg_dump")
        runner, dump = _ids(proc.pid), _ids(dump_pid)
        environ = Path(f"/proc/{dump_pid}/environ").read_bytes().split(b"\0")
    finally:
        _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    uid, gid = service_user.pw_uid, service_user.pw_gid
    groups = sorted(os.getgrouplist(service_user.pw_name, gid))
    for ids in (runner, dump):
        assert ids["Uid"] == [uid] * 4  # real, effective, saved, file system
        assert ids["Gid"] == [gid] * 4
        assert sorted(ids["Groups"]) == groups  # root's own groups are gone
    assert f"HOME={service_user.pw_dir}".encode() in environ


def test_run_as_null_keeps_a_root_run_as_root(setup: Setup, run_cli: RunCli) -> None:
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 0, done.stderr
    assert not_owned_by(setup.root, 0) == []


def test_run_as_an_unknown_user_is_refused_before_anything_is_written(
    as_service: Setup, shared_root: Path, tmp_path: Path
) -> None:
    as_service.document["run_as"] = "no-such-user-dbb"
    as_service.write()
    done = run_from(tmp_path, "--config", str(as_service.path), "run", "nightly")
    assert done.returncode == EXIT_CONFIG
    assert "run_as: there is no user 'no-such-user-dbb' on this host" in done.stderr
    assert "run_as: null" in done.stderr
    assert sorted(p.name for p in shared_root.iterdir()) == ["config.yaml", "logs"]
    assert list((shared_root / "logs").iterdir()) == []


def test_a_user_other_than_root_is_never_switched(as_service: Setup, shared_root: Path) -> None:
    # run_as names postgres, the caller is nobody: it stays nobody (a switch would fail with
    # EPERM and be refused), so check-config simply works.
    os.chmod(shared_root, 0o755)
    os.chmod(as_service.path, 0o644)
    done = run_from(Path("/"), "--config", str(as_service.path), "check-config", user="nobody")
    assert done.returncode == 0, done.stderr
    assert "run_as" not in done.stderr
