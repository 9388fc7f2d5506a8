"""The config of db-backup: loaded and checked once, then a tree of frozen dataclasses.

`load(path)` reads /etc/db-backup/config.yaml (`loader`: YAML, the schema in schema.yaml, then
the rules across fields in `rules`; every mistake at once, each with its place), and `build`
types every section (`model`, `sections`, `features`), so no module reads the document later.

The loader's names load on first use: importing `db_backup.config.schedule`, or a module that
only needs the dataclasses, does not import yaml and jsonschema.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from db_backup.config.errors import ConfigError, format_path
from db_backup.config.features import (
    CapacitySettings,
    ChannelSettings,
    DrillCheck,
    DrillSettings,
    MetricsSettings,
    NotifySettings,
    SinkSettings,
)
from db_backup.config.model import Config, JobConfig, host_zone, secret_refs
from db_backup.config.sections import (
    AgeEncryption,
    Connection,
    DaemonConfig,
    Directories,
    DumpOptions,
    DumpSelection,
    HookCommand,
    Hooks,
    OssConfig,
    OssOptions,
    RcloneConfig,
    Retention,
    RetryPolicy,
    StorageConfig,
)
from db_backup.config.units import parse_duration, parse_size
from db_backup.util.secrets import SecretRef

if TYPE_CHECKING:
    from db_backup.config.loader import (
        CONFIG_ENV,
        DEFAULT_CONFIG_PATH,
        config_path,
        load,
        loads,
    )
    from db_backup.config.schema_file import schema

# Name -> the module that defines it, imported when the name is first asked for.
_LAZY = {
    "CONFIG_ENV": "db_backup.config.loader",
    "DEFAULT_CONFIG_PATH": "db_backup.config.loader",
    "config_path": "db_backup.config.loader",
    "load": "db_backup.config.loader",
    "loads": "db_backup.config.loader",
    "schema": "db_backup.config.schema_file",
}

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "AgeEncryption",
    "CapacitySettings",
    "ChannelSettings",
    "Config",
    "ConfigError",
    "Connection",
    "DaemonConfig",
    "Directories",
    "DrillCheck",
    "DrillSettings",
    "DumpOptions",
    "DumpSelection",
    "HookCommand",
    "Hooks",
    "JobConfig",
    "MetricsSettings",
    "NotifySettings",
    "OssConfig",
    "OssOptions",
    "RcloneConfig",
    "Retention",
    "RetryPolicy",
    "SecretRef",
    "SinkSettings",
    "StorageConfig",
    "config_path",
    "format_path",
    "host_zone",
    "load",
    "loads",
    "parse_duration",
    "parse_size",
    "schema",
    "secret_refs",
]


def __getattr__(name: str) -> Any:
    """Returns a loader name (`load`, `schema`, ...) on first use, importing its module then."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
