"""Drill reports as `status`, the metrics and `drill` read them: light to import.

`db-backup status` lists the newest drill per job and database; this module keeps that path free
of the drill's own imports (structlog, the restore machinery), so `status` stays quick.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from db_backup.reports.model import SUCCESS

if TYPE_CHECKING:
    from db_backup.config import Config

DRILLS_DIR = "drills"  # beside the backup reports


def drills_dir(config: Config) -> Path:
    """Returns the directory of drill reports (beside the backup reports)."""
    return config.directories.reports / DRILLS_DIR


def load_drills(config: Config) -> list[dict[str, Any]]:
    """Returns every readable drill report, newest first."""
    documents = []
    with contextlib.suppress(OSError):
        for path in drills_dir(config).glob("*.json"):
            with contextlib.suppress(OSError, UnicodeDecodeError, json.JSONDecodeError):
                document = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(document, dict) and document.get("kind") == "drill":
                    documents.append({**document, "reportFile": str(path)})
    documents.sort(key=lambda d: str(d.get("startedAt", "")), reverse=True)
    return documents


def latest_drills(config: Config, job: str | None = None) -> list[dict[str, Any]]:
    """Returns the newest drill report per job and database."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for document in load_drills(config):
        if job is not None and document.get("job") != job:
            continue
        latest.setdefault((str(document.get("job")), str(document.get("database"))), document)
    return list(latest.values())


def render_drills(documents: list[dict[str, Any]]) -> str:
    """Returns one line per drill report, for `db-backup status` and `db-backup drill`."""
    lines = []
    for d in documents:
        detail = (
            f"{d.get('tablesChecked', 0)} tables, {len(d.get('mismatches', []))} mismatches, "
            f"checks {sum(1 for c in d.get('checks', []) if c.get('passed'))}/"
            f"{len(d.get('checks', []))}, restore {d.get('restoreSeconds', 0)} s"
        )
        if d.get("status") != SUCCESS:
            detail = str(d.get("errorMessage", ""))[:160]
        lines.append(
            f"drill {d.get('startedAt')}  {d.get('job')}/{d.get('database')}  {d.get('status')}  "
            f"{detail}"
        )
    return "\n".join(lines)
