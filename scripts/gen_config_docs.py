"""Writes docs/configuration.md and the shipped schema.json from src/db_backup/config/schema.yaml.

Run `python scripts/gen_config_docs.py` after changing schema.yaml; tests/unit/test_docs.py fails
when the reference is stale, tests/unit/test_config_model.py when schema.json is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "configuration.md"
SCHEMA_DIR = REPO / "src" / "db_backup" / "config"


def schema() -> dict[str, Any]:
    """Returns the schema as written (schema.yaml), the source of everything generated here."""
    loaded: dict[str, Any] = yaml.safe_load(
        (SCHEMA_DIR / "schema.yaml").read_text(encoding="utf-8")
    )
    return loaded


def render_json() -> str:
    """Returns schema.json: the same schema, for the program to read fast."""
    return json.dumps(schema(), indent=1, ensure_ascii=False) + "\n"


def _value(value: Any) -> str:
    return "`" + json.dumps(value, ensure_ascii=False) + "`"


def _type(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return " \\| ".join("null" if v is None else str(v) for v in prop["enum"])
    if "$ref" in prop or "oneOf" in prop:
        return "secret reference" if "secret" in json.dumps(prop) else "see description"
    kind = prop.get("type", "")
    return " or ".join(kind) if isinstance(kind, list) else str(kind)


def _rows(node: dict[str, Any], path: str, required: list[str]) -> list[str]:
    rows = []
    for key, prop in node.get("properties", {}).items():
        here = f"{path}.{key}" if path else key
        default = (
            "required"
            if key in required
            else _value(prop["default"])
            if "default" in prop
            else "optional"
        )
        description = " ".join(str(prop.get("description", "")).split())
        example = _value(prop["example"]) if "example" in prop else ""
        rows.append(f"| `{here}` | {_type(prop)} | {default} | {description} | {example} |")
        if "properties" in prop:
            rows.extend(_rows(prop, here, prop.get("required", [])))
        items = prop.get("items", {})
        if "properties" in items:
            rows.extend(_rows(items, f"{here}[]", items.get("required", [])))
    return rows


def render() -> str:
    """Returns the Markdown reference of every config key."""
    root = schema()
    lines = [
        "# Configuration reference",
        "",
        "Generated from `src/db_backup/config/schema.yaml` by `scripts/gen_config_docs.py`; do not edit.",
        "The file is `/etc/db-backup/config.yaml` (override with `--config` or `DB_BACKUP_CONFIG`).",
        "`db-backup check-config` lists every mistake at once, each with its path: YAML syntax",
        "(where the parser stopped and where the unfinished part began), a file that is not UTF-8",
        "(byte offset), keys given twice (both lines), unknown keys, wrong types and values, and",
        "the rules across fields (cron, time zones, duplicate job names, storage), all together.",
        "",
        "Secrets are never written in the file: a *secret reference* is exactly one of",
        "`{env: NAME}`, `{file: PATH}` or `{credential: NAME}` (`$CREDENTIALS_DIRECTORY/NAME`,",
        "set by `LoadCredential=` in the unit). A value typed where a reference belongs (or in a",
        "section that holds one) is refused by its place and kind only; the value is never shown,",
        "not by `check-config`, nor by the daemon in the journal. `check-config` resolves each",
        "reference from where it runs and names those it cannot resolve and why (never a value);",
        "a `sink.dsn` must be a connection string libpq reads; a `{credential:}` outside the unit",
        '"cannot be checked here". Exit status 0 means the config is usable here, 78 not.',
        "",
        "Schedules are portable Vixie cron: 5 fields of numbers, month and day names, `*`, `,`,",
        "`-` and `/`, or an alias (`@daily`, `@hourly`, ...). croniter's extensions (`L`, `W`,",
        "`#`, `?`, `H`, a seconds field) are refused with a message naming the field.",
        "",
        "| key | type | default | description | example |",
        "| --- | --- | --- | --- | --- |",
        *_rows(root, "", root.get("required", [])),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    OUTPUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUTPUT}")
    shipped = SCHEMA_DIR / "schema.json"
    shipped.write_text(render_json(), encoding="utf-8")
    print(f"wrote {shipped}")
