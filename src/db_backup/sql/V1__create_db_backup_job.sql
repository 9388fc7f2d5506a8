-- Flyway migration V1: the table the platform reads backup results from (the seed's DDL).
-- Idempotent: safe to run twice; rows are keyed by the report's "id" (a UUID), so loading the
-- same report again updates the row instead of adding one:
--   INSERT INTO db_backup_job (id, ...) VALUES (...)
--   ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, ..., update_time = now();
CREATE TABLE IF NOT EXISTS db_backup_job (
  id           VARCHAR(36) PRIMARY KEY,
  started_at   TIMESTAMPTZ NOT NULL,
  finished_at  TIMESTAMPTZ NOT NULL,
  duration_sec BIGINT NOT NULL,
  database     TEXT NOT NULL,
  mode         TEXT NOT NULL,   -- local/oss/both
  status       TEXT NOT NULL,   -- SUCCESS/FAILED
  size_bytes   BIGINT,
  local_file   TEXT,
  remote_urls  TEXT,            -- JSON array as text
  checksum     TEXT,
  error_msg    TEXT,
  create_time  TIMESTAMPTZ DEFAULT NOW(),
  update_time  TIMESTAMPTZ DEFAULT NOW(),
  deleted      BOOLEAN DEFAULT FALSE
);

CREATE INDEX IF NOT EXISTS db_backup_job_started_at_idx ON db_backup_job (started_at DESC);
CREATE INDEX IF NOT EXISTS db_backup_job_database_idx ON db_backup_job (database, started_at DESC);
