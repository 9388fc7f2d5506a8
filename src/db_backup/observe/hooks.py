"""Command hooks: a user's commands run before a backup, after it, on failure, after a drill.

A hook is an argv list run through `util.execute` (never a shell string; `["sh", "-c", ...]`
when a shell is wanted), in its own session, with:

- stdin: the report (or, before a backup, the run's description) as JSON, from a memory file,
  so a hook that never reads it cannot block us;
- an environment of an allow-list (PATH, HOME, USER, LOGNAME, TZ, TMPDIR, LANG, LANGUAGE, LC_*,
  TERM; never a value that is a secret this process resolved) plus the DB_BACKUP_* variables
  naming event, job, database, status and report: nothing of the service's environment that
  may hold a secret (`{env:}` references, CREDENTIALS_DIRECTORY, NOTIFY_SOCKET) gets through;
- a timeout: then SIGTERM to the hook's process group and SIGKILL after a grace period, so a
  hook's own children go too; stdout is kept only as a tail.

The result is a `HookResult`; what a failure means is the caller's (a `before_backup` failure
fails the run; any other hook's failure is logged and counted, never a backup's status).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from db_backup.util.execute import (
    CHILD_ENV_NAMES,
    Cancelled,
    CancelToken,
    CommandError,
    StreamingChild,
    read_until_eof,
)
from db_backup.util.secrets import is_secret, mask

if TYPE_CHECKING:
    from db_backup.config import Config

log = structlog.get_logger("db_backup.observe.hooks")

BEFORE_BACKUP = "before_backup"
AFTER_BACKUP = "after_backup"
ON_FAILURE = "on_failure"
AFTER_DRILL = "after_drill"
EVENTS = (BEFORE_BACKUP, AFTER_BACKUP, ON_FAILURE, AFTER_DRILL)
CONSUMER = "hooks"  # the name hook failures are counted under (db_backup_consumer_failures)
KILL_GRACE_SECONDS = 5.0
OUTPUT_TAIL_BYTES = 4096
READ_SIZE = 65536
FALLBACK_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Hook:
    """One configured command: its argv and how long it may run."""

    argv: tuple[str, ...]
    timeout_seconds: float

    @property
    def program(self) -> str:
        """Returns the program's base name, for messages."""
        return os.path.basename(self.argv[0])


@dataclass(frozen=True)
class HookContext:
    """What a hook is told about: the event and the job, database, status and report."""

    event: str
    job: str
    database: str = ""
    status: str = ""  # SUCCESS | FAILED; "" before a backup
    report_path: str = ""

    def variables(self) -> dict[str, str]:
        """Returns the DB_BACKUP_* variables of this context."""
        return {
            "DB_BACKUP_EVENT": self.event,
            "DB_BACKUP_JOB": self.job,
            "DB_BACKUP_DATABASE": self.database,
            "DB_BACKUP_STATUS": self.status,
            "DB_BACKUP_REPORT": self.report_path,
        }


@dataclass(frozen=True)
class HookResult:
    """How one hook ended."""

    event: str
    argv: tuple[str, ...]
    exit_code: int | None  # negative: killed by that signal; None: never started
    timed_out: bool
    duration_seconds: float
    stdout_tail: str
    stderr_tail: str
    error: str = ""  # why it could not be started
    pid: int | None = None

    @property
    def ok(self) -> bool:
        """Returns whether the hook ran to the end in time and exited 0."""
        return not self.error and not self.timed_out and self.exit_code == 0

    def describe(self) -> str:
        """Returns one line saying how the hook ended (secrets masked), for logs and reports."""
        command = _shown(self.argv)
        if self.error:
            outcome = self.error
        elif self.timed_out:
            outcome = f"was stopped after its timeout ({self.duration_seconds:.0f} s)"
        elif self.exit_code is not None and self.exit_code < 0:
            outcome = f"was killed by signal {signal.Signals(-self.exit_code).name}"
        else:
            outcome = f"exited with status {self.exit_code}"
        text = f"{self.event} hook `{command}` {outcome}"
        if not self.ok and self.stderr_tail:
            text += f": {self.stderr_tail}"
        return mask(text)


