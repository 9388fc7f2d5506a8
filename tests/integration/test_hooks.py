"""Command hooks run for real: stdin, variables, environment, timeouts, exit codes, config."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from db_backup.config import Config, loads
from db_backup.observe import events
from db_backup.observe.hooks import (
    AFTER_BACKUP,
    BEFORE_BACKUP,
    Hook,
    HookContext,
    HookResult,
    run_event_hooks,
    run_hook,
)
from db_backup.util.execute import CHILD_ENV_NAMES
from db_backup.util.secrets import SecretRef, resolve
from tests.support.waiting import wait_until

CONTEXT = HookContext(
    event=AFTER_BACKUP,
    job="nightly",
    database="shop",
    status="SUCCESS",
    report_path="/data/reports/shop_20260501T020000Z_h.json",
)
REPORT = {"database": "shop", "status": "SUCCESS", "local": {"sizeBytes": 123}, "note": "订单"}


def sh(script: str, timeout: float = 30) -> Hook:
    return Hook(("sh", "-c", script), timeout)


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if item)


def test_stdin_carries_the_report_and_the_variables_name_what_happened(tmp_path: Path) -> None:
    received = tmp_path / "stdin.json"
    result = run_hook(sh(f"cat > {received}"), CONTEXT, REPORT)
    assert result.ok and result.exit_code == 0, result.describe()
    assert json.loads(received.read_text(encoding="utf-8")) == REPORT
    variables = tmp_path / "variables"
    result = run_hook(sh(f"env | grep ^DB_BACKUP_ | sort > {variables}"), CONTEXT, None)
    assert result.ok
    assert variables.read_text().splitlines() == [
        "DB_BACKUP_DATABASE=shop",
        "DB_BACKUP_EVENT=after_backup",
        "DB_BACKUP_JOB=nightly",
        "DB_BACKUP_REPORT=/data/reports/shop_20260501T020000Z_h.json",
        "DB_BACKUP_STATUS=SUCCESS",
    ]


def test_a_hook_that_never_reads_a_large_report_is_not_blocked() -> None:
    big = {"tables": {f"public.t{i}": i for i in range(60_000)}}  # over 1 MiB of JSON
    assert len(json.dumps(big)) > 1024 * 1024
    started = time.monotonic()
    result = run_hook(Hook(("true",), 30), CONTEXT, big)
    assert result.ok and time.monotonic() - started < 10


def test_no_secret_reaches_the_hooks_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "hook-test-s3cr3t-value-41"
    monkeypatch.setenv("DB_BACKUP_TEST_PGPASSWORD", secret)
    assert resolve(SecretRef("env", "DB_BACKUP_TEST_PGPASSWORD"), "test") == secret
    monkeypatch.setenv("LC_PAPER", secret)  # an allowed name with a secret value: dropped too
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "credentials"))
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("LANG", "C.UTF-8")
    pid_file, go = tmp_path / "pid", tmp_path / "go"
    hook = sh(f"echo $$ > {pid_file}; while [ ! -e {go} ]; do sleep 0.05; done")
    results: list[HookResult] = []
    runner = threading.Thread(target=lambda: results.append(run_hook(hook, CONTEXT, REPORT)))
    runner.start()
    try:
        pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), "pid"))
        environ = environ_of(pid)
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    finally:
        go.touch()
        runner.join(timeout=60)
    [result] = results
    assert result.ok and result.pid == pid
    assert secret.encode() not in raw
    assert "DB_BACKUP_TEST_PGPASSWORD" not in environ and "LC_PAPER" not in environ
    assert "CREDENTIALS_DIRECTORY" not in environ and "NOTIFY_SOCKET" not in environ
    assert environ["LANG"] == "C.UTF-8" and environ["DB_BACKUP_JOB"] == "nightly"
    allowed = set(CHILD_ENV_NAMES) | set(CONTEXT.variables())
    assert set(environ) <= allowed | {n for n in environ if n.startswith("LC_")}


def gone(pid: int) -> bool:
    """Returns whether `pid` has exited (a zombie left to a reaper that is not us counts)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in {"Z", "X"}


def test_a_hanging_hook_is_stopped_at_its_timeout_with_its_children(tmp_path: Path) -> None:
    child_pid = tmp_path / "child.pid"
    started = time.monotonic()
    result = run_hook(sh(f"sleep 300 & echo $! > {child_pid}; wait", timeout=1), CONTEXT, REPORT)
    elapsed = time.monotonic() - started
    assert result.timed_out and not result.ok
    assert 1 <= elapsed < 1 + 5, elapsed  # the timeout plus select's half-second tick
    assert result.exit_code == -15
    assert "was stopped after its timeout" in result.describe()
    # The hook's own child went with it: the whole process group was signalled.
    pid = int(child_pid.read_text())
    wait_until(lambda: gone(pid), f"the hook's child {pid} to end", timeout=10)


