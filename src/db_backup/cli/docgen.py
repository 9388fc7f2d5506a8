"""The man page and the bash completion, both written from the argparse parser.

The package build runs `python -m db_backup.cli.docgen man|bash` (debian/rules), so a command
or an option added to the command table appears in `man db-backup` and in tab completion with
no second list to keep in step. Only argparse's public attributes of actions are read; the
subcommands come from the one `_SubParsersAction` that `build_parser` adds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from db_backup import __version__
from db_backup.cli.output import EXIT_STATUS_HELP

_SUMMARY = "scheduled PostgreSQL logical backups to local disk, Aliyun OSS and rclone"


@dataclass(frozen=True)
class Option:
    """One option or positional argument as the man page and the completion need it."""

    flags: tuple[str, ...]  # empty for a positional argument
    metavar: str  # "" for a flag that takes no value
    help: str
    choices: tuple[str, ...]


@dataclass(frozen=True)
class Subcommand:
    """One command: its name, one-line help, description and arguments."""

    name: str
    help: str
    description: str
    options: tuple[Option, ...]


def _options(parser: argparse.ArgumentParser) -> tuple[Option, ...]:
    """Returns the documented arguments of `parser`, without -h and the subcommand slot."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        takes_value = action.nargs != 0
        metavar = ""
        if takes_value:
            metavar = str(action.metavar or (action.dest if not action.option_strings else ""))
            metavar = metavar or action.dest.upper()
        choices = tuple(str(c) for c in action.choices) if action.choices else ()
        found.append(Option(tuple(action.option_strings), metavar, action.help or "", choices))
    return tuple(found)


def describe(parser: argparse.ArgumentParser) -> tuple[tuple[Option, ...], list[Subcommand]]:
    """Returns the global options and every subcommand of the `db-backup` parser."""
    commands: list[Subcommand] = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        for name, sub in action.choices.items():
            own = tuple(o for o in _options(sub) if not _is_global(o))
            commands.append(Subcommand(name, helps.get(name, ""), sub.description or "", own))
    return _options(parser), commands


def _is_global(option: Option) -> bool:
    """Returns whether `option` is one of the global options every command also accepts."""
    return bool(set(option.flags) & {"--config", "--log-format", "--log-level", "--version"})


def roff(text: str) -> str:
    """Returns `text` escaped for troff: backslashes, minus signs, and control-line starts."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(
        "\\&" + line if line.startswith((".", "'")) else line for line in text.splitlines()
    )


def _option_lines(option: Option) -> Iterator[str]:
    """Yields the troff lines of one option: a tagged paragraph with its flags and value."""
    name = ", ".join(f"\\fB{roff(flag)}\\fR" for flag in option.flags)
    value = f"\\fI{roff(option.metavar)}\\fR" if option.metavar else ""
    head = f"{name} {value}".strip() if option.flags else value
    yield ".TP"
    yield head
    text = option.help.replace("%(default)s", "")
    if option.choices:
        text += f" (one of: {', '.join(option.choices)})"
    yield roff(text) if text else "\\&"


def man_page(parser: argparse.ArgumentParser) -> str:
    """Returns the db-backup(1) man page in troff, written from `parser`."""
    global_options, commands = describe(parser)
    lines = [
        f'.TH DB\\-BACKUP 1 "" "db\\-backup {roff(__version__)}" "User Commands"',
        ".SH NAME",
        f"db\\-backup \\- {roff(_SUMMARY)}",
        ".SH SYNOPSIS",
        ".B db\\-backup",
        "[\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        roff(parser.description or ""),
        "The daemon (\\fBdb\\-backup.service\\fR) runs the jobs of "
        "\\fI/etc/db\\-backup/config.yaml\\fR on their schedules; the commands below run, "
        "restore, verify and inspect backups by hand.",
        ".SH GLOBAL OPTIONS",
        "Accepted before or after the command.",
    ]
    for option in global_options:
        lines.extend(_option_lines(option))
    lines.append(".SH COMMANDS")
    for command in commands:
        lines.append(f".SS {roff(command.name)}")
        lines.append(roff(command.description or command.help))
        for option in command.options:
            lines.extend(_option_lines(option))
    lines.append(".SH EXIT STATUS")
    lines.append(".nf")
    lines.append(roff(EXIT_STATUS_HELP.split("\n", 1)[1].rstrip()))
    lines.append(".fi")
    lines.extend(_TAIL)
    return "\n".join(lines) + "\n"


_TAIL = [
    ".SH FILES",
    ".TP",
    "\\fI/etc/db\\-backup/config.yaml\\fR",
    "the configuration (\\fB$DB_BACKUP_CONFIG\\fR or \\fB\\-\\-config\\fR name another)",
    ".TP",
    "\\fI/usr/share/doc/db\\-backup/\\fR",
    "the README and the guides (configuration, restore, systemd, alerts, metrics)",
    ".SH SEE ALSO",
    ".BR systemctl (1),",
    ".BR journalctl (1),",
    ".BR pg_dump (1),",
    ".BR pg_restore (1)",
]


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """Returns a bash completion script for db-backup, written from `parser`."""
    global_options, commands = describe(parser)
    global_flags = " ".join(f for o in global_options for f in o.flags if f != "--version")
    names = " ".join(c.name for c in commands)
    cases = []
    for command in commands:
        flags = " ".join(f for o in command.options for f in o.flags)
        cases.append(f'        {command.name}) opts="{flags} {global_flags}" ;;')
    values = []
    for option in (*global_options, *(o for c in commands for o in c.options)):
        if option.choices and option.flags:
            values.append(
                f'        {"|".join(option.flags)}) words="{" ".join(option.choices)}" ;;'
            )
    body = "\n".join(cases)
    value_cases = "\n".join(sorted(set(values)))
    return _BASH.format(names=names, global_flags=global_flags, cases=body, values=value_cases)


_BASH = """\
# bash completion for db-backup; written by `python -m db_backup.cli.docgen bash`.
_db_backup() {{
    local cur prev words="" opts="" command="" i
    cur=${{COMP_WORDS[COMP_CWORD]}}
    prev=${{COMP_WORDS[COMP_CWORD-1]}}
    case $prev in
{values}
        --config|--html|--identity) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    esac
    if [[ -n $words ]]; then COMPREPLY=($(compgen -W "$words" -- "$cur")); return; fi
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${{COMP_WORDS[i]}} in -*) ;; *) command=${{COMP_WORDS[i]}}; break ;; esac
    done
    case $command in
        "") opts="{names} {global_flags} --version" ;;
{cases}
        *) opts="{global_flags}" ;;
    esac
    COMPREPLY=($(compgen -W "$opts --help" -- "$cur"))
}}
complete -F _db_backup db-backup
"""


def main(argv: list[str]) -> int:
    """Writes the man page (`man`) or the bash completion (`bash`) to stdout."""
    from db_backup.cli.commands import COMMANDS
    from db_backup.cli.parser import build_parser

    writers = {"man": man_page, "bash": bash_completion}
    if len(argv) != 1 or argv[0] not in writers:
        sys.stderr.write("usage: python -m db_backup.cli.docgen man|bash\n")
        return 2
    sys.stdout.write(writers[argv[0]](build_parser(COMMANDS)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
