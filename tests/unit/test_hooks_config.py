"""Hook settings: argv lists only, defaults, order, and the environment a hook gets."""

from __future__ import annotations

import pytest

from db_backup.config import ConfigError, loads
from db_backup.observe.hooks import (
    AFTER_DRILL,
    EVENTS,
    Hook,
    HookResult,
    hook_env,
    hooks_for,
    run_document,
)
from db_backup.util.secrets import register

JOB = "jobs:\n  - name: nightly\n    schedule: '0 2 * * *'\n    databases: shop\n"


def test_every_event_is_a_key_at_the_top_and_in_a_job() -> None:
    lines = "".join(f"  {event}: [{{command: [/bin/{event}]}}]\n" for event in EVENTS)
    job_lines = "".join(f"      {event}: [{{command: [own-{event}]}}]\n" for event in EVENTS)
    config = loads(f"storage: {{mode: local}}\nhooks:\n{lines}{JOB}    hooks:\n{job_lines}")
    for event in EVENTS:
        assert hooks_for(config, "nightly", event) == [
            Hook((f"/bin/{event}",), 60.0),
            Hook((f"own-{event}",), 60.0),
        ]


def test_a_shell_string_an_empty_command_and_a_bad_timeout_are_refused_with_their_place() -> None:
    with pytest.raises(ConfigError) as caught:
        loads(
            "storage: {mode: local}\nhooks:\n  after_backup:\n    - command: 'echo hi'\n"
            "    - command: []\n    - {command: [x], timeout_seconds: 0}\n"
            f"    - {{command: [x], shell: true}}\n{JOB}    hooks: {{before: []}}\n"
        )
    problems = "\n".join(caught.value.problems)
    assert "At 'hooks.after_backup[0].command': must be array, got str 'echo hi'" in problems
    assert "At 'hooks.after_backup[1].command'" in problems
    assert "At 'hooks.after_backup[2].timeout_seconds'" in problems
    assert "At 'hooks.after_backup[3].shell': unknown key" in problems
    assert "At 'jobs[0].hooks.before': unknown key" in problems


def test_no_hooks_configured_is_an_empty_list() -> None:
    config = loads(f"storage: {{mode: local}}\n{JOB}")
    assert hooks_for(config, "nightly", AFTER_DRILL) == []


def test_the_environment_keeps_the_allow_list_and_drops_secrets_and_everything_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("LC_TIME", "de_DE.UTF-8")
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", "whatever")
    monkeypatch.setenv("PGPASSWORD", "pg-pass")
    monkeypatch.setenv("PGHOST", "/run/postgresql")  # libpq's, not a hook's
    monkeypatch.setenv("TZ", "a-resolved-secret-in-an-allowed-name")
    register("a-resolved-secret-in-an-allowed-name")
    env = hook_env({"DB_BACKUP_JOB": "nightly"})
    assert env["PATH"] == "/usr/bin:/bin" and env["LC_TIME"] == "de_DE.UTF-8"
    assert env["DB_BACKUP_JOB"] == "nightly"
    for name in ("OSS_ACCESS_KEY_SECRET", "PGPASSWORD", "PGHOST", "TZ"):
        assert name not in env, name


def test_a_path_is_given_when_the_service_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PATH", raising=False)
    assert hook_env({})["PATH"] == "/usr/local/bin:/usr/bin:/bin"


def test_a_result_is_ok_only_when_it_exited_zero_in_time() -> None:
    def result(code: int | None, timed_out: bool = False, error: str = "") -> HookResult:
        return HookResult("after_backup", ("x",), code, timed_out, 1.0, "", "", error)

    assert result(0).ok
    assert not result(1).ok and not result(0, timed_out=True).ok
    assert not result(None, error="x not found on PATH").ok and not result(-15).ok


def test_the_run_document_names_the_job_and_its_databases() -> None:
    assert run_document("nightly", ["shop", "crm"], "timer", "2026-05-01T02:00:00Z") == {
        "kind": "run",
        "job": "nightly",
        "databases": ["shop", "crm"],
        "trigger": "timer",
        "startedAt": "2026-05-01T02:00:00Z",
    }
