"""The report index answers exactly as a full read of the reports directory does.

The reference is `report.load_reports` (every file parsed) with the filtering and paging
`status` had before the index; the index must give the same totals, pages, warnings and
retention views over generated directories that are edited, truncated, corrupted and pruned
between reads.
"""

from __future__ import annotations

import functools
import json
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from db_backup import __version__
from db_backup.observe.status import StatusError, StatusQuery, query
from db_backup.reports import index as report_index
from db_backup.reports import index_db
from db_backup.reports.index import Match, snapshot
from db_backup.reports.model import (
    SUCCESS,
    Report,
    StoredReport,
    TargetResult,
    load_reports,
    stem,
    write_report,
)
from db_backup.reports.retention import Backup, backup_of, choose_expired

T0 = datetime(2026, 1, 1, tzinfo=UTC)
JOBS = ["hourly", "nightly", "", "ünïcode"]
DATABASES = ["shop", "crm", "we ird"]


# --- the reference: what status and retention answered before the index --------------------


def reference_page(reports_dir: Path, q: StatusQuery) -> tuple[int, list[str], list[str]]:
    """Returns (total, file names of the page, warnings) from a full read."""
    reports, warnings = load_reports(reports_dir)
    matching = [
        r
        for r in reports
        if (q.job is None or r.job == q.job)
        and (q.database is None or r.document["database"] == q.database)
        and (q.status is None or r.document["status"] == q.status.upper())
        and (q.since is None or r.started >= q.since)
    ]
    if not q.history:
        latest: dict[tuple[str, str], StoredReport] = {}
        for report in matching:
            latest.setdefault((report.job, report.document["database"]), report)
        matching = list(latest.values())
    start = (q.page - 1) * q.limit
    return len(matching), [r.path.name for r in matching[start : start + q.limit]], warnings


def reference_backups(reports_dir: Path, job: str, database: str) -> list[Backup]:
    reports, _ = load_reports(reports_dir)
    return [backup_of(r) for r in reports if r.job == job and r.database == database]


def indexed_backups(reports_dir: Path, index: Path | None, job: str, database: str) -> list[Backup]:
    """Returns every report of `job` and `database` as the index gives them, newest first."""
    with snapshot(reports_dir, index) as snap:
        return [e.backup() for e in snap.entries(Match(job=job, database=database))]


def indexed_page(
    reports_dir: Path, index: Path, q: StatusQuery
) -> tuple[int, list[str], list[str]]:
    page = query(reports_dir, q, index)
    return page.total, [Path(row["reportFile"]).name for row in page.rows], page.warnings


def assert_same_answers(reports_dir: Path, index: Path, rng: random.Random) -> None:
    """Compares the index with a full read on a spread of status queries and retention views."""
    queries = [StatusQuery(), StatusQuery(history=True, limit=1000)]
    for _ in range(6):
        queries.append(
            StatusQuery(
                history=rng.random() < 0.5,
                job=rng.choice([None, *JOBS]),
                database=rng.choice([None, *DATABASES]),
                status=rng.choice([None, "SUCCESS", "failed"]),
                since=rng.choice([None, T0 + timedelta(hours=rng.randrange(0, 60))]),
                limit=rng.choice([1, 3, 20]),
                page=rng.choice([1, 2, 3]),
            )
        )
    for q in queries:
        assert indexed_page(reports_dir, index, q) == reference_page(reports_dir, q), q
    for job in JOBS:
        for database in DATABASES:
            every = reference_backups(reports_dir, job, database)  # newest first
            got = indexed_backups(reports_dir, index, job, database)
            assert got == every, (job, database)


# --- generating and mangling a reports directory -------------------------------------------


def make_report(rng: random.Random, number: int) -> Report:
    database = rng.choice(DATABASES)
    # Few distinct start times, so ties are ordered by file name as before.
    started = T0 + timedelta(hours=rng.randrange(0, 48))
    name = stem(database, started, f"h{number}")
    report = Report(
        job=rng.choice(JOBS),
        database=database,
        host="127.0.0.1",
        port=5432,
        mode="local",
        tool="local",
        stem=name,
        started=started,
        status=rng.choice(["SUCCESS", "SUCCESS", "FAILED"]),
        stored={"local": [f"{name}.dump", f"{name}.dump.sha256"]},
        targets={"local": TargetResult(SUCCESS, location=f"/var/lib/db-backup/data/{name}.dump")},
    )
    if rng.random() < 0.3:  # a file several reports name (like a run's globals file)
        report.stored["local"].append(f"shared-{rng.randrange(3)}.sql")
    report.finished = started + timedelta(minutes=1)
    return report


