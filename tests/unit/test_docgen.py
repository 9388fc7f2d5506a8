"""The man page and bash completion are written from the parser: every command and option."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from db_backup.cli import docgen
from db_backup.cli.commands import COMMANDS
from db_backup.cli.parser import build_parser


def test_roff_escapes_minus_backslash_and_control_line_starts() -> None:
    assert docgen.roff("--all") == "\\-\\-all"
    assert docgen.roff("a\\b") == "a\\eb"
    assert docgen.roff(".start\n'quote\nplain") == "\\&.start\n\\&'quote\nplain"


def test_every_command_and_each_of_its_options_is_in_the_man_page() -> None:
    parser = build_parser(COMMANDS)
    page = docgen.man_page(parser)
    _, commands = docgen.describe(parser)
    assert [c.name for c in commands] == [c.name for c in COMMANDS]
    for command in commands:
        assert f".SS {docgen.roff(command.name)}" in page
        for option in command.options:
            for flag in option.flags:
                assert f"\\fB{docgen.roff(flag)}\\fR" in page
    assert ".SH EXIT STATUS" in page and "EX_CONFIG" in page


def test_global_options_are_listed_once_not_under_each_command() -> None:
    _, commands = docgen.describe(build_parser(COMMANDS))
    for command in commands:
        assert not any("--config" in o.flags for o in command.options), command.name


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
def test_man_renders_the_page_without_warnings(tmp_path: Path) -> None:
    page = tmp_path / "db-backup.1"
    page.write_text(docgen.man_page(build_parser(COMMANDS)))
    done = subprocess.run(
        ["man", "--warnings", "-l", str(page)],
        capture_output=True,
        text=True,
        env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin", "MAN_KEEP_FORMATTING": "0"},
        check=True,
    )
    assert "restore" in done.stdout
    assert done.stderr == ""


def _complete(script: Path, *words: str) -> list[str]:
    """Returns what the completion offers after `db-backup WORDS...` (the last word is partial)."""
    line = " ".join(f"'{w}'" for w in words)
    program = (
        f"source {script}; COMP_WORDS=(db-backup {line}); COMP_CWORD={len(words)}; "
        '_db_backup; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_bash_completion_offers_commands_options_and_choices(tmp_path: Path) -> None:
    script = tmp_path / "db-backup"
    script.write_text(docgen.bash_completion(build_parser(COMMANDS)))
    assert {c.name for c in COMMANDS} <= set(_complete(script, ""))
    assert _complete(script, "re") == ["report", "reload", "retention", "restore"]
    assert "--dry-run" in _complete(script, "restore", "--d")
    assert _complete(script, "--log-format", "j") == ["journal", "json"]
    assert "--version" not in _complete(script, "run", "--")


def test_main_refuses_an_unknown_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert docgen.main(["html"]) == 2
    assert "man|bash" in capsys.readouterr().err
