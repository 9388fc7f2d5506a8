"""Alerts without the network: settings, message text in both languages, deduplication."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing
import yaml

from db_backup import config
from db_backup.observe import events
from db_backup.observe.alerts import Notifier, consumer, messages
from db_backup.observe.alerts.channels import dingtalk_sign, feishu_sign
from db_backup.observe.alerts.dedup import DedupState
from db_backup.observe.alerts.settings import ChannelSettings, NotifySettings

T0 = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)


def _config(tmp_path: Path, notifications: dict[str, Any] | None) -> config.Config:
    document: dict[str, Any] = {
        "directories": {"state": str(tmp_path / "state")},
        "storage": {"mode": "local"},
        "jobs": [{"name": "nightly", "schedule": "0 2 * * *", "databases": "shop"}],
    }
    if notifications is not None:
        document["notifications"] = notifications
    return config.loads(yaml.safe_dump(document))


class Clock:
    """A clock the test moves."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def _notifier(tmp_path: Path, clock: Clock, **overrides: Any) -> Notifier:
    channel = ChannelSettings(name="hook", type="webhook")
    settings = NotifySettings(channels=(channel,), hostname="db1", **overrides)
    return Notifier(settings, tmp_path, clock=clock)


def _failed(job: str = "nightly", database: str = "shop", error: str = "boom") -> events.Event:
    report = {"status": "FAILED", "errorMessage": error, "hostname": "db1.example", "host": "/run"}
    return events.Event(
        kind=events.BACKUP,
        job=job,
        database=database,
        ok=False,
        message=error,
        report=report,
        report_path=Path(f"/reports/{database}.json"),
    )


def _succeeded(job: str = "nightly", database: str = "shop") -> events.Event:
    return events.Event(kind=events.BACKUP, job=job, database=database, ok=True, report={})


# --- settings --------------------------------------------------------------------------------


def test_no_section_or_no_channel_means_no_consumer(tmp_path: Path) -> None:
    assert consumer(_config(tmp_path, None)) is None
    assert consumer(_config(tmp_path, {"language": "zh"})) is None


def test_defaults_alert_failures_and_conditions_but_not_successes(tmp_path: Path) -> None:
    hook = {"name": "hook", "type": "webhook", "url": {"env": "HOOK_URL"}}
    notifier = consumer(_config(tmp_path, {"channels": [hook]}))
    assert notifier is not None
    settings = notifier.settings
    assert settings.language == "en" and settings.remind_every_hours == 24
    assert settings.attempts == 3 and settings.timeout_seconds == 10
    assert not settings.enabled("backup_succeeded")
    for name in ("backup_failed", "drill_failed", "stale", "low_disk", "oss_usage"):
        assert settings.enabled(name), name
    assert settings.enabled("suspicious_size")
    assert "db_backup.observe.alerts:consumer" in events.CONSUMERS


def test_channel_settings_are_read_with_their_defaults(tmp_path: Path) -> None:
    settings = _config(
        tmp_path,
        {
            "language": "zh",
            "events": {"backup_succeeded": True, "low_disk": False},
            "channels": [
                {
                    "name": "mail",
                    "type": "email",
                    "smtp_host": "smtp.example.com",
                    "security": "ssl",
                    "from": "a@example.com",
                    "to": ["b@example.com"],
                    "password": {"credential": "smtp"},
                    "events": ["backup_failed"],
                }
            ],
        },
    ).notifications
    [mail] = settings.channels
    assert mail.port == 465 and mail.sender == "a@example.com" and mail.to == ("b@example.com",)
    assert mail.password is not None and mail.password.kind == "credential"
    assert mail.wants("backup_failed") and not mail.wants("stale")
    assert settings.enabled("backup_succeeded") and not settings.enabled("low_disk")


def test_a_webhook_channel_without_url_and_a_secret_in_plain_text_are_refused(
    tmp_path: Path,
) -> None:
    with pytest.raises(config.ConfigError) as caught:
        _config(
            tmp_path,
            {
                "channels": [
                    {"name": "f", "type": "feishu", "secret": "plain-secret"},
                    {"name": "m", "type": "email", "smtp_host": "x"},
                ]
            },
        )
    problems = "\n".join(caught.value.problems)
    assert "notifications.channels[0].url': required key is missing" in problems
    assert "notifications.channels[0].secret'" in problems
    assert "notifications.channels[1].from': required key is missing" in problems
    assert "notifications.channels[1].to': required key is missing" in problems


