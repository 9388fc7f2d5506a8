"""`db-backup timers`: the timer units' drop-ins that keep each job's schedule and credentials.

The template timers (`db-backup@.timer`, `db-backup-drill@.timer`) ship with a fixed calendar.
This command writes, per job, `db-backup@JOB.timer.d/schedule.conf` (and the drill's) with the
job's schedule as `OnCalendar=` lines in its time zone (`config.oncalendar`), and gives the
template services the credentials `db-backup.service` loads. Planning is pure (`plan_drop_ins`);
writing happens only with --apply, after every job's schedule was translated.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from db_backup.cli.command import Context
from db_backup.cli.output import EXIT_OK, CommandError, warn
from db_backup.config import Config
from db_backup.config.oncalendar import NotExpressible, TimerSchedule, to_on_calendar
from db_backup.util.clock import utc_now

# Every file this command writes starts with this line; only such files are ever replaced or
# removed, so a drop-in a person wrote is never touched.
MARKER = "# Written by `db-backup timers`"
UNIT_DIR = "etc/systemd/system"
# Where systemd reads db-backup.service and its drop-ins, weakest first (/etc wins).
SERVICE_DIRS = ("usr/lib/systemd/system", "lib/systemd/system", "run/systemd/system", UNIT_DIR)
CREDENTIAL_KEYS = (
    "LoadCredential",
    "LoadCredentialEncrypted",
    "SetCredential",
    "SetCredentialEncrypted",
    "ImportCredential",
)
TEMPLATE_SERVICES = ("db-backup@.service", "db-backup-drill@.service")


@dataclass(frozen=True)
class DropIn:
    """One file to write, relative to the root: its path, text and mode."""

    path: str
    text: str
    mode: int = 0o644


def timers_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the options of `timers`."""
    parser.add_argument(
        "--apply",
        action="store_true",
        help="write the drop-ins and run `systemctl daemon-reload` (default: only print them)",
    )
    parser.add_argument(
        "--root",
        default="/",
        help="write under this directory instead of / (an image being built); no daemon-reload",
    )


def timers(context: Context) -> int:
    """Prints, or with --apply writes, the timer drop-ins for every job; then the switch steps."""
    root = Path(context.args.root)
    service_texts = _service_texts(root)
    drop_ins, notes = plan_drop_ins(context.config, context.path, service_texts)
    for note in notes:
        warn(note)
    stale = _stale_drop_ins(root, {d.path for d in drop_ins})
    if not context.args.apply:
        for drop_in in drop_ins:
            print(f"# {root / drop_in.path}\n{drop_in.text}")
        for path in stale:
            print(f"# {root / path}: would be removed (its job is no longer in the config)")
        print("# nothing written; add --apply to write these files")
        return EXIT_OK
    _write(root, drop_ins, stale)
    if root == Path("/") and Path("/run/systemd/system").is_dir():
        _daemon_reload()
    print("\n".join(switch_steps(context.config)))
    return EXIT_OK


def plan_drop_ins(
    config: Config, config_path: str, service_texts: list[str]
) -> tuple[list[DropIn], list[str]]:
    """Returns the drop-ins for every job and the notes to show; CommandError if one is refused.

    `service_texts` are db-backup.service and its drop-ins, in the order systemd reads them.
    """
    now = utc_now()
    drop_ins: list[DropIn] = []
    notes: list[str] = []
    refused: list[str] = []
    for index, job in enumerate(config.jobs):
        zone = job.zone()
        for unit, key, expr in (
            ("db-backup", "schedule", job.schedule),
            ("db-backup-drill", "drill.schedule", job.drill.schedule),
        ):
            where = f"jobs[{index}].{key}"
            try:
                schedule = to_on_calendar(expr, zone, now)
            except NotExpressible as exc:
                refused.append(f"At '{where}': {exc}")
                continue
            notes.extend(f"At '{where}': {note}" for note in schedule.notes)
            text = _schedule_text(schedule, f"{where} {expr!r} ({zone.key}) in {config_path}")
            drop_ins.append(DropIn(f"{UNIT_DIR}/{unit}@{job.name}.timer.d/schedule.conf", text))
    if refused:
        raise CommandError(
            "a systemd timer cannot keep these schedules; nothing written:\n  "
            + "\n  ".join(refused)
        )
    credentials = credential_lines(service_texts)
    if credentials:
        text = (
            f"{MARKER} from db-backup.service: the credentials it loads, for the timer units.\n"
            "# Run it again after changing them there; edits here are overwritten.\n"
            "[Service]\n" + "".join(f"{line}\n" for line in credentials)
        )
        for service in TEMPLATE_SERVICES:
            # 0600: a SetCredential= line carries its value in the unit file itself.
            drop_ins.append(DropIn(f"{UNIT_DIR}/{service}.d/credentials.conf", text, 0o600))
    return drop_ins, notes


