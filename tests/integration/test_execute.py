"""Children started through `execute`: a child fed on stdin, failures and the stop sequence."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from db_backup.util import execute


def test_fed_child_receives_every_byte_and_exits_zero(tmp_path: Path) -> None:
    out = tmp_path / "received"
    child = execute.FeedingChild(["dd", f"of={out}", "bs=64k", "status=none"])
    data = os.urandom(3 * 1024 * 1024 + 7)
    for start in range(0, len(data), 100_000):
        child.write(data[start : start + 100_000])
    child.check()
    assert out.read_bytes() == data


def test_fed_child_that_dies_turns_the_next_write_into_an_error_with_its_stderr() -> None:
    child = execute.FeedingChild(["sh", "-c", "echo 'remote refused the upload' >&2; exit 3"])
    deadline = time.monotonic() + 30
    with pytest.raises(execute.CommandError) as error:
        while time.monotonic() < deadline:
            child.write(b"x" * 65536)
    assert error.value.returncode == 3
    assert "remote refused the upload" in str(error.value)


def test_terminate_kills_a_fed_child_that_ignores_sigterm_after_the_grace_period(
    tmp_path: Path,
) -> None:
    ready = tmp_path / "ready"
    child = execute.FeedingChild(["sh", "-c", f"trap '' TERM; touch {ready}; sleep 60"])
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ready.exists(), "the child never started"
    started = time.monotonic()
    child.terminate(grace=0.5)
    assert child.poll() == -9
    assert time.monotonic() - started < 30


def test_a_missing_program_is_a_clear_error() -> None:
    with pytest.raises(execute.CommandError, match="no-such-program-x not found on PATH"):
        execute.FeedingChild(["no-such-program-x"])