# --- signatures (the servers' side is in tests/support/receivers.py) --------------------------


def test_feishu_signature_uses_timestamp_and_secret_as_the_key_over_nothing() -> None:
    expected = base64.b64encode(
        hmac.new(b"1700000000\nsekrit", b"", hashlib.sha256).digest()
    ).decode()
    assert feishu_sign("sekrit", 1700000000) == expected


def test_dingtalk_signature_uses_the_secret_as_the_key() -> None:
    digest = hmac.new(b"SECabc", b"1700000000000\nSECabc", hashlib.sha256).digest()
    assert dingtalk_sign("SECabc", 1700000000000) == base64.b64encode(digest).decode()


# --- messages --------------------------------------------------------------------------------


def _alert(state: str = messages.FAILED, **changes: Any) -> messages.Alert:
    values: dict[str, Any] = {
        "event_name": "backup_failed",
        "state": state,
        "kind": "backup",
        "host": "db1",
        "job": "nightly",
        "database": "shop",
        "at": T0,
        "error": "pg_dump: connection refused",
        "report_path": "/var/lib/db-backup/reports/shop_20261124T020000Z_db1.json",
        "report": {"host": "/var/run/postgresql", "port": "5432"},
        "failures": 1,
        "since": T0,
    }
    values.update(changes)
    return messages.Alert(**values)


def test_english_failure_names_host_job_database_error_and_report() -> None:
    text = messages.plain_text(_alert(), "en")
    assert text.splitlines()[0] == "[db-backup] Backup failed: nightly/shop on db1"
    for line in (
        "Host: db1",
        "Job: nightly",
        "Database: shop",
        "Server: /var/run/postgresql:5432",
        "Error: pg_dump: connection refused",
        "Report: /var/lib/db-backup/reports/shop_20261124T020000Z_db1.json",
        "State: first failure",
    ):
        assert line in text.splitlines(), line


def test_chinese_failure_reads_in_chinese() -> None:
    text = messages.plain_text(_alert(), "zh")
    assert text.splitlines()[0] == "[db-backup] 备份失败 nightly/shop（主机 db1）"
    assert "主机：db1" in text and "任务：nightly" in text and "数据库：shop" in text
    assert "错误：pg_dump: connection refused" in text and "报告：/var/lib/" in text


def test_recovery_and_reminder_say_how_many_failures_since_when() -> None:
    later = _alert(messages.RECOVERED, failures=5, at=T0 + timedelta(hours=5))
    assert "recovered after 5 failure(s) since 2026-11-24T02:00:00Z" in messages.plain_text(
        later, "en"
    )
    assert "Error:" not in messages.plain_text(later, "en")
    assert messages.title(later, "en").startswith("[db-backup] Recovered: Backup failed")
    zh = messages.plain_text(_alert(messages.REMINDER, failures=3), "zh")
    assert "仍未恢复：自 2026-11-24T02:00:00Z 起已失败 3 次" in zh


def test_a_long_error_is_cut_and_secrets_are_masked() -> None:
    from db_backup.util import secrets

    secrets.register("hunter2-very-secret")
    alert = _alert(error="password hunter2-very-secret rejected " + "x" * 5000)
    text = messages.plain_text(alert, "en")
    assert "hunter2-very-secret" not in text and "***" in text
    assert len(text) < 2500
    assert "hunter2-very-secret" not in json.dumps(messages.document(alert, "en"))


# --- deduplication -----------------------------------------------------------------------------


def _told(notifier: Notifier, event: events.Event) -> Any:
    """Prepares `event`'s alert and records every channel as having taken it."""
    outgoing = notifier.prepare(event)
    if outgoing is not None:
        assert outgoing.id is not None
        for channel, alert in outgoing.alerts:
            notifier.mark(
                outgoing.key, outgoing.id, channel.name, alert.state, alert.since, alert.at
            )
    return outgoing


def test_hourly_failures_alert_once_then_remind_then_recover(tmp_path: Path) -> None:
    clock = Clock()
    notifier = _notifier(tmp_path, clock, remind_every_hours=6)
    told = []
    for _hour in range(13):
        outgoing = _told(notifier, _failed())
        told.append(outgoing.alert.state if outgoing else None)
        clock.advance(hours=1)
    # First failure at 0 h, reminders at 6 h and 12 h; silence in between.
    assert [i for i, state in enumerate(told) if state] == [0, 6, 12]
    assert told[0] == messages.FAILED and told[6] == told[12] == messages.REMINDER
    recovered = _told(notifier, _succeeded())
    assert recovered is not None and recovered.alert.state == messages.RECOVERED
    assert recovered.alert.failures == 13 and recovered.alert.since == T0
    # The next success is plain (not told: backup_succeeded is off by default); the next
    # failure starts a new streak.
    assert _told(notifier, _succeeded()) is None
    again = _told(notifier, _failed())
    assert again is not None and again.alert.state == messages.FAILED


