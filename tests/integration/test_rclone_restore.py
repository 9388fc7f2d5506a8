"""Restore, verify and drill of a backup stored only through rclone (a local rclone remote).

The job keeps no local copy (`mode: oss`, `tool: rclone`): every read goes through the storage
protocol's rclone backend (`rclone lsjson`, `rclone cat`, the remote's sha256/md5), with the real
rclone, the real pg_restore and a real throwaway cluster for the drill.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunCli, Setup
from tests.integration.test_drill import (
    assert_nothing_left,
    backup_all,
    drill_dir,
    drill_reports,
    enable_drill,
)
from tests.integration.test_restore import databases, target_args
from tests.support.pgcluster import Cluster, table_fingerprint

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("rclone") is None, reason="needs rclone on PATH"),
]
__all__ = ["drill_dir"]  # the fixture, used by name


@pytest.fixture
def remote(setup: Setup, tmp_path: Path) -> Path:
    """Points the job at a `type = local` rclone remote, remote copy only; returns its folder."""
    folder = tmp_path / "remote" / "pg"
    folder.mkdir(parents=True)
    rclone_conf = tmp_path / "rclone.conf"
    rclone_conf.write_text("[localfs]\ntype = local\n")
    setup.document["storage"] = {
        "mode": "oss",
        "tool": "rclone",
        "rclone": {"remote": "localfs", "prefix": f"{folder}/", "config_file": str(rclone_conf)},
    }
    setup.job()["databases"] = "crm"
    setup.write()
    return folder


def backup(setup: Setup, run_cli: RunCli, cluster: Cluster) -> dict[str, Any]:
    [report] = backup_all(setup, run_cli, cluster)
    assert report["status"] == "SUCCESS" and report["tool"] == "rclone"
    assert report["local"]["file"] == "" and not setup.data_files(), "no local copy is kept"
    assert report["targets"]["rclone"]["md5"], "the sink records the md5 of what it sent"
    return report


def verify_json(run_cli: RunCli, setup: Setup, *args: str) -> tuple[int, dict[str, Any]]:
    done = run_cli("--config", str(setup.path), "verify", "--json", *args)
    return done.returncode, json.loads(done.stdout)


def tamper(path: Path) -> None:
    """Changes bytes in the middle of `path`, keeping its size."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_rclone_only_backup_restores_verifies_and_drills(
    setup: Setup, cluster: Cluster, run_cli: RunCli, remote: Path, drill_dir: Path
) -> None:
    enable_drill(setup, drill_dir)
    report = backup(setup, run_cli, cluster)
    name = report["artefacts"][0]
    assert (remote / name).is_file()

    code, result = verify_json(run_cli, setup, "--remote")
    assert code == 0 and result["checked"] == 1, result
    [checked] = result["results"]
    assert checked["target"] == "rclone" and checked["location"] == f"localfs:{remote}/{name}"
    assert {"size", "sha256 (rclone)", "md5 (rclone)", f"{name}.sha256 present"} <= set(
        checked["passed"]
    )
    code, result = verify_json(run_cli, setup, "--deep")
    assert code == 0, result
    assert {"sha256 (downloaded)", "size (downloaded)"} <= set(result["results"][0]["passed"])

    done = run_cli(
        "--config", str(setup.path), "restore", "--job", "nightly", "--database", "crm",
        "--to-database", "crm_from_rclone", *target_args(cluster),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"verified sha256 {report['local']['checksumSha256']}" in done.stdout
    assert table_fingerprint(cluster, "crm_from_rclone") == table_fingerprint(cluster, "crm")
    assert not list((setup.state / "restore").glob("*/*")), "downloads must not stay behind"

    done = run_cli("--config", str(setup.path), "drill", "nightly")
    assert done.returncode == 0, done.stderr
    [drill] = drill_reports(setup)
    assert drill["status"] == "SUCCESS", drill["errorMessage"]
    assert drill["source"] == f"localfs:{remote}/{name}"
    assert drill["sha256"] == report["local"]["checksumSha256"]
    assert drill["tablesChecked"] == len(report["tables"]) > 0 and drill["mismatches"] == []
    assert_nothing_left(drill_dir)


def test_dry_run_of_an_rclone_backup_names_the_download(
    setup: Setup, cluster: Cluster, run_cli: RunCli, remote: Path
) -> None:
    report = backup(setup, run_cli, cluster)
    done = run_cli(
        "--config", str(setup.path), "restore", report["id"], "--dry-run",
        "--to-database", "crm_dry", *target_args(cluster),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"download localfs:{remote}/{report['artefacts'][0]} (size checked)" in done.stdout
    assert "crm_dry" not in databases(cluster)


def test_tampered_rclone_object_fails_verify_and_restore(
    setup: Setup, cluster: Cluster, run_cli: RunCli, remote: Path
) -> None:
    report = backup(setup, run_cli, cluster)
    stored = remote / report["artefacts"][0]
    size = stored.stat().st_size
    tamper(stored)
    assert stored.stat().st_size == size

    code, result = verify_json(run_cli, setup, "--remote")
    assert code == 1
    problems = " ".join(result["results"][0]["problems"])
    assert "sha256 (rclone) is" in problems and "md5 (rclone) is" in problems
    text = run_cli("--config", str(setup.path), "verify", "--remote")
    assert text.returncode == 1 and text.stdout.startswith("MISMATCH")
    code, result = verify_json(run_cli, setup, "--deep")
    assert code == 1
    problems = " ".join(result["results"][0]["problems"])
    assert "downloaded sha256 is" in problems and report["local"]["checksumSha256"] in problems

    done = run_cli(
        "--config", str(setup.path), "restore", report["id"], "--to-database", "crm_tampered",
        *target_args(cluster),
    )  # fmt: skip
    assert done.returncode == 1
    assert "checksum mismatch" in done.stderr and "nothing was restored" in done.stderr
    assert f"localfs:{remote}/{report['artefacts'][0]}" in done.stderr
    assert "Traceback" not in done.stderr
    assert "crm_tampered" not in databases(cluster)
    assert not list((setup.state / "restore").glob("*/*")), "downloads must not stay behind"


def test_missing_rclone_object_and_missing_rclone_config_are_named(
    setup: Setup, cluster: Cluster, run_cli: RunCli, remote: Path
) -> None:
    report = backup(setup, run_cli, cluster)
    (remote / report["artefacts"][0]).unlink()
    code, result = verify_json(run_cli, setup, "--remote")
    assert code == 1 and result["results"][0]["problems"] == ["object missing"]
    done = run_cli("--config", str(setup.path), "restore", report["id"], *target_args(cluster))
    assert done.returncode == 1
    assert f"rclone: localfs:{remote}/{report['artefacts'][0]} does not exist" in done.stderr
    assert "nothing to restore" in done.stderr and "Traceback" not in done.stderr

    # A config that no longer reaches the remote the report names: said, not guessed.
    setup.document["storage"] = {"mode": "local"}
    setup.write()
    done = run_cli("--config", str(setup.path), "restore", report["id"], *target_args(cluster))
    assert done.returncode == 1
    assert "is stored on rclone: storage.rclone is not configured" in done.stderr
