"""The host's dump slots: at most `daemon.max_dumps` dumps at once, whoever started them."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator

import structlog

from db_backup.config import Config
from db_backup.util.cancel import CancelToken

log = structlog.get_logger("db_backup.backup.slots")

SLOT_POLL_SECONDS = 0.2


@contextlib.contextmanager
def dump_slot(config: Config, job_name: str, cancel: CancelToken) -> Iterator[None]:
    """Holds one of the host's `daemon.max_dumps` dump slots while the block runs.

    A slot is a flock on `<state>/slots/dump-<i>`, so the limit holds across the daemon's jobs,
    timer units and manual runs alike; a run waits (stop requests still count) until one frees.
    """
    directory = config.directories.state / "slots"
    directory.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for index in range(config.daemon.max_dumps):
            fd = os.open(directory / f"dump-{index}", os.O_RDWR | os.O_CREAT, 0o660)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield
            finally:
                os.close(fd)
            return
        if not waited:
            log.info(
                "waiting for a dump slot",
                job=job_name,
                max_dumps=config.daemon.max_dumps,
            )
            waited = True
        cancel.raise_if_cancelled()
        time.sleep(SLOT_POLL_SECONDS)
