"""One config model: every section typed when the file loads, defaults from the schema."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import fields
from datetime import timedelta
from pathlib import Path

import yaml

from db_backup.config import (
    CapacitySettings,
    Config,
    MetricsSettings,
    NotifySettings,
    SecretRef,
    SinkSettings,
    loads,
    schema,
)

JOBS = """
jobs:
  - {name: nightly, schedule: "0 2 * * *", databases: shop}
  - name: weekly
    schedule: "0 3 * * 0"
    databases: [shop, crm]
    max_age: 1d12h
    capacity: {margin_min: 2GB, suspicious_ratio: null}
    drill:
      enabled: true
      target: server
      server: {host: 10.0.0.5}
      checks: [{name: orders, sql: SELECT true}]
  - {name: quiet, schedule: "@hourly", databases: all, max_age: false}
"""

SECTIONS = """
storage: {mode: local}
directories: {state: /srv/state}
sink: {dsn: {credential: sink-dsn}, batch_size: 50}
metrics: {textfile_dir: /var/lib/node-exporter}
capacity: {margin_min: 1GB, oss_usage_limit: 1.5TiB, suspicious_ratio: 0.25}
notifications:
  language: zh
  events: {backup_succeeded: true, low_disk: false}
  channels: [{name: hook, type: webhook, url: {env: HOOK_URL}}]
"""


def test_the_optional_sections_are_typed_with_their_defaults_when_the_file_loads() -> None:
    config = loads(SECTIONS + JOBS)
    assert config.sink == SinkSettings(
        dsn=SecretRef("credential", "sink-dsn"),
        connect_timeout_seconds=5,
        migrate=True,
        batch_size=50,
    )
    assert config.metrics == MetricsSettings(
        textfile_dir=Path("/var/lib/node-exporter"),
        file_name="db_backup.prom",
        listen=None,
        allow_remote=False,
    )
    assert config.metrics.textfile == Path("/var/lib/node-exporter/db_backup.prom")
    assert (
        config.capacity.margin_min == 1024**3 and config.capacity.oss_usage_limit == 1536 * 1024**3
    )
    notifications = config.notifications
    assert notifications.language == "zh" and notifications.remind_every_hours == 24.0
    assert notifications.enabled("backup_succeeded") and not notifications.enabled("low_disk")
    [hook] = notifications.channels
    assert hook.url == SecretRef("env", "HOOK_URL") and hook.events is None


def test_a_job_has_its_capacity_drill_and_max_age_typed() -> None:
    config = loads(SECTIONS + JOBS)
    nightly, weekly, quiet = config.jobs
    assert nightly.capacity == config.capacity, "a job without its own keys has the top level's"
    assert weekly.capacity.margin_min == 2 * 1024**3
    assert weekly.capacity.suspicious_ratio == 0.25, "null in a job is the top level's value"
    assert weekly.capacity.oss_usage_limit == config.capacity.oss_usage_limit
    assert (nightly.max_age, weekly.max_age, quiet.max_age) == (None, timedelta(hours=36), False)
    assert not nightly.drill.enabled and nightly.drill.directory == Path("/srv/state/drill")
    server = weekly.drill.server
    assert server is not None and (server.host, server.port, server.user) == (
        "10.0.0.5",
        5432,
        "postgres",
    )
    assert server.connect_timeout_seconds == weekly.connection.connect_timeout_seconds
    assert [(c.name, c.sql, c.database) for c in weekly.drill.checks] == [
        ("orders", "SELECT true", None)
    ]


def test_absent_sections_are_none_or_the_schemas_defaults() -> None:
    config = loads("storage: {mode: local}\n" + JOBS)
    assert config.sink is None and config.metrics is None
    assert config.capacity == CapacitySettings()
    assert config.notifications == NotifySettings()
    assert config.jobs[0].capacity == CapacitySettings()


def test_the_dataclass_defaults_are_the_schemas() -> None:
    props = schema()["properties"]
    capacity = props["capacity"]["properties"]
    for field in fields(CapacitySettings):
        assert field.default == capacity[field.name]["default"], field.name
    notifications = props["notifications"]["properties"]
    for field in fields(NotifySettings):
        if field.name in {"events", "channels"}:
            continue
        assert field.default == notifications[field.name]["default"], field.name


def test_nothing_keeps_the_document_as_written() -> None:
    config = loads(SECTIONS + JOBS)
    assert "raw" not in {f.name for f in fields(Config)}
    assert "raw" not in {f.name for f in fields(config.jobs[0])}


def test_the_schedule_module_loads_without_the_config_loader() -> None:
    # The daemon's schedule math and the dataclasses need neither yaml nor jsonschema.
    code = (
        "import sys, db_backup.config.schedule, db_backup.config\n"
        "print(sorted(m for m in ('yaml', 'jsonschema') if m in sys.modules))\n"
        "db_backup.config.load\n"
        "print(sorted(m for m in ('yaml', 'jsonschema') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["[]", "['jsonschema', 'yaml']"]


def test_the_shipped_json_schema_is_schema_yaml_regenerated() -> None:
    repo = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("gen", repo / "scripts" / "gen_config_docs.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    shipped = (repo / "src" / "db_backup" / "config" / "schema.json").read_text(encoding="utf-8")
    assert shipped == generator.render_json(), "run: python scripts/gen_config_docs.py"
    written = yaml.safe_load((repo / "src" / "db_backup" / "config" / "schema.yaml").read_text())
    assert json.loads(shipped) == written == schema()
