"""Watching the real child processes of a `db-backup run` (pg_dump's pid, its environment)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.conftest import Setup


def start_run(
    setup: Setup, job: str = "nightly", env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Starts `db-backup run JOB` on the setup's config in the background (JSON logs)."""
    from tests.conftest import CLI

    return subprocess.Popen(
        [CLI, "--config", str(setup.path), "run", job],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "DB_BACKUP_LOG_FORMAT": "json", **(env or {})},
    )


def wait_for_pg_dump(parent: int, timeout: float = 30) -> int:
    """Returns the pid of the dumping pg_dump child of `parent` once it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if "(pg_dump)" in stat and int(fields[1]) == parent:
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"--format=" in cmdline:  # the dump, not `pg_dump --version`
                    return int(pid)
        time.sleep(0.02)
    raise AssertionError("pg_dump did not start")


def environ_of(pid: int) -> dict[str, str]:
    """Returns the environment a running process was started with (/proc/<pid>/environ)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}