def hand_edit(rng: random.Random, path: Path) -> None:
    """Rewrites a report the ways an operator or a bug might (in place, same inode)."""
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    kind = rng.randrange(11)
    if kind == 0:
        document["status"] = "FAILED" if document["status"] == "SUCCESS" else "SUCCESS"
    elif kind == 1:
        document["startedAt"] = (T0 + timedelta(hours=rng.randrange(0, 60))).isoformat()
    elif kind == 2:
        document["startedAt"] = "yesterday"
    elif kind == 3:
        del document["errorMessage"]
    elif kind == 4:
        document["artefacts"] = rng.choice([5, "x.dump", ["../../etc/passwd", 7, "ok.dump"]])
    elif kind == 5:
        document["database"] = rng.choice(DATABASES) + "\ud800"  # a lone surrogate, valid JSON
    elif kind == 6:
        document["job"] = rng.choice([7, None, ["a"], "nightly"])
    elif kind == 7:
        document["local"]["checksumFile"] = 12
    elif kind == 8:
        path.write_bytes(path.read_bytes()[: rng.randrange(1, 40)])  # truncated
        return
    elif kind == 9:
        path.write_bytes(b"\xff\xfe" + path.read_bytes()[2:])  # not UTF-8
        return
    else:
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))  # CRLF
        return
    text = json.dumps(document, indent=rng.choice([None, 2]))
    with open(path, "r+b") as handle:  # in place: the inode stays, only the stat changes
        handle.write(text.encode("utf-8", "surrogatepass"))
        handle.truncate()


def same_size_edit(path: Path) -> None:
    """Flips SUCCESS/FAILED inside the file without changing its size (the racy case)."""
    data = path.read_bytes()
    swapped = (
        data.replace(b'"SUCCESS"', b'"FAILED!"')
        if b'"SUCCESS"' in data
        else data.replace(b'"FAILED"', b'"SUCCES"')
    )
    with open(path, "r+b") as handle:
        handle.write(swapped)


def mutate(rng: random.Random, reports_dir: Path, counter: list[int]) -> None:
    """Adds, edits, deletes and renames reports, and drops in foreign files."""
    names = sorted(p.name for p in reports_dir.glob("*.json"))
    for _ in range(rng.randrange(3, 12)):
        action = rng.random()
        if action < 0.45 or not names:
            counter[0] += 1
            write_report(reports_dir, make_report(rng, counter[0]))
        elif action < 0.65:
            victim = reports_dir / rng.choice(names)
            if victim.is_file():
                try:
                    hand_edit(rng, victim)
                except (ValueError, UnicodeDecodeError, TypeError, KeyError, AttributeError):
                    victim.write_text("{}")  # it was no report to begin with
        elif action < 0.75:
            victim = reports_dir / rng.choice(names)
            if victim.is_file():
                same_size_edit(victim)
        elif action < 0.88:
            victim = reports_dir / rng.choice(names)
            if victim.is_dir() and not victim.is_symlink():
                victim.rmdir()
            else:
                victim.unlink(missing_ok=True)
        elif action < 0.94:
            source = reports_dir / rng.choice(names)
            if source.exists():
                source.rename(reports_dir / f"renamed-{counter[0]}-{source.name}")
        else:
            counter[0] += 1
            choice = rng.randrange(4)
            if choice == 0:
                (reports_dir / f"list-{counter[0]}.json").write_text("[]")
            elif choice == 1:
                (reports_dir / f"notes-{counter[0]}.txt").write_text("not a report")
            elif choice == 2:
                (reports_dir / f"dir-{counter[0]}.json").mkdir()
            else:
                (reports_dir / f"link-{counter[0]}.json").symlink_to(reports_dir / "gone")


