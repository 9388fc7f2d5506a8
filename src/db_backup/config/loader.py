"""Loads /etc/db-backup/config.yaml: YAML, then the schema, then the rules that span fields.

Every mistake is reported at once, each with its place (`jobs[1].schedule: ...`), so a user fixes
a config in one round; a value where a secret belongs is named by its place and kind, never
shown. The result is a tree of frozen dataclasses with every default filled in (`build`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from db_backup.config.build import build
from db_backup.config.errors import ConfigError, format_path
from db_backup.config.messages import schema_problems
from db_backup.config.model import Config
from db_backup.config.rules import rule_problems

DEFAULT_CONFIG_PATH = "/etc/db-backup/config.yaml"
CONFIG_ENV = "DB_BACKUP_CONFIG"


def config_path(explicit: str | None = None) -> str:
    """Returns the config path: --config, else $DB_BACKUP_CONFIG, else the packaged default."""
    return explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def load(path: str) -> Config:
    """Returns the validated config at `path`; raises ConfigError listing every mistake."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(path, [f"cannot read the config file: {exc.strerror}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [_not_utf8(raw, exc)]) from None
    return loads(text, source=path)


def loads(text: str, source: str = "<config>") -> Config:
    """Returns the validated config parsed from YAML `text`; raises ConfigError.

    Every check runs that the document's structure allows: duplicate keys, the schema and the
    rules that span fields are reported together, so one round of fixes is enough.
    """
    data, problems = _parse(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            source, [*problems, "the top level must be a mapping of keys (jobs:, storage:, ...)"]
        )
    problems += schema_problems(data)
    problems += rule_problems(data)
    if problems:
        raise ConfigError(source, problems)
    return build(data, source)


def _not_utf8(raw: bytes, exc: UnicodeDecodeError) -> str:
    """Returns the message for a config that is not UTF-8, naming the first bad byte's place."""
    before = raw[: exc.start]
    line = before.count(b"\n") + 1
    # Characters, not bytes: everything before the first bad byte is valid UTF-8.
    column = len(before[before.rfind(b"\n") + 1 :].decode("utf-8")) + 1
    return (
        f"line {line}, column {column} (byte offset {exc.start}): not UTF-8 text "
        f"(byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
    )


def _parse(text: str, source: str) -> tuple[Any, list[str]]:
    """Returns the YAML document in `text` and one problem per duplicate key; raises ConfigError.

    Duplicate keys are found on the node tree, where both keys still have their line numbers
    (PyYAML itself keeps the last value silently).
    """
    try:
        loader = yaml.SafeLoader(text)  # checks for unprintable characters at once
    except yaml.YAMLError as exc:
        raise ConfigError(source, [_yaml_problem(exc, text)]) from None
    try:
        node = loader.get_single_node()
        problems = list(_duplicate_keys(node)) if node is not None else []
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise ConfigError(source, [_yaml_problem(exc, text)]) from None
    finally:
        loader.dispose()
    return data, problems


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """Returns a YAML error as one line: where the parser gave up and where the problem began."""
    if isinstance(exc, yaml.reader.ReaderError):
        before = text[: exc.position]
        line = before.count("\n") + 1
        column = exc.position - (before.rfind("\n") + 1) + 1
        return (
            f"line {line}, column {column}: not valid YAML: character U+{exc.character:04X} "
            f"is not allowed ({exc.reason})"
        )
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f"not valid YAML: {exc}"
    mark, context_mark = exc.problem_mark, exc.context_mark
    where = f"{_mark(mark)}: " if mark else ""
    problem = (exc.problem or "").removeprefix("but ")
    message = f"{where}not valid YAML: {problem or exc.context or 'cannot parse'}"
    if exc.context and problem:
        # Where the parser gave up is often far from the cause (an unclosed quote fails at the
        # end of the file); the context mark says where the unfinished construct started.
        message += f" ({exc.context}"
        if context_mark is not None and _mark(context_mark) != _mark(mark):
            message += f" that started at {_mark(context_mark)}"
        message += ")"
    return message


def _mark(mark: yaml.Mark | None) -> str:
    """Returns a YAML mark as "line L, column C" (1-based), "" for none."""
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def _duplicate_keys(root: yaml.Node) -> Iterable[str]:
    """Yields a problem for each key that appears twice in one mapping, with both line numbers."""
    pending: list[tuple[yaml.Node, list[str | int]]] = [(root, [])]
    visited: set[int] = set()
    while pending:
        node, path = pending.pop(0)
        if id(node) in visited:  # an alias points back to a node already checked
            continue
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            pending.extend((item, [*path, index]) for index, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], yaml.Node] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                if key_node.tag == "tag:yaml.org,2002:merge":
                    pending.append((value_node, path))
                    continue
                identity = (key_node.tag, key_node.value)
                if identity in first:
                    yield _duplicate(path, key_node, first[identity])
                else:
                    first[identity] = key_node
                pending.append((value_node, [*path, key_node.value]))


def _duplicate(path: list[str | int], later: yaml.Node, earlier: yaml.Node) -> str:
    """Returns the problem of a key given twice, naming both places."""
    first, second = earlier.start_mark, later.start_mark
    places = (
        f"line {first.line + 1} and line {second.line + 1}"
        if first.line != second.line
        else f"line {second.line + 1}, columns {first.column + 1} and {second.column + 1}"
    )
    return (
        f"At '{format_path([*path, later.value])}': key given twice, "
        f"at {places}; keep one (YAML would silently use the last)"
    )