def test_streaks_are_per_job_and_database_and_survive_the_process(tmp_path: Path) -> None:
    clock = Clock()
    first = _notifier(tmp_path, clock)
    assert _told(first, _failed(database="shop")) is not None
    assert _told(first, _failed(database="crm")) is not None
    # A new process (a timer's next `db-backup run`) reads the same state.
    second = _notifier(tmp_path, clock)
    clock.advance(hours=1)
    assert _told(second, _failed(database="shop")) is None
    assert _told(second, _failed(job="weekly", database="shop")) is not None
    assert set(second.dedup.entries()) == {
        "backup|nightly|shop|",
        "backup|nightly|crm|",
        "backup|weekly|shop|",
    }


def test_remind_every_zero_never_reminds(tmp_path: Path) -> None:
    clock = Clock()
    notifier = _notifier(tmp_path, clock, remind_every_hours=0)
    assert _told(notifier, _failed()) is not None
    clock.advance(days=30)
    assert _told(notifier, _failed()) is None


def test_successes_are_told_only_when_switched_on(tmp_path: Path) -> None:
    clock = Clock()
    on = _notifier(
        tmp_path,
        clock,
        events=("backup_failed", "backup_succeeded"),
    )
    outgoing = _told(on, _succeeded())
    assert outgoing is not None and outgoing.alert.state == messages.SUCCEEDED
    assert outgoing.alert.event_name == "backup_succeeded"


def test_recovery_can_be_switched_off(tmp_path: Path) -> None:
    notifier = _notifier(tmp_path, Clock(), recovery=False)
    assert _told(notifier, _failed()) is not None
    assert _told(notifier, _succeeded()) is None
    assert notifier.dedup.entries() == {}  # the streak still ended


def test_a_switched_off_event_is_silent_and_not_tracked(tmp_path: Path) -> None:
    notifier = _notifier(tmp_path, Clock(), events=("stale",))
    assert _told(notifier, _failed()) is None
    assert notifier.dedup.entries() == {}


def test_conditions_alert_when_raised_and_recover_when_cleared(tmp_path: Path) -> None:
    clock = Clock()
    notifier = _notifier(tmp_path, clock)
    stale = events.Event(kind=events.STALE, job="nightly", ok=False, message="no SUCCESS for 49 h")
    raised = _told(notifier, stale)
    assert raised is not None and raised.alert.event_name == "stale"
    assert "no SUCCESS for 49 h" in messages.plain_text(raised.alert, "en")
    clock.advance(minutes=1)
    assert _told(notifier, stale) is None
    cleared = _told(notifier, events.Event(kind=events.STALE, job="nightly", ok=True))
    assert cleared is not None and cleared.alert.state == messages.RECOVERED
    disk = events.Event(
        kind=events.LOW_DISK, job="", ok=False, message="3% free", details={"path": "/data"}
    )
    low = _told(notifier, disk)
    assert low is not None and "Low disk space" in messages.title(low.alert, "en")
    # A condition clearing that was never raised says nothing.
    assert _told(notifier, events.Event(kind=events.OSS_USAGE, job="", ok=True)) is None


def test_a_channel_only_gets_the_events_it_lists(tmp_path: Path) -> None:
    channels = (
        ChannelSettings(name="all", type="webhook"),
        ChannelSettings(name="stale-only", type="webhook", events=("stale",)),
    )
    notifier = Notifier(NotifySettings(channels=channels), tmp_path, clock=Clock())
    outgoing = notifier.prepare(_failed())
    assert outgoing is not None and [c.name for c in outgoing.channels] == ["all"]


def test_an_undelivered_first_alert_is_tried_again_at_the_next_failure(tmp_path: Path) -> None:
    clock = Clock()
    notifier = _notifier(tmp_path, clock)
    first = notifier.prepare(_failed())  # decided, but no channel took it
    assert first is not None
    clock.advance(hours=1)
    again = notifier.prepare(_failed())
    assert again is not None and again.alert.state == messages.FAILED
    assert again.alert.failures == 2
    # Only the newest alert of the key waits: the next run sends that one.
    assert list(notifier.dedup.pending()) == [again.key]
    assert notifier.dedup.pending()[again.key]["id"] == again.id


