"""One database's dump: pg_dump to every target, then its globals and .sha256 beside it.

`dump` fills the database's report (checksums, sizes, per-target results); what a target
stored is recorded in `report.stored` as it goes, so a failure can take it all away again
(`finish.remove_partial`). The globals (`pg_dumpall --globals-only`) are dumped once per run
(`dump_globals`) and stored beside every database's dump under that dump's own stem.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import structlog

from db_backup.backup import rowcounts
from db_backup.backup.claims import Claim
from db_backup.backup.context import RunContext
from db_backup.backup.dirdump import dump_directory_format
from db_backup.backup.naming import checksum_name, dump_name, globals_name
from db_backup.backup.stream import StreamOutcome, encrypt_to_file, stream_dump
from db_backup.postgres import dbdef
from db_backup.postgres import tools as pg
from db_backup.reports.model import FAILED, SUCCESS, Report, TargetResult
from db_backup.storage import crypto, delete_quietly
from db_backup.storage.base import StorageError, StoredObject, Target
from db_backup.util.execute import CommandError
from db_backup.util.locks import JobSetupError
from db_backup.util.secrets import mask

log = structlog.get_logger("db_backup.backup.database")


def dump_globals(ctx: RunContext) -> None:
    """Runs pg_dumpall --globals-only once per run into the staging directory.

    Encrypted, the output goes through age on its way to the file: the password hashes
    it holds never touch the disk in the clear. Its sha256 (and the plaintext's) is kept in
    `ctx.globals_checksums` for every database's report and `.sha256`. A failure is kept in
    `ctx.globals_error`: every database's backup then fails with it.
    """
    path = ctx.staging / crypto.stored_name("globals.sql", ctx.encrypted)
    try:
        if ctx.recipients:
            child = pg.start_globals(ctx.job, ctx.env)
            plain, stored = encrypt_to_file(child, ctx.recipients, path, ctx.cancel)
            ctx.globals_checksums = {"globalsPlaintextSha256": plain, "globalsSha256": stored}
        else:
            pg.dump_globals(ctx.job, ctx.env, path)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()  # kilobytes: read at once
            ctx.globals_checksums = {"globalsSha256": digest}
    except CommandError as exc:
        ctx.globals_error = f"globals (pg_dumpall --globals-only) failed: {exc}"
        return
    ctx.globals_staged = path
    log.info("globals dumped", job=ctx.job.name, bytes=path.stat().st_size)


def dump(
    ctx: RunContext,
    database: str,
    report: Report,
    claim: Claim,
    snap: rowcounts.DumpSnapshot,
) -> None:
    """Streams one pg_dump to every target, then its globals and .sha256; fills the report."""
    dump_file = dump_name(report.stem, ctx.job.dump.format, ctx.encrypted)
    globals_file = globals_name(report.stem, ctx.encrypted) if ctx.globals_staged else ""
    globals_checksum = checksum_name(globals_file) if globals_file else ""
    names = [n for n in (dump_file, globals_file, globals_checksum, checksum_name(dump_file)) if n]
    claim.intend({target.name: names for target in ctx.targets})
    # What pg_restore without --create leaves out, read before the dump so a restore under
    # any name can recreate it; a database that cannot be read is not backed up.
    report.database_definition = dbdef.capture(ctx.job, ctx.env, database).to_json()
    outcome = _run_dump(ctx, database, dump_file, claim, names, snap.snapshot_id)
    snap.record(report, ctx.cancel)
    report.sha256 = outcome.sha256
    report.size_bytes = outcome.size
    if report.encryption is not None:
        report.encryption.update(
            plaintextSha256=outcome.plaintext_sha256,
            plaintextSizeBytes=outcome.plaintext_size,
            **(ctx.globals_checksums if ctx.globals_staged else {}),
        )
    if ctx.globals_staged is not None:
        report.globals_file = globals_record(ctx, globals_file)
        sums = ctx.staging / globals_checksum
        sums.write_text(f"{report.globals_file['sha256']}  {globals_file}\n", encoding="utf-8")
    checksum_path = ctx.staging / checksum_name(dump_file)
    checksum_path.write_text(outcome.checksum_text, encoding="utf-8")
    for target in ctx.targets:
        if target.name in outcome.failed:
            error = mask(outcome.failed[target.name])
            report.targets[target.name] = TargetResult(FAILED, error=error)
            continue
        dump_names = outcome.names.get(target.name) or [dump_file]
        dump_object = outcome.stored[target.name]
        store_beside(ctx, target, dump_names, dump_object, report, checksum_path)
    failed = report.failed_targets()
    if failed:
        report.error_message = "; ".join(f"{name}: {error}" for name, error in failed.items())
    else:
        report.status = SUCCESS


def globals_record(ctx: RunContext, name: str) -> dict[str, Any]:
    """Returns the report's `globals` entry: the roles file's name, size and sha256 as stored
    (and, encrypted, its plaintext's sha256)."""
    assert ctx.globals_staged is not None
    record: dict[str, Any] = {
        "file": name,
        "sizeBytes": ctx.globals_staged.stat().st_size,
        "sha256": ctx.globals_checksums["globalsSha256"],
    }
    if "globalsPlaintextSha256" in ctx.globals_checksums:
        record["plaintextSha256"] = ctx.globals_checksums["globalsPlaintextSha256"]
    return record


def _run_dump(
    ctx: RunContext,
    database: str,
    dump_file: str,
    claim: Claim,
    names: list[str],
    snapshot: str | None,
) -> StreamOutcome:
    """Runs pg_dump (in `snapshot`, so row counts match the dump) to every target."""
    job = ctx.job
    if job.dump.format == "directory":
        if ctx.encrypted:
            raise JobSetupError("the directory format cannot be encrypted (check-config says so)")

        def intend_members(members: dict[str, list[str]]) -> None:
            claim.intend({t.name: names + members.get(t.name, []) for t in ctx.targets})

        return dump_directory_format(
            job,
            ctx.env,
            ctx.targets,
            database,
            dump_file,
            ctx.cancel,
            snapshot,
            staging=ctx.staging,
            intend=intend_members,
            progress=ctx.progress,
        )
    # Remotes with a part limit size their parts from the database's size.
    hint = None
    if any(t.name != "local" for t in ctx.targets):
        hint = pg.database_size(job, ctx.env, database)
    return stream_dump(
        job,
        ctx.env,
        ctx.targets,
        database,
        dump_file,
        ctx.cancel,
        ctx.progress,
        hint,
        snapshot,
        ctx.recipients,
    )


def store_beside(
    ctx: RunContext,
    target: Target,
    dump_names: list[str],
    dump_object: StoredObject,
    report: Report,
    checksum_path: Path,
) -> None:
    """Stores the globals (and its .sha256) and the dump's .sha256 next to a committed dump;
    on failure, the dump goes."""
    names = report.stored[target.name]
    names.extend(dump_names)
    try:
        globals_obj = None
        if ctx.globals_staged is not None:
            name = globals_name(report.stem, ctx.encrypted)
            globals_obj = target.put_file(ctx.globals_staged, name)
            names.append(name)
            target.put_file(ctx.staging / checksum_name(name), checksum_name(name))
            names.append(checksum_name(name))
        checksum_obj = target.put_file(checksum_path, checksum_path.name)
        names.append(checksum_path.name)
    except StorageError as exc:
        delete_quietly(target, names)
        report.targets[target.name] = TargetResult(FAILED, error=mask(str(exc)))
        return
    report.targets[target.name] = TargetResult(
        SUCCESS,
        location=dump_object.location,
        size_bytes=dump_object.size_bytes,
        extra=dict(dump_object.extra),
        checksum_location=checksum_obj.location,
        globals_location=globals_obj.location if globals_obj else "",
    )
