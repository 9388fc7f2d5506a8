"""Which remote target holds a backup, read from its report: the one decision restore, verify and
drills share before they read a remote copy through the storage protocol."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from db_backup.config import Config
from db_backup.reports.model import LOCAL, SUCCESS
from db_backup.storage import StorageError, Target, reading_target

if TYPE_CHECKING:
    from db_backup.restore.source import BackupSource


def remote_holder(document: dict[str, Any]) -> str | None:
    """Returns the name of the remote target ("oss", "rclone") that holds the dump, else None.

    A report with per-target results names it: the first remote target whose status is SUCCESS
    (and that still holds files, where the report lists them). A report without them (the
    seed's shell script) has only `remote.urls`: an `oss://` URL is OSS, anything else rclone.
    """
    urls = document.get("remote", {}).get("urls") if isinstance(document, dict) else None
    if not urls:
        return None
    targets = document.get("targets")
    if not isinstance(targets, dict) or not targets:
        return "oss" if str(urls[0]).startswith("oss://") else "rclone"
    for name, result in targets.items():
        if name == LOCAL or not isinstance(result, dict) or result.get("status") != SUCCESS:
            continue
        if "files" in result and not result["files"]:
            continue
        return str(name)
    return None


def open_remote(config: Config, source: BackupSource) -> Target:
    """Returns the target that holds `source`'s remote copy, as the config reaches it.

    Raises StorageError when the config has no section for it (e.g. an rclone backup read with
    a config that no longer has `storage.rclone`).
    """
    try:
        return reading_target(config, source.remote_target or "oss", source.remote_prefix)
    except StorageError as exc:
        raise StorageError(
            f"{source.description or source.dump_name} is stored on "
            f"{source.remote_target or 'oss'}: {exc}"
        ) from None
