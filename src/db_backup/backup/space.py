"""Capacity before a dump: is there room for it?

`room_for_dump` (before each dump) estimates the space the dump needs (the largest of this job's
and database's recent successful backups of the same format, or pg_database_size for a first
run) and refuses to start it when the local file system that receives it cannot hold it with
the margin. Dumps running at the same time (parallel databases, other jobs, timer units, manual
runs) reserve their estimate (`backup.reservations`), so two of them never count on the same
free bytes. `estimate_from_history` and `decide_room` decide; `room_for_dump` acts.

The other capacity checks live beside it: `backup.usage` (free space and the bucket's usage
after a run) and `backup.sizeguard` (a suspiciously small backup holds retention). None of them
ever turns a good backup into a failure: only a refused dump fails, and it fails before pg_dump
starts, leaving nothing behind.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from db_backup.backup.history import JobHistory
from db_backup.backup.naming import dump_name
from db_backup.backup.reservations import Reservations
from db_backup.config import CapacitySettings, Config, JobConfig
from db_backup.postgres import tools as pg
from db_backup.reports.model import Report
from db_backup.storage.base import StorageError
from db_backup.storage.local import TEMP_DIR_NAME, temp_name
from db_backup.util.fsutil import describe_os_error
from db_backup.util.secrets import mask
from db_backup.util.units import format_size

log = structlog.get_logger("db_backup.backup.space")


class NotEnoughSpace(StorageError):
    """The local file system cannot hold the dump about to start; the message says the numbers."""


# --------------------------------------------------------------------------- the decision


@dataclass(frozen=True)
class Estimate:
    """The space a dump is expected to take, and where that number comes from."""

    size: int
    source: str  # "history" | "pg_database_size"
    detail: str  # in words, for the error message


def local_size(document: Mapping[str, Any]) -> int | None:
    """Returns the stored size a report records (`local.sizeBytes`), or None when it has none."""
    local = document.get("local")
    size = local.get("sizeBytes") if isinstance(local, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def comparable(
    document: Mapping[str, Any], dump_format: str, compression: int, encrypted: bool
) -> bool:
    """Returns whether a report's dump was made the way the next one will be (format, -Z, age)."""
    return (
        document.get("format", "custom") == dump_format
        and document.get("compression", compression) == compression
        and bool(document.get("encryption")) == encrypted
    )


def estimate_from_history(
    documents: Sequence[Mapping[str, Any]],
    *,
    dump_format: str,
    compression: int,
    encrypted: bool,
    history: int,
) -> Estimate | None:
    """Returns the largest size of the first `history` comparable reports, or None if none is.

    `documents` are successful reports of the job and database, newest first; the ones made
    another way (format, compression, encryption) or without a size are passed over.
    """
    sizes = []
    for document in documents:
        size = local_size(document)
        if size is not None and comparable(document, dump_format, compression, encrypted):
            sizes.append(size)
        if len(sizes) == history:
            break
    if not sizes:
        return None
    many = f"the last {len(sizes)} successful backups" if len(sizes) > 1 else "the last one"
    return Estimate(max(sizes), "history", f"the largest of {many}")


def needed_bytes(size: int, margin_percent: float, margin_min: int) -> int:
    """Returns the estimate plus the margin (the larger of the percentage and the minimum)."""
    return size + max(int(size * margin_percent / 100), margin_min)


@dataclass(frozen=True)
class Room:
    """The answer to "may this dump start?", with the numbers the report records."""

    needed: int  # the estimate plus the margin
    free: int  # free bytes on the file system now
    reserved: int  # what running dumps on it may still write
    fits: bool


def decide_room(guess: Estimate, wanted: CapacitySettings, free: int, reserved: int) -> Room:
    """Returns whether a dump of `guess`'s size, with the margin, fits next to the reservations."""
    needed = needed_bytes(guess.size, wanted.margin_percent, wanted.margin_min)
    return Room(needed, free, reserved, fits=needed <= free - reserved)


def space_record(directory: Path, guess: Estimate, room: Room) -> dict[str, Any]:
    """Returns the report's `capacity.space` object: where, the estimate and the free space."""
    return {
        "directory": str(directory),
        "estimateBytes": guess.size,
        "estimateSource": guess.source,
        "neededBytes": room.needed,
        "freeBytes": room.free,
        "reservedBytes": room.reserved,
    }


def refusal(
    directory: Path, database: str, guess: Estimate, room: Room, wanted: CapacitySettings
) -> str:
    """Returns the FAILED report's message of a refused dump: directory, estimate, free space."""
    needed, free, reserved = room.needed, room.free, room.reserved
    others = (
        f", of which {format_size(reserved)} ({reserved} bytes) are reserved by dumps running "
        "on the same file system"
        if reserved
        else ""
    )
    margin = f"a {wanted.margin_percent:g}% margin"
    if wanted.margin_min:
        margin += f" (at least {format_size(wanted.margin_min)})"
    return (
        f"not enough free space in {directory} for the dump of {database}: it needs about "
        f"{format_size(needed)} ({needed} bytes), {format_size(free)} ({free} bytes) are "
        f"free{others}; the dump was not started. Estimate: {format_size(guess.size)} from "
        f"{guess.detail}, plus {margin}. Free space there, or adjust capacity.margin_percent "
        "(capacity.check_space: false turns the check off)"
    )


