"""A report's JSON stays the same byte for byte: golden files of the reports a run writes.

Each case builds a report the way the backup run does (what it stores on each target, a
failure, the removal of what a failed database had already stored, retention's result) and
compares the file `write_report` writes with `tests/unit/golden/reports/<case>.json`. The golden
files were written before the report model changed; they change only with the report format.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from db_backup.reports.model import FAILED, SUCCESS, Report, TargetResult, stem, write_report
from db_backup.storage.base import StoredObject

GOLDEN = Path(__file__).with_name("golden") / "reports"
STARTED = datetime(2026, 11, 20, 2, 0, 7, 250_000, tzinfo=UTC)
DATA = "/var/lib/db-backup/data"
BUCKET = "oss://backups/postgres/backups"
SHA = "5e" * 32
PLAIN_SHA = "9a" * 32


def new_report(database: str = "shop", mode: str = "both", **fields: object) -> Report:
    """Returns a run's fresh (FAILED) report, as `_Run.new_report` makes it."""
    report = Report(
        job="nightly",
        database=database,
        host="127.0.0.1",
        port=5432,
        mode=mode,
        tool="local" if mode == "local" else "oss2",
        stem=stem(database, STARTED, "db01"),
        started=STARTED,
        trigger="schedule",
        pg_dump_version="15.18",
        server_version="15.18",
        hostname="db01.example",
        **fields,  # type: ignore[arg-type]
    )
    report.finished = STARTED + timedelta(seconds=93, microseconds=600_000)
    return report


# --- what the run does to a report, step by step ---------------------------------------------


def dumped(report: Report, size: int = 7_340_321, sha256: str = SHA) -> None:
    """The dump ended: its checksum and size (the stored bytes)."""
    report.sha256 = sha256
    report.size_bytes = size


def stored_on(
    report: Report,
    target: str,
    dump_names: list[str],
    dump: StoredObject,
    globals_name: str,
    checksum_name: str,
    location: Callable[[str], str],
) -> None:
    """A target holds the dump, then the globals file and the .sha256 beside it."""
    names = report.stored[target]
    names.extend(dump_names)
    globals_location = ""
    if globals_name:
        globals_location = location(globals_name)
        names.append(globals_name)
    checksum_location = location(checksum_name)
    names.append(checksum_name)
    report.targets[target] = TargetResult(
        SUCCESS,
        location=dump.location,
        size_bytes=dump.size_bytes,
        extra=dump.extra,
        checksum_location=checksum_location,
        globals_location=globals_location,
    )


def failed_on(report: Report, target: str, error: str) -> None:
    """A target failed: what it had stored of this database is deleted."""
    report.stored[target].clear()
    report.targets[target] = TargetResult(FAILED, error=error)


def settled(report: Report) -> None:
    """Every target has answered: SUCCESS unless one failed."""
    failed = report.failed_targets()
    if failed:
        report.error_message = "; ".join(f"{name}: {error}" for name, error in failed.items())
    else:
        report.status = SUCCESS


def removed_partial(report: Report, error: str) -> None:
    """The database failed after something was stored: all of it is deleted again."""
    report.error_message = error
    report.status = FAILED
    for names in report.stored.values():
        names.clear()


# --- the cases ---------------------------------------------------------------------------------


def local_path(name: str) -> str:
    return f"{DATA}/{name}"


def oss_url(name: str) -> str:
    return f"{BUCKET}/{name}"


def oss_dump(name: str, size: int) -> StoredObject:
    return StoredObject(
        oss_url(name),
        size,
        {
            "crc64": "11774305411312372522",
            "etag": "5B3C1A2B3C4D5E6F7A8B9C0D1E2F3A4B-3",
            "parts": 3,
            "partSize": 10_485_760,
            "uploadId": "0004B9894A22E5B1888A1E29F823****",
            "sha256Tag": SHA,
        },
    )


def case_local() -> Report:
    report = new_report(mode="local")
    s = report.stem
    report.stored = {"local": []}
    report.capacity = {"space": {"estimateBytes": 7_000_000, "source": "history"}}
    dumped(report)
    report.row_counts, report.tables = "exact", {"public.orders": 1200, 'public."Order Items"': 3}
    dump = StoredObject(local_path(f"{s}.dump"), 7_340_321, {"sha256": SHA})
    names = (f"{s}_globals.sql", f"{s}.dump.sha256")
    stored_on(report, "local", [f"{s}.dump"], dump, *names, local_path)
    settled(report)
    report.retention_deleted = [local_path("shop_20261001T020000Z_db01.dump")]
    return report


def case_oss() -> Report:
    report = new_report(mode="oss", compression=6)
    s = report.stem
    report.stored = {"oss": []}
    dumped(report, size=52_428_800)
    report.row_counts, report.tables = "estimate", {"public.orders": 1000}
    names = ("", f"{s}.dump.sha256")
    dump = oss_dump(f"{s}.dump", 52_428_800)
    stored_on(report, "oss", [f"{s}.dump"], dump, *names, oss_url)
    settled(report)
    report.retention_held = "the newest backup is suspiciously small"
    return report


def case_both() -> Report:
    report = new_report(attempt=2)
    s = report.stem
    report.stored = {"local": [], "oss": []}
    dumped(report)
    report.row_counts = "off"
    names = (f"{s}_globals.sql", f"{s}.dump.sha256")
    local = StoredObject(local_path(f"{s}.dump"), 7_340_321, {"sha256": SHA})
    stored_on(report, "local", [f"{s}.dump"], local, *names, local_path)
    remote = oss_dump(f"{s}.dump", 7_340_321)
    stored_on(report, "oss", [f"{s}.dump"], remote, *names, oss_url)
    settled(report)
    report.retention_deleted = [
        local_path("shop_20261001T020000Z_db01.dump"),
        oss_url("shop_20261001T020000Z_db01.dump"),
    ]
    report.retention_error = "oss: cannot delete: 503 ServiceUnavailable"
    return report


