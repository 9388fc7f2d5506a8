"""What the command tells the person: exit statuses, and the one way errors and warnings print."""

from __future__ import annotations

import sys

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2  # what argparse uses for a wrong command line
EXIT_BUSY = 75  # EX_TEMPFAIL: another run of the job holds the lock
EXIT_CONFIG = 78  # EX_CONFIG: the config file is unusable

EXIT_STATUS_HELP = """exit status:
  0   success
  1   the command failed: a backup FAILED, status cannot read the reports directory, or
      sync-reports / status --from-db cannot reach the sink's database
  2   wrong command line: unknown option, command or job name
  75  the job is already running (another run holds its lock); try again later (EX_TEMPFAIL)
  78  the config is unusable: invalid, lacks a section the command needs (sink, oss,
      notifications), or check-config cannot read a secret it names (EX_CONFIG)
"""


class CommandError(Exception):
    """A command cannot go on: the message for the person and the exit status it ends with."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def tell(message: str) -> None:
    """Prints `db-backup: MESSAGE` on stderr: errors, warnings, progress (stdout is for results)."""
    print(f"db-backup: {message}", file=sys.stderr)


def warn(message: str) -> None:
    """Prints `db-backup: warning: MESSAGE` on stderr."""
    tell(f"warning: {message}")
