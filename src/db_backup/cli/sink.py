"""`db-backup sync-reports`: every report on disk into the sink's tables (path B), idempotent."""

from __future__ import annotations

from db_backup.cli.command import Context
from db_backup.cli.output import EXIT_OK, CommandError, tell, warn
from db_backup.cli.status import sink_settings_for

PROGRESS_EVERY = 1000  # a progress line per batch when at least this many reports are sent


def sync_reports(context: Context) -> int:
    """Sends every backup and drill report in batches; says what was loaded and skipped."""
    from db_backup.observe.jobtable.backfill import report_entries
    from db_backup.observe.jobtable.migrate import ensure_schema
    from db_backup.observe.jobtable.rows import DRILL, send_batches
    from db_backup.observe.jobtable.settings import SinkError, connect

    settings = sink_settings_for("sync-reports", context.config)
    entries, warnings = report_entries(context.config)
    for warning in warnings:
        warn(warning)
    loaded = refused_count = done = 0
    try:
        conn, target = connect(settings)
    except SinkError as exc:
        raise CommandError(str(exc)) from None
    try:
        ensure_schema(conn, settings, target)
        for batch, refused in send_batches(conn, target, entries, settings.batch_size):
            for entry, why in refused:
                warn(f"{entry.report_file}: skipped, {why}")
            refused_count += len(refused)
            loaded += len(batch) - len(refused)
            done += len(batch)
            if len(entries) >= PROGRESS_EVERY:
                tell(f"sync-reports: {done}/{len(entries)} report(s) sent")
    except SinkError as exc:
        raise CommandError(str(exc)) from None
    finally:
        conn.close()
    drills = sum(1 for e in entries if e.kind == DRILL)
    print(
        f"{target}: {loaded} report(s) loaded ({len(entries) - drills} backup, {drills} drill "
        f"in all), {len(warnings) + refused_count} file(s) skipped"
    )
    return EXIT_OK