def test_a_channel_that_took_the_alert_is_not_told_again_but_one_that_did_not_is(
    tmp_path: Path,
) -> None:
    clock = Clock()
    channels = (
        ChannelSettings(name="took", type="webhook"),
        ChannelSettings(name="hung", type="webhook"),
    )
    notifier = Notifier(NotifySettings(channels=channels, hostname="db1"), tmp_path, clock=clock)
    first = notifier.prepare(_failed())
    assert first is not None and [c.name for c in first.channels] == ["took", "hung"]
    assert first.id is not None
    notifier.mark(first.key, first.id, "took", messages.FAILED, T0, T0)
    assert notifier.dedup.pending()[first.key]["channels"] == {"hung": messages.FAILED}
    clock.advance(hours=1)
    again = notifier.prepare(_failed())
    assert again is not None and [c.name for c in again.channels] == ["hung"]
    assert again.alert.state == messages.FAILED and again.alert.failures == 2
    # The late answer of the first alert still counts as told; the newer alert still waits.
    notifier.mark(first.key, first.id, "hung", messages.FAILED, T0, T0)
    assert notifier.dedup.pending()[again.key]["channels"] == {"hung": messages.FAILED}
    clock.advance(hours=1)
    assert notifier.prepare(_failed()) is not None  # "hung" has a newer alert waiting
    notifier.mark(again.key, notifier.dedup.pending()[again.key]["id"], "hung", "failed", T0, T0)
    assert notifier.dedup.pending() == {}
    assert notifier.prepare(_failed()) is None  # both told now: held back


def test_a_success_supersedes_what_waits_and_recovers_every_channel(tmp_path: Path) -> None:
    notifier = _notifier(tmp_path, Clock())
    failed = notifier.prepare(_failed())
    assert failed is not None and failed.id is not None
    recovered = notifier.prepare(_succeeded())
    assert recovered is not None and recovered.alert.state == messages.RECOVERED
    assert notifier.dedup.pending()[recovered.key]["channels"] == {"hook": messages.RECOVERED}
    # The failure's delivery, late, changes nothing: the streak is over.
    notifier.mark(failed.key, failed.id, "hook", messages.FAILED, T0, T0)
    assert notifier.dedup.entries() == {}
    assert list(notifier.dedup.pending()) == [recovered.key]


def test_a_format_1_state_file_counts_as_told_to_every_channel(tmp_path: Path) -> None:
    told = {"since": "2026-11-24T01:00:00Z", "failures": 3, "told": "2026-11-24T01:00:00Z"}
    document = {"version": 1, "entries": {"backup|nightly|shop|": told}}
    (tmp_path / "notify-state.json").write_text(json.dumps(document))
    notifier = _notifier(tmp_path, Clock())
    assert notifier.prepare(_failed()) is None
    assert notifier.dedup.entries()["backup|nightly|shop|"]["failures"] == 4


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[]", b'{"entries": {"k": {"since": "yesterday"}}}', b"\xff\xfe"],
)
def test_a_corrupt_state_file_is_reset_with_a_warning_not_a_crash(
    tmp_path: Path, content: bytes
) -> None:
    (tmp_path / "notify-state.json").write_bytes(content)
    notifier = _notifier(tmp_path, Clock())
    with structlog.testing.capture_logs() as logged:
        outgoing = notifier.prepare(_failed())
    assert outgoing is not None and outgoing.alert.state == messages.FAILED
    [warning] = [e for e in logged if e["log_level"] == "warning"]
    assert warning["event"].startswith("alert state corrupt")
    assert json.loads((tmp_path / "notify-state.json").read_text())["entries"]


def _fail_many(state_dir: str, count: int) -> None:
    dedup = DedupState(Path(state_dir))
    for _ in range(count):
        dedup.decide("backup|nightly|shop|", False, T0, None)


