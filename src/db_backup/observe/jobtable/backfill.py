"""Path B: every backup and drill report on disk as entries for the sink (`sync-reports`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from db_backup.observe.jobtable.rows import BACKUP, DRILL, Entry, drill_row
from db_backup.reports.drills import drills_dir
from db_backup.reports.model import load_reports

if TYPE_CHECKING:
    from db_backup.config import Config


def report_entries(config: Config) -> tuple[list[Entry], list[str]]:
    """Returns every backup and drill report on disk as entries, and a warning per skipped file."""
    stored, warnings = load_reports(config.directories.reports)
    entries = [Entry(BACKUP, s.path.name, s.document) for s in reversed(stored)]
    directory = drills_dir(config)
    try:
        drill_paths = sorted(directory.glob("*.json"))
    except OSError as exc:
        drill_paths = []
        warnings.append(f"{directory}: cannot list: {exc.strerror}")
    for path in drill_paths:
        try:
            document = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            warnings.append(f"{path}: skipped, not readable JSON ({exc})")
            continue
        if not isinstance(document, dict):
            warnings.append(f"{path}: skipped, not a drill report (top level is not an object)")
            continue
        entry = Entry(DRILL, path.name, document)
        try:
            drill_row(entry)
        except ValueError as exc:
            warnings.append(f"{path}: skipped, {exc}")
            continue
        entries.append(entry)
    return entries, warnings
