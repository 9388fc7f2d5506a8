-- Flyway migration V2: what a view over many hosts needs, and the drill results.
-- Idempotent (IF NOT EXISTS everywhere): safe to run twice, after V1 on an empty or a filled
-- table. Rows written before V2 keep their values; the new columns start empty ('' or NULL).
-- db-backup applies V1 and V2 itself under an advisory lock (sink.migrate: true), or the
-- platform's Flyway applies these same files (sink.migrate: false).

ALTER TABLE db_backup_job ADD COLUMN IF NOT EXISTS job            TEXT NOT NULL DEFAULT '';
ALTER TABLE db_backup_job ADD COLUMN IF NOT EXISTS hostname       TEXT NOT NULL DEFAULT '';  -- the machine that ran the backup
ALTER TABLE db_backup_job ADD COLUMN IF NOT EXISTS host           TEXT;     -- the PostgreSQL server (host or socket dir)
ALTER TABLE db_backup_job ADD COLUMN IF NOT EXISTS port           TEXT;
ALTER TABLE db_backup_job ADD COLUMN IF NOT EXISTS tool           TEXT;     -- pg_dump
ALTER TABLE db_backup_job ADD COLUMN IF NOT EXISTS trigger        TEXT;     -- schedule/manual/catch-up/retry
ALTER TABLE db_backup_job ADD COLUMN IF NOT EXISTS report_file    TEXT;     -- the report's file name
ALTER TABLE db_backup_job ADD COLUMN IF NOT EXISTS schema_version INTEGER;  -- the report's schemaVersion
ALTER TABLE db_backup_job ADD COLUMN IF NOT EXISTS report         JSONB;    -- the whole report document

-- The fleet view: the newest result per machine, job and database.
CREATE INDEX IF NOT EXISTS db_backup_job_fleet_idx
  ON db_backup_job (hostname, job, database, started_at DESC);

-- One row per drill report (a restore drill proving one backup), keyed by the drill report's id.
CREATE TABLE IF NOT EXISTS db_backup_drill (
  id              VARCHAR(36) PRIMARY KEY,
  backup_id       VARCHAR(36),              -- db_backup_job.id of the backup it restored ('' : none)
  hostname        TEXT NOT NULL DEFAULT '',
  job             TEXT NOT NULL DEFAULT '',
  database        TEXT NOT NULL,
  status          TEXT NOT NULL,            -- SUCCESS/FAILED
  error_msg       TEXT,
  started_at      TIMESTAMPTZ NOT NULL,
  finished_at     TIMESTAMPTZ,
  duration_sec    DOUBLE PRECISION,
  restore_sec     DOUBLE PRECISION,
  tables_checked  INTEGER,
  mismatches      INTEGER,
  report_file     TEXT,
  report          JSONB,
  create_time     TIMESTAMPTZ DEFAULT NOW(),
  update_time     TIMESTAMPTZ DEFAULT NOW(),
  deleted         BOOLEAN DEFAULT FALSE
);

CREATE INDEX IF NOT EXISTS db_backup_drill_fleet_idx
  ON db_backup_drill (hostname, job, database, started_at DESC);
CREATE INDEX IF NOT EXISTS db_backup_drill_backup_idx ON db_backup_drill (backup_id);
