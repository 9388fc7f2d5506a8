"""Records of the standard library's `logging` (oss2, urllib3, ...) go through our pipeline."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from db_backup.observe import logs
from db_backup.storage.base import StorageError
from db_backup.storage.oss import OssTarget
from db_backup.util.secrets import register
from tests.support import oss_fixtures
from tests.support.oss_fixtures import OSS_ACCESS_KEY_SECRET, target_settings
from tests.support.oss_server import OssServer

oss_server = oss_fixtures.oss_server


@pytest.fixture
def log_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "logs"
    directory.mkdir()
    try:
        yield directory
    finally:
        logs.reset()


def _file_events(directory: Path) -> list[dict[str, object]]:
    (path,) = directory.glob("backup_*.log")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _put_small_file(server: OssServer, directory: Path, retries: int) -> None:
    """Uploads a small file with one PutObject through the real target and oss2."""
    settings = target_settings(server, retries=retries)
    source = directory / "small.sql"
    source.write_bytes(b"select 1;\n")
    OssTarget(settings, retry_delay=0.01).put_file(source, "small.sql")


def test_oss2_records_reach_the_log_file_and_stderr_as_structured_lines_at_debug(
    oss_server: OssServer, log_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.setup("debug", log_dir, force="json")
    oss_server.fail_request(503, operation="PutObject")
    with pytest.raises(StorageError):
        _put_small_file(oss_server, log_dir.parent, retries=0)

    from_oss2 = [e for e in _file_events(log_dir) if e.get("logger") == "oss2.api"]
    assert from_oss2, "oss2 logged nothing through the pipeline"
    errors = [e for e in from_oss2 if "503" in str(e["event"])]
    assert errors and errors[0]["level"] == "info"  # oss2 logs an error answer at INFO
    stderr_lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert any(line.get("logger") == "oss2.api" for line in stderr_lines)


def test_oss_retry_messages_are_structured_lines_in_the_file_and_on_stderr(
    oss_server: OssServer, log_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.setup("info", log_dir, force="json")
    oss_server.fail_request(503, operation="PutObject", times=1)
    _put_small_file(oss_server, log_dir.parent, retries=2)

    (retry,) = [e for e in _file_events(log_dir) if e["event"] == "oss request failed, retrying"]
    assert retry["level"] == "warning" and retry["request"] == "upload"
    assert "503" in str(retry["error"])
    stderr = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [e["request"] for e in stderr if e["event"] == "oss request failed, retrying"] == [
        "upload"
    ]
    assert OSS_ACCESS_KEY_SECRET not in json.dumps(stderr)


def test_library_record_carrying_a_secret_is_masked_in_the_file_and_on_stderr(
    log_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "library-logged-secret-9c1e"
    register(secret)
    logs.setup("info", log_dir, force="json")
    logging.getLogger("oss2").warning("retrying with token %s", secret)

    (event,) = [e for e in _file_events(log_dir) if e.get("logger") == "oss2"]
    assert event["event"] == "retrying with token ***"
    assert event["level"] == "warning"
    stderr = capsys.readouterr().err
    assert "retrying with token ***" in stderr
    assert secret not in stderr
    assert secret not in (next(log_dir.glob("backup_*.log"))).read_text(encoding="utf-8")


def test_library_traceback_is_masked_like_the_message(
    log_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "traceback-secret-77ab"
    register(secret)
    logs.setup("info", log_dir, force="json")
    try:
        raise ConnectionError(f"refused for {secret}")
    except ConnectionError:
        logging.getLogger("urllib3.connectionpool").exception("request failed")

    (event,) = [e for e in _file_events(log_dir) if e.get("logger") == "urllib3.connectionpool"]
    assert "ConnectionError: refused for ***" in str(event["exception"])
    assert secret not in capsys.readouterr().err


@pytest.mark.parametrize("level", ["info", "warning"])
def test_library_info_chatter_is_dropped_unless_debugging(
    log_dir: Path, capsys: pytest.CaptureFixture[str], level: str
) -> None:
    logs.setup(level, log_dir, force="json")
    logging.getLogger("oss2").info("start to put object")
    logging.getLogger("oss2").warning("retrying")
    logging.getLogger("oss2").error("put failed")
    events = [e["event"] for e in _file_events(log_dir)]
    assert events == ["retrying", "put failed"]
    assert "start to put object" not in capsys.readouterr().err


def test_library_warnings_are_dropped_at_error_level(log_dir: Path) -> None:
    logs.setup("error", log_dir, force="json")
    logging.getLogger("oss2").warning("retrying")
    logging.getLogger("oss2").error("put failed")
    assert [e["event"] for e in _file_events(log_dir)] == ["put failed"]


def test_our_own_tracebacks_are_text_in_json_lines_and_masked(
    log_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "own-traceback-secret-5d2f"
    register(secret)
    logs.setup("info", log_dir, force="json")
    try:
        raise RuntimeError(f"cannot use {secret}")
    except RuntimeError:
        structlog.get_logger("db_backup.test").exception("unexpected error")

    (event,) = _file_events(log_dir)
    assert str(event["exception"]).endswith("RuntimeError: cannot use ***")
    assert "exc_info" not in event
    assert secret not in capsys.readouterr().err
