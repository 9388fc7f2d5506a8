"""Shared fixtures: one real PostgreSQL cluster per session, configs, and the installed CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.oss_fixtures import oss_server  # noqa: F401  (fixture for every test)
from tests.support.pgcluster import Cluster, load_sample, start_cluster

CLI = str(Path(sys.executable).with_name("db-backup"))


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """Puts structlog's configuration and the root logger back after each test.

    A test that calls `db_backup.cli.main` in-process sets logging up for that command, bound
    to the stderr pytest captured for that test; a later test's threads would then log into a
    closed stream and die there (a delivery thread before it records what it delivered).
    """
    import logging

    import structlog

    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


BACKUP_PASSWORD = "s3cr3t-Pa55-for-backup-9x7"


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """A running throwaway cluster with sample databases `shop` and `crm` and a password role."""
    if not shutil.which("runuser") and os.geteuid() == 0:
        pytest.skip("runuser is needed to start PostgreSQL as the postgres user")
    try:
        started = start_cluster()
    except RuntimeError as exc:
        pytest.skip(f"PostgreSQL server binaries not available: {exc}")
    load_sample(started, "shop", 2000)
    load_sample(started, "crm", 300)
    started.psql(f"CREATE ROLE backup LOGIN SUPERUSER PASSWORD '{BACKUP_PASSWORD}'")
    started.psql("CREATE ROLE limited LOGIN PASSWORD 'limited-pass'")
    started.psql("GRANT CONNECT ON DATABASE shop TO limited")
    yield started
    started.stop()
    shutil.rmtree(started.root, ignore_errors=True)


@dataclass
class Setup:
    """A config file for a test and the directories it points at."""

    root: Path
    path: Path
    data: Path
    reports: Path
    state: Path
    document: dict[str, Any]

    def write(self) -> Path:
        """Writes `document` to the config file and returns its path."""
        self.path.write_text(yaml.safe_dump(self.document, sort_keys=False), encoding="utf-8")
        return self.path

    def data_files(self, directory: Path | None = None) -> list[Path]:
        """Returns every file under the data directory (temporary ones included), not dirs."""
        root = directory or self.data
        return sorted(p for p in root.rglob("*") if not p.is_dir()) if root.exists() else []

    def temporaries(self) -> list[Path]:
        """Returns what is being written (or was left by a killed run) in the data directory."""
        return sorted((self.data / ".db-backup-tmp").glob("*"))

    def job(self, index: int = 0) -> dict[str, Any]:
        """Returns the job mapping at `index` for editing."""
        jobs: list[dict[str, Any]] = self.document["jobs"]
        return jobs[index]

    def reports_json(self) -> list[dict[str, Any]]:
        """Returns every report in the reports directory, sorted by file name."""
        import json

        return [json.loads(p.read_text()) for p in sorted(self.reports.glob("*.json"))]


@pytest.fixture
def setup(tmp_path: Path, cluster: Cluster) -> Setup:
    """A local-mode config with one job `nightly` dumping `shop` over the cluster's socket."""
    data, reports, state = tmp_path / "data", tmp_path / "reports", tmp_path / "state"
    document: dict[str, Any] = {
        # Tests run as root against root-owned temporary directories: stay root.
        "run_as": None,
        "directories": {"data": str(data), "reports": str(reports), "state": str(state)},
        "storage": {"mode": "local"},
        "jobs": [
            {
                "name": "nightly",
                "schedule": "0 2 * * *",
                "databases": "shop",
                "connection": {
                    "host": str(cluster.socket_dir),
                    "port": cluster.port,
                    "user": "postgres",
                },
            }
        ],
    }
    made = Setup(tmp_path, tmp_path / "config.yaml", data, reports, state, document)
    made.write()
    return made


@pytest.fixture
def slow_db(cluster: Cluster) -> str:
    """A database big enough that its dump takes a few seconds at -Z 9."""
    name = "bulk"
    if name not in cluster.psql("SELECT datname FROM pg_database").split():
        cluster.psql(f"CREATE DATABASE {name}")
        cluster.psql(
            "CREATE TABLE blob AS SELECT i, md5(i::text) || md5((i*3)::text) AS a, "
            "md5((i*7)::text) AS b FROM generate_series(1, 1500000) i",
            name,
        )
    return name


RunCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_cli() -> RunCli:
    """Runs the installed `db-backup` command and returns the finished process (text mode)."""

    def _run(
        *args: str, env: dict[str, str] | None = None, timeout: float = 300, user: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = [CLI, *args]
        if user:
            argv = ["runuser", "-u", user, "--", *argv]
        full_env = {**os.environ, "DB_BACKUP_LOG_FORMAT": "json", **(env or {})}
        return subprocess.run(
            argv, capture_output=True, text=True, env=full_env, timeout=timeout, check=False
        )

    return _run
