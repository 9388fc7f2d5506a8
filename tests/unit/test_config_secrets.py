"""A value where a secret belongs is named by its place and kind, never shown; clear errors for
secret references, empty database lists and a sink DSN that is no connection string."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import structlog.testing
import yaml

from db_backup.cli import main
from db_backup.config import ConfigError, loads, secret_refs
from db_backup.config.preflight import BROKEN, RESOLVED, check_secrets
from db_backup.daemon.loop import Daemon, run_daemon
from db_backup.daemon.sd_notify import SdNotifier
from tests.conftest import RunCli

EX_CONFIG = 78
PLAIN = "S3cr3t-plainvalue"
RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
REF = "a secret reference ({env: NAME}, {file: PATH} or {credential: NAME})"
HIDDEN = "write where the secret comes from, never the secret itself (the value is not shown)"

JOB = """
  - name: nightly
    schedule: "0 2 * * *"
    databases: shop
"""

# Each secret-bearing place of the schema with the plain value a careless operator types there.
PLAIN_SECRETS = f"""
storage:
  mode: both
  oss:
    endpoint: https://oss-cn-hangzhou.aliyuncs.com
    bucket: my-backups
    region: cn-hangzhou
    access_key_id: {{env: OSS_ID}}
    access_key_secret: "{PLAIN}-oss"
  encryption: {{age: {{recipients: [{RECIPIENT}], identity: "AGE-SECRET-KEY-{PLAIN}"}}}}
sink: {{dsn: "postgresql://backup:{PLAIN}@pg.example/platform"}}
notifications:
  channels:
    - {{name: hook, type: slack, url: "https://hooks.slack.com/services/{PLAIN}"}}
    - name: mail
      type: email
      smtp_host: smtp.example.com
      from: db-backup@example.com
      to: [dba@example.com]
      username: db-backup
      password: "{PLAIN}-smtp"
jobs:
  - name: nightly
    schedule: "0 2 * * *"
    databases: shop
    connection: {{password: "{PLAIN}-pg"}}
    drill: {{target: server, server: {{host: 10.0.0.5, password: "{PLAIN}-drill"}}}}
  - name: weekly
    schedule: "0 3 * * 0"
    databases: shop
    connection: "postgresql://backup:{PLAIN}@pg.example/shop"
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        loads(text, source="test.yaml")
    return caught.value.problems


def test_a_secret_written_in_plain_text_is_named_by_its_place_and_kind_never_shown() -> None:
    found = problems(PLAIN_SECRETS)
    assert not [p for p in found if PLAIN in p], found
    assert sorted(found) == [
        f"At 'jobs[0].connection.password': must be {REF} or null, got a string; {HIDDEN}",
        f"At 'jobs[0].drill.server.password': must be {REF} or null, got a string; {HIDDEN}",
        "At 'jobs[1].connection': must be object, got a string (not shown: a secret may be "
        "written here)",
        f"At 'notifications.channels[0].url': must be {REF} or null, got a string; {HIDDEN}",
        f"At 'notifications.channels[1].password': must be {REF} or null, got a string; {HIDDEN}",
        f"At 'sink.dsn': must be {REF}, got a string; {HIDDEN}",
        f"At 'storage.encryption.age.identity': must be {REF} or null, got a string; {HIDDEN}",
        f"At 'storage.oss.access_key_secret': must be {REF}, got a string; {HIDDEN}",
    ]


@pytest.mark.parametrize(
    ("written", "message"),
    [
        (
            "{env: 1PG-PASSWORD}",
            "At 'jobs[0].connection.password.env': not a valid environment variable name "
            "(letters, digits and _, not starting with a digit)",
        ),
        (
            '{env: ""}',
            "At 'jobs[0].connection.password.env': not a valid environment variable name "
            "(letters, digits and _, not starting with a digit)",
        ),
        (
            "{credential: pg password}",
            "At 'jobs[0].connection.password.credential': not a valid credential name "
            "(letters, digits and . _ @ -)",
        ),
        ('{file: ""}', "At 'jobs[0].connection.password.file': must not be empty"),
        (
            "{env: 12345}",
            "At 'jobs[0].connection.password.env': must be string, got a number (not shown: a "
            "secret may be written here)",
        ),
        (
            "{env: PGPASSWORD, file: /etc/db-backup/pg.pass}",
            "At 'jobs[0].connection.password': a secret reference needs exactly one of: env, "
            "file, credential",
        ),
        (
            "{}",
            "At 'jobs[0].connection.password': a secret reference needs exactly one of: env, "
            "file, credential",
        ),
        (
            "{S3cr3t-plainvalue}",  # YAML for a mapping whose key is the secret
            "At 'jobs[0].connection.password': unknown key (not shown; known here: credential, "
            "env, file)",
        ),
        (
            "[a, b]",
            f"At 'jobs[0].connection.password': must be {REF} or null, got a list; {HIDDEN}",
        ),
    ],
)
def test_a_broken_secret_reference_says_what_is_wrong_without_the_value(
    written: str, message: str
) -> None:
    found = problems(
        f"storage: {{mode: local}}\njobs:{JOB}    connection: {{password: {written}}}\n"
    )
    assert found == [message]


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("[]", "At 'jobs[0].databases': must not be an empty list"),
        ('""', "At 'jobs[0].databases': must not be empty"),
        ('[shop, ""]', "At 'jobs[0].databases[1]': must not be empty"),
        (
            "{shop: true}",
            "At 'jobs[0].databases': must be string or array, got dict {'shop': True}",
        ),
    ],
)
def test_an_empty_or_odd_database_list_is_named_as_such(written: str, message: str) -> None:
    found = problems(
        f'storage: {{mode: local}}\njobs:\n  - {{name: a, schedule: "0 2 * * *", databases: {written}}}\n'
    )
    assert found == [message]


