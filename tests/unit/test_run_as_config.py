"""`run_as`: the user a root-started db-backup becomes (default postgres, null = stay root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from db_backup.config import ConfigError, load, loads

JOBS = """
storage: {mode: local}
jobs:
  - name: nightly
    schedule: "0 2 * * *"
    databases: shop
"""


def test_run_as_defaults_to_the_service_user_postgres() -> None:
    assert loads(JOBS).run_as == "postgres"


def test_run_as_null_means_stay_the_invoking_user() -> None:
    assert loads("run_as: null\n" + JOBS).run_as is None


def test_run_as_names_any_user() -> None:
    assert loads("run_as: backup-op\n" + JOBS).run_as == "backup-op"


@pytest.mark.parametrize("name", ["-rf", "a/b", "", "two words"])
def test_run_as_that_cannot_be_a_user_name_is_a_config_error_with_its_place(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        loads(f"run_as: {name!r}\n" + JOBS)
    assert [p for p in caught.value.problems if p.startswith("At 'run_as'")], caught.value.problems


def test_the_shipped_example_config_runs_as_postgres() -> None:
    example = Path(__file__).resolve().parents[2] / "config.example.yaml"
    assert load(str(example)).run_as == "postgres"
