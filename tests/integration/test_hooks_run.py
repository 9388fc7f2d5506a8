"""Hooks around a real run: `before_backup` can fail it, the others never change its result."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import RunCli, Setup


def test_a_before_backup_hook_that_exits_1_fails_the_run_and_nothing_is_dumped(
    setup: Setup, run_cli: RunCli, tmp_path: Path
) -> None:
    seen = tmp_path / "before.json"
    setup.job()["hooks"] = {
        "before_backup": [
            {"command": ["sh", "-c", f"cat > {seen}; echo quiesce refused >&2; exit 1"]}
        ]
    }
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode != 0
    [report] = setup.reports_json()
    assert report["status"] == "FAILED" and report["database"] == "shop"
    assert "before_backup hook" in report["errorMessage"]
    assert "exited with status 1" in report["errorMessage"]
    assert "quiesce refused" in report["errorMessage"]
    assert [p for p in setup.data_files() if p.suffix == ".dump"] == []
    told = json.loads(seen.read_text(encoding="utf-8"))
    assert told["kind"] == "run" and told["job"] == "nightly" and told["databases"] == ["shop"]


def test_after_backup_and_on_failure_hooks_read_the_report_and_never_change_the_result(
    setup: Setup, run_cli: RunCli, tmp_path: Path
) -> None:
    after, failure = tmp_path / "after.json", tmp_path / "failure.json"
    setup.document["hooks"] = {
        "after_backup": [{"command": ["sh", "-c", f"cat > {after}; exit 3"]}],
        "on_failure": [{"command": ["sh", "-c", f"cat > {failure}"]}],
    }
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 0, done.stderr  # the failing after_backup hook changes nothing
    [report] = setup.reports_json()
    assert report["status"] == "SUCCESS"
    assert json.loads(after.read_text(encoding="utf-8"))["id"] == report["id"]
    assert not failure.exists()  # a SUCCESS calls no on_failure hook
    failures = json.loads((setup.state / "consumer-failures.json").read_text(encoding="utf-8"))
    assert "hooks" in json.dumps(failures)

    setup.job()["connection"]["port"] = 1  # nothing listens there: the run fails
    setup.write()
    after.unlink()
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode != 0
    told = json.loads(failure.read_text(encoding="utf-8"))
    assert told["status"] == "FAILED" and json.loads(after.read_text())["status"] == "FAILED"
