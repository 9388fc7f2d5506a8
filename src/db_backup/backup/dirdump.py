"""A directory-format dump (`pg_dump -Fd -j N`): written locally, its files uploaded as they close."""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable
from pathlib import Path

from db_backup.backup.context import ProgressCallback
from db_backup.backup.directory import DirectoryUpload
from db_backup.backup.stream import StreamOutcome
from db_backup.config import JobConfig
from db_backup.postgres import tools as pg
from db_backup.storage.base import Target
from db_backup.storage.local import LocalTarget
from db_backup.util.cancel import CancelToken


def dump_directory_format(
    job: JobConfig,
    env: dict[str, str],
    targets: list[Target],
    database: str,
    dump_name: str,
    cancel: CancelToken,
    snapshot: str | None = None,
    *,
    staging: Path,
    intend: Callable[[dict[str, list[str]]], None],
    progress: ProgressCallback | None = None,
) -> StreamOutcome:
    """Dumps in directory format (-Fd -j N) locally while its files go up to each remote.

    The directory is written through the local target's temporary directory (mode both) or,
    without a local target, in the run's staging directory, removed right after the upload.
    Each file goes up as soon as pg_dump closes it (`backup.directory`); each remote stores the
    files as `<dump_name>/<file>`; one that fails is FAILED and keeps nothing, the others go on.
    The local directory is renamed to its final name only after every upload is over.
    """
    local = next((t for t in targets if isinstance(t, LocalTarget)), None)
    remotes = [t for t in targets if t is not local]
    writer = local if local is not None else LocalTarget(staging, job.name)
    sink = writer.open_directory(dump_name)
    upload = None
    try:
        if remotes:
            workers = max(1, min(job.dump.jobs, 4))
            upload = DirectoryUpload(
                remotes, sink.path, dump_name, workers, cancel, intend, job=job.name,
                database=database,
            )  # fmt: skip
            upload.start()
        pg.dump_to_directory(
            job,
            env,
            database,
            sink.path,
            cancel,
            snapshot,
            None if progress is None else functools.partial(progress, job.name, database),
        )
        files = sorted(path.name for path in sink.path.iterdir())
        results = upload.finish(files) if upload is not None else {}
        cancel.raise_if_cancelled()
        stored, manifest = sink.commit(upload.checksums() if upload is not None else None)
    except BaseException as exc:
        if upload is not None:
            upload.abort(str(exc) or type(exc).__name__)
        sink.abort()
        raise
    outcome = StreamOutcome(
        stored.extra["manifestSha256"], stored.size_bytes, checksum_text=manifest
    )
    if local is not None:
        outcome.stored[local.name] = stored
        outcome.names[local.name] = [dump_name]
    else:
        shutil.rmtree(stored.location, ignore_errors=True)
    for remote in remotes:
        if remote.name in results:
            outcome.stored[remote.name] = results[remote.name]
            outcome.names[remote.name] = [f"{dump_name}/{file}" for file in files]
        elif upload is not None:
            outcome.failed[remote.name] = upload.failed[remote.name]
    return outcome