def _shown(argv: Sequence[str], limit: int = 200) -> str:
    text = shlex.join(argv)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def hook_env(variables: Mapping[str, str]) -> dict[str, str]:
    """Returns a hook's environment: the allow-listed variables of ours, then `variables`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if (name in CHILD_ENV_NAMES or name.startswith("LC_")) and not is_secret(value)
    }
    env.setdefault("PATH", FALLBACK_PATH)
    env.update(variables)
    return env


def hooks_for(config: Config, job: str, event: str) -> list[Hook]:
    """Returns the hooks of `event` for `job`: the top-level ones first, then the job's own."""
    commands = (*config.hooks.of(event), *config.job(job).hooks.of(event))
    return [Hook(c.argv, c.timeout_seconds) for c in commands]


def _stdin_with(data: bytes) -> int:
    """Returns a readable file descriptor holding `data` from its start (a memory file)."""
    fd = os.memfd_create("db-backup-hook-input", os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def run_hook(
    hook: Hook,
    context: HookContext,
    document: Mapping[str, Any] | None = None,
    *,
    grace: float = KILL_GRACE_SECONDS,
) -> HookResult:
    """Runs `hook` with `document` as JSON on stdin and returns how it ended; never raises for
    the hook's own failure (not found, non-zero exit, signal, timeout)."""
    started = time.monotonic()
    deadline = started + hook.timeout_seconds
    data = b"" if document is None else json.dumps(document, ensure_ascii=False).encode()
    stdin = _stdin_with(data)
    try:
        child = StreamingChild(hook.argv, hook_env(context.variables()), stdin=stdin)
    except CommandError as exc:
        return HookResult(context.event, hook.argv, None, False, 0.0, "", "", error=str(exc))
    finally:
        os.close(stdin)
    tail = bytearray()
    token = CancelToken(deadline, "hook timed out")
    timed_out = False
    try:
        for chunk in read_until_eof(child.stdout_fd, READ_SIZE, token, lambda: None):
            tail += chunk
            del tail[:-OUTPUT_TAIL_BYTES]
    except Cancelled:
        timed_out = True
    # Its stdout may end before it does (closed, or handed to a child that outlives it).
    while not timed_out and child.poll() is None:
        if time.monotonic() >= deadline:
            timed_out = True
        else:
            time.sleep(0.02)
    if timed_out:
        child.terminate(grace)
    code = child.wait()
    return HookResult(
        event=context.event,
        argv=hook.argv,
        exit_code=code,
        timed_out=timed_out,
        duration_seconds=round(time.monotonic() - started, 3),
        stdout_tail=mask(tail.decode("utf-8", "replace").strip()),
        stderr_tail=child.stderr_tail(),
        pid=child.pid,
    )


def run_hooks(
    hooks: Sequence[Hook],
    context: HookContext,
    document: Mapping[str, Any] | None = None,
    *,
    stop_on_failure: bool = False,
) -> list[HookResult]:
    """Runs `hooks` in order, logging each result; returns the results.

    `stop_on_failure` (before a backup) runs none after the first that fails.
    """
    results = []
    for hook in hooks:
        result = run_hook(hook, context, document)
        fields = {
            "hook_event": context.event,
            "job": context.job,
            "database": context.database or None,
            "command": mask(_shown(hook.argv)),
            "exit_code": result.exit_code,
            "duration_s": result.duration_seconds,
        }
        if result.ok:
            log.info("hook finished", **fields)
        else:
            log.warning("hook failed", error=result.describe(), **fields)
        results.append(result)
        if stop_on_failure and not result.ok:
            break
    return results


def run_event_hooks(
    config: Config, context: HookContext, document: Mapping[str, Any] | None = None
) -> list[HookResult]:
    """Runs the configured hooks of `context.event` for `context.job` and returns the results.

    A failed `before_backup` hook stops the ones after it (the caller fails the run); a failure
    of any other hook is counted under consumer `hooks` in the state directory (the metrics'
    db_backup_consumer_failures_total), as a failing alert channel is.
    """
    from db_backup.observe.events import count_failure

    before = context.event == BEFORE_BACKUP
    hooks = hooks_for(config, context.job, context.event)
    results = run_hooks(hooks, context, document, stop_on_failure=before)
    failed = sum(1 for result in results if not result.ok)
    if failed and not before:
        count_failure(config.directories.state, CONSUMER, failed)
    return results


def run_document(
    job: str, databases: Sequence[str], trigger: str, started_at: str
) -> dict[str, Any]:
    """Returns what a `before_backup` hook reads on stdin: the run about to start."""
    return {
        "kind": "run",
        "job": job,
        "databases": list(databases),
        "trigger": trigger,
        "startedAt": started_at,
    }
