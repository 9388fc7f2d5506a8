"""Schema mistakes as messages for a person: `At 'jobs[2].schedule': ...`, one per mistake.

Where a secret belongs (a secret reference), or inside or around one, a message names the place
and the kind of value only, never the value: a password typed where `{env: NAME}` belongs must
not be echoed to the terminal or, from the daemon, to the journal.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from typing import Any

import jsonschema

from db_backup.config import schema_file
from db_backup.config.errors import format_path

SECRET_REF = "#/$defs/secret_ref"
SECRET_FORMS = "a secret reference ({env: NAME}, {file: PATH} or {credential: NAME})"
NOT_SHOWN = "write where the secret comes from, never the secret itself (the value is not shown)"
# Why a secret reference's name is refused, by its kind (the schema's patterns, in words).
REF_NAMES = {
    "env": "not a valid environment variable name (letters, digits and _, not starting "
    "with a digit)",
    "credential": "not a valid credential name (letters, digits and . _ @ -)",
}
# Kinds of values as a YAML writer knows them (the messages of a hidden value name only these).
KINDS = {
    "str": "a string",
    "int": "a number",
    "float": "a number",
    "bool": "true or false",
    "list": "a list",
    "dict": "a mapping",
    "NoneType": "null",
}

Path = tuple[str | int, ...]


def schema_problems(data: dict[str, Any]) -> list[str]:
    """Returns one sorted problem per schema mistake in `data`."""
    validator = jsonschema.Draft202012Validator(schema_file.schema())
    return sorted(problem for error in validator.iter_errors(data) for problem in _describe(error))


def _describe(error: jsonschema.ValidationError) -> Iterator[str]:
    """Yields one problem per mistake in `error` (an unknown-keys error names several keys)."""
    path: Path = tuple(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        known = f"known here: {', '.join(allowed)}"
        if in_secret_ref(path):  # `password: {S3cr3t}` is YAML for a key S3cr3t
            yield f"At '{format_path(path)}': unknown key (not shown; {known})"
            return
        # YAML keys may be numbers, booleans or null, which do not sort with strings.
        extra = sorted(str(key) for key in error.instance if key not in allowed)
        for key in extra:
            yield f"At '{format_path([*path, key])}': unknown key ({known})"
    elif error.validator == "required":
        missing = str(error.message).split("'")[1] if "'" in error.message else error.message
        yield f"At '{format_path([*path, missing])}': required key is missing"
    elif error.validator in {"oneOf", "anyOf"} and error.context:
        yield from _describe_branches(error, path)
    else:
        yield f"At '{format_path(path)}': {_plain(error, path)}"


def _describe_branches(error: jsonschema.ValidationError, path: Path) -> Iterator[str]:
    """Yields the mistakes of the alternative that fits the value's kind, else the kinds wanted.

    jsonschema's own best match often picks an alternative of another kind (`databases: []`
    was "must be string"); the alternative whose type the value has is the one the user meant.
    """
    by_branch: dict[int, list[jsonschema.ValidationError]] = {}
    for sub in error.context or []:
        by_branch.setdefault(int(sub.relative_schema_path[0]), []).append(sub)
    for _, subs in sorted(by_branch.items()):
        if not any(_wrong_kind(sub, path) for sub in subs):
            for sub in subs:
                yield from _describe(sub)
            return
    kinds = [kind for branch in error.validator_value for kind in _kinds(branch)]
    yield f"At '{format_path(path)}': {_must_be(kinds, error.instance, path)}"


def _wrong_kind(sub: jsonschema.ValidationError, path: Path) -> bool:
    """Returns whether `sub` says the value itself is of another kind than its alternative."""
    return tuple(sub.absolute_path) == path and sub.validator in {"type", "const", "enum"}


def _kinds(branch: dict[str, Any]) -> list[str]:
    """Returns the kinds of value an alternative of a oneOf takes, in words."""
    if branch.get("$ref") == SECRET_REF:
        return [SECRET_FORMS]
    node = _resolve(branch)
    if "const" in node:
        return [json.dumps(node["const"])]
    if "enum" in node:
        return [json.dumps(value) for value in node["enum"]]
    kind = node.get("type", "a different value")
    return list(kind) if isinstance(kind, list) else [str(kind)]


def _must_be(kinds: list[str], instance: object, path: Path) -> str:
    """Returns "must be X or Y, got ..." for a value of none of the kinds a place takes."""
    wanted = " or ".join(dict.fromkeys(kinds))
    if SECRET_FORMS in kinds:
        return f"must be {wanted}, got {_kind(instance)}; {NOT_SHOWN}"
    return f"must be {wanted}, got {_got(instance, path)}"


def _plain(error: jsonschema.ValidationError, path: Path) -> str:
    """Returns the message of one mistake at `path` (without the value where it may be secret)."""
    hidden = hides_value(path)
    if error.validator == "type":
        if _is_secret_ref(error.schema):
            return _must_be([SECRET_FORMS], error.instance, path)
        wanted = error.validator_value
        return _must_be(wanted if isinstance(wanted, list) else [wanted], error.instance, path)
    if error.validator == "enum":
        choices = ", ".join("null" if c is None else str(c) for c in error.validator_value)
        shown = "the value" if hidden else repr(error.instance)
        return f"{shown} is not one of: {choices}"
    if error.validator in {"minProperties", "maxProperties"} and _is_secret_ref(error.schema):
        return "a secret reference needs exactly one of: env, file, credential"
    if error.validator in {"minLength", "minItems"} and not error.instance:
        return "must not be an empty list" if error.validator == "minItems" else "must not be empty"
    if error.validator == "pattern":
        if hidden:
            return REF_NAMES.get(str(path[-1]), "is not in the allowed form (not shown)")
        return f"{error.instance!r} does not match the allowed form {error.validator_value}"
    if hidden:  # jsonschema's own messages quote the value
        return f"does not satisfy {error.validator}: {json.dumps(error.validator_value)}"
    return str(error.message)


def _kind(instance: object) -> str:
    """Returns the kind of `instance` in words ("a string"), never its value."""
    return KINDS.get(type(instance).__name__, "a value")


def _got(instance: object, path: Path) -> str:
    """Returns what was given: its type and value, or only its kind where it may be secret."""
    if hides_value(path):
        return f"{_kind(instance)} (not shown: a secret may be written here)"
    return f"{type(instance).__name__} {instance!r}"


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    """Returns the schema node a local `$ref` points to (or `node` itself)."""
    seen = 0
    while "$ref" in node and str(node["$ref"]).startswith("#/") and seen < 16:
        target: Any = schema_file.schema()
        for part in str(node["$ref"])[2:].split("/"):
            target = target[part]
        node, seen = target, seen + 1
    return node


def _is_secret_ref(node: dict[str, Any]) -> bool:
    """Returns whether a (resolved) schema node is the secret reference."""
    return node == schema_file.schema()["$defs"]["secret_ref"]


def hides_value(path: Path) -> bool:
    """Returns whether a value at `path` may hold a secret: at, inside or around a reference."""
    here = _pattern(path)
    return in_secret_ref(path) or any(ref[: len(here)] == here for ref in _secret_places())


def in_secret_ref(path: Path) -> bool:
    """Returns whether `path` is a secret reference or inside one."""
    here = _pattern(path)
    return any(here[: len(ref)] == ref for ref in _secret_places())


def _pattern(path: Path) -> tuple[str, ...]:
    """Returns `path` with every list index as `*`, as the schema places are written."""
    return tuple("*" if isinstance(part, int) else str(part) for part in path)


def _secret_places() -> frozenset[tuple[str, ...]]:
    """Returns the secret places of the schema in use."""
    # Keyed by the schema object, so a schema a test changes gets its own.
    return secret_places(id(schema_file.schema()))


@cache
def secret_places(_schema_id: int) -> frozenset[tuple[str, ...]]:
    """Returns the paths of every secret reference in the schema (`*` for any list index)."""
    found: set[tuple[str, ...]] = set()
    _collect(schema_file.schema(), (), found, 0)
    return frozenset(found)


def _collect(
    node: dict[str, Any], path: tuple[str, ...], found: set[tuple[str, ...]], depth: int
) -> None:
    """Adds to `found` the places under `node` (at `path`) where a secret reference belongs."""
    if depth > 32:  # a $ref cycle; the shipped schema has none
        return
    if node.get("$ref") == SECRET_REF:
        found.add(path)
        return
    node = _resolve(node)
    for key, child in node.get("properties", {}).items():
        _collect(child, (*path, key), found, depth + 1)
    if isinstance(node.get("items"), dict):
        _collect(node["items"], (*path, "*"), found, depth + 1)
    for keyword in ("oneOf", "anyOf", "allOf"):
        for branch in node.get(keyword, []):
            _collect(branch, path, found, depth + 1)
