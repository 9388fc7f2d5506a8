"""Each channel on its own: a hung webhook beside a 500, a slow one and a dead SMTP server.

Real loopback servers: a webhook that accepts and never answers, one answering 500, one
answering after a pause, an SMTP port that closes every connection, and one that trickles its
answer a byte at a time. Issue 21, item 3: the others get their alert within their own timeout,
the hung channel is not recorded as told, and a later run (or the daemon) delivers it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from db_backup.config import SecretRef
from db_backup.observe import events
from db_backup.observe.alerts import Notifier
from db_backup.observe.alerts.settings import ChannelSettings, NotifySettings
from tests.conftest import RunCli, Setup
from tests.support.receivers import Receiver, Silent

pytestmark = pytest.mark.integration

KEY = "backup|nightly|shop|"
TIMEOUT = 3.0  # each channel's timeout_seconds


def _event(ok: bool = False, database: str = "shop") -> events.Event:
    report = {"status": "SUCCESS" if ok else "FAILED", "errorMessage": "" if ok else "boom"}
    return events.Event(
        kind=events.BACKUP,
        job="nightly",
        database=database,
        ok=ok,
        message="" if ok else "boom",
        report=report,
        report_path=Path(f"/reports/{database}.json"),
    )


def _channels(smtp_port: int) -> tuple[ChannelSettings, ...]:
    def hook(name: str, env: str) -> ChannelSettings:
        return ChannelSettings(name=name, type="webhook", url=SecretRef("env", env))

    mail = ChannelSettings(
        name="mail",
        type="email",
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        security="none",
        sender="db-backup@example.com",
        to=("ops@example.com",),
    )
    return hook("hung", "HUNG_URL"), hook("failing", "FAIL_URL"), hook("slow", "SLOW_URL"), mail


def _notifier(
    state: Path,
    channels: tuple[ChannelSettings, ...],
    retry_seconds: float | None = None,
    **given: Any,
) -> Notifier:
    values: dict[str, Any] = {
        "timeout_seconds": TIMEOUT,
        "attempts": 2,
        "backoff_seconds": 0.2,
        **given,
    }
    settings = NotifySettings(channels=channels, hostname="db1", **values)
    return Notifier(settings, state, retry_seconds=retry_seconds)


def _until(condition: Callable[[], bool], timeout: float) -> float:
    """Returns the seconds it took `condition` to hold; fails after `timeout`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The four receivers of the issue, their URLs in the environment."""
    with (
        Silent() as hung,
        Silent(close_at_once=True) as dead_smtp,
        Receiver(default_status=500) as failing,
        Receiver() as slow,
    ):
        slow.reply(200, {}, delay=1.5)
        monkeypatch.setenv("HUNG_URL", hung.url("/hook"))
        monkeypatch.setenv("FAIL_URL", failing.url("/hook"))
        monkeypatch.setenv("SLOW_URL", slow.url("/hook"))
        yield {"hung": hung, "dead_smtp": dead_smtp, "failing": failing, "slow": slow}


def test_a_hung_channel_delays_only_itself_and_is_not_recorded_as_told(
    tmp_path: Path, world: dict[str, Any]
) -> None:
    notifier = _notifier(tmp_path, _channels(world["dead_smtp"].port))
    started = time.monotonic()
    notifier.handle(_event())
    assert time.monotonic() - started < 0.5  # handle never waits for a channel
    # Every channel is tried at once, the hung one beside the others.
    world["hung"].wait_for(1, timeout=1)
    world["dead_smtp"].wait_for(1, timeout=1)
    world["failing"].wait_for(1, timeout=1)
    # The slow one (answering after 1.5 s) is told within its own timeout, while the hung one
    # still hangs.
    told = _until(lambda: "slow" in notifier.dedup.entries()[KEY]["told"], TIMEOUT)
    assert 1.4 < told < TIMEOUT
    [request] = world["slow"].requests
    assert request.json()["event"] == "backup_failed"
    assert world["failing"].wait_for(2, timeout=TIMEOUT)  # its retry, not behind the hung one

    closing = time.monotonic()
    notifier.close(1.0)  # the end of a run: all channels together, bounded
    assert time.monotonic() - closing < 1.5
    [entry] = notifier.dedup.entries().values()
    assert set(entry["told"]) == {"slow"}
    pending = notifier.dedup.pending()[KEY]
    assert pending["channels"] == {"hung": "failed", "failing": "failed", "mail": "failed"}
    assert events.failure_counts(tmp_path)["notify:failing"] == 1


def test_the_next_run_delivers_what_the_hung_channel_missed_and_no_one_hears_it_twice(
    tmp_path: Path, world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    channels = _channels(world["dead_smtp"].port)
    first = _notifier(tmp_path, channels)
    first.handle(_event())
    world["slow"].wait_for(1)
    first.close(2 * TIMEOUT + 2)  # in a test the first "run" lives on: let its hung lane end
    with Receiver() as back:
        monkeypatch.setenv("HUNG_URL", back.url("/hook"))
        world["failing"].default_status = 200
        later = _notifier(tmp_path, channels)
        assert later.resume() == 3  # hung, failing, mail: the slow one took it already
        [request] = back.wait_for(1, timeout=TIMEOUT)
        later.close(TIMEOUT + 1)
        body = request.json()
        assert body["event"] == "backup_failed" and body["failures"] == 1
        assert body["report_path"] == "/reports/shop.json"
        assert set(later.dedup.entries()[KEY]["told"]) == {"slow", "hung", "failing"}
        assert later.dedup.pending()[KEY]["channels"] == {"mail": "failed"}
        # The streak's next failure: the told channels hold back, the mail server still waits.
        slow_seen = len(world["slow"].requests)
        again = _notifier(tmp_path, channels)
        outgoing = again.prepare(_event())
        assert outgoing is not None and [c.name for c in outgoing.channels] == ["mail"]
        assert len(back.requests) == 1 and len(world["slow"].requests) == slow_seen


def test_the_daemon_tries_an_undelivered_alert_again_without_a_new_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Receiver(default_status=503) as flaky:
        monkeypatch.setenv("HOOK_URL", flaky.url("/hook"))
        hook = ChannelSettings(name="hook", type="webhook", url=SecretRef("env", "HOOK_URL"))
        notifier = _notifier(tmp_path, (hook,), attempts=1, retry_seconds=0.5)
        notifier.handle(_event())
        flaky.wait_for(2, timeout=5)  # the first try, and one later on its own
        assert notifier.dedup.pending()[KEY]["channels"] == {"hook": "failed"}
        flaky.default_status = 200
        _until(lambda: notifier.dedup.pending() == {}, 10)
        assert set(notifier.dedup.entries()[KEY]["told"]) == {"hook"}
        assert [r.answered for r in flaky.requests][-1] == 200
        notifier.close(1)


def test_a_server_trickling_its_answer_costs_one_timeout_per_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}":
                if stop.wait(0.3):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return  # the sender gave up: what the test wants

    server = threading.Thread(target=trickle, daemon=True)
    server.start()
    port = listener.getsockname()[1]
    monkeypatch.setenv("HOOK_URL", f"http://127.0.0.1:{port}/hook")
    hook = ChannelSettings(name="hook", type="webhook", url=SecretRef("env", "HOOK_URL"))
    notifier = _notifier(tmp_path, (hook,), attempts=1, timeout_seconds=1.5)
    started = time.monotonic()
    outgoing = notifier.prepare(_event())
    assert outgoing is not None
    error = notifier.deliver(notifier.channels[0], outgoing.alert)
    took = time.monotonic() - started
    stop.set()
    listener.close()
    # Each byte came well within the socket timeout: only the attempt's deadline ends it.
    assert error == "no answer within 1.5 s"
    assert 1.4 < took < 2.5


# --- the same through `db-backup run` ----------------------------------------------------


def _notify_section(setup: Setup, smtp_port: int) -> None:
    def hook(name: str, env: str) -> dict[str, Any]:
        return {"name": name, "type": "webhook", "url": {"env": env}}

    setup.document["notifications"] = {
        "timeout_seconds": TIMEOUT,
        "attempts": 2,
        "backoff_seconds": 0.2,
        "channels": [
            hook("hung", "HUNG_URL"),
            hook("failing", "FAIL_URL"),
            hook("slow", "SLOW_URL"),
            {
                "name": "mail",
                "type": "email",
                "smtp_host": "127.0.0.1",
                "smtp_port": smtp_port,
                "security": "none",
                "from": "db-backup@example.com",
                "to": ["ops@example.com"],
            },
        ],
    }
    good = json.loads(json.dumps(setup.job()))
    good["name"] = "good"
    setup.job()["databases"] = ["no_such_db"]
    setup.document["jobs"].append(good)
    setup.write()


def test_a_run_with_a_hung_channel_alerts_the_others_and_a_later_run_delivers_it(
    setup: Setup, run_cli: RunCli, world: dict[str, Any]
) -> None:
    _notify_section(setup, world["dead_smtp"].port)
    env = _urls(world)
    started = time.monotonic()
    first = run_cli("--config", str(setup.path), "run", "nightly", env=env)
    took = time.monotonic() - started
    assert first.returncode != 0
    # The hung channel cost its own two attempts; the slow one was told meanwhile.
    assert took < 2 * TIMEOUT + 10
    [request] = world["slow"].requests
    assert request.json()["database"] == "no_such_db"
    assert world["hung"].accepted >= 1 and world["dead_smtp"].accepted >= 1
    assert len(world["failing"].requests) == 2
    state = json.loads((setup.state / "notify-state.json").read_text())
    key = "backup|nightly|no_such_db|"
    assert set(state["entries"][key]["told"]) == {"slow"}
    assert state["pending"][key]["channels"] == {
        "hung": "failed",
        "failing": "failed",
        "mail": "failed",
    }

    with Receiver() as back:
        env["HUNG_URL"] = back.url("/hook")
        # Another job's successful run: it sends what the first run left pending.
        second = run_cli("--config", str(setup.path), "run", "good", env=env)
        assert second.returncode == 0, second.stderr
        [delivered] = back.wait_for(1)
        assert delivered.json()["event"] == "backup_failed"
        assert delivered.json()["database"] == "no_such_db"
        # The failing job again: the channels told hold back; the ones still waiting try again.
        failing_seen = len(world["failing"].requests)
        third = run_cli("--config", str(setup.path), "run", "nightly", env=env)
        assert third.returncode == first.returncode
        assert len(back.requests) == 1 and len(world["slow"].requests) == 1
        assert len(world["failing"].requests) > failing_seen
    state = json.loads((setup.state / "notify-state.json").read_text())
    assert set(state["entries"][key]["told"]) == {"slow", "hung"}
    assert state["entries"][key]["failures"] == 2


def _urls(world: dict[str, Any]) -> dict[str, str]:
    return {
        "HUNG_URL": world["hung"].url("/hook"),
        "FAIL_URL": world["failing"].url("/hook"),
        "SLOW_URL": world["slow"].url("/hook"),
    }
