"""The seam after a report: every consumer hears each event, and one failing harms nothing."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from db_backup.observe import events


class Recorder:
    def __init__(self, name: str, fail: bool = False) -> None:
        self.name = name
        self.fail = fail
        self.seen: list[events.Event] = []
        self.closed: list[float] = []

    def handle(self, event: events.Event) -> None:
        self.seen.append(event)
        if self.fail:
            raise RuntimeError("receiver said no to s3cr3t")

    def close(self, timeout: float) -> None:
        self.closed.append(timeout)


def _config(tmp_path: Path) -> Any:
    return SimpleNamespace(directories=SimpleNamespace(state=tmp_path))


def test_a_failing_consumer_is_counted_and_the_others_still_hear(tmp_path: Path) -> None:
    broken, good = Recorder("broken", fail=True), Recorder("good")
    dispatcher = events.Dispatcher(
        _config(tmp_path), {"broken": lambda _c: broken, "good": lambda _c: good}
    )
    event = events.Event(kind=events.BACKUP, job="nightly", database="app", ok=False)
    dispatcher.publish(event)
    dispatcher.publish(event)
    assert good.seen == [event, event]
    assert events.failure_counts(tmp_path) == {"broken": 2}
    dispatcher.close(3.0)
    # Each is closed once, with what is left of the 3 s (all of it: the others took none).
    assert [round(t, 1) for t in good.closed + broken.closed] == [3.0, 3.0]


class Slow(Recorder):
    def close(self, timeout: float) -> None:
        super().close(timeout)
        time.sleep(0.5)


def test_closing_takes_the_given_time_for_all_consumers_together(tmp_path: Path) -> None:
    slow, after = Slow("slow"), Recorder("after")
    dispatcher = events.Dispatcher(
        _config(tmp_path), {"slow": lambda _c: slow, "after": lambda _c: after}
    )
    dispatcher.close(3.0)
    [first], [second] = slow.closed, after.closed
    assert first > 2.9 and 2.0 < second < 2.6  # what the slow one left, not 3 s more


def test_a_factory_that_raises_or_is_not_configured_leaves_the_rest(tmp_path: Path) -> None:
    good = Recorder("good")

    def explode(_config: object) -> events.Consumer:
        raise ValueError("bad settings")

    dispatcher = events.Dispatcher(
        _config(tmp_path), {"explode": explode, "off": lambda _c: None, "good": lambda _c: good}
    )
    assert dispatcher.consumers == [good]
    assert events.failure_counts(tmp_path) == {"explode": 1}


def test_a_consumer_module_that_cannot_be_imported_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "CONSUMERS", ("db_backup.no_such_module:consumer",))
    dispatcher = events.Dispatcher(_config(tmp_path))
    assert dispatcher.consumers == []
    assert events.failure_counts(tmp_path) == {"db_backup.no_such_module:consumer": 1}


@pytest.mark.parametrize("content", [b"\xff\xfe", b"[1, 2]", b'{"a": "x", "b": true, "c": 3}'])
def test_a_hand_edited_failure_file_is_read_as_far_as_it_makes_sense(
    tmp_path: Path, content: bytes
) -> None:
    (tmp_path / events.FAILURES_FILE).write_bytes(content)
    counts = events.failure_counts(tmp_path)
    assert counts == ({"c": 3} if content.startswith(b"{") else {})
    events.count_failure(tmp_path, "c")
    assert events.failure_counts(tmp_path)["c"] == (4 if content.startswith(b"{") else 1)
