"""The command line: the parser built from the command table, and the argument types."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from db_backup import __version__
from db_backup.cli.output import EXIT_STATUS_HELP
from db_backup.util.clock import parse_utc

if TYPE_CHECKING:
    from db_backup.cli.command import Command


def build_parser(commands: Sequence[Command]) -> argparse.ArgumentParser:
    """Returns the parser of `db-backup`: global options, then one subcommand per command."""
    parser = argparse.ArgumentParser(
        prog="db-backup",
        description="Scheduled PostgreSQL logical backups to local disk and Aliyun OSS.",
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"db-backup {__version__}")
    _global_options(parser, defaults=True)
    # The same options after the command (`db-backup check-config --config x.yaml`); SUPPRESS
    # keeps a subcommand from overwriting a value given before the command with its default.
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, defaults=False)
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        parser_class=_subparser_class(common),
    )
    for command in commands:
        # The epilog (exit statuses) is laid out by hand, so the formatter keeps text as it is
        # (RawDescriptionHelpFormatter): the description is wrapped here instead.
        description = command.description
        if description:
            description = textwrap.fill(description, 79, break_on_hyphens=False)
        command_parser = sub.add_parser(command.name, help=command.help, description=description)
        command.add_job_arguments(command_parser)
        command.arguments(command_parser)
    return parser


def _global_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """Adds --config, --log-format and --log-level, with defaults or with SUPPRESS."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--config",
        default=default(None),
        help="config file (default: $DB_BACKUP_CONFIG or /etc/db-backup/config.yaml)",
    )
    parser.add_argument(
        "--log-format",
        choices=["journal", "console", "json"],
        default=default(None),
        help="override log output",
    )
    parser.add_argument("--log-level", default=default("info"), help="debug, info, warning, error")


def _subparser_class(common: argparse.ArgumentParser) -> type[argparse.ArgumentParser]:
    """Returns a parser class whose instances take the global options and list exit codes."""

    class SubParser(argparse.ArgumentParser):
        def __init__(self, **kwargs: Any) -> None:
            kwargs.setdefault("parents", [common])
            kwargs.setdefault("epilog", EXIT_STATUS_HELP)
            kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
            super().__init__(**kwargs)

    return SubParser


def positive(text: str) -> int:
    """Returns `text` as an integer of 1 or more (an argparse type)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def since(text: str) -> datetime:
    """Returns `text` as an aware UTC time; a time without a zone is UTC (an argparse type)."""
    try:
        return parse_utc(text, naive_is_utc=True)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
