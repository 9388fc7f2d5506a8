"""Commands around the service: reload, oss-lifecycle, notify-test."""

from __future__ import annotations

import argparse
import os
import signal
import time

from db_backup.cli.command import Context
from db_backup.cli.output import EXIT_CONFIG, EXIT_OK, CommandError, warn
from db_backup.cli.parser import positive
from db_backup.util.secrets import SecretError

RELOAD_ANSWER_SECONDS = 60.0  # the daemon resolves every secret and checks age recipients


def reload_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the options of `reload`."""
    parser.add_argument(
        "--pid", type=positive, required=True, help="the daemon's process id ($MAINPID)"
    )


def reload(context: Context) -> int:
    """Checks the config as check-config does, sends SIGHUP to --pid, waits for its answer.

    Refused (exit 78, no signal) for anything check-config refuses here, inside the unit as
    the service: a secret the service cannot read, an age recipient age refuses. The daemon
    checks again (its `{credential:}` references too) and answers in its state directory; a
    refusal there fails the reload too, and a change it can apply only at a restart is said.
    """
    from db_backup.cli.check import refuse_unusable
    from db_backup.daemon.reload import read_answer

    pid = context.args.pid
    _check_daemon_process(pid)
    # Credentials are the daemon's to check: on systemd 252 the ExecReload= process gets a
    # mount namespace of its own in which /run/credentials cannot be entered.
    refuse_unusable(context, credentials=False)
    state_dir = context.config.directories.state
    before = read_answer(state_dir)
    answers = before is not None and before.get("pid") == pid  # the daemon keeps the protocol
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        raise CommandError(f"reload: cannot signal process {pid}: {exc.strerror}") from None
    if not answers:
        return EXIT_OK
    serial = before.get("serial", 0) if before else 0
    deadline = time.monotonic() + RELOAD_ANSWER_SECONDS
    while (answer := read_answer(state_dir)) is None or answer.get("serial", 0) <= serial:
        if time.monotonic() > deadline:
            raise CommandError(
                f"reload: the daemon did not answer within {RELOAD_ANSWER_SECONDS:.0f} s "
                "(see journalctl -u db-backup)"
            )
        time.sleep(0.1)
    if answer.get("outcome") != "reloaded":
        raise CommandError(
            f"reload refused by the daemon, old config kept: {answer.get('message')}", EXIT_CONFIG
        )
    if answer.get("restart"):
        warn(
            f"reloaded, but {', '.join(answer['restart'])} takes effect only after "
            "`systemctl restart db-backup`"
        )
    return EXIT_OK


def _check_daemon_process(pid: int) -> None:
    """Raises CommandError unless process `pid` is a `db-backup daemon`."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            words = [w.decode(errors="replace") for w in handle.read().split(b"\0") if w]
    except OSError:
        raise CommandError(f"reload: no process {pid} (is the daemon running?)") from None
    if "daemon" not in words or not any(os.path.basename(w) == "db-backup" for w in words):
        # Its command line is not shown: another program's arguments may hold a secret.
        raise CommandError(f"reload: process {pid} is not a db-backup daemon; nothing sent")


def lifecycle_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the options of `oss-lifecycle`."""
    parser.add_argument("--apply", action="store_true", help="set the rule on the bucket")
    parser.add_argument("--ia-after-days", type=positive, default=30)
    parser.add_argument("--expire-after-days", type=positive, default=90)


def lifecycle(context: Context) -> int:
    """Prints the OSS lifecycle rule on the prefix; with --apply, sets it first."""
    from db_backup.storage import oss_settings
    from db_backup.storage.base import StorageError
    from db_backup.storage.oss import apply_lifecycle, describe_lifecycle, get_lifecycle

    args, config = context.args, context.config
    if config.storage.oss is None:
        raise CommandError("oss-lifecycle needs a storage.oss section in the config", EXIT_CONFIG)
    try:
        settings = oss_settings(config)
        if args.apply:
            rules = apply_lifecycle(
                settings, ia_after_days=args.ia_after_days, expire_after_days=args.expire_after_days
            )
            print(f"lifecycle rule set on oss://{settings.bucket}/{settings.prefix}")
        else:
            rules = get_lifecycle(settings)
    except (StorageError, SecretError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    print(describe_lifecycle(rules))
    return EXIT_OK


def notify_test(context: Context) -> int:
    """Sends a test alert through every channel; prints each outcome, fails naming the failed."""
    from db_backup.observe.alerts import send_test

    results = send_test(context.config)
    if not results:
        raise CommandError(
            f"{context.config.source}: no channel under notifications.channels", EXIT_CONFIG
        )
    for name, error in results:
        print(f"{name}: {'sent' if error is None else f'FAILED: {error}'}")
    failed = [name for name, error in results if error is not None]
    if failed:
        raise CommandError(f"test alert not delivered to: {', '.join(failed)}")
    return EXIT_OK
