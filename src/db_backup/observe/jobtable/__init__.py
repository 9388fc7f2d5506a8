"""The database sink: every backup and drill report upserted into the platform's PostgreSQL.

Path A of the seed's 方式二: after each report (an `events.BACKUP` or `events.DRILL` event) the
document is written to a small outbox under the state directory, then a background thread sends
the outbox (`INSERT ... ON CONFLICT (id) DO UPDATE`, the report id is the key) and removes what
was sent. A sink that is down is logged (masked), counted, and tried again with the next report:
it never blocks a backup for long and never changes its status. Path B is `db-backup
sync-reports` (every report of the reports directory, in batches); `db-backup status --from-db`
is the fleet view over every host that writes into the same table.

Modules: `settings` (the `sink:` section, connecting), `migrate` (the tables), `rows` (reports
as rows, sending in batches), `outbox` (waiting reports and their flush), `sender` (the event
consumer and its thread), `backfill` (path B's entries), `fleet` (the fleet view). The commands
that print (`sync-reports`, `status --from-db`) are in `db_backup.cli`.
"""
