"""The report index is rebuilt when it vanishes or breaks while in use: never a traceback.

Each fault is made for real: the SQLite file is deleted, overwritten, truncated or locked
between and during queries, by this process, by threads and by other processes, while reports
are written and pruned; every answer must still be the full read's.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from db_backup.observe.status import StatusQuery, query
from db_backup.reports import index as report_index
from db_backup.reports import index_db
from db_backup.reports.index import Match, ReportIndex, snapshot
from db_backup.reports.model import write_report
from tests.unit.test_report_index import (
    assert_same_answers,
    make_report,
    reference_backups,
    reference_page,
)

Notes = list[tuple[str, dict[str, str]]]


@pytest.fixture
def populated(tmp_path: Path) -> tuple[Path, Path]:
    rng = random.Random(11)
    reports_dir, index = tmp_path / "reports", tmp_path / "state" / report_index.INDEX_NAME
    reports_dir.mkdir()
    for n in range(60):
        write_report(reports_dir, make_report(rng, n))
    (reports_dir / "broken.json").write_text("{")
    assert_same_answers(reports_dir, index, rng)  # the index file exists and is in step
    return reports_dir, index


def delete(index: Path) -> None:
    index_db.remove(index)


def overwrite_in_place(index: Path) -> None:
    with open(index, "r+b") as handle:  # the same inode: an open connection reads this
        handle.write(b"this is not a database at all" * 300)


def truncate_to_nothing(index: Path) -> None:
    os.truncate(index, 0)


def replace_with_garbage(index: Path) -> None:
    staged = index.with_name("garbage")
    staged.write_bytes(os.urandom(8192))
    staged.replace(index)


FAULTS = [delete, overwrite_in_place, truncate_to_nothing, replace_with_garbage]


def answers(index: ReportIndex) -> tuple[Any, ...]:
    """Returns what status and retention ask of the index, as plain data."""
    return (
        index.warnings(),
        index.page(latest=True, limit=20, offset=0),
        index.page(Match(status="SUCCESS"), latest=False, limit=1000, offset=0),
        [e.backup() for e in index.entries(Match(job="hourly", database="shop"))],
        sorted(index.newest(), key=lambda n: (n.job, n.database)),
    )


def full_read_answers(reports_dir: Path) -> tuple[Any, ...]:
    with snapshot(reports_dir, None) as memory:
        return answers(memory)


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.__name__)
def test_a_fault_between_queries_of_one_snapshot_is_repaired_and_answers_stay_right(
    populated: tuple[Path, Path], fault: Callable[[Path], None]
) -> None:
    reports_dir, index = populated
    expected = full_read_answers(reports_dir)
    notes: Notes = []
    with snapshot(reports_dir, index, lambda event, fields: notes.append((event, fields))) as snap:
        assert answers(snap) == expected
        fault(index)
        assert answers(snap) == expected
        fault(index)
        assert answers(snap) == expected
    with snapshot(reports_dir, index, lambda event, fields: notes.append((event, fields))) as snap:
        assert answers(snap) == expected
    with sqlite3.connect(index) as conn:  # a good index file again, rebuilt from the reports
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (count,) = conn.execute("SELECT count(*) FROM reports").fetchone()
    assert count == 61
    assert all(event != "report index not usable, reading every report" for event, _ in notes)


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.__name__)
def test_a_fault_while_the_index_is_being_written_is_repaired(
    populated: tuple[Path, Path], fault: Callable[[Path], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    reports_dir, index = populated
    rng = random.Random(12)
    for n in range(100, 110):  # something to write at the next refresh
        write_report(reports_dir, make_report(rng, n))
    faults = [fault]
    real_apply = index_db._apply

    def faulty_apply(conn: sqlite3.Connection, plan: Any) -> None:
        if faults:  # once, inside the write transaction, before its first write
            faults.pop()(index)
        real_apply(conn, plan)

    monkeypatch.setattr(index_db, "_apply", faulty_apply)
    notes: Notes = []
    with snapshot(reports_dir, index, lambda event, fields: notes.append((event, fields))) as snap:
        got = answers(snap)
    assert not faults, "the fault was not made"
    assert got == full_read_answers(reports_dir)
    if fault is not overwrite_in_place:  # written over under our write lock: seen when read
        assert notes, "the repair was not said"
    assert_same_answers(reports_dir, index, rng)


def test_a_fault_in_the_middle_of_a_query_is_repaired(
    populated: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reports_dir, index = populated
    expected = full_read_answers(reports_dir)
    faults = [overwrite_in_place]
    real_page = report_index._page

    def faulty_page(conn: sqlite3.Connection, *args: Any) -> tuple[int, list[str]]:
        if faults:
            faults.pop()(index)
        return real_page(conn, *args)

    monkeypatch.setattr(report_index, "_page", faulty_page)
    notes: Notes = []
    with snapshot(reports_dir, index, lambda event, fields: notes.append((event, fields))) as snap:
        assert answers(snap) == expected
    assert [event for event, _ in notes] == ["report index corrupt, rebuilding it"]


def test_an_index_locked_for_longer_than_the_wait_is_not_waited_for_again(
    populated: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reports_dir, index = populated
    write_report(reports_dir, make_report(random.Random(13), 200))  # the refresh must write
    monkeypatch.setattr(index_db, "BUSY_TIMEOUT_S", 0.2)
    holder = sqlite3.connect(index, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process in the middle of a long write
    notes: Notes = []
    try:
        started = time.monotonic()
        with snapshot(reports_dir, index, lambda e, f: notes.append((e, f))) as snap:
            got = answers(snap)
        elapsed = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    assert got == full_read_answers(reports_dir)
    assert [event for event, _ in notes] == ["report index not usable, reading every report"]
    assert elapsed < 2.0  # one wait, then the answer from memory


def test_status_never_gives_a_traceback_while_the_index_is_deleted_over_and_over(
    populated: tuple[Path, Path],
) -> None:
    # Issue 21, item 10: 13 of 15 `status` runs crashed with "disk I/O error".
    reports_dir, index = populated
    q = StatusQuery(history=True, limit=1000)
    expected = reference_page(reports_dir, q)
    with deleting_in_a_loop(index):
        for _ in range(30):
            page = query(reports_dir, q, index)
            rows = [Path(row["reportFile"]).name for row in page.rows]
            assert (page.total, rows, page.warnings) == expected


@pytest.fixture
def deleter(populated: tuple[Path, Path]) -> Iterator[None]:
    with deleting_in_a_loop(populated[1]):
        yield


class deleting_in_a_loop:
    """Deletes (and now and then overwrites) the index file every few milliseconds."""

    def __init__(self, index: Path) -> None:
        self.index = index
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.rounds = 0

    def run(self) -> None:
        rng = random.Random(14)
        while not self.stop.is_set():
            fault = rng.choice([delete, delete, delete, replace_with_garbage])
            with contextlib.suppress(OSError):  # not there at the moment
                fault(self.index)
            self.rounds += 1
            time.sleep(rng.uniform(0.0005, 0.004))

    def __enter__(self) -> deleting_in_a_loop:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()
        assert self.rounds > 10, "the index was hardly ever deleted"


WORKER = textwrap.dedent(
    """
    import random, sys, traceback
    from datetime import UTC, datetime, timedelta
    from pathlib import Path
    from db_backup.observe.status import StatusQuery, query
    from db_backup.reports.index import Match, snapshot
    from db_backup.reports.model import Report, write_report

    reports_dir, index, tag = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    mine = []
    for n in range(40):
        report = Report(job=tag, database="shop", host="h", port=5432, mode="local",
                        tool="local", stem=f"shop_{tag}_{n:03d}",
                        started=t0 + timedelta(minutes=n), status="SUCCESS",
                        stored={"local": [f"shop_{tag}_{n:03d}.dump"]})
        mine.append(write_report(reports_dir, report).name)
        if n % 5 == 4:
            (reports_dir / mine.pop(0)).unlink()
        with snapshot(reports_dir, index) as snap:
            view = snap.backups(tag, "shop")
            seen = {e.name for e in snap.entries(Match(job=tag, database="shop"))}
        assert seen == set(mine), (tag, n, sorted(seen ^ set(mine)))
        assert [b.key for b in view] == mine[::-1], (tag, n)  # newest first
        page = query(reports_dir, StatusQuery(history=True, job=tag, limit=1000), index)
        assert page.total == len(mine), (tag, n, page.total, len(mine))
    print("ok")
    """
)


def test_processes_writing_and_pruning_while_the_index_is_deleted_never_fail(
    populated: tuple[Path, Path], deleter: None
) -> None:
    reports_dir, index = populated
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(reports_dir), str(index), tag],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for tag in ("a", "b", "c")
    ]
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, out[-3000:] + err[-3000:]
        assert out.splitlines()[-1] == "ok" and "Traceback" not in out + err, err[-3000:]


def test_a_long_lived_index_opens_the_new_file_after_the_old_one_was_deleted(
    populated: tuple[Path, Path],
) -> None:
    reports_dir, index = populated
    long_lived = ReportIndex(reports_dir, index)
    try:
        long_lived.refresh()
        delete(index)
        write_report(reports_dir, make_report(random.Random(15), 300))
        long_lived.refresh()
        assert index.exists(), "the deleted index was not rebuilt"
        for job, database in (("hourly", "shop"), ("nightly", "crm")):
            got = [e.backup() for e in long_lived.entries(Match(job=job, database=database))]
            assert got == reference_backups(reports_dir, job, database)
    finally:
        long_lived.close()


def test_a_slow_listing_never_takes_the_index_back_in_time(populated: tuple[Path, Path]) -> None:
    # Another process listed before this report was written, and writes its result after this
    # process brought the index up to date: the index keeps the newer state.
    reports_dir, index = populated
    slow_started, slow_listing = time.monotonic_ns(), index_db.list_reports(reports_dir)
    newer = write_report(reports_dir, make_report(random.Random(16), 400))
    with snapshot(reports_dir, index) as snap:
        assert newer.name in snap.page(latest=False, limit=-1, offset=0)[1]
    conn = index_db.connect(index, writable=True)
    try:
        index_db.sync(conn, reports_dir, slow_listing, slow_started, writable=True)
        names = {os.fsdecode(name) for (name,) in conn.execute("SELECT name FROM reports")}
    finally:
        conn.close()
    assert newer.name in names
