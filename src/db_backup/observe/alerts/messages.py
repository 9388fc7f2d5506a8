"""What an alert says, in English or Chinese: one title and labelled lines, rendered per channel."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from db_backup.util.clock import format_utc, parse_utc
from db_backup.util.secrets import mask
from db_backup.util.units import format_size

# What happened to the thing an alert is about.
FAILED = "failed"  # the first failure (or a condition raised)
REMINDER = "reminder"  # still failing after remind_every
RECOVERED = "recovered"  # the first success after failures (or a condition cleared)
SUCCEEDED = "succeeded"  # a success with nothing to recover from
TEST = "test"  # `db-backup notify-test`

MAX_ERROR_CHARS = 1500  # chat bots cut long messages (DingTalk ~20 000 bytes, WeCom 4096)


@dataclass(frozen=True)
class Alert:
    """One message to send, in no particular language yet."""

    event_name: str  # as the config names it: backup_failed, stale, ...
    state: str  # FAILED | REMINDER | RECOVERED | SUCCEEDED | TEST
    kind: str  # the events.Event kind
    host: str
    job: str
    database: str
    at: datetime
    error: str = ""
    report_path: str = ""
    failures: int = 0  # failures counted so far (reminder, recovery)
    since: datetime | None = None  # the first of those failures
    report: Mapping[str, Any] | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Returns whether this alert is good news."""
        return self.state in {RECOVERED, SUCCEEDED, TEST}


WHAT = {
    "en": {
        "backup_failed": "Backup failed",
        "backup_succeeded": "Backup succeeded",
        "drill_failed": "Restore drill failed",
        "stale": "Backups are stale (no successful backup within max_age)",
        "low_disk": "Low disk space",
        "oss_usage": "OSS usage over the limit",
        "suspicious_size": "Suspicious backup size: retention held back",
        "test": "Test message",
    },
    "zh": {
        "backup_failed": "备份失败",
        "backup_succeeded": "备份成功",
        "drill_failed": "恢复演练失败",
        "stale": "备份已过期（max_age 内没有成功的备份）",
        "low_disk": "磁盘空间不足",
        "oss_usage": "OSS 用量超过上限",
        "suspicious_size": "备份大小异常：已暂停清理旧备份",
        "test": "测试消息",
    },
}

LABELS = {
    "en": {
        "host": "Host",
        "job": "Job",
        "database": "Database",
        "server": "Server",
        "event": "Event",
        "error": "Error",
        "details": "Details",
        "report": "Report",
        "backup_report": "Backup report",
        "size": "Size",
        "duration": "Duration",
        "time": "Time",
        "state": "State",
    },
    "zh": {
        "host": "主机",
        "job": "任务",
        "database": "数据库",
        "server": "数据库服务器",
        "event": "事件",
        "error": "错误",
        "details": "详情",
        "report": "报告",
        "backup_report": "备份报告",
        "size": "大小",
        "duration": "耗时",
        "time": "时间",
        "state": "状态",
    },
}


def _state_text(alert: Alert, language: str) -> str:
    """Returns what state the alert is in (first failure, reminder, ...), in `language`."""
    since = format_utc(alert.since) if alert.since else "?"
    n = alert.failures
    first = alert.kind in {"backup", "drill"}
    # Each state's text in English, then in Chinese: a translation stands next to its source.
    english, chinese = {
        FAILED: ("first failure", "首次失败") if first else ("raised", "已触发"),
        REMINDER: (
            f"still failing: {n} failure(s) since {since}",
            f"仍未恢复：自 {since} 起已失败 {n} 次",
        ),
        RECOVERED: (
            f"recovered after {n} failure(s) since {since}",
            f"已恢复：自 {since} 起共失败 {n} 次",
        ),
        SUCCEEDED: ("succeeded", "成功"),
        TEST: (
            "a test of db-backup's alert channel; nothing to do",
            "db-backup 告警通道测试，无需处理",
        ),
    }[alert.state]
    return chinese if language == "zh" else english


def title(alert: Alert, language: str) -> str:
    """Returns the one-line summary: what, where and whether it is over."""
    lang = language if language in WHAT else "en"
    what = WHAT[lang][TEST if alert.state == TEST else alert.event_name]
    subject = "/".join(part for part in (alert.job, alert.database) if part) or _where(alert)
    if lang == "zh":
        prefix = {RECOVERED: "已恢复：", REMINDER: "仍未恢复：", TEST: ""}.get(alert.state, "")
        if alert.state == TEST:
            return f"[db-backup] {what}（主机 {alert.host}）"
        return f"[db-backup] {prefix}{what} {subject}（主机 {alert.host}）"
    prefix = {RECOVERED: "Recovered: ", REMINDER: "Still failing: ", TEST: ""}.get(alert.state, "")
    if alert.state == TEST:  # about no job or place: nothing to name after the colon
        return f"[db-backup] {prefix}{what} on {alert.host}"
    return f"[db-backup] {prefix}{what}: {subject} on {alert.host}"


