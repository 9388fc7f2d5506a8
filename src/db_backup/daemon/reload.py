"""A reload (SIGHUP) that tells the truth: the new config is checked as `check-config` would,
refused as a whole when anything is wrong, and what it cannot change without a restart is said.

The daemon answers every reload in `<state>/reload.json` (`{"pid", "serial", "outcome",
"message", "restart"}`), written at start and after each reload (`serial` counts them), so that
`db-backup reload` (the unit's ExecReload=) can wait for the answer and make `systemctl reload`
fail when the daemon kept its old config.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from db_backup.backup.run import check_directories
from db_backup.config import Config, ConfigError, load
from db_backup.config.preflight import RESOLVED, check_secrets
from db_backup.observe import metrics
from db_backup.storage.crypto import check_config as check_encryption
from db_backup.util.fsutil import write_atomically
from db_backup.util.locks import JobSetupError

ANSWER_FILE = "reload.json"
ACCEPTED = "reloaded"
REFUSED = "refused"


@dataclass
class ReloadOutcome:
    """What a reload came to: the new config (None: refused), its problems, what needs a restart."""

    config: Config | None
    problems: list[str] = field(default_factory=list)
    restart: list[str] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        """Returns ACCEPTED or REFUSED."""
        return REFUSED if self.config is None else ACCEPTED


def restart_needed(running: Config, new: Config) -> list[str]:
    """Returns the changes from `running` to `new` that take effect only after a restart."""
    old_listen = running.metrics.listen if running.metrics else None
    new_listen = new.metrics.listen if new.metrics else None
    if old_listen != new_listen:
        return [f"metrics.listen {old_listen or 'unset'} -> {new_listen or 'unset'}"]
    return []


def check_new_config(path: str, running: Config) -> ReloadOutcome:
    """Loads `path` and checks it as check-config would, here, as the service; never raises."""
    try:
        new = load(path)
        check_encryption(new)  # age checks every recipient (checksum, key)
        metrics.check_config(new)
        for job in new.jobs:
            check_directories(new, job)
    except ConfigError as exc:
        return ReloadOutcome(None, list(exc.problems) or ["the file cannot be loaded"])
    except (JobSetupError, metrics.MetricsError) as exc:
        return ReloadOutcome(None, [str(exc).splitlines()[0]])
    failed = [c.message for c in check_secrets(new) if c.outcome != RESOLVED]
    if failed:
        return ReloadOutcome(None, failed)
    return ReloadOutcome(new, restart=restart_needed(running, new))


def write_answer(state_dir: Path, serial: int, outcome: ReloadOutcome, pid: int = 0) -> None:
    """Writes the answer to reload `serial` for `db-backup reload`; OSError is the caller's."""
    answer = {
        "pid": pid or os.getpid(),
        "serial": serial,
        "outcome": outcome.outcome,
        "message": "; ".join(outcome.problems),
        "restart": outcome.restart,
    }
    write_atomically(state_dir / ANSWER_FILE, json.dumps(answer).encode(), 0o640)


def read_answer(state_dir: Path) -> dict[str, Any] | None:
    """Returns the daemon's last answer, None when there is none (or it cannot be read)."""
    try:
        answer = json.loads((state_dir / ANSWER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return answer if isinstance(answer, dict) else None
