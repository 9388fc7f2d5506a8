"""Journal native protocol as journald receives it, over a real AF_UNIX datagram socket."""

from __future__ import annotations

import array
import fcntl
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from db_backup.observe import logs
from db_backup.observe.journal import (
    JournalRenderer,
    JournalSender,
    field_name,
    stderr_is_journal,
)


def parse_entry(data: bytes) -> dict[str, bytes]:
    """Parse one native-protocol entry (both the ``KEY=value`` and binary-safe forms)."""
    fields: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        newline = data.index(b"\n", pos)
        equals = data.find(b"=", pos, newline)
        if equals != -1:
            name, value = data[pos:equals], data[equals + 1 : newline]
            pos = newline + 1
        else:
            name = data[pos:newline]
            (length,) = struct.unpack("<Q", data[newline + 1 : newline + 9])
            start = newline + 9
            value = data[start : start + length]
            assert data[start + length : start + length + 1] == b"\n", "missing trailing newline"
            pos = start + length + 1
        key = name.decode("ascii")
        assert key == key.upper() and not key.startswith("_"), key
        assert key not in fields, f"duplicate field {key}"
        fields[key] = value
    return fields


class JournalSocket:
    """A bound datagram socket standing in for /run/systemd/journal/socket."""

    def __init__(self, sock: socket.socket, path: str) -> None:
        """Wrap a bound socket at ``path``."""
        self.sock = sock
        self.path = path

    def receive_raw(self) -> tuple[bytes, list[int]]:
        """Return the next datagram's payload and any file descriptors passed with it."""
        fds = array.array("i")
        data, ancdata, _flags, _addr = self.sock.recvmsg(
            4 * 1024 * 1024, socket.CMSG_SPACE(4 * fds.itemsize)
        )
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
        return data, list(fds)

    def receive(self) -> dict[str, bytes]:
        """Return the next entry parsed, reading it from a passed memfd if there is one."""
        data, fds = self.receive_raw()
        if fds:
            assert data == b""
            [fd] = fds
            try:
                data = os.pread(fd, os.fstat(fd).st_size, 0)
            finally:
                os.close(fd)
        return parse_entry(data)

    def text(self) -> dict[str, str]:
        """Return the next entry with all values decoded as UTF-8."""
        return {key: value.decode("utf-8") for key, value in self.receive().items()}


