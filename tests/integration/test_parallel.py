"""Databases of a job dumped in parallel, under one host-wide limit on pg_dump processes."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunCli, Setup
from tests.support.pgcluster import Cluster
from tests.support.procs import start_run

pytestmark = pytest.mark.integration


def dumping_pids(socket_dir: Path) -> set[int]:
    """Returns the pids of the pg_dumps dumping from the cluster at `socket_dir` (not --version).

    Other test sessions may run on this machine: their clusters have other socket directories.
    """
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            str(socket_dir).encode() in cmdline
            and cmdline[0].endswith(b"pg_dump")
            and any(a.startswith(b"--format=") for a in cmdline)
        ):
            pids.add(int(entry))
    return pids


@pytest.fixture
def slow_dbs(cluster: Cluster, slow_db: str) -> Iterator[list[str]]:
    """Four copies of the slow database (cheap: CREATE DATABASE ... TEMPLATE)."""
    names = [f"{slow_db}_p{i}" for i in range(4)]
    existing = cluster.psql("SELECT datname FROM pg_database").split()
    for name in names:
        if name not in existing:
            cluster.psql(f"CREATE DATABASE {name} TEMPLATE {slow_db}")
    yield names


class PeakWatcher:
    """Samples the number of running pg_dump processes in a thread; `peak` is the maximum seen."""

    def __init__(self, socket_dir: Path) -> None:
        self.socket_dir = socket_dir
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, len(dumping_pids(self.socket_dir)))
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def test_parallel_databases_give_distinct_correct_reports_and_globals_once(
    setup: Setup, cluster: Cluster, run_cli: RunCli
) -> None:
    setup.job()["databases"] = ["shop", "crm", "postgres"]
    setup.job()["parallel_databases"] = 2
    setup.write()
    watcher = PeakWatcher(cluster.socket_dir)
    done = run_cli("--config", str(setup.path), "run", "nightly")
    peak = watcher.stop()
    assert done.returncode == 0, done.stderr
    reports = {r["database"]: r for r in setup.reports_json()}
    assert set(reports) == {"shop", "crm", "postgres"}
    assert all(r["status"] == "SUCCESS" for r in reports.values())
    assert len({r["id"] for r in reports.values()}) == 3
    for report in reports.values():
        dump = Path(report["local"]["file"])
        assert dump.name.startswith(report["database"] + "_") and dump.exists()
        assert Path(report["local"]["globalsFile"]).exists()
    assert done.stderr.count('"globals dumped"') == 1
    assert 1 <= peak <= 2


def test_one_database_failing_never_stops_the_others_in_parallel(
    setup: Setup, run_cli: RunCli
) -> None:
    setup.job()["databases"] = ["shop", "no_such_db", "crm"]
    setup.job()["parallel_databases"] = 2
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 1
    reports = {r["database"]: r for r in setup.reports_json()}
    assert reports["no_such_db"]["status"] == "FAILED"
    assert reports["shop"]["status"] == "SUCCESS" and reports["crm"]["status"] == "SUCCESS"


def test_sigterm_stops_every_parallel_dump_with_failed_reports(
    setup: Setup, cluster: Cluster, slow_dbs: list[str]
) -> None:
    setup.job()["databases"] = slow_dbs[:3]
    setup.job()["parallel_databases"] = 2
    setup.job()["globals"] = False
    setup.write()
    proc = start_run(setup)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(setup.temporaries()) < 2:
        time.sleep(0.05)
    assert len(setup.temporaries()) == 2, "two dumps did not start"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    reports = {r["database"]: r for r in setup.reports_json()}
    assert set(reports) == set(slow_dbs[:3])
    assert all(r["status"] == "FAILED" for r in reports.values())
    messages = sorted(r["errorMessage"] for r in reports.values())
    assert sum("stopped during the dump" in m for m in messages) == 2
    assert sum("stopped before the dump started" in m for m in messages) == 1
    assert setup.data_files() == []
    assert not dumping_pids(cluster.socket_dir)


def test_host_wide_dump_limit_holds_when_two_parallel_jobs_overlap(
    setup: Setup, cluster: Cluster, slow_dbs: list[str], run_cli: RunCli
) -> None:
    first = setup.job()
    first.update(databases=slow_dbs[:2], parallel_databases=2, globals=False)
    setup.document["jobs"].append({**first, "name": "other", "databases": slow_dbs[2:]})
    setup.document["daemon"] = {"max_dumps": 2}
    setup.write()
    watcher = PeakWatcher(cluster.socket_dir)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = list(
            pool.map(
                lambda job: run_cli("--config", str(setup.path), "run", job), ["nightly", "other"]
            )
        )
    peak = watcher.stop()
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    assert peak == 2, f"{peak} pg_dump processes ran at once; the host limit is 2"
    assert any('"waiting for a dump slot"' in r.stderr for r in runs)
    assert len(setup.reports_json()) == 4