# --------------------------------------------------------------------------- before a dump


def dump_directory(config: Config, job: JobConfig, staging: Path) -> Path | None:
    """Returns the local directory a dump of `job` is written into, or None (streamed away)."""
    if job.mode in {"local", "both"}:
        return config.directories.data
    if job.dump.format == "directory":
        return staging  # pg_dump -Fd writes there before the upload
    return None


def estimate(
    job: JobConfig,
    database: str,
    env: dict[str, str],
    reports: JobHistory,
    *,
    encrypted: bool,
    history: int,
) -> Estimate | None:
    """Returns the expected size of the next dump of `database`, or None when unknown.

    The largest of the last `history` successful backups made the same way; without one (a
    first run, or the format changed), pg_database_size: an upper bound, as a compressed dump
    is usually several times smaller than the database.
    """
    # Reports of another format do not count: read a few more to find `history` that do.
    found = estimate_from_history(
        reports.successful(database, history * 3),
        dump_format=job.dump.format,
        compression=job.dump.compression,
        encrypted=encrypted,
        history=history,
    )
    if found is not None:
        return found
    size = pg.database_size(job, env, database)
    if size is None:
        return None
    return Estimate(
        size,
        "pg_database_size",
        "pg_database_size (no earlier backup made this way; an upper bound, a compressed dump "
        "is usually much smaller)",
    )


@contextlib.contextmanager
def room_for_dump(
    config: Config,
    job: JobConfig,
    env: dict[str, str],
    report: Report,
    staging: Path,
    reports: JobHistory,
) -> Iterator[None]:
    """Holds a reservation for the dump of `report.database` while the block runs.

    Raises NotEnoughSpace (before anything is written) when the file system that receives the
    dump cannot hold the estimate plus the margin next to what running dumps reserved. Records
    the numbers in `report.capacity["space"]`. Anything that keeps the check from being made
    (no estimate, statvfs failing) is logged and the dump goes ahead.
    """
    wanted = job.capacity
    directory = dump_directory(config, job, staging)
    guess = None
    if directory is not None and wanted.check_space:
        guess = _guess(job, env, report, reports, wanted)
    token = None
    if directory is not None and guess is not None:
        token = _reserve(config, job, report, directory, guess, wanted)
    try:
        yield
    finally:
        if token is not None:
            Reservations(config.directories.state).release(token)


def _guess(
    job: JobConfig,
    env: dict[str, str],
    report: Report,
    reports: JobHistory,
    wanted: CapacitySettings,
) -> Estimate | None:
    """Returns the estimate of the dump of `report.database`, or None (logged) without one."""
    try:
        guess = estimate(
            job,
            report.database,
            env,
            reports,
            encrypted=report.encryption is not None,
            history=wanted.estimate_from_last,
        )
    except Exception as exc:  # a fault of the check must not fail a backup that may fit
        log.error(
            "size estimate failed",
            job=job.name,
            database=report.database,
            error=mask(f"{type(exc).__name__}: {exc}"),
        )
        guess = None
    if guess is None:
        log.info(
            "no size estimate, dump not checked against the free space",
            job=job.name,
            database=report.database,
        )
    return guess


def _reserve(
    config: Config,
    job: JobConfig,
    report: Report,
    directory: Path,
    guess: Estimate,
    wanted: CapacitySettings,
) -> Path | None:
    """Checks the room and reserves it; returns the reservation's token, None if not checked.

    Raises NotEnoughSpace when the dump does not fit.
    """
    name = dump_name(report.stem, job.dump.format, report.encryption is not None)
    paths = [directory / TEMP_DIR_NAME / temp_name(job.name, name), directory / name]
    book = Reservations(config.directories.state)
    try:
        with book.locked():
            device = directory.stat().st_dev
            room = decide_room(
                guess, wanted, shutil.disk_usage(directory).free, book.reserved(device)
            )
            report.capacity = {
                **(report.capacity or {}),
                "space": space_record(directory, guess, room),
            }
            if not room.fits:
                raise NotEnoughSpace(refusal(directory, report.database, guess, room, wanted))
            token = book.reserve(device, room.needed, paths)
    except OSError as exc:
        log.warning(
            "free space not checked",
            job=job.name,
            database=report.database,
            error=describe_os_error(exc, exc.filename or directory),
        )
        return None
    log.debug(
        "room reserved for the dump",
        job=job.name,
        database=report.database,
        directory=str(directory),
        needed=room.needed,
        free=room.free,
        reserved=room.reserved,
    )
    return token