@pytest.mark.parametrize("seed", range(6))
def test_index_answers_like_a_full_read_while_the_directory_changes(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    reports_dir, index = tmp_path / "reports", tmp_path / "state" / report_index.INDEX_NAME
    reports_dir.mkdir()
    counter = [0]
    for _ in range(30):
        counter[0] += 1
        write_report(reports_dir, make_report(rng, counter[0]))
    for _ in range(8):
        assert_same_answers(reports_dir, index, rng)
        mutate(rng, reports_dir, counter)
    assert_same_answers(reports_dir, index, rng)


def test_index_trusts_unchanged_files_and_rereads_only_what_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    real_read = index_db._read

    def counting_read(reports_dir: Path, name: bytes) -> Any:
        reads.append(os.fsdecode(name))
        return real_read(reports_dir, name)

    monkeypatch.setattr(index_db, "_read", counting_read)
    monkeypatch.setattr(index_db, "RACY_SECONDS", 0.0)  # stat changes are deliberate below
    rng = random.Random(7)
    reports_dir, index = tmp_path / "reports", tmp_path / report_index.INDEX_NAME
    reports_dir.mkdir()
    paths = [write_report(reports_dir, make_report(rng, n)) for n in range(40)]
    indexed_backups(reports_dir, index, "hourly", "shop")
    assert len(reads) == 40
    reads.clear()
    assert_same_answers(reports_dir, index, rng)
    assert reads == []
    edited, removed = paths[3], paths[5]
    edited.write_text(edited.read_text().replace('"SUCCESS"', '"FAILED"'))
    os.utime(edited, ns=(1, 1))  # a stat no earlier read has seen, whatever the clock
    removed.unlink()
    added = write_report(reports_dir, make_report(rng, 99))
    assert_same_answers(reports_dir, index, rng)
    assert sorted(set(reads)) == sorted({edited.name, added.name})


def test_reports_written_a_moment_ago_are_reread_until_their_stat_can_be_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Within the file system's timestamp granularity an in-place edit of the same size can
    # leave the stat unchanged; such young files are read again until they are old enough.
    reads: list[str] = []
    real_read = index_db._read

    def counting_read(reports_dir: Path, name: bytes) -> Any:
        reads.append(os.fsdecode(name))
        return real_read(reports_dir, name)

    monkeypatch.setattr(index_db, "_read", counting_read)
    monkeypatch.setattr(index_db, "RACY_SECONDS", 0.5)
    reports_dir, index = tmp_path / "reports", tmp_path / report_index.INDEX_NAME
    reports_dir.mkdir()
    path = write_report(reports_dir, make_report(random.Random(1), 1))
    indexed_backups(reports_dir, index, "x", "y")
    indexed_backups(reports_dir, index, "x", "y")
    assert reads == [path.name, path.name]  # young: not trusted yet
    time.sleep(0.6)
    indexed_backups(reports_dir, index, "x", "y")  # read once more, now settled
    reads.clear()
    indexed_backups(reports_dir, index, "x", "y")
    assert reads == []


# --- a stale, corrupt or foreign index is rebuilt ------------------------------------------


@pytest.fixture
def populated(tmp_path: Path) -> tuple[Path, Path]:
    rng = random.Random(3)
    reports_dir, index = tmp_path / "reports", tmp_path / "state" / report_index.INDEX_NAME
    reports_dir.mkdir()
    for n in range(25):
        write_report(reports_dir, make_report(rng, n))
    (reports_dir / "broken.json").write_text("{")
    assert_same_answers(reports_dir, index, rng)
    return reports_dir, index


def corrupt_garbage(index: Path) -> None:
    index.write_bytes(b"this is not a database at all" * 200)


def corrupt_truncated(index: Path) -> None:
    data = index.read_bytes()
    index.write_bytes(data[: len(data) // 2 + 100])


def corrupt_zero_pages(index: Path) -> None:
    data = bytearray(index.read_bytes())
    data[4096:] = b"\0" * (len(data) - 4096)  # every page but the header page wiped
    index.write_bytes(bytes(data))


def stamp_other_version(index: Path) -> None:
    with sqlite3.connect(index) as conn:
        conn.execute("UPDATE meta SET value = '0.0.0-old' WHERE key = 'version'")
        conn.execute("UPDATE reports SET status = CAST('FAILED' AS BLOB)")  # must not be believed


def stamp_other_directory(index: Path) -> None:
    with sqlite3.connect(index) as conn:
        conn.execute("UPDATE meta SET value = '/elsewhere' WHERE key = 'reports_dir'")
        conn.execute("DELETE FROM reports")


def drop_table(index: Path) -> None:
    with sqlite3.connect(index) as conn:
        conn.execute("DROP TABLE reports")


@pytest.mark.parametrize(
    "damage",
    [
        corrupt_garbage,
        corrupt_truncated,
        corrupt_zero_pages,
        stamp_other_version,
        stamp_other_directory,
        drop_table,
    ],
)
def test_damaged_or_foreign_index_is_rebuilt_from_the_reports(
    populated: tuple[Path, Path], damage: Callable[[Path], None]
) -> None:
    reports_dir, index = populated
    damage(index)
    assert_same_answers(reports_dir, index, random.Random(4))
    with sqlite3.connect(index) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        assert meta["version"] == __version__
        assert meta["reports_dir"] == str(reports_dir)
        (count,) = conn.execute("SELECT count(*) FROM reports").fetchone()
    assert count == 26  # 25 reports and the broken file, remembered with its warning


def test_status_says_when_it_rebuilt_a_corrupt_index(populated: tuple[Path, Path]) -> None:
    reports_dir, index = populated
    corrupt_garbage(index)
    page = query(reports_dir, StatusQuery(), index)
    assert [note.split(" (")[0] for note in page.notes] == ["report index corrupt, rebuilding it"]
    assert query(reports_dir, StatusQuery(), index).notes == []


def test_missing_index_and_missing_reports_directory(tmp_path: Path) -> None:
    index = tmp_path / "state" / report_index.INDEX_NAME
    # A reports directory that is not there is said, not shown as "0 reports".
    with pytest.raises(StatusError, match="does not exist"):
        query(tmp_path / "no-reports-yet", StatusQuery(), index)
    (tmp_path / "empty").mkdir()
    page = query(tmp_path / "empty", StatusQuery(), index)
    assert (page.total, page.rows, page.warnings) == (0, [], [])
    assert index.exists() and oct(index.stat().st_mode & 0o777) == "0o640"


def test_index_that_cannot_be_opened_falls_back_to_a_full_read(
    populated: tuple[Path, Path],
) -> None:
    reports_dir, index = populated
    index.unlink()
    index.mkdir()  # neither creatable nor openable as a database
    assert_same_answers(reports_dir, index, random.Random(5))


# --- concurrent writers and a kill at any line ---------------------------------------------

WORKER = textwrap.dedent(
    """
    import random, sys
    from datetime import UTC, datetime, timedelta
    from pathlib import Path
    from db_backup.reports.index import Match, snapshot
    from db_backup.reports.model import Report, write_report
    from db_backup.observe.status import StatusQuery, query

    reports_dir, index, tag = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    rng = random.Random(tag)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    mine = []
    for n in range(40):
        started = t0 + timedelta(minutes=n)
        report = Report(job=tag, database="shop", host="h", port=5432, mode="local",
                        tool="local", stem=f"shop_{tag}_{n:03d}", started=started,
                        status="SUCCESS", stored={"local": [f"shop_{tag}_{n:03d}.dump"]})
        mine.append(write_report(reports_dir, report).name)
        if n % 5 == 4:
            (reports_dir / mine.pop(0)).unlink()
        with snapshot(reports_dir, index) as snap:
            seen = {e.name for e in snap.entries(Match(job=tag, database="shop"))}
        assert seen == set(mine), (tag, n, sorted(seen ^ set(mine)))
        page = query(reports_dir, StatusQuery(history=True, job=tag, limit=1000), index)
        assert page.total == len(mine), (tag, n, page.total, len(mine))
        assert page.notes == [], page.notes  # never fell back to a full read
    print("ok")
    """
)


def run_workers(reports_dir: Path, index: Path, tags: list[str]) -> list[subprocess.Popen[str]]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    return [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(reports_dir), str(index), tag],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for tag in tags
    ]


def test_two_processes_updating_the_index_at_once_both_see_their_own_reports(
    tmp_path: Path,
) -> None:
    reports_dir, index = tmp_path / "reports", tmp_path / "state" / report_index.INDEX_NAME
    reports_dir.mkdir()
    workers = run_workers(reports_dir, index, ["a", "b"])
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0 and out.strip() == "ok", out[-3000:] + err[-3000:]
    with sqlite3.connect(index) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert_same_answers(reports_dir, index, random.Random(6))
    assert query(reports_dir, StatusQuery(history=True), index).total == 64


def test_process_killed_while_rebuilding_leaves_a_usable_index(tmp_path: Path) -> None:
    rng = random.Random(8)
    reports_dir, index = tmp_path / "reports", tmp_path / "state" / report_index.INDEX_NAME
    reports_dir.mkdir()
    for n in range(3000):
        write_report(reports_dir, make_report(rng, n))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    code = (
        "import sys; from pathlib import Path; from db_backup.reports.index import snapshot; "
        "snapshot(Path(sys.argv[1]), Path(sys.argv[2])).__enter__()"
    )
    killed_in_transaction = False
    journal = index.with_name(index.name + "-journal")
    for _attempt in range(8):
        index.unlink(missing_ok=True)
        child = subprocess.Popen(
            [sys.executable, "-c", code, str(reports_dir), str(index)], env=env
        )
        while child.poll() is None and not journal.exists():  # until the write transaction
            time.sleep(0.001)
        child.kill()
        child.wait()
        if journal.exists():
            killed_in_transaction = True
            assert_same_answers(reports_dir, index, rng)  # rolls back the hot journal, rebuilds
            assert not journal.exists()
            break
    assert killed_in_transaction, "never caught the rebuild inside its transaction"


# --- a retention step: one listing, nothing told by the writers -----------------------------


@pytest.fixture
def listings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts the listings of the reports directory ("listing") and the reports read (names)."""
    calls: list[str] = []
    real_listing, real_read = index_db.list_reports, index_db._read

    def counting_listing(reports_dir: Path) -> Any:
        calls.append("listing")
        return real_listing(reports_dir)

    def counting_read(reports_dir: Path, name: bytes) -> Any:
        calls.append(os.fsdecode(name))
        return real_read(reports_dir, name)

    monkeypatch.setattr(index_db, "list_reports", counting_listing)
    monkeypatch.setattr(index_db, "_read", counting_read)
    return calls


NOW = T0 + timedelta(hours=60)  # with one day kept: old before T0 + 36 h


def retention_view(reports_dir: Path, index: Path | None, job: str) -> list[Backup]:
    """Returns what a run's retention step reads: every report of `job` and `shop`."""
    return indexed_backups(reports_dir, index, job, "shop")


def checked_view(reports_dir: Path, index: Path, job: str = "hourly") -> list[Backup]:
    """Returns the retention view through the index, checked against a full read."""
    view = retention_view(reports_dir, index, job)
    assert view == retention_view(reports_dir, None, job)  # in memory, from a full read
    return view


def run_report(number: int, hours: int = 50) -> Report:
    started = T0 + timedelta(hours=hours)
    name = stem("shop", started, f"run{number}")
    return Report(
        job="hourly",
        database="shop",
        host="127.0.0.1",
        port=5432,
        mode="local",
        tool="local",
        stem=name,
        started=started,
        finished=started + timedelta(minutes=1),
        status="SUCCESS" if number % 4 else "FAILED",
        stored={"local": [f"{name}.dump", f"{name}.dump.sha256"]},
    )


def one_job_directory(tmp_path: Path, count: int = 30) -> tuple[Path, Path, list[Path]]:
    """Returns a directory of one job's reports over 48 hours, and an index of it."""
    reports_dir, index = tmp_path / "reports", tmp_path / "state" / report_index.INDEX_NAME
    reports_dir.mkdir()
    paths = [write_report(reports_dir, run_report(n, hours=n * 48 // 30)) for n in range(count)]
    indexed_backups(reports_dir, index, "hourly", "shop")
    return reports_dir, index, paths


def test_every_query_lists_the_directory_once_and_rereads_only_the_new_report(
    tmp_path: Path, listings: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_db, "RACY_SECONDS", 0.0)  # young files: see the test above
    reports_dir, index, _ = one_job_directory(tmp_path)
    for number in (101, 102, 103, 105):  # a run's own reports, written without telling anyone
        path = write_report(reports_dir, run_report(number, hours=number - 50))
        listings.clear()
        view = retention_view(reports_dir, index, "hourly")
        assert listings == ["listing", path.name]
        assert path.name in {b.key for b in view}  # the newest successful one
        assert view == retention_view(reports_dir, None, "hourly")


@pytest.mark.parametrize("change", ["added", "removed", "renamed", "replaced"])
def test_any_change_to_the_directory_is_seen_by_the_next_retention_step(
    tmp_path: Path, change: str
) -> None:
    reports_dir, index, paths = one_job_directory(tmp_path)
    checked_view(reports_dir, index)
    if change == "added":
        write_report(reports_dir, run_report(102, hours=55))
    elif change == "removed":
        paths[-1].unlink()
    elif change == "renamed":
        paths[-2].rename(reports_dir / "renamed.json")
    else:  # the run rewrites its own report with what retention did
        report = run_report(29, hours=29 * 48 // 30)
        report.status = "FAILED"
        write_report(reports_dir, report, replace=True)
    view = checked_view(reports_dir, index)
    if change == "added":
        assert run_report(102, hours=55).stem + ".json" in {b.key for b in view}


@pytest.mark.parametrize("edit", ["same-size-same-mtime", "truncated", "status"])
def test_edits_in_place_are_seen_by_the_next_retention_step(
    tmp_path: Path, listings: list[str], edit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_db, "RACY_SECONDS", 0.0)  # only a changed stat may tell
    reports_dir, index, _ = one_job_directory(tmp_path)
    newest = write_report(reports_dir, run_report(101))
    assert newest.name in {b.key for b in checked_view(reports_dir, index)}
    if edit == "same-size-same-mtime":
        before = newest.stat()
        same_size_edit(newest)  # SUCCESS -> FAILED!: no report any more
        os.utime(newest, ns=(before.st_atime_ns, before.st_mtime_ns))  # only ctime tells
    elif edit == "truncated":
        with open(newest, "r+b") as handle:
            handle.truncate(20)
    else:  # in place, another size: the operator marks the run failed
        text = newest.read_text().replace('"SUCCESS"', '"FAILED"')
        with open(newest, "r+b") as handle:
            handle.write(text.encode())
            handle.truncate()
    listings.clear()
    view = checked_view(reports_dir, index)
    assert newest.name in listings  # re-read
    if edit == "status":
        assert [b.successful for b in view if b.key == newest.name] == [False]
    else:  # no report any more
        assert newest.name not in {b.key for b in view}


def test_two_jobs_writing_and_pruning_at_once_answer_as_a_full_read(tmp_path: Path) -> None:
    reports_dir, index, _ = one_job_directory(tmp_path, count=10)
    errors: list[BaseException] = []

    def run(job: str, offset: int) -> None:
        try:
            for n in range(12):
                report = run_report(offset + n, hours=30 + n)
                report.job = job
                write_report(reports_dir, report)
                view = retention_view(reports_dir, index, job)
                expired, _ = choose_expired(view, now=NOW, days=1, keep_last=2)
                for backup in expired:  # what the retention step does with the report file
                    (reports_dir / backup.key).unlink(missing_ok=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job, k * 100)) for k, job in enumerate("ab")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for job in ("a", "b", "hourly"):
        checked_view(reports_dir, index, job)
    assert sorted(p.name for p in reports_dir.glob("*.json")) == sorted(
        b.key
        for job in ("a", "b", "hourly")
        for b in indexed_backups(reports_dir, None, job, "shop")
    )


@pytest.mark.parametrize("seed", range(3))
def test_retention_deletes_exactly_what_a_full_read_deletes(tmp_path: Path, seed: int) -> None:
    # New reports, rewrites, removals and edits in place, one after another: every step's
    # view gives the choice a full read gives.
    rng = random.Random(seed)
    reports_dir, index, paths = one_job_directory(tmp_path, count=40)
    names = [p.name for p in paths]
    for step in range(40):
        action = rng.random()
        if action < 0.5:
            report = run_report(1000 + step, hours=rng.randrange(0, 60))
            write_report(reports_dir, report)
            names.append(f"{report.stem}.json")
        elif action < 0.7 and names:
            (reports_dir / names.pop(rng.randrange(len(names)))).unlink(missing_ok=True)
        elif names:
            victim_path = reports_dir / rng.choice(names)
            try:
                (same_size_edit if rng.random() < 0.5 else functools.partial(hand_edit, rng))(
                    victim_path
                )
            except (ValueError, UnicodeDecodeError, TypeError, KeyError, AttributeError):
                victim_path.write_text("{}")  # no report to begin with: by the same hand
        view = retention_view(reports_dir, index, "hourly")
        full = retention_view(reports_dir, None, "hourly")
        assert deleted_files(view) == deleted_files(full), step


def deleted_files(backups: list[Backup]) -> set[str]:
    """Returns every file name retention deletes, choosing from `backups`."""
    expired, still_named = choose_expired(backups, now=NOW, days=1, keep_last=2)
    return {f for b in expired for f in b.files if f not in still_named}
