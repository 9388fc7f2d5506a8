"""execute.FilterChild: a real source child pumped through a real filter child (select loop)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from db_backup.util.cancel import Cancelled, CancelToken
from db_backup.util.execute import CommandError, FilterChild, StreamingChild

pytestmark = pytest.mark.integration
SIZE = 5_000_000


def test_filter_child_passes_every_byte_and_shows_the_input_on_the_way() -> None:
    source = StreamingChild(["head", "-c", str(SIZE), "/dev/urandom"])
    through = FilterChild(["cat"])
    seen = hashlib.sha256()
    out = hashlib.sha256()
    size = 0
    for chunk in through.pump(source.stdout_fd, 1024 * 1024, observe_input=seen.update):
        out.update(chunk)
        size += len(chunk)
    source.check()
    through.check()
    assert size == SIZE and out.hexdigest() == seen.hexdigest()


def test_a_filter_that_ends_before_its_input_is_an_error_naming_it() -> None:
    source = StreamingChild(["yes"])
    through = FilterChild(["head", "-c", "10"])
    with pytest.raises(CommandError) as caught:
        for _ in through.pump(source.stdout_fd, 65536):
            pass
    source.terminate()
    assert str(caught.value) in {
        "head ended its output before its input ended",
        "head stopped reading its input",
    }


def test_a_failing_filter_reports_its_exit_status_and_stderr() -> None:
    source = StreamingChild(["yes"])
    through = FilterChild(["sh", "-c", "head -c 100 >/dev/null; echo 'bad key' >&2; exit 3"])
    with pytest.raises(CommandError) as caught:
        for _ in through.pump(source.stdout_fd, 65536):
            pass
    source.terminate()
    assert str(caught.value) == "sh exited with status 3: bad key"


def test_cancelling_stops_the_filter_and_raises_cancelled() -> None:
    source = StreamingChild(["yes"])
    through = FilterChild(["cat"])
    cancel = CancelToken()
    with pytest.raises(Cancelled, match="operator said stop"):
        for count, _ in enumerate(through.pump(source.stdout_fd, 65536, cancel)):
            if count == 3:
                cancel.cancel("operator said stop")
    source.terminate()
    assert through.wait(timeout=5) is not None


def test_a_filter_program_that_is_not_there_is_a_clear_error() -> None:
    with pytest.raises(CommandError) as caught:
        FilterChild(["no-such-filter-x"])
    assert str(caught.value) == "no-such-filter-x not found on PATH"
    assert caught.value.returncode is None


@pytest.mark.parametrize(
    ("mode", "content", "reason"),
    [
        (0o644, b"#!/bin/sh\ncat\n", "Permission denied"),  # no x bit: even root cannot exec it
        (0o755, b"\x7fELF garbage", "Exec format error"),
    ],
)
def test_a_filter_program_that_cannot_start_is_a_clear_error_not_an_os_error(
    tmp_path: Path, mode: int, content: bytes, reason: str
) -> None:
    program = tmp_path / "filter"
    program.write_bytes(content)
    program.chmod(mode)
    with pytest.raises(CommandError) as caught:
        FilterChild([str(program)], with_stdin=False)
    assert str(caught.value) == f"filter could not be started: {reason}"
    assert caught.value.returncode is None
