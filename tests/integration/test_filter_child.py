"""execute.FilterChild: a real source child pumped through a real filter child (select loop)."""

from __future__ import annotations

import hashlib

import pytest

from db_backup.util.execute import Cancelled, CancelToken, CommandError, FilterChild, StreamingChild

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