@pytest.fixture
def journal_socket() -> Iterator[JournalSocket]:
    """Bind a journal socket in a short temp dir (sun_path is limited to 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="jrn") as directory:
        path = str(Path(directory) / "socket")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(5)
        # Big enough to receive the large-but-still-a-datagram test entry.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        try:
            yield JournalSocket(sock, path)
        finally:
            sock.close()


def test_entry_has_message_priority_identifier_and_fields(journal_socket: JournalSocket) -> None:
    sender = JournalSender(journal_socket.path)
    assert sender.send("job finished", 6, {"job": "nightly", "bytes": 123, "CODE_FUNC": "run"})
    assert journal_socket.text() == {
        "MESSAGE": "job finished",
        "PRIORITY": "6",
        "SYSLOG_IDENTIFIER": "db-backup",
        "JOB": "nightly",
        "BYTES": "123",
        "CODE_FUNC": "run",
    }


def test_multi_line_and_nul_values_use_the_binary_safe_form(journal_socket: JournalSocket) -> None:
    sender = JournalSender(journal_socket.path)
    sender.send(
        "pg_dump failed\nsee stderr",
        3,
        {"stderr": "line one\nline two\n", "blob": b"a\0b", "latin": b"\xff\xfe", "ok": "x=y"},
    )
    data, _ = journal_socket.receive_raw()
    assert b"MESSAGE\n" + struct.pack("<Q", 25) + b"pg_dump failed\nsee stderr\n" in data
    fields = parse_entry(data)
    assert fields["MESSAGE"] == b"pg_dump failed\nsee stderr"
    assert fields["STDERR"] == b"line one\nline two\n"
    assert fields["BLOB"] == b"a\0b"
    assert fields["LATIN"] == b"\xff\xfe"
    assert fields["OK"] == b"x=y"
    assert b"OK=x=y\n" in data


def test_non_ascii_text_is_utf8(journal_socket: JournalSocket) -> None:
    JournalSender(journal_socket.path).send("备份完成", 6, {"database": "社区"})
    fields = journal_socket.text()
    assert fields["MESSAGE"] == "备份完成"
    assert fields["DATABASE"] == "社区"


def test_custom_identifier_and_priority_is_clamped(journal_socket: JournalSocket) -> None:
    JournalSender(journal_socket.path, identifier="db-backup-drill").send("x", 42, {})
    fields = journal_socket.text()
    assert fields["SYSLOG_IDENTIFIER"] == "db-backup-drill"
    assert fields["PRIORITY"] == "7"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("job", "JOB"),
        ("duration_s", "DURATION_S"),
        ("bytes.total", "BYTES_TOTAL"),
        ("_private", "PRIVATE"),
        ("9lives", "LIVES"),
        ("数据库", None),
        ("x" * 80, "X" * 64),
    ],
)
def test_field_names_are_sanitised(key: str, expected: str | None) -> None:
    assert field_name(key) == expected


def test_caller_fields_cannot_override_message_or_priority(journal_socket: JournalSocket) -> None:
    JournalSender(journal_socket.path).send("real", 4, {"message": "fake", "priority": 0})
    fields = journal_socket.text()
    assert fields["MESSAGE"] == "real"
    assert fields["PRIORITY"] == "4"


def test_large_entry_is_passed_through_a_sealed_memfd(journal_socket: JournalSocket) -> None:
    report = "x" * (2 * 1024 * 1024)  # beyond the default AF_UNIX datagram limit
    assert JournalSender(journal_socket.path).send("big report", 6, {"report": report})
    data, fds = journal_socket.receive_raw()
    assert data == b""
    [fd] = fds
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SEAL
        entry = parse_entry(os.pread(fd, os.fstat(fd).st_size, 0))
    finally:
        os.close(fd)
    assert entry["MESSAGE"] == b"big report"
    assert entry["REPORT"] == report.encode()


def test_unreachable_journal_falls_back_to_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    sender = JournalSender("/nonexistent/journal/socket")
    assert sender.send("job failed job=nightly", 3, {"job": "nightly"}) is False
    assert sender.send("second", 6, {}) is False
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("db-backup: journal socket /nonexistent/journal/socket unusable")
    assert err[1:] == ["db-backup: job failed job=nightly", "db-backup: second"]


def test_stderr_fallback_uses_priority_prefix_when_stderr_is_the_journal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    info = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
    JournalSender("/nonexistent/journal/socket").send("disk full", 3, {})
    assert "<3>db-backup: disk full" in capsys.readouterr().err.splitlines()


def test_unencodable_value_does_not_raise_and_the_line_goes_to_stderr(
    journal_socket: JournalSocket,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("boom")

    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    sender = JournalSender(journal_socket.path)
    assert sender.send("still logged", 6, {"bad": Broken()}) is False
    assert capsys.readouterr().err.splitlines() == [
        "db-backup: still logged (journal encoding failed: RuntimeError('boom'))"
    ]
    # Nothing half-encoded reached the journal; the next entry does.
    assert sender.send("next", 6, {})
    assert journal_socket.text()["MESSAGE"] == "next"


# --- JOURNAL_STREAM ---------------------------------------------------------------------------


def test_stderr_is_journal_when_journal_stream_matches_fd_2() -> None:
    info = os.fstat(2)
    assert stderr_is_journal({"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})


@pytest.mark.parametrize("value", [None, "", "garbage", "1:2", "0:0:0"])
def test_stderr_is_not_journal_otherwise(value: str | None) -> None:
    environ = {} if value is None else {"JOURNAL_STREAM": value}
    assert not stderr_is_journal(environ)


def test_stderr_is_journal_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    info = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
    assert stderr_is_journal()
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino + 1}")
    assert not stderr_is_journal()


# --- structlog renderer -----------------------------------------------------------------------


def journal_logger(path: str) -> structlog.typing.FilteringBoundLogger:
    """Return a logger whose only processors are the level adder and the journal renderer."""
    logger: structlog.typing.FilteringBoundLogger = structlog.wrap_logger(
        structlog.ReturnLogger(),
        processors=[structlog.processors.add_log_level, JournalRenderer(JournalSender(path))],
        wrapper_class=structlog.make_filtering_bound_logger(0),
    )
    return logger


def test_canonical_job_line_becomes_message_and_fields(journal_socket: JournalSocket) -> None:
    log = journal_logger(journal_socket.path)
    result = log.info(
        "job finished",
        job="nightly",
        database="community",
        status="SUCCESS",
        bytes=123,
        duration_s=4.5,
        report="/data/db-backups/reports/community_20240101T013000Z_db1.json",
    )
    assert result is None  # dropped after sending: nothing else prints it
    fields = journal_socket.text()
    assert fields["MESSAGE"] == (
        "job finished job=nightly database=community status=SUCCESS bytes=123 duration_s=4.5 "
        "report=/data/db-backups/reports/community_20240101T013000Z_db1.json"
    )
    assert fields["PRIORITY"] == "6"
    assert fields["JOB"] == "nightly"
    assert fields["DATABASE"] == "community"
    assert fields["STATUS"] == "SUCCESS"
    assert fields["BYTES"] == "123"
    assert fields["DURATION_S"] == "4.5"
    assert fields["REPORT"].endswith(".json")
    assert fields["EVENT"] == "job finished"
    assert fields["SYSLOG_IDENTIFIER"] == "db-backup"


@pytest.mark.parametrize(
    ("method", "priority"),
    [("debug", "7"), ("info", "6"), ("warning", "4"), ("error", "3"), ("critical", "2")],
)
def test_levels_map_to_syslog_priorities(
    journal_socket: JournalSocket, method: str, priority: str
) -> None:
    getattr(journal_logger(journal_socket.path), method)("event")
    assert journal_socket.text()["PRIORITY"] == priority


def test_error_text_with_spaces_is_quoted_and_multi_line_kept_out_of_message(
    journal_socket: JournalSocket,
) -> None:
    journal_logger(journal_socket.path).error(
        "job failed",
        job="nightly",
        error="connection refused",
        stderr="pg_dump: error: connection\nto server failed",
        result={"status": "FAILED"},
    )
    fields = journal_socket.text()
    assert fields["MESSAGE"] == 'job failed job=nightly error="connection refused"'
    assert fields["ERROR"] == "connection refused"
    assert fields["STDERR"] == "pg_dump: error: connection\nto server failed"
    assert fields["RESULT"] == '{"status": "FAILED"}'
    assert fields["PRIORITY"] == "3"


def test_exception_traceback_goes_to_message_and_exception_field(
    journal_socket: JournalSocket,
) -> None:
    log = journal_logger(journal_socket.path)
    try:
        raise ValueError("bad value")
    except ValueError:
        log.exception("unexpected error", job="nightly")
    fields = journal_socket.text()
    assert fields["PRIORITY"] == "3"
    assert fields["MESSAGE"].startswith("unexpected error job=nightly\nTraceback")
    assert fields["EXCEPTION"].endswith("ValueError: bad value")


def test_stdlib_logging_records_reach_the_journal_through_the_pipeline(
    journal_socket: JournalSocket, tmp_path: Path
) -> None:
    logger = logging.getLogger("oss2.test")
    try:
        logs.setup("info", tmp_path, force="journal", journal=JournalSender(journal_socket.path))
        logger.debug("not sent")
        logger.warning("retrying upload part %d", 7)
        fields = journal_socket.text()
        assert fields["MESSAGE"] == "retrying upload part 7"
        assert fields["PRIORITY"] == "4"
        assert fields["LOGGER"] == "oss2.test"
        try:
            raise OSError("connection reset")
        except OSError:
            logger.exception("upload failed")
        fields = journal_socket.text()
        assert fields["PRIORITY"] == "3"
        assert fields["MESSAGE"].startswith("upload failed\nTraceback")
        assert fields["EXCEPTION"].endswith("OSError: connection reset")
    finally:
        logs.reset()


REAL_JOURNALD = "/lib/systemd/systemd-journald"
REAL_JOURNALD_SCRIPT = r"""
set -eu
# Private tmpfs mounts: the host's /run and journal files are never touched.
mount -t tmpfs tmpfs /run
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
mkdir -p /run/systemd/journal /run/log/journal
"$JOURNALD" >/dev/null 2>&1 &
journald_pid=$!
trap 'kill "$journald_pid"' EXIT
for _ in $(seq 1 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
"$PYTHON" -c "$SENDER"
# journald stores entries asynchronously: read until all three are there (or give up).
for _ in $(seq 1 600); do
    stored=$(journalctl -D /run/log/journal -o json --all --no-pager SYSLOG_IDENTIFIER=db-backup || true)
    [ "$(printf '%s\n' "$stored" | grep -c MESSAGE)" -ge 3 ] && break
    sleep 0.05
done
printf '%s\n' "$stored"
"""
REAL_JOURNALD_SENDER = """
import structlog
from db_backup.observe.journal import JournalRenderer, JournalSender
sender = JournalSender()
assert sender.send("备份 plain", 6, {"job": "nightly", "stderr": "a\\nb", "blob": b"x\\0y"})
assert sender.send("big report", 6, {"report": "z" * 3_000_000})
log = structlog.wrap_logger(
    structlog.ReturnLogger(),
    processors=[structlog.processors.add_log_level, JournalRenderer(sender)],
)
log.error("job failed", job="nightly", status="FAILED", bytes=0)
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path(REAL_JOURNALD).exists() or shutil.which("unshare") is None,
    reason="needs root, unshare and systemd-journald to run a private journald",
)
def test_real_journald_stores_every_form_of_entry() -> None:
    """Run the real systemd-journald in a private mount namespace and read entries back."""
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", REAL_JOURNALD_SCRIPT],
        env={
            **os.environ,
            "JOURNALD": REAL_JOURNALD,
            "PYTHON": sys.executable,
            "SENDER": REAL_JOURNALD_SENDER,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    entries = {entry["MESSAGE"]: entry for entry in map(json.loads, result.stdout.splitlines())}
    plain = entries["备份 plain"]
    assert plain["JOB"] == "nightly"
    assert plain["STDERR"] == "a\nb"
    assert plain["BLOB"] == [120, 0, 121]  # journalctl shows non-text values as byte arrays
    assert plain["PRIORITY"] == "6"
    assert len(entries["big report"]["REPORT"]) == 3_000_000  # arrived through the memfd
    failed = entries["job failed job=nightly status=FAILED bytes=0"]
    assert (failed["PRIORITY"], failed["STATUS"], failed["BYTES"]) == ("3", "FAILED", "0")