def _where(alert: Alert) -> str:
    """Returns what a condition without a job is about: a directory, a bucket, or "-"."""
    for key in ("path", "directory", "bucket"):
        if alert.details.get(key):
            return str(alert.details[key])
    return "-"


def lines(alert: Alert, language: str) -> list[tuple[str, str]]:
    """Returns (label, value) pairs: host, job, database, event, error, report path, ..."""
    lang = language if language in LABELS else "en"
    label = LABELS[lang]
    report = alert.report or {}
    out = [(label["host"], alert.host)]
    if alert.job:
        out.append((label["job"], alert.job))
    if alert.database:
        out.append((label["database"], alert.database))
    if report.get("host"):
        out.append((label["server"], f"{report['host']}:{report.get('port', '')}".rstrip(":")))
    what = WHAT[lang][TEST if alert.state == TEST else alert.event_name]
    out.append((label["event"], what))
    out.append((label["state"], _state_text(alert, lang)))
    if alert.error and alert.state in {FAILED, REMINDER}:
        error = mask(alert.error)
        if len(error) > MAX_ERROR_CHARS:
            error = error[:MAX_ERROR_CHARS] + " ..."
        # A failed backup or drill has an error; a condition (stale, low disk) has details.
        name = "error" if alert.kind in {"backup", "drill"} else "details"
        out.append((label[name], error))
    if alert.state == SUCCEEDED or (alert.state == RECOVERED and alert.kind == "backup"):
        size = (report.get("local") or {}).get("sizeBytes")
        if isinstance(size, int) and size:
            out.append((label["size"], format_size(size)))
        if isinstance(report.get("durationSeconds"), int):
            out.append((label["duration"], f"{report['durationSeconds']} s"))
    if report.get("backupReport"):
        out.append((label["backup_report"], str(report["backupReport"])))
    if alert.report_path:
        out.append((label["report"], alert.report_path))
    out.append((label["time"], format_utc(alert.at)))
    return out


def plain_text(alert: Alert, language: str) -> str:
    """Returns the whole message as plain text: the title, then one `label: value` per line."""
    sep = "：" if language == "zh" else ": "
    body = "\n".join(f"{name}{sep}{value}" for name, value in lines(alert, language))
    return f"{title(alert, language)}\n{body}"


def markdown(alert: Alert, language: str) -> str:
    """Returns the message as Markdown (DingTalk, WeCom): a bold title and a list."""
    sep = "：" if language == "zh" else ": "
    body = "\n".join(f"- **{name}**{sep}{value}" for name, value in lines(alert, language))
    return f"**{title(alert, language)}**\n\n{body}"


def document(alert: Alert, language: str) -> dict[str, Any]:
    """Returns the event as the generic webhook's JSON body."""
    return {
        "source": "db-backup",
        "event": alert.event_name,
        "state": alert.state,
        "kind": alert.kind,
        "ok": alert.ok,
        "host": alert.host,
        "job": alert.job,
        "database": alert.database,
        "message": mask(alert.error),
        "report_path": alert.report_path or None,
        "report": dict(alert.report) if alert.report is not None else None,
        "details": dict(alert.details),
        "failures": alert.failures,
        "since": format_utc(alert.since) if alert.since else None,
        "time": format_utc(alert.at),
        "title": title(alert, language),
        "text": plain_text(alert, language),
    }


def to_record(alert: Alert) -> dict[str, Any]:
    """Returns `alert` as plain JSON data without its state (the pending queue's form)."""
    return {
        "event_name": alert.event_name,
        "kind": alert.kind,
        "host": alert.host,
        "job": alert.job,
        "database": alert.database,
        "at": format_utc(alert.at),
        "error": alert.error,
        "report_path": alert.report_path,
        "failures": alert.failures,
        "since": format_utc(alert.since) if alert.since else None,
        "report": json.loads(json.dumps(alert.report, default=str)) if alert.report else None,
        "details": json.loads(json.dumps(dict(alert.details), default=str)),
    }


def from_record(record: Mapping[str, Any], state: str) -> Alert:
    """Returns the alert of a `to_record` document with `state`; raises ValueError & co."""
    since = record.get("since")
    return Alert(
        event_name=str(record["event_name"]),
        state=state,
        kind=str(record["kind"]),
        host=str(record["host"]),
        job=str(record["job"]),
        database=str(record["database"]),
        at=parse_utc(str(record["at"])),
        error=str(record.get("error") or ""),
        report_path=str(record.get("report_path") or ""),
        failures=int(record.get("failures") or 0),
        since=parse_utc(str(since)) if since else None,
        report=record.get("report"),
        details=dict(record.get("details") or {}),
    )
