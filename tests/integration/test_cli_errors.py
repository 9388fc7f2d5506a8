"""Mistakes a user makes, seen through the installed `db-backup` command: messages and exit codes."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import CLI, RunCli, Setup

pytestmark = pytest.mark.integration

EX_CONFIG = 78
EX_TEMPFAIL = 75

GOOD = {
    "run_as": None,  # root stays root: the test directories belong to root
    "storage": {"mode": "local"},
    "jobs": [{"name": "nightly", "schedule": "0 2 * * *", "databases": "shop"}],
}


def write_config(directory: Path, document: dict, name: str = "config.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def with_directories(root: Path, document: dict) -> dict:
    """Returns `document` with every directory under `root`."""
    dirs = {k: str(root / k) for k in ("data", "reports", "state")}
    return {"directories": dirs, "run_as": None, **document}


# --- the config file itself --------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["check-config"], ["run", "nightly"], ["status"], ["next"], ["daemon"], ["oss-lifecycle"]],
)
def test_config_that_is_not_utf8_is_a_clear_error_from_every_command(
    tmp_path: Path, run_cli: RunCli, command: list[str]
) -> None:
    path = tmp_path / "config.yaml"
    text = yaml.safe_dump(with_directories(tmp_path, GOOD), sort_keys=False)
    path.write_bytes(text.encode() + "# r\xe9sum\xe9\n".encode("latin-1"))
    done = run_cli("--config", str(path), *command, timeout=60)
    assert done.returncode == EX_CONFIG, done.stderr
    offset = len(text.encode()) + len(b"# r")
    line = text.count("\n") + 1
    assert (
        f"line {line}, column 4 (byte offset {offset}): not UTF-8 text (byte 0xe9)" in done.stderr
    )
    assert str(path) in done.stderr
    assert "Traceback" not in done.stderr


def test_syntax_duplicate_and_rule_mistakes_reach_the_user_with_their_places(
    tmp_path: Path, run_cli: RunCli
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        """storage: {mode: local}
jobs:
  - name: nightly
    schedule: "0 2 L * *"
    timezone: Mars/Olympus
    databases: shop
    colour: blue
    retention: {days: 7}
    retention: {days: 9}
  - name: nightly
    schedule: "0 3 * * *"
    databases: crm
