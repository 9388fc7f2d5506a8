"""`db-backup timers`: drop-ins that give each timer its job's schedule and the daemon's credentials.

The command runs for real (`db_backup.cli.main`) against a throwaway root (`--root`) holding the
shipped units; where systemd-analyze is installed, it verifies the units with the drop-ins.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from db_backup.cli import main
from db_backup.cli.timers import MARKER, credential_lines

REPO = Path(__file__).resolve().parents[2]
ANALYZE = shutil.which("systemd-analyze")
CREDENTIAL = "LoadCredential=oss-access-key-secret:/etc/db-backup/credentials/oss-access-key-secret"
CONFIG = """
run_as: null
storage: {mode: local}
jobs:
  - name: nightly
    schedule: "0 2 * * *"
    timezone: Asia/Shanghai
    databases: all
    drill: {enabled: true, schedule: "0 4 * * 0"}
  - {name: weekly, schedule: "15 3 1,15 * 1-5", timezone: UTC, databases: [crm]}
"""


def make_root(tmp_path: Path, config: str = CONFIG) -> tuple[Path, Path]:
    """Returns (root, config file): the shipped units under root/etc/systemd/system."""
    root = tmp_path / "root"
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in (REPO / "systemd").iterdir():
        shutil.copy2(unit, units / unit.name)
    (units / "db-backup.service.d").mkdir()
    (units / "db-backup.service.d/override.conf").write_text(f"[Service]\n{CREDENTIAL}\n")
    path = tmp_path / "config.yaml"
    path.write_text(config)
    return root, path


def timers(config: Path, root: Path, *extra: str) -> int:
    return main(["--config", str(config), "timers", "--root", str(root), *extra])


def test_without_apply_it_prints_the_drop_ins_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, config = make_root(tmp_path)
    assert timers(config, root) == 0
    out = capsys.readouterr().out
    assert "OnCalendar=*-*-* 02:00:00 Asia/Shanghai" in out
    assert "nothing written; add --apply" in out
    assert not list((root / "etc/systemd/system").glob("*.timer.d"))


def test_apply_writes_each_jobs_schedule_its_drill_and_the_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, config = make_root(tmp_path)
    assert timers(config, root, "--apply") == 0
    units = root / "etc/systemd/system"
    nightly = (units / "db-backup@nightly.timer.d/schedule.conf").read_text()
    assert nightly.startswith(MARKER)
    assert "OnCalendar=\nOnCalendar=*-*-* 02:00:00 Asia/Shanghai\n" in nightly
    drill = (units / "db-backup-drill@nightly.timer.d/schedule.conf").read_text()
    assert "OnCalendar=Sun *-*-* 04:00:00 Asia/Shanghai" in drill
    weekly = (units / "db-backup@weekly.timer.d/schedule.conf").read_text()
    # Day-of-month OR day-of-week, as croniter: two lines.
    assert "OnCalendar=Mon..Fri *-*-* 03:15:00 UTC\nOnCalendar=*-*-01,15 03:15:00 UTC" in weekly
    for service in ("db-backup@.service", "db-backup-drill@.service"):
        path = units / f"{service}.d/credentials.conf"
        assert f"[Service]\n{CREDENTIAL}\n" in path.read_text()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    out = capsys.readouterr().out
    assert "sudo systemctl disable --now db-backup.service" in out
    assert (
        "sudo systemctl enable --now db-backup@nightly.timer db-backup@weekly.timer "
        "db-backup-drill@nightly.timer" in out
    )


def test_a_schedule_a_timer_would_skip_is_refused_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = CONFIG.replace("timezone: UTC", "timezone: Europe/Berlin").replace(
        '"15 3 1,15 * 1-5"', '"30 2 * * *"'
    )
    root, path = make_root(tmp_path, config)
    assert timers(path, root, "--apply") == 1
    err = capsys.readouterr().err
    assert "At 'jobs[1].schedule': schedule '30 2 * * *' in Europe/Berlin" in err
    assert "nothing written" in err
    assert not list((root / "etc/systemd/system").glob("*.d/schedule.conf"))
    assert not list((root / "etc/systemd/system").glob("*@.service.d"))


def test_a_job_gone_from_the_config_loses_its_drop_in_but_a_hand_written_one_stays(
    tmp_path: Path,
) -> None:
    root, config = make_root(tmp_path)
    assert timers(config, root, "--apply") == 0
    units = root / "etc/systemd/system"
    mine = units / "db-backup@weekly.timer.d/local.conf"
    mine.write_text("[Timer]\nPersistent=false\n")
    (units / "db-backup.service.d/override.conf").write_text("[Service]\n")
    config.write_text(CONFIG.split("  - {name: weekly")[0])
    assert timers(config, root, "--apply") == 0
    assert not (units / "db-backup@weekly.timer.d/schedule.conf").exists()
    assert mine.exists()
    assert (units / "db-backup@nightly.timer.d/schedule.conf").exists()
    assert not (units / "db-backup@.service.d/credentials.conf").exists()  # none to carry


def test_credential_lines_follow_systemds_reset_rule() -> None:
    texts = [
        "[Service]\nLoadCredential=a:/x\nSetCredential=b:v\n[Install]\nLoadCredential=no:/n\n",
        "[Service]\nLoadCredential=\nLoadCredential=c:/y\n",
    ]
    assert credential_lines(texts) == ["SetCredential=b:v", "LoadCredential=c:/y"]


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed here")
def test_systemd_accepts_the_units_with_the_drop_ins(tmp_path: Path) -> None:
    vendor = next(
        (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
        None,
    )
    if vendor is None or not (vendor / "sysinit.target").exists():
        pytest.skip("no systemd vendor units on this host")
    root, config = make_root(tmp_path)
    assert timers(config, root, "--apply") == 0
    shutil.copytree(vendor, root / "usr/lib/systemd/system", symlinks=True)
    stub = root / "usr/bin/db-backup"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    units = [
        "db-backup@nightly.timer",
        "db-backup@nightly.service",
        "db-backup-drill@nightly.timer",
        "db-backup-drill@nightly.service",
        "db-backup@weekly.timer",
    ]
    assert ANALYZE is not None
    done = subprocess.run(
        [ANALYZE, "verify", "--man=no", f"--root={root}", *units],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_a_drop_in_that_cannot_be_written_is_named_and_the_command_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, config = make_root(tmp_path)
    blocker = root / "etc/systemd/system/db-backup@nightly.timer.d"
    blocker.write_text("a file where the drop-in directory belongs\n")
    assert timers(config, root, "--apply") == 1
    err = capsys.readouterr().err
    assert "db-backup@nightly.timer.d" in err and "Traceback" not in err
    assert not list((root / "etc/systemd/system").glob("*.d/schedule.conf"))


def test_a_service_drop_in_that_is_not_text_is_named_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, config = make_root(tmp_path)
    (root / "etc/systemd/system/db-backup.service.d/zz.conf").write_bytes(b"\xff\xfe[Service]\n")
    assert timers(config, root, "--apply") == 1
    err = capsys.readouterr().err
    assert "zz.conf: not UTF-8 text" in err
    assert not list((root / "etc/systemd/system").glob("*.timer.d"))