def case_directory() -> Report:
    report = new_report(dump_format="directory", compression=5)
    s = report.stem
    report.stored = {"local": [], "oss": []}
    dumped(report, size=9_000, sha256=PLAIN_SHA)  # the manifest's checksum, the files' sum
    report.row_counts, report.tables = "exact", {"public.orders": 1200}
    names = (f"{s}_globals.sql", f"{s}.dump.d.sha256")
    manifest = {"manifestSha256": PLAIN_SHA}
    local = StoredObject(local_path(f"{s}.dump.d"), 9_000, manifest)
    stored_on(report, "local", [f"{s}.dump.d"], local, *names, local_path)
    members = [f"{s}.dump.d/{f}" for f in ("3001.dat.gz", "3002.dat.gz", "toc.dat")]
    remote = StoredObject(
        oss_url(f"{s}.dump.d/"), 9_000, {"objects": [oss_url(m) for m in members]}
    )
    stored_on(report, "oss", members, remote, *names, oss_url)
    settled(report)
    return report


def case_encrypted() -> Report:
    encryption = {"method": "age", "recipientFingerprints": ["sha256:0123456789abcdef"]}
    report = new_report(encryption=dict(encryption))
    s = report.stem
    report.stored = {"local": [], "oss": []}
    dumped(report, size=7_340_500)
    assert report.encryption is not None
    report.encryption.update(
        plaintextSha256=PLAIN_SHA,
        plaintextSizeBytes=7_340_321,
        globalsPlaintextSha256="77" * 32,
        globalsSha256="88" * 32,
    )
    report.row_counts, report.tables = "exact", {"public.orders": 1200}
    names = (f"{s}_globals.sql.age", f"{s}.dump.age.sha256")
    local = StoredObject(local_path(f"{s}.dump.age"), 7_340_500, {"sha256": SHA})
    stored_on(report, "local", [f"{s}.dump.age"], local, *names, local_path)
    remote = oss_dump(f"{s}.dump.age", 7_340_500)
    stored_on(report, "oss", [f"{s}.dump.age"], remote, *names, oss_url)
    settled(report)
    return report


def case_rclone() -> Report:
    report = new_report(mode="oss")
    report.tool = "rclone"
    s = report.stem
    report.stored = {"rclone": []}
    dumped(report)
    names = ("", f"{s}.dump.sha256")
    dump = StoredObject(f"store:bucket/pg/{s}.dump", 7_340_321, {"tool": "rclone", "sha256": SHA})
    stored_on(report, "rclone", [f"{s}.dump"], dump, *names, lambda n: f"store:pg/{n}")
    settled(report)
    return report


def case_failed_before_the_dump() -> Report:
    report = new_report(database="*")
    report.error_message = "cannot connect to 127.0.0.1:5432: password authentication failed"
    return report


def case_failed_dump() -> Report:
    report = new_report()
    report.stored = {"local": [], "oss": []}
    report.capacity = {"space": {"estimateBytes": 7_000_000, "source": "history"}}
    removed_partial(report, "pg_dump failed (exit 1): permission denied for table orders")
    return report


def case_upload_failed_local_kept() -> Report:
    report = new_report()
    s = report.stem
    report.stored = {"local": [], "oss": []}
    dumped(report)
    names = (f"{s}_globals.sql", f"{s}.dump.sha256")
    local = StoredObject(local_path(f"{s}.dump"), 7_340_321, {"sha256": SHA})
    stored_on(report, "local", [f"{s}.dump"], local, *names, local_path)
    failed_on(report, "oss", "oss: upload of part 2 failed: 503 ServiceUnavailable")
    settled(report)
    return report


def case_checksum_upload_failed() -> Report:
    report = new_report(mode="oss")
    s = report.stem
    report.stored = {"oss": []}
    dumped(report)
    report.stored["oss"].append(f"{s}.dump")  # the dump is there when the .sha256 upload fails
    failed_on(report, "oss", "oss: put .sha256 failed: connection reset")
    settled(report)
    return report


def case_partial_removed() -> Report:
    report = new_report()
    s = report.stem
    report.stored = {"local": [], "oss": []}
    dumped(report)
    names = (f"{s}_globals.sql", f"{s}.dump.sha256")
    local = StoredObject(local_path(f"{s}.dump"), 7_340_321, {"sha256": SHA})
    stored_on(report, "local", [f"{s}.dump"], local, *names, local_path)
    remote = oss_dump(f"{s}.dump", 7_340_321)
    stored_on(report, "oss", [f"{s}.dump"], remote, *names, oss_url)
    settled(report)
    removed_partial(report, "stopped during the dump: SIGTERM")
    report.row_counts, report.row_counts_error = "failed", "statement timeout"
    return report


CASES: dict[str, Callable[[], Report]] = {
    name.removeprefix("case_"): builder
    for name, builder in dict(globals()).items()
    if name.startswith("case_") and callable(builder)
}


def written(tmp_path: Path, report: Report) -> bytes:
    return write_report(tmp_path, report).read_bytes()


@pytest.mark.parametrize("case", sorted(CASES))
def test_report_file_is_the_golden_one_byte_for_byte(tmp_path: Path, case: str) -> None:
    expected = (GOLDEN / f"{case}.json").read_bytes()
    assert written(tmp_path, CASES[case]()) == expected


def test_every_golden_file_has_its_case() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("*.json")) == sorted(CASES)