def test_concurrent_processes_count_every_failure(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_fail_many, args=(str(tmp_path), 50)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    entries = DedupState(tmp_path).entries()
    assert entries["backup|nightly|shop|"]["failures"] == 200


def test_the_commented_example_in_config_example_yaml_is_valid() -> None:
    text = (Path(__file__).resolve().parents[2] / "config.example.yaml").read_text()
    section = text[text.index("# notifications:") :].split("\n\n", 1)[0]  # up to the next one
    uncommented = "\n".join(
        line[2:] if line.startswith("# ") else line for line in section.splitlines()
    )
    document = {
        "storage": {"mode": "local"},
        "jobs": [{"name": "a", "schedule": "0 2 * * *", "databases": "x"}],
        **yaml.safe_load(uncommented),
    }
    settings = config.loads(yaml.safe_dump(document)).notifications
    assert {c.type for c in settings.channels} == {
        "feishu",
        "dingtalk",
        "wecom",
        "slack",
        "webhook",
        "email",
    }


def test_without_a_usable_state_file_every_failure_alerts(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "state"
    not_a_directory.write_text("a file where the state directory should be")
    notifier = _notifier(not_a_directory, Clock())
    with structlog.testing.capture_logs() as logged:
        first, second = notifier.prepare(_failed()), notifier.prepare(_failed())
    assert first is not None and second is not None
    assert any(e["event"].startswith("alert state not saved") for e in logged)


def test_a_condition_without_a_job_is_named_by_its_place_with_details() -> None:
    alert = _alert(
        event_name="low_disk",
        kind="low_disk",
        job="",
        database="",
        error="4.1 GiB free of 200 GiB (2%), threshold 10%",
        report=None,
        report_path="",
        details={"path": "/var/lib/db-backup/data"},
    )
    text = messages.plain_text(alert, "en")
    assert text.splitlines()[0] == "[db-backup] Low disk space: /var/lib/db-backup/data on db1"
    assert "Details: 4.1 GiB free of 200 GiB (2%), threshold 10%" in text
    assert "详情：4.1 GiB" in messages.plain_text(alert, "zh")


def test_a_failed_drill_alerts_and_its_next_success_recovers(tmp_path: Path) -> None:
    clock = Clock()
    channels = (
        ChannelSettings(name="all", type="webhook"),
        ChannelSettings(name="successes", type="webhook", events=("backup_succeeded",)),
    )
    settings = NotifySettings(channels=channels, hostname="db1")
    notifier = Notifier(settings, tmp_path, clock=clock)
    report = {"status": "FAILED", "backupReport": "/reports/shop_20261122T020000Z_db1.json"}
    failed = events.Event(
        kind=events.DRILL,
        job="nightly",
        database="shop",
        ok=False,
        message="row counts differ in 2 table(s)",
        report=report,
        report_path=Path("/reports/drill_shop.json"),
    )
    outgoing = notifier.prepare(failed)
    assert outgoing is not None and outgoing.alert.event_name == "drill_failed"
    assert [c.name for c in outgoing.channels] == ["all"]
    text = messages.plain_text(outgoing.alert, "en")
    assert text.splitlines()[0] == "[db-backup] Restore drill failed: nightly/shop on db1"
    assert "Backup report: /reports/shop_20261122T020000Z_db1.json" in text
    assert "Error: row counts differ in 2 table(s)" in text
    clock.advance(days=7)
    ok = events.Event(kind=events.DRILL, job="nightly", database="shop", ok=True, report={})
    recovered = notifier.prepare(ok)
    assert recovered is not None and recovered.alert.state == messages.RECOVERED
    assert [c.name for c in recovered.channels] == ["all"]


def test_a_channel_whose_alert_this_process_is_sending_is_not_piled_on() -> None:
    from db_backup.observe.alerts import dedup

    entry, first = dedup.fail(None, None, T0, None, ["a", "b"])
    assert first.states == {"a": messages.FAILED, "b": messages.FAILED}
    pending = dedup.new_pending({}, first.states, T0)
    later = T0 + timedelta(hours=1)
    _, again = dedup.fail(entry, pending, later, None, ["a", "b"], held={"a"})
    # "a": its sender holds the alert (and retries it); "b": left pending by a run, sent again.
    assert again.states == {"b": messages.FAILED} and again.failures == 2


def test_the_pause_before_an_undelivered_alert_is_tried_again_doubles_up_to_an_hour() -> None:
    from db_backup.observe.alerts.delivery import retry_pause

    assert [retry_pause(n) for n in (1, 2, 3, 6, 7, 20)] == [60, 120, 240, 1920, 3600, 3600]


def test_a_test_alert_title_names_the_host_with_no_dangling_subject() -> None:
    alert = _alert(messages.TEST, job="", database="", event_name="test", report={})
    assert messages.title(alert, "en") == "[db-backup] Test message on db1"
    assert messages.title(alert, "zh") == "[db-backup] 测试消息（主机 db1）"
    assert " - " not in messages.title(alert, "en")
