"""The shape of a command: its handler, its help, its arguments and what it needs to run.

`db_backup.cli.commands.COMMANDS` declares every command once with these; the parser, the
set-up before a command (logging, signals, the job it names) and the dispatch derive from it.
Every command loads the config and becomes its `run_as` user first.
"""

from __future__ import annotations

import argparse
import enum
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from db_backup.cli.output import EXIT_USAGE, CommandError

if TYPE_CHECKING:
    from db_backup.config import Config, JobConfig
    from db_backup.util.cancel import CancelToken


class Logs(enum.Enum):
    """What logging a command sets up."""

    NONE = "none"  # none at all: structlog is never imported (status stays quick)
    STDERR = "stderr"  # the journal, the console or JSON lines on stderr
    FILE = "file"  # the same, and a log file under directories.logs (commands that run jobs)


class JobChoice(enum.Enum):
    """How a command names jobs of the config (a positional JOB argument)."""

    NONE = "none"  # it takes no job
    ONE = "one"  # JOB, required
    ONE_OR_EVERY = "one-or-every"  # JOB, optional: every job without it
    ONE_OR_ALL = "one-or-all"  # JOB or --all, one of the two


@dataclass
class Context:
    """What a handler gets: the command line, the config, and what its needs made ready."""

    args: argparse.Namespace
    config: Config
    path: str  # the config file
    jobs: list[JobConfig] = field(default_factory=list)  # the jobs named (JobChoice)
    cancel: CancelToken | None = None  # set for a cancellable command


Handler = Callable[[Context], int]


def _no_arguments(_parser: argparse.ArgumentParser) -> None:
    """Adds nothing: the command takes only the global options (and its JOB, if any)."""


@dataclass(frozen=True)
class Command:
    """One command of `db-backup`: declared once, in `commands.COMMANDS`."""

    name: str
    help: str
    handler: Handler
    arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments
    description: str | None = None
    jobs: JobChoice = JobChoice.NONE
    logs: Logs = Logs.STDERR
    cancellable: bool = False  # SIGTERM/SIGINT cancel its work (Context.cancel)
    finishes_events: bool = False  # waits (bounded) for alerts and the sink before exiting
    keeps_root: bool = False  # started as root, stays root (writes systemd's files), no run_as

    def add_job_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Adds the JOB argument (and --all) that `jobs` asks for."""
        if self.jobs is JobChoice.ONE:
            parser.add_argument("job", help="job name from the config")
        elif self.jobs is JobChoice.ONE_OR_EVERY:
            parser.add_argument("job", nargs="?", help="only this job")
        elif self.jobs is JobChoice.ONE_OR_ALL:
            target = parser.add_mutually_exclusive_group(required=True)
            target.add_argument("job", nargs="?", help="job name from the config")
            target.add_argument(
                "--all", action="store_true", help="run every job, one after another"
            )

    def prepare(self, context: Context) -> None:
        """Makes ready what the command needs: the jobs it names, the signal-cancelled token.

        Raises CommandError (exit status 2, as the help says) for a job the config lacks.
        """
        if self.jobs is not JobChoice.NONE:
            context.jobs = selected_jobs(context.config, context.args, self.jobs)
        if self.cancellable:
            context.cancel = cancel_on_signals()


def selected_jobs(config: Config, args: argparse.Namespace, choice: JobChoice) -> list[JobConfig]:
    """Returns the jobs the command line names; CommandError (usage) for an unknown name."""
    if args.job is None and (choice is JobChoice.ONE_OR_EVERY or getattr(args, "all", False)):
        return list(config.jobs)
    try:
        return [config.job(args.job)]
    except KeyError as exc:
        raise CommandError(exc.args[0], EXIT_USAGE) from None


def cancel_on_signals() -> CancelToken:
    """Returns a token that SIGTERM and SIGINT cancel, naming the signal as the reason."""
    from db_backup.util.cancel import CancelToken

    cancel = CancelToken()

    def stop(signum: int, _frame: object) -> None:
        cancel.cancel(f"received {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return cancel
