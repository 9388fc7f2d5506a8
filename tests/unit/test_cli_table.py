"""The command table: one declaration per command, from which the parser and the set-up derive."""

from __future__ import annotations

import argparse

import pytest

from db_backup.cli import EXIT_USAGE
from db_backup.cli.command import JobChoice, Logs, selected_jobs
from db_backup.cli.commands import BY_NAME, COMMANDS
from db_backup.cli.output import CommandError
from db_backup.cli.parser import build_parser
from db_backup.config import loads

CONFIG = """
run_as: null
storage: {mode: local}
jobs:
  - {name: nightly, schedule: "0 2 * * *", databases: shop}
  - {name: weekly, schedule: "0 3 * * 0", databases: crm}
"""


def parse(*argv: str) -> argparse.Namespace:
    return build_parser(COMMANDS).parse_args(list(argv))


def test_every_command_of_the_table_is_a_subcommand_and_nothing_else() -> None:
    parser = build_parser(COMMANDS)
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert list(sub.choices) == [c.name for c in COMMANDS]
    assert len(BY_NAME) == len(COMMANDS)  # no name declared twice


def test_commands_that_run_jobs_log_to_a_file_and_wait_for_alerts_and_the_sink() -> None:
    runs_jobs = {c.name for c in COMMANDS if c.finishes_events}
    assert runs_jobs == {"run", "daemon", "drill"}
    assert {c.name for c in COMMANDS if c.logs is Logs.FILE} == runs_jobs
    # status and check-config never import structlog: quick, and nothing on stderr to set up.
    assert {c.name for c in COMMANDS if c.logs is Logs.NONE} == {"status", "check-config"}
    assert {c.name for c in COMMANDS if c.cancellable} == {"run", "restore", "drill"}
    assert {c.name for c in COMMANDS if c.jobs is not JobChoice.NONE} == {"run", "next", "drill"}


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["run", "weekly"], ["weekly"]),
        (["run", "--all"], ["nightly", "weekly"]),
        (["next"], ["nightly", "weekly"]),
        (["next", "nightly"], ["nightly"]),
        (["drill", "weekly"], ["weekly"]),
    ],
)
def test_the_job_argument_selects_jobs_of_the_config(argv: list[str], names: list[str]) -> None:
    config = loads(CONFIG)
    choice = BY_NAME[argv[0]].jobs
    assert [j.name for j in selected_jobs(config, parse(*argv), choice)] == names


@pytest.mark.parametrize("argv", [["run", "monthly"], ["next", "monthly"], ["drill", "monthly"]])
def test_an_unknown_job_is_a_usage_error_naming_the_known_ones(argv: list[str]) -> None:
    config = loads(CONFIG)
    with pytest.raises(CommandError) as raised:
        selected_jobs(config, parse(*argv), BY_NAME[argv[0]].jobs)
    assert raised.value.code == EXIT_USAGE == 2
    assert str(raised.value) == "no job named 'monthly' in <config> (jobs: nightly, weekly)"