""",
        encoding="utf-8",
    )
    done = run_cli("check-config", "--config", str(path))
    assert done.returncode == EX_CONFIG
    assert f"{path}: 5 problem(s):" in done.stderr
    for needle in (
        "At 'jobs[0].retention': key given twice, at line 8 and line 9",
        "At 'jobs[0].colour': unknown key",
        "At 'jobs[0].schedule': not a valid cron expression: '0 2 L * *' (day-of-month field "
        "'L': 'L' (last day of the month, or last such weekday) is a croniter extension",
        "At 'jobs[0].timezone': unknown time zone 'Mars/Olympus'",
        "At 'jobs[1].name': 'nightly' is also the name of jobs[0]",
    ):
        assert needle in done.stderr

    path.write_text('jobs:\n  - name: "nightly\n    schedule: x\n', encoding="utf-8")
    done = run_cli("check-config", "--config", str(path))
    assert done.returncode == EX_CONFIG
    assert (
        "line 4, column 1: not valid YAML: found unexpected end of stream "
        "(while scanning a quoted scalar that started at line 2, column 11)"
    ) in done.stderr


def test_config_option_is_accepted_after_the_command_too(tmp_path: Path, run_cli: RunCli) -> None:
    good = write_config(tmp_path, with_directories(tmp_path, GOOD))
    after = run_cli("check-config", "--config", str(good))
    assert after.returncode == 0, after.stderr
    assert after.stdout.startswith(f"{good}: OK (1 job(s): nightly")
    # After the command it wins over the one before it, as the later option does elsewhere.
    missing = tmp_path / "missing.yaml"
    both = run_cli("--config", str(missing), "check-config", "--config", str(good))
    assert both.returncode == 0, both.stderr
    before = run_cli("--config", str(missing), "check-config")
    assert before.returncode == EX_CONFIG
    assert f"{missing}: 1 problem(s):" in before.stderr
    nxt = run_cli("next", "nightly", "--config", str(good), "-n", "1")
    assert nxt.returncode == 0, nxt.stderr
    assert nxt.stdout.startswith("nightly  '0 2 * * *'")


def test_help_documents_the_exit_statuses(run_cli: RunCli) -> None:
    for args in (["--help"], ["run", "--help"], ["check-config", "--help"]):
        done = run_cli(*args)
        assert done.returncode == 0
        assert "exit status:" in done.stdout
        assert "  1   the command failed" in done.stdout
        assert "  75  the job is already running" in done.stdout
        assert "  78  the config is unusable" in done.stdout


# --- exit codes: a config error, a failed backup and a busy job are told apart -----------------


def test_config_error_failed_backup_and_busy_job_have_different_exit_codes(
    setup: Setup, run_cli: RunCli
) -> None:
    setup.job()["databases"] = "no_such_database"
    setup.write()
    failed = run_cli("--config", str(setup.path), "run", "nightly")
    assert failed.returncode == 1, failed.stderr
    assert [r["status"] for r in setup.reports_json()] == ["FAILED"]

    lock = setup.state / "locks" / "nightly.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        busy = run_cli("--config", str(setup.path), "run", "nightly")
    assert busy.returncode == EX_TEMPFAIL, busy.stderr

    setup.job()["schedule"] = "0 2 * * 5#2"
    setup.write()
    config_error = run_cli("--config", str(setup.path), "run", "nightly")
    assert config_error.returncode == EX_CONFIG
    assert "At 'jobs[0].schedule'" in config_error.stderr

    unknown = run_cli("--config", str(setup.root / "nope.yaml"), "run", "nightly")
    assert unknown.returncode == EX_CONFIG
    assert len(setup.reports_json()) == 1


@pytest.mark.parametrize("command", ["run", "next", "drill"])
def test_unknown_job_name_is_a_usage_error_in_every_command_that_takes_one(
    tmp_path: Path, run_cli: RunCli, command: str
) -> None:
    good = write_config(tmp_path, with_directories(tmp_path, GOOD))
    done = run_cli("--config", str(good), command, "weekly")
    assert done.returncode == 2, done.stderr  # as `--help` promises: "unknown ... job name"
    assert "no job named 'weekly'" in done.stderr and "(jobs: nightly)" in done.stderr
    assert done.stderr.count("db-backup: ") == 1 and "Traceback" not in done.stderr
    assert done.stdout == ""
    help_text = run_cli(command, "--help").stdout
    assert "  2   wrong command line: unknown option, command or job name" in help_text


# --- check-config resolves every secret it can from where it runs -------------------------------

SECRET_VALUE = "pw-Zq81-never-printed"


def secret_config(tmp_path: Path, password: dict, key_id: dict | None = None) -> Path:
    document = with_directories(tmp_path, GOOD)
    document["storage"] = {
        "mode": "local",
        "oss": {
            "endpoint": "http://127.0.0.1:9",
            "bucket": "backups",
            "region": "cn-hangzhou",
            "access_key_id": key_id or {"env": "DBB_TEST_KEY_ID"},
            "access_key_secret": {"credential": "oss-secret"},
        },
    }
    document["jobs"][0] = {**document["jobs"][0], "connection": {"password": password}}
    return write_config(tmp_path, document)


def test_check_config_resolves_every_secret_and_never_prints_one(
    tmp_path: Path, run_cli: RunCli
) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "oss-secret").write_text(SECRET_VALUE + "-oss\n")
    pass_file = tmp_path / "pg.pass"
    pass_file.write_text(SECRET_VALUE + "\n")
    path = secret_config(tmp_path, {"file": str(pass_file)})
    env = {"CREDENTIALS_DIRECTORY": str(creds), "DBB_TEST_KEY_ID": SECRET_VALUE + "-id"}
    done = run_cli("check-config", "--config", str(path), env=env)
    assert done.returncode == 0, done.stderr
    assert "3 secret(s) resolved" in done.stdout
    assert SECRET_VALUE not in done.stdout + done.stderr


def test_check_config_names_each_secret_it_cannot_resolve_and_why(
    tmp_path: Path, run_cli: RunCli
) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    path = secret_config(tmp_path, {"file": str(tmp_path / "missing.pass")})
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    done = run_cli("check-config", "--config", str(path), env=env)
    assert done.returncode == EX_CONFIG
    assert f"{path}: valid, but not usable here: 3 secret(s) cannot be resolved:" in done.stderr
    assert (
        "At 'storage.oss.access_key_id': environment variable DBB_TEST_KEY_ID is not set"
        in done.stderr
    )
    assert (
        f"At 'storage.oss.access_key_secret': cannot read {creds / 'oss-secret'}: "
        "No such file or directory"
    ) in done.stderr
    assert (
        f"At 'jobs[0].connection.password': cannot read {tmp_path / 'missing.pass'}: "
        "No such file or directory"
    ) in done.stderr
    assert "Traceback" not in done.stderr


def test_credential_outside_the_unit_cannot_be_checked_here_which_is_not_broken(
    tmp_path: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    pass_file = tmp_path / "pg.pass"
    pass_file.write_text(SECRET_VALUE + "\n")
    path = secret_config(tmp_path, {"file": str(pass_file)})
    env = {"DBB_TEST_KEY_ID": "key-id-value"}
    done = run_cli("check-config", "--config", str(path), env=env)
    assert done.returncode == EX_CONFIG
    assert f"{path}: valid, but not usable here: 1 secret(s) cannot be checked here:" in done.stderr
    assert (
        "At 'storage.oss.access_key_secret': credential 'oss-secret' cannot be checked here: "
        "$CREDENTIALS_DIRECTORY is not set"
    ) in done.stderr
    assert "cannot be resolved" not in done.stderr
    assert SECRET_VALUE not in done.stderr


def test_secret_file_that_is_not_utf8_is_named_never_shown(tmp_path: Path, run_cli: RunCli) -> None:
    pass_file = tmp_path / "latin1.pass"
    pass_file.write_bytes(b"caf\xe9-" + SECRET_VALUE.encode() + b"\n")
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "oss-secret").write_text("oss-secret-value\n")
    path = secret_config(tmp_path, {"file": str(pass_file)})
    env = {"CREDENTIALS_DIRECTORY": str(creds), "DBB_TEST_KEY_ID": "key-id-value"}
    done = run_cli("check-config", "--config", str(path), env=env)
    assert done.returncode == EX_CONFIG
    assert (
        f"At 'jobs[0].connection.password': {pass_file} is not UTF-8 text (byte offset 3)"
        in done.stderr
    )
    assert SECRET_VALUE not in done.stderr and "caf" not in done.stderr
    assert "Traceback" not in done.stderr


# --- status ------------------------------------------------------------------------------------


def test_status_on_a_reports_directory_it_cannot_read_says_so_and_fails(
    tmp_path: Path, run_cli: RunCli
) -> None:
    path = write_config(tmp_path, with_directories(tmp_path, GOOD))
    reports = tmp_path / "reports"
    reports.mkdir(mode=0o000)
    argv = [CLI, "--config", str(path), "status"]
    if os.geteuid() == 0:
        # Root reads any directory; without these two capabilities the mode bits apply to it.
        if not shutil.which("setpriv"):
            pytest.skip("setpriv (util-linux) is needed to drop root's DAC capabilities")
        argv = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    reports.chmod(0o700)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"cannot read the reports directory {reports}: Permission denied" in done.stderr
    assert done.stdout == ""


def test_status_on_a_missing_reports_directory_says_so_and_fails(
    tmp_path: Path, run_cli: RunCli
) -> None:
    path = write_config(tmp_path, with_directories(tmp_path, GOOD))
    done = run_cli("--config", str(path), "status")
    assert done.returncode == 1
    assert f"the reports directory {tmp_path / 'reports'} does not exist" in done.stderr
    (tmp_path / "reports").write_text("not a directory")
    done = run_cli("--config", str(path), "status", "--json")
    assert done.returncode == 1
    assert f"cannot read the reports directory {tmp_path / 'reports'}: Not a directory" in (
        done.stderr
    )
    assert done.stdout == ""


def test_status_page_beyond_the_last_says_it_is_empty(setup: Setup, run_cli: RunCli) -> None:
    assert run_cli("--config", str(setup.path), "run", "nightly").returncode == 0
    first = run_cli("--config", str(setup.path), "status", "--page", "1")
    assert first.returncode == 0 and "page 1 of 1, 1 matching report(s)" in first.stdout
    beyond = run_cli("--config", str(setup.path), "status", "--page", "2")
    assert beyond.returncode == 0, beyond.stderr
    assert beyond.stdout.strip() == (
        "page 2 is empty: the 1 matching report(s) fill 1 page(s) of this size"
    )
    nothing = run_cli("--config", str(setup.path), "status", "--job", "weekly")
    assert nothing.stdout.strip() == "no matching reports"


def test_status_into_a_pipe_the_reader_closed_ends_quietly_like_sigpipe(
    setup: Setup, run_cli: RunCli
) -> None:
    assert run_cli("--config", str(setup.path), "run", "nightly").returncode == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (`| head`) is gone before status writes a byte
    try:
        done = subprocess.run(
            [CLI, "--config", str(setup.path), "status", "--json"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 128 + 13, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
    assert done.stderr == ""


def test_a_logs_directory_that_does_not_exist_is_created_by_the_first_run(
    setup: Setup, run_cli: RunCli
) -> None:
    logs = setup.root / "var" / "log" / "db-backup"
    setup.document["directories"]["logs"] = str(logs)
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 0, done.stderr
    assert "cannot write log" not in done.stderr
    (log_file,) = logs.glob("backup_*.log")
    assert '"job": "nightly"' in log_file.read_text()


def test_check_config_warns_about_a_directory_it_cannot_create_and_a_run_says_it_once(
    setup: Setup, run_cli: RunCli
) -> None:
    blocker = setup.root / "not-a-directory"
    blocker.write_text("a file where the logs' parent should be")
    setup.document["directories"]["logs"] = str(blocker / "logs")
    setup.write()
    checked = run_cli("--config", str(setup.path), "check-config")
    assert checked.returncode == 0, checked.stderr
    assert f"warning: directories.logs: {blocker / 'logs'}: {blocker} is not a directory" in (
        checked.stderr
    )
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 0, done.stderr  # the backup does not depend on its log file
    assert done.stderr.count("cannot write log files") == 1, done.stderr
