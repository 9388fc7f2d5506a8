"""Capacity's pure parts: sizes, settings, reservations, condition state, the free-space alert."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from db_backup.backup import space as capacity
from db_backup.backup.space import Conditions, Reservations
from db_backup.config import CapacitySettings, Config, ConfigError, loads, parse_size
from db_backup.observe import events

GIB = 1024**3


def _config(tmp_path: Path, top: dict[str, object] | None = None, **job: object) -> Config:
    document: dict[str, Any] = {
        "run_as": None,
        "directories": {
            "data": str(tmp_path / "data"),
            "reports": str(tmp_path / "reports"),
            "state": str(tmp_path / "state"),
        },
        "storage": {"mode": "local"},
        "jobs": [{"name": "nightly", "schedule": "0 2 * * *", "databases": "shop", **job}],
    }
    if top is not None:
        document["capacity"] = top
    for key in ("data", "reports", "state"):
        (tmp_path / key).mkdir(exist_ok=True)
    return loads(yaml.safe_dump(document))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0),
        (1234, 1234),
        ("1234", 1234),
        ("500GB", 500 * GIB),
        ("500 GiB", 500 * GIB),
        ("1.5T", int(1.5 * 1024**4)),
        ("64mb", 64 * 1024**2),
        ("10 KB", 10 * 1024),
        ("7B", 7),
    ],
)
def test_sizes_are_bytes_or_text_in_powers_of_1024(text: int | str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "5 XB", "-1", "1,5GB"])
def test_a_text_that_is_not_a_size_is_refused_by_the_parser_and_by_the_schema(
    text: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError):
        parse_size(text)
    with pytest.raises(ConfigError) as caught:
        _config(tmp_path, {"margin_min": text})
    assert any(p.startswith("At 'capacity.margin_min'") for p in caught.value.problems)


def test_format_size_reads_like_df_h() -> None:
    assert capacity.format_size(17) == "17 B"
    assert capacity.format_size(1536) == "1.5 KiB"
    assert capacity.format_size(3 * GIB) == "3.0 GiB"


def test_settings_default_from_the_schema_and_a_job_overrides_its_own_keys(
    tmp_path: Path,
) -> None:
    assert _config(tmp_path).capacity == CapacitySettings()
    config = _config(
        tmp_path,
        {"margin_percent": 30, "oss_usage_limit": "1TB", "oss_usage_warn_percent": 80},
        capacity={"margin_percent": 50, "warn_free_size": "20GB", "suspicious_ratio": None},
    )
    top = config.capacity
    job = config.job("nightly").capacity
    assert top.margin_percent == 30 and top.warn_free_size == 0
    assert job.margin_percent == 50 and job.warn_free_size == 20 * GIB
    assert job.suspicious_ratio == 0.5, "null in a job means the top level's value"
    assert job.oss_usage_limit == 1024**4 and job.oss_usage_warn_percent == 80


def test_a_job_cannot_set_the_buckets_limit(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(tmp_path, capacity={"oss_usage_limit": "1TB"})
    assert caught.value.problems[0].startswith("At 'jobs[0].capacity.oss_usage_limit': unknown key")


def test_needed_bytes_take_the_larger_margin() -> None:
    assert capacity.needed_bytes(1000, 20, 0) == 1200
    assert capacity.needed_bytes(1000, 20, 500) == 1500
    assert capacity.needed_bytes(0, 20, 0) == 0


def test_a_reservation_shrinks_by_what_its_dump_wrote_and_goes_with_its_process(
    tmp_path: Path,
) -> None:
    book = Reservations(tmp_path / "state")
    written = tmp_path / "dump.tmp"
    device = tmp_path.stat().st_dev
    with book.locked():
        token = book.reserve(device, 10_000, [written, tmp_path / "dump"])
        assert book.reserved(device) == 10_000
        assert book.reserved(device + 1) == 0, "another file system's reservations do not count"
    written.write_bytes(b"x" * 4_000)
    with book.locked():
        assert book.reserved(device) == 6_000
    book.release(token)
    with book.locked():
        assert book.reserved(device) == 0
    # A reservation of a process that is gone (SIGKILL) frees its space and is removed.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    stale = book.directory / "stale.json"
    document = {"pid": int(dead.stdout), "device": device, "bytes": 5_000, "paths": []}
    stale.write_text(json.dumps(document))
    (book.directory / "garbage.json").write_text("{not json")
    with book.locked():
        assert book.reserved(device) == 0
    assert not stale.exists() and not (book.directory / "garbage.json").exists()


def test_a_condition_reports_whether_it_was_raised_before(tmp_path: Path) -> None:
    conditions = Conditions(tmp_path)
    assert conditions.update("low_disk:a:/x", True) is False
    assert conditions.update("low_disk:a:/x", True) is True
    assert conditions.update("low_disk:a:/y", False) is False
    assert conditions.update("low_disk:a:/x", False) is True
    assert conditions.update("low_disk:a:/x", False) is False


def test_low_disk_is_published_while_low_and_its_clearing_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    published: list[events.Event] = []
    monkeypatch.setattr(events, "publish", lambda config, event: published.append(event))
    total = shutil.disk_usage(tmp_path).total
    # A threshold above the file system's size: low, whatever the machine has free.
    low = _config(tmp_path, {"warn_free_percent": 0, "warn_free_size": total + 1})
    capacity.after_run(low, low.job("nightly"))
    capacity.after_run(low, low.job("nightly"))
    assert [e.kind for e in published] == [events.LOW_DISK, events.LOW_DISK]
    first = published[0]
    assert first.ok is False and first.job == "nightly"
    assert first.message.startswith(f"low disk space in {tmp_path / 'data'}: ")
    assert first.details["thresholdBytes"] == total + 1
    assert 0 <= first.details["freeBytes"] <= total
    published.clear()
    fine = _config(tmp_path, {"warn_free_percent": 0, "warn_free_size": 1})
    capacity.after_run(fine, fine.job("nightly"))
    capacity.after_run(fine, fine.job("nightly"))
    assert len(published) == 1, "cleared once, then nothing"
    assert published[0].ok is True and "back above the threshold" in published[0].message


def test_free_space_checks_are_off_with_both_thresholds_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    published: list[events.Event] = []
    monkeypatch.setattr(events, "publish", lambda config, event: published.append(event))
    config = _config(tmp_path, {"warn_free_percent": 0, "warn_free_size": 0})
    capacity.after_run(config, config.job("nightly"))
    assert published == []


def test_watched_directories_are_one_per_file_system(tmp_path: Path) -> None:
    config = _config(tmp_path)
    job = config.job("nightly")
    # data, reports and state share tmp_path's file system: one of them is watched.
    assert capacity.watched_directories(config, job) == [tmp_path / "data"]
    assert os.stat(tmp_path / "data").st_dev == os.stat(tmp_path / "state").st_dev


def test_dump_size_is_the_plaintext_size_of_an_encrypted_dump() -> None:
    plain = {"local": {"sizeBytes": 1000}}
    encrypted = {"local": {"sizeBytes": 1200}, "encryption": {"plaintextSizeBytes": 990}}
    assert capacity.dump_size(plain) == 1000
    assert capacity.dump_size(encrypted) == 990
    assert capacity.dump_size({"local": {"sizeBytes": True}}) is None


def test_the_example_configs_capacity_block_loads_and_shows_the_defaults(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[2] / "config.example.yaml").read_text()
    start = text.index("# capacity:")
    block = [line[2:] if line.startswith("# ") else line for line in text[start:].splitlines()]
    path = tmp_path / "config.yaml"
    path.write_text(text[:start] + "\n".join(block) + "\n")
    from db_backup.config import load

    config = load(str(path))
    shown = yaml.safe_load(path.read_text())["capacity"]
    assert shown.keys() == config.capacity.__dict__.keys()
    assert config.capacity == CapacitySettings()


@pytest.mark.parametrize(
    ("mode", "dump_format", "expected"),
    [
        ("local", "custom", "data"),
        ("both", "directory", "data"),
        ("oss", "directory", "staging"),
        ("oss", "custom", None),
        ("oss", "plain", None),
    ],
)
def test_the_checked_directory_is_where_the_dump_lands(
    tmp_path: Path, mode: str, dump_format: str, expected: str | None
) -> None:
    document: dict[str, Any] = {
        "run_as": None,
        "directories": {"data": str(tmp_path / "data"), "state": str(tmp_path / "state")},
        "storage": {
            "mode": mode,
            "oss": {
                "endpoint": "http://127.0.0.1:1",
                "bucket": "backups",
                "region": "r",
                "access_key_id": {"env": "X"},
                "access_key_secret": {"env": "Y"},
            },
        },
        "jobs": [
            {
                "name": "n",
                "schedule": "0 2 * * *",
                "databases": "d",
                "dump": {"format": dump_format},
            }
        ],
    }
    config = loads(yaml.safe_dump(document))
    staging = tmp_path / "staging"
    found = capacity.dump_directory(config, config.job("n"), staging)
    assert found == {"data": tmp_path / "data", "staging": staging, None: None}[expected]
