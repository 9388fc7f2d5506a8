"""Pure logic of restore and drill: names from reports, errors, settings (roles files:
test_restore_roles_decision.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from db_backup.config import ConfigError, loads
from db_backup.restore.source import BackupSource, RestoreError, dump_format_of, safe_file_name
from db_backup.restore.steps import explain_restore_error


@pytest.mark.parametrize(
    "name", ["../x.dump", "/etc/passwd", ".hidden.dump", "a/b.dump", "", "a\\b.dump", "x\0.dump", 7]
)
def test_names_with_a_directory_part_or_hidden_are_refused(name: object) -> None:
    with pytest.raises(RestoreError, match="unusable file"):
        safe_file_name(name)


def test_dump_format_follows_the_suffix() -> None:
    assert dump_format_of("a_20260101T000000Z_h.dump") == "custom"
    assert dump_format_of("a.sql") == "plain"
    assert dump_format_of("a.dump.d") == "directory"
    with pytest.raises(RestoreError, match="not a dump file name"):
        dump_format_of("a.tar")


def test_errors_name_the_cause_and_what_to_do() -> None:
    source = BackupSource("a.dump", "custom", "a", report={"pgDumpVersion": "pg_dump 17.2"})
    old = explain_restore_error(
        "pg_restore: error: unsupported version (1.16) in file header", source
    )
    assert "older than the pg_dump" in old and "pg_dump 17.2" in old
    roles = explain_restore_error('ERROR:  role "zz_app_owner" does not exist', source)
    assert "zz_app_owner" in roles and "--globals" in roles
    text = explain_restore_error("input file appears to be a text format dump", source)
    assert "psql" in text


CONFIG = """
storage: {mode: local}
jobs:
  - name: nightly
    schedule: "0 2 * * *"
    databases: shop
"""


def test_drill_defaults_are_weekly_throwaway_cluster_under_the_state_directory() -> None:
    config = loads(CONFIG)
    settings = config.jobs[0].drill
    assert not settings.enabled and settings.schedule == "0 4 * * 0"
    assert settings.target == "cluster" and settings.source == "auto"
    assert settings.directory == Path("/var/lib/db-backup/drill")
    assert settings.bindir == "/usr/lib/postgresql/{major}/bin" and settings.run_as == "postgres"
    assert settings.checks == () and settings.server is None


def test_drill_settings_are_read_from_the_job() -> None:
    config = loads(
        CONFIG
        + """    drill:
      enabled: true
      target: server
      server: {host: 10.0.0.5, port: 5433, password: {env: DRILL_PW}}
      checks: [{name: c, sql: SELECT true, database: shop}]
"""
    )
    settings = config.jobs[0].drill
    assert settings.enabled and settings.target == "server"
    assert settings.server is not None and settings.server.port == 5433
    assert settings.server.user == "postgres" and settings.server.password is not None
    assert settings.server.password.describe() == "env 'DRILL_PW'"
    assert [(c.name, c.database) for c in settings.checks] == [("c", "shop")]


def test_drill_config_mistakes_are_named_with_their_place() -> None:
    with pytest.raises(ConfigError) as raised:
        loads(CONFIG + "    drill: {schedule: '61 * * * *', target: server}\n")
    problems = "\n".join(raised.value.problems)
    assert "At 'jobs[0].drill.schedule'" in problems
    assert "At 'jobs[0].drill.server': target: server needs" in problems