def test_values_of_the_new_sections_fail_when_the_file_loads_not_when_used() -> None:
    found = problems(
        f"""storage: {{mode: local}}
metrics: {{listen: "127.0.0.1:99999"}}
jobs:{JOB}    max_age: 0h
"""
    )
    assert found == [
        "At 'jobs[0].max_age': '0h' is zero; use a duration such as 26h, or false to turn the "
        "check off",
        "At 'metrics.listen': port 99999 is out of range (0 to 65535)",
    ]


def test_every_secret_reference_is_checked_the_drill_servers_too() -> None:
    config = loads(
        f"""storage: {{mode: local}}
sink: {{dsn: {{env: SINK_DSN}}}}
jobs:{JOB}    connection: {{password: {{env: PG_PW}}}}
    drill: {{target: server, server: {{host: 10.0.0.5, password: {{file: /etc/pw}}}}}}
"""
    )
    assert [(place, ref.describe()) for place, ref in secret_refs(config)] == [
        ("jobs[0].connection.password", "env 'PG_PW'"),
        ("jobs[0].drill.server.password", "file '/etc/pw'"),
        ("sink.dsn", "env 'SINK_DSN'"),
    ]


SINK = f"storage: {{mode: local}}\nsink: {{dsn: {{env: SINK_DSN}}}}\njobs:{JOB}"


@pytest.mark.parametrize(
    "dsn", [f"pg.example.com {PLAIN}", f"https://{PLAIN}@pg.example", f"pasword={PLAIN}"]
)
def test_a_sink_dsn_that_is_no_connection_string_is_broken_and_not_shown(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SINK_DSN", dsn)
    [check] = check_secrets(loads(SINK))
    assert check.outcome == BROKEN
    assert check.message == (
        "At 'sink.dsn': env 'SINK_DSN' resolved, but it is not a libpq connection string "
        "(key=value pairs such as `host=pg.example dbname=platform user=db_backup`, or a "
        "postgresql:// URI) (the value is not shown)"
    )


@pytest.mark.parametrize(
    "dsn", [f"host=pg.example dbname=platform password={PLAIN}", f"postgresql://u:{PLAIN}@h/db"]
)
def test_a_sink_dsn_that_libpq_reads_is_resolved(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SINK_DSN", dsn)
    assert [c.outcome for c in check_secrets(loads(SINK))] == [RESOLVED]


# --- what the user sees: check-config, the daemon's start and a reload ---------------------


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("command", ["check-config", "daemon"])
def test_the_commands_refuse_a_plain_secret_without_printing_it(
    tmp_path: Path, run_cli: RunCli, command: str
) -> None:
    path = _write(tmp_path, PLAIN_SECRETS)
    done = run_cli(command, "--config", str(path), timeout=60)
    assert done.returncode == EX_CONFIG, done.stderr
    assert f"{path}: 8 problem(s):" in done.stderr
    assert f"At 'sink.dsn': must be {REF}, got a string" in done.stderr
    assert PLAIN not in done.stderr + done.stdout


def test_check_config_refuses_a_sink_dsn_that_is_no_connection_string(
    tmp_path: Path, run_cli: RunCli
) -> None:
    document = yaml.safe_load(SINK)
    document["run_as"] = None
    document["directories"] = {k: str(tmp_path / k) for k in ("data", "reports", "state")}
    path = _write(tmp_path, yaml.safe_dump(document))
    done = run_cli("check-config", "--config", str(path), env={"SINK_DSN": f"db.example {PLAIN}"})
    assert done.returncode == EX_CONFIG, done.stderr
    assert "At 'sink.dsn': env 'SINK_DSN' resolved, but it is not a libpq connection string" in (
        done.stderr
    )
    assert PLAIN not in done.stderr + done.stdout
    fixed = run_cli("check-config", "--config", str(path), env={"SINK_DSN": "dbname=platform"})
    assert fixed.returncode == 0, fixed.stderr


def test_the_daemons_start_refuses_a_plain_secret_without_printing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(_write(tmp_path, PLAIN_SECRETS))
    with pytest.raises(ConfigError) as raised:
        run_daemon(path)
    assert PLAIN not in str(raised.value)
    assert main(["--config", path, "daemon"]) == EX_CONFIG
    out, err = capsys.readouterr()
    assert "At 'jobs[0].connection.password': must be a secret reference" in err
    assert PLAIN not in out + err


def test_a_reload_refuses_a_plain_secret_without_logging_it_or_saying_it_to_systemd(
    tmp_path: Path,
) -> None:
    good = f"run_as: null\ndirectories: {{state: {tmp_path}}}\nstorage: {{mode: local}}\njobs:{JOB}"
    path = _write(tmp_path, good)
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(address)
        systemd.settimeout(5)
        daemon = Daemon(
            str(path), loads(good, source=str(path)), SdNotifier({"NOTIFY_SOCKET": address})
        )
        path.write_text(
            good.replace(
                "databases: shop", f'databases: shop\n    connection: {{password: "{PLAIN}"}}'
            )
        )
        with structlog.testing.capture_logs() as logs:
            daemon.reload()
        said = [systemd.recv(4096).decode() for _ in range(2)]
    assert daemon.reload_error.startswith(
        f"{path}: At 'jobs[0].connection.password': must be {REF} or null, got a string"
    )
    assert any("STATUS=" in message and "must be a secret reference" in message for message in said)
    [refused] = [e for e in logs if e["event"].startswith("config reload refused")]
    assert PLAIN not in repr(logs) + repr(said) + daemon.reload_error
    assert daemon.config.jobs[0].connection.password is None, refused
