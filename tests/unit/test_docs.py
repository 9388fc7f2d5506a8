"""The docs stay true to the code: the config reference is regenerated from the schema."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from db_backup.cli.commands import COMMANDS

REPO = Path(__file__).resolve().parents[2]


def test_configuration_reference_matches_the_schema() -> None:
    spec = importlib.util.spec_from_file_location("gen", REPO / "scripts" / "gen_config_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    current = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert current == module.render(), "run: python scripts/gen_config_docs.py"


def test_readme_names_every_command_of_the_cli() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for command in ("check-config", "run", "status", "next", "daemon", "oss-lifecycle"):
        assert f"db-backup {command}" in readme, command
    assert "make demo" in readme and "make test" in readme


def test_every_command_of_the_table_is_documented() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    text = "\n".join(page.read_text(encoding="utf-8") for page in pages)
    missing = [c.name for c in COMMANDS if f"db-backup {c.name}" not in text]
    assert missing == [], "say in README.md or docs/ what these commands do"
