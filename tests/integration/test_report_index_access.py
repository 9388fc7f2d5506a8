"""The report index shared by root (an operator's `status`) and the service user (the daemon),
and deleted while `status` and a backup run use it.

Runs real processes as the `postgres` system user with `runuser`, so it needs root.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from db_backup.observe.status import StatusQuery, query
from db_backup.reports import index as report_index
from db_backup.reports.model import Report, write_report
from tests.conftest import RunCli, Setup

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/python3").exists(),
    reason="needs root (to run as postgres) and /usr/bin/python3",
)
SRC = Path(__file__).resolve().parents[2] / "src"
# The service user cannot reach an interpreter under /root (pyenv): run Debian's python3 with the
# venv's packages, the same Python minor version.
SYSTEM_PYTHON = "/usr/bin/python3"
SITE_PACKAGES = (
    Path(sys.prefix)
    / "lib"
    / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    / "site-packages"
)
T0 = datetime(2026, 11, 1, tzinfo=UTC)


@dataclass
class Dirs:
    reports: Path
    state: Path
    owner: pwd.struct_passwd

    @property
    def index(self) -> Path:
        return report_index.default_path(self.state)

    def args(self) -> list[str]:
        return [str(self.reports), str(self.index)]

    def add_report(self, number: int) -> Path:
        report = Report(
            job="nightly",
            database="shop",
            host="h",
            port=5432,
            mode="local",
            tool="local",
            stem=f"shop_{number:04d}",
            started=T0 + timedelta(hours=number),
            status="SUCCESS",
        )
        path = write_report(self.reports, report)
        os.chown(path, self.owner.pw_uid, self.owner.pw_gid)
        return path


@pytest.fixture
def dirs() -> Iterator[Dirs]:
    owner = pwd.getpwnam("postgres")
    base = Path(tempfile.mkdtemp(prefix="db-backup-index-", dir="/var/tmp"))
    os.chmod(base, 0o755)
    found = Dirs(base / "reports", base / "state", owner)
    for directory in (found.reports, found.state):
        directory.mkdir(mode=0o750)
        os.chown(directory, owner.pw_uid, owner.pw_gid)
    yield found
    shutil.rmtree(base, ignore_errors=True)


def status_as_postgres(dirs: Dirs) -> subprocess.CompletedProcess[str]:
    code = (
        "import json, sys; from pathlib import Path; "
        "from db_backup.observe.status import StatusQuery, query; "
        "page = query(Path(sys.argv[1]), StatusQuery(history=True), Path(sys.argv[2])); "
        "print(json.dumps({'total': page.total, 'notes': page.notes}))"
    )
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", SYSTEM_PYTHON, "-c", code, *dirs.args()],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{SRC}:{SITE_PACKAGES}"},
        cwd="/",
        check=True,
    )


def test_index_created_by_root_belongs_to_the_service_user_who_keeps_updating_it(
    dirs: Dirs,
) -> None:
    for number in range(5):
        dirs.add_report(number)
    assert query(dirs.reports, StatusQuery(history=True), dirs.index).total == 5  # as root
    assert dirs.index.stat().st_uid == dirs.owner.pw_uid
    assert oct(dirs.index.stat().st_mode & 0o777) == "0o640"
    dirs.add_report(5)
    page = json.loads(status_as_postgres(dirs).stdout)
    assert page == {"total": 6, "notes": []}  # it updated the index itself
    assert not dirs.index.with_name(dirs.index.name + "-journal").exists()


def test_user_who_cannot_write_the_index_reads_it_and_falls_back_to_a_full_read_when_stale(
    dirs: Dirs,
) -> None:
    for number in range(3):
        dirs.add_report(number)
    query(dirs.reports, StatusQuery(history=True), dirs.index)
    os.chown(dirs.index, 0, 0)  # e.g. copied back by hand as root
    os.chmod(dirs.index, 0o644)
    up_to_date = json.loads(status_as_postgres(dirs).stdout)  # nothing to write
    assert up_to_date == {"total": 3, "notes": []}  # answered from the index
    dirs.add_report(3)
    stale = json.loads(status_as_postgres(dirs).stdout)
    assert stale["total"] == 4
    assert [n.split(" (")[0] for n in stale["notes"]] == [
        "report index not usable, reading every report"
    ]


# --- the index deleted while the commands use it (issue 21, item 10) -------------------------


class DeletingTheIndex:
    """Deletes the index file (and its journal) every few milliseconds while the block runs."""

    def __init__(self, index: Path) -> None:
        self.index = index
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.deleted = 0

    def run(self) -> None:
        while not self.stop.is_set():
            for victim in (self.index, self.index.with_name(self.index.name + "-journal")):
                with contextlib.suppress(FileNotFoundError):
                    victim.unlink()
                    self.deleted += 1
            time.sleep(0.002)

    def __enter__(self) -> DeletingTheIndex:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()


def test_status_never_crashes_while_the_index_is_deleted(setup: Setup, run_cli: RunCli) -> None:
    setup.reports.mkdir(parents=True)
    for number in range(300):
        report = Report(
            job="nightly",
            database="shop",
            host="h",
            port=5432,
            mode="local",
            tool="local",
            stem=f"shop_{number:04d}",
            started=T0 + timedelta(hours=number),
            status="SUCCESS",
        )
        write_report(setup.reports, report)
    index = report_index.default_path(setup.state)
    with DeletingTheIndex(index) as deleter:
        for _ in range(15):
            done = run_cli("--config", str(setup.path), "status", "--history", "--json")
            assert done.returncode == 0, done.stderr[-3000:]
            assert "Traceback" not in done.stderr
            assert json.loads(done.stdout)["total"] == 300
    assert deleter.deleted > 0


def test_a_run_prunes_every_database_while_the_index_is_deleted(
    setup: Setup, run_cli: RunCli
) -> None:
    # Issue 21, item 10: with the index deleted during a run, retention steps failed with
    # "please report this as a bug".
    setup.job()["databases"] = ["shop", "crm"]
    setup.job()["retention"] = {"days": 1, "keep_last": 1}
    setup.write()
    setup.reports.mkdir(parents=True)
    old = datetime.now(UTC) - timedelta(days=10)
    expired = []
    for database in ("shop", "crm"):
        for number in range(40):
            report = Report(
                job="nightly",
                database=database,
                host="h",
                port=5432,
                mode="local",
                tool="local",
                stem=f"{database}_{number:04d}_old",
                started=old + timedelta(hours=number),
                status="SUCCESS",
            )
            expired.append(write_report(setup.reports, report))
    index = report_index.default_path(setup.state)
    with DeletingTheIndex(index) as deleter:
        done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "please report" not in done.stderr
    assert deleter.deleted > 0
    assert not [path for path in expired if path.exists()]
    reports = setup.reports_json()
    assert sorted(r["database"] for r in reports) == ["crm", "shop"]
    for document in reports:
        assert document["status"] == "SUCCESS"
        assert document["retention"]["error"] == ""
        assert len(document["retention"]["deleted"]) == 40
