"""The `db-backup` command: the only code that prints to the terminal or picks an exit status.

`commands.COMMANDS` declares every command once; `main` parses the command line from it, loads
the config, becomes the `run_as` user, sets up what the command needs and runs its handler.
A handler raises `CommandError` to end with a message and an exit status.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from db_backup.cli.command import Command, Context, Logs
from db_backup.cli.commands import BY_NAME, COMMANDS
from db_backup.cli.output import (
    EXIT_BUSY,
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    tell,
)
from db_backup.cli.parser import build_parser
from db_backup.cli.user import become_run_as_user
from db_backup.config import ConfigError, config_path, load
from db_backup.util import children

__all__ = ["EXIT_BUSY", "EXIT_CONFIG", "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "main"]

EVENTS_FINISH_SECONDS = 30.0  # at most this long after a run for alerts and the sink to finish


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line and returns the process exit status."""
    with children.guarded():  # no child but execute's: none inherits our environment
        try:
            status = _main(argv)
            sys.stdout.flush()  # inside the try: a pipe closed early fails here, not at exit
            return status
        except BrokenPipeError:
            return _reader_went_away()


def _reader_went_away() -> int:
    """Returns the status for a closed stdout (`status --json | head`): no traceback.

    Python would report the broken pipe again when it flushes stdout at exit, so stdout is
    pointed at /dev/null first; the status is what a shell gives a process killed by SIGPIPE.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser(COMMANDS).parse_args(argv)
    command = BY_NAME[args.command]
    try:
        context = _set_up(command, args)
    except CommandError as exc:
        return _failed(exc)
    try:
        return _run(command, context)
    finally:
        if command.finishes_events:  # alerts still being sent, the sink's outbox: within a bound
            from db_backup.observe import events

            events.shutdown(timeout=EVENTS_FINISH_SECONDS)


def _set_up(command: Command, args: argparse.Namespace) -> Context:
    """Loads the config, becomes its `run_as` user and sets up the command's logging."""
    path = config_path(args.config)
    try:
        config = load(path)
    except ConfigError as exc:
        raise CommandError(str(exc), EXIT_CONFIG) from None
    refusal = None if command.keeps_root else become_run_as_user(config)
    if refusal is not None:
        raise CommandError(refusal, EXIT_CONFIG)
    if command.logs is not Logs.NONE:
        from db_backup.observe import logs

        log_dir = config.directories.logs if command.logs is Logs.FILE else None
        logs.setup(args.log_level, log_dir, args.log_format)
    return Context(args, config, path)


def _run(command: Command, context: Context) -> int:
    """Runs `command`'s handler and returns its exit status, or that of the error ending it."""
    try:
        command.prepare(context)
        return command.handler(context)
    except CommandError as exc:
        return _failed(exc)
    except ConfigError as exc:  # age refuses a recipient (check-config, the daemon's start)
        return _failed(CommandError(str(exc), EXIT_CONFIG))


def _failed(exc: CommandError) -> int:
    """Says why the command failed and returns its exit status: the one place errors end."""
    tell(str(exc))
    return exc.code