def test_a_hook_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    started = time.monotonic()
    result = run_hook(sh("trap '' TERM; sleep 300", timeout=1), CONTEXT, REPORT, grace=0.5)
    assert result.timed_out and result.exit_code == -9
    assert time.monotonic() - started < 10


def test_a_hook_that_closes_its_output_but_keeps_running_is_stopped_at_its_timeout() -> None:
    result = run_hook(sh("exec >/dev/null; sleep 300", timeout=1), CONTEXT, REPORT)
    assert result.timed_out and result.exit_code is not None and result.exit_code < 0


def test_exit_codes_signals_and_missing_programs_are_reported() -> None:
    failed = run_hook(sh("echo working; echo 'target refused it' >&2; exit 3"), CONTEXT, REPORT)
    assert (failed.ok, failed.exit_code, failed.timed_out) == (False, 3, False)
    assert failed.stdout_tail == "working" and failed.stderr_tail == "target refused it"
    assert failed.describe() == (
        "after_backup hook `sh -c 'echo working; echo '\"'\"'target refused it'\"'\"' >&2; "
        "exit 3'` exited with status 3: target refused it"
    )
    killed = run_hook(sh("kill -KILL $$"), CONTEXT, REPORT)
    assert killed.exit_code == -9 and "killed by signal SIGKILL" in killed.describe()
    missing = run_hook(Hook(("no-such-hook-program",), 5), CONTEXT, REPORT)
    assert missing.exit_code is None and not missing.ok
    assert "no-such-hook-program not found on PATH" in missing.describe()
    assert run_hook(Hook(("true",), 5), CONTEXT, REPORT).ok


def test_a_secret_in_a_hooks_stderr_or_argv_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_TEST_TOKEN", "tok-9f8e7d6c5b4a")
    token = resolve(SecretRef("env", "HOOK_TEST_TOKEN"), "test")
    result = run_hook(sh(f"echo 'bad token {token}' >&2; exit 1"), CONTEXT, REPORT)
    assert token not in result.describe() and token not in result.stderr_tail
    assert "bad token ***" in result.stderr_tail


# --- hooks from the config ----------------------------------------------------------------------


def config_with(tmp_path: Path, hooks: str) -> Config:
    return loads(
        f"run_as: null\ndirectories: {{data: {tmp_path}/data, reports: {tmp_path}/reports, "
        f"state: {tmp_path}/state}}\nstorage: {{mode: local}}\n{hooks}"
    )


def test_top_level_hooks_run_before_the_jobs_own_and_failures_are_counted(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    log = tmp_path / "order"
    config = config_with(
        tmp_path,
        f"hooks:\n  after_backup:\n    - command: [sh, -c, 'echo global >> {log}']\n"
        f"    - command: [sh, -c, 'echo failing >> {log}; exit 2']\n"
        "jobs:\n  - name: nightly\n    schedule: '0 2 * * *'\n    databases: shop\n"
        f"    hooks:\n      after_backup:\n        - command: [sh, -c, 'echo own >> {log}']\n"
        "          timeout_seconds: 5\n",
    )
    results = run_event_hooks(config, CONTEXT, REPORT)
    assert log.read_text().split() == ["global", "failing", "own"]  # a failure stops nothing
    assert [r.exit_code for r in results] == [0, 2, 0]
    assert events.failure_counts(tmp_path / "state") == {"hooks": 1}


def test_a_failing_before_backup_hook_stops_the_ones_after_it_and_is_not_counted(
    tmp_path: Path,
) -> None:
    (tmp_path / "state").mkdir()
    log = tmp_path / "order"
    config = config_with(
        tmp_path,
        "jobs:\n  - name: nightly\n    schedule: '0 2 * * *'\n    databases: shop\n"
        "    hooks:\n      before_backup:\n"
        f"        - command: [sh, -c, 'echo first >> {log}; exit 1']\n"
        f"        - command: [sh, -c, 'echo second >> {log}']\n",
    )
    context = HookContext(event=BEFORE_BACKUP, job="nightly")
    [result] = run_event_hooks(config, context, {"kind": "run", "job": "nightly"})
    assert result.exit_code == 1 and log.read_text().split() == ["first"]
    assert events.failure_counts(tmp_path / "state") == {}  # the run's failure, not a consumer's
    assert os.environ.get("DB_BACKUP_EVENT") is None  # nothing leaked into our own environment
