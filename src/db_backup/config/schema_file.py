"""The config's JSON schema (schema.yaml beside this module) and its defaults."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml


@cache
def schema() -> dict[str, Any]:
    """Returns the config JSON schema shipped in the package."""
    text = resources.files("db_backup.config").joinpath("schema.yaml").read_text(encoding="utf-8")
    # libyaml's loader when PyYAML has it: this file is parsed by every command (status too)
    # and the pure-Python loader takes about 6x the CPU time. Errors here are our bugs.
    loaded: dict[str, Any] = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return loaded


def with_defaults(schema_node: dict[str, Any], given: object) -> dict[str, Any]:
    """Returns `given` (a mapping, else empty) with every missing key's schema default filled in."""
    out = dict(given) if isinstance(given, dict) else {}
    for key, prop in schema_node.get("properties", {}).items():
        if key not in out and "default" in prop:
            out[key] = prop["default"]
    return out


def node(*keys: str) -> dict[str, Any]:
    """Returns the schema of a section by its keys, e.g. node("jobs", "drill") (items implied)."""
    found = schema()
    for key in keys:
        if "items" in found:
            found = found["items"]
        found = found["properties"][key]
    return found