def _schedule_text(schedule: TimerSchedule, source: str) -> str:
    """Returns a timer drop-in that replaces the template's calendar with `schedule`."""
    lines = [
        f"{MARKER} from {source}.",
        "# Run it again after changing the schedule; edits here are overwritten.",
        "[Timer]",
        "OnCalendar=",  # clears the template's OnCalendar=daily/weekly
        *(f"OnCalendar={spec}" for spec in schedule.on_calendar),
        "# The daemon starts a job on its minute; db-backup's max_dumps spreads the dumps.",
        "RandomizedDelaySec=0",
        "AccuracySec=1s",
    ]
    return "\n".join(lines) + "\n"


def credential_lines(service_texts: list[str]) -> list[str]:
    """Returns the credential settings (`LoadCredential=...`) in effect for the unit texts.

    An empty assignment (`LoadCredential=`) clears what came before it, as systemd does.
    """
    lines: list[str] = []
    for text in service_texts:
        section = ""
        for raw in text.splitlines():
            line = raw.strip()
            if line.startswith("[") and line.endswith("]"):
                section = line
                continue
            key, sep, value = line.partition("=")
            key = key.strip()
            if section != "[Service]" or not sep or key not in CREDENTIAL_KEYS:
                continue
            if not value.strip():
                lines = [kept for kept in lines if not kept.startswith(f"{key}=")]
            else:
                lines.append(f"{key}={value.strip()}")
    return lines


def switch_steps(config: Config) -> list[str]:
    """Returns the commands that switch from the daemon to the timers, and back."""
    timers = [f"db-backup@{job.name}.timer" for job in config.jobs]
    timers += [f"db-backup-drill@{job.name}.timer" for job in config.jobs if job.drill.enabled]
    names = " ".join(timers)
    return [
        "drop-ins written. To run the jobs from timers instead of the daemon:",
        "  sudo systemctl disable --now db-backup.service",
        f"  sudo systemctl enable --now {names}",
        "  systemctl list-timers 'db-backup*'",
        "and back to the daemon:",
        f"  sudo systemctl disable --now {names}",
        "  sudo systemctl enable --now db-backup.service",
    ]


def _service_texts(root: Path) -> list[str]:
    """Returns db-backup.service and its drop-ins under `root`, in systemd's reading order."""
    texts: list[str] = []
    for directory in reversed(SERVICE_DIRS):  # the unit file itself: the first one found
        fragment = root / directory / "db-backup.service"
        if fragment.is_file():
            texts.append(_read(fragment))
            break
    by_name: dict[str, Path] = {}
    for directory in SERVICE_DIRS:  # a later directory's file of the same name wins
        folder = root / directory / "db-backup.service.d"
        if folder.is_dir():
            for path in folder.glob("*.conf"):
                by_name[path.name] = path
    texts.extend(_read(by_name[name]) for name in sorted(by_name))
    return texts


def _read(path: Path) -> str:
    """Returns a unit file's text; CommandError naming it when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise CommandError(f"cannot read {path}: {reason}") from None


def _stale_drop_ins(root: Path, planned: set[str]) -> list[str]:
    """Returns the drop-ins this command wrote earlier that the plan no longer has."""
    stale = []
    patterns: tuple[str, ...] = (
        "db-backup@*.timer.d/schedule.conf",
        "db-backup-drill@*.timer.d/schedule.conf",
    )
    patterns += tuple(f"{service}.d/credentials.conf" for service in TEMPLATE_SERVICES)
    for pattern in patterns:
        for path in sorted((root / UNIT_DIR).glob(pattern)):
            relative = str(path.relative_to(root))
            if relative not in planned and _read(path).startswith(MARKER):
                stale.append(relative)
    return stale


def _write(root: Path, drop_ins: list[DropIn], stale: list[str]) -> None:
    """Writes every drop-in (atomically, each) and removes the stale ones; prints each path."""
    from db_backup.util.fsutil import describe_os_error, write_atomically

    for drop_in in drop_ins:
        path = root / drop_in.path
        try:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            write_atomically(path, drop_in.text.encode(), drop_in.mode)
        except OSError as exc:
            raise CommandError(describe_os_error(exc, path)) from None
        print(f"wrote {path}")
    for relative in stale:
        path = root / relative
        try:
            path.unlink()
        except OSError as exc:
            raise CommandError(describe_os_error(exc, path)) from None
        print(f"removed {path}")


def _daemon_reload() -> None:
    """Runs `systemctl daemon-reload` so systemd reads the new drop-ins."""
    from db_backup.util import execute

    try:
        execute.run(["systemctl", "daemon-reload"], timeout=120)
    except execute.CommandError as exc:
        raise CommandError(f"drop-ins written, but systemctl daemon-reload failed: {exc}") from None
