"""Config loading: every mistake at once with its path; defaults; the shipped example loads."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from db_backup.config import ConfigError, load, loads, schema, schema_file

REPO = Path(__file__).resolve().parents[2]

MINIMAL = """
jobs:
  - name: nightly
    schedule: "0 2 * * *"
    databases: shop
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        loads(text, source="test.yaml")
    return caught.value.problems


OSS = """
storage:
  oss:
    endpoint: https://oss-cn-hangzhou.aliyuncs.com
    bucket: my-backups
    region: cn-hangzhou
    access_key_id: {env: OSS_ACCESS_KEY_ID}
    access_key_secret: {credential: oss-secret}
"""


def test_minimal_config_gets_the_seed_defaults() -> None:
    config = loads(MINIMAL + OSS)
    job = config.job("nightly")
    assert str(config.directories.data) == "/data/db-backups/data"
    assert str(config.directories.reports) == "/data/db-backups/reports"
    assert config.storage.mode == "both" and job.mode == "both"
    assert (job.dump.format, job.dump.compression, job.dump.jobs) == ("custom", 9, 1)
    assert job.databases == ("shop",) and job.globals is True
    assert (job.retention.days, job.retention.keep_last) == (7, 3)
    assert job.connection.port == 5432 and job.connection.password is None


def test_every_mistake_is_reported_at_once_with_its_path() -> None:
    found = problems("""
jobs:
  - name: ok
    schedule: "61 * * * *"
    databases: shop
    timezone: Mars/Olympus
    colour: blue
  - name: ok
    schedule: "0 2 * * *"
    databases: []
    connection: {port: 99999, password: {env: A, file: /x}}
    dump: {format: tar}
storage: {mode: cloud}
""")
    text = "\n".join(found)
    assert "At 'jobs[0].colour': unknown key" in text
    assert "At 'jobs[1].databases'" in text
    assert "At 'jobs[1].connection.port'" in text
    assert "At 'jobs[1].connection.password'" in text
    assert "At 'jobs[1].dump.format': 'tar' is not one of: custom, directory, plain" in text
    assert "At 'storage.mode': 'cloud' is not one of: local, oss, both" in text
    assert len(found) >= 6


def test_rules_across_fields_are_checked_after_the_schema() -> None:
    found = problems("""
jobs:
  - {name: a, schedule: "61 * * * *", databases: x, timezone: Mars/Olympus}
  - {name: a, schedule: "0 2 * * *", databases: x, dump: {jobs: 4}}
  - {name: c, schedule: "0 2 * * *", databases: x, mode: both, dump: {format: directory}}
storage:
  mode: local
directories: {data: relative/dir}
""")
    text = "\n".join(found)
    assert "At 'jobs[0].schedule'" in text
    assert "At 'jobs[0].timezone'" in text
    assert "At 'jobs[1].name': 'a' is also the name of jobs[0]" in text
    assert "At 'jobs[1].dump.jobs': parallel dump workers need format: directory" in text
    assert "At 'jobs[2].dump.format'" not in text  # directory to OSS works with oss2
    assert "At 'jobs[2].mode': 'both' needs a 'storage.oss' section" in text
    assert "At 'directories.data': 'relative/dir' must be an absolute path" in text


def test_missing_required_keys_and_bad_yaml_are_named() -> None:
    assert problems("jobs:\n  - name: x\n") == [
        "At 'jobs[0].databases': required key is missing",
        "At 'jobs[0].schedule': required key is missing",
        "At 'jobs[0].mode': 'both' needs a 'storage.oss' section (storage.tool is oss2)",
    ]
    assert "At 'jobs[0].mode': 'both' needs a 'storage.oss' section" in problems(MINIMAL)[0]
    [bad] = problems("jobs: [\n  oops: : :\n")
    assert bad.startswith("line ") and "not valid YAML" in bad
    assert problems("") == ["At 'jobs': required key is missing"]


def test_oss_settings_are_checked() -> None:
    found = problems(
        MINIMAL
        + """
storage:
  oss:
    endpoint: oss-cn-hangzhou.aliyuncs.com
    bucket: B
    access_key_id: {env: ID}
    access_key_secret: {secret: plain-text}
    server_side_encryption: KMS
"""
    )
    text = "\n".join(found)
    assert "At 'storage.oss.endpoint'" in text
    assert "At 'storage.oss.bucket'" in text
    # Inside a secret reference even a key may be the secret (`{S3cr3t}` is a mapping in YAML).
    assert (
        "At 'storage.oss.access_key_secret': unknown key (not shown; known here: credential, "
        "env, file)"
    ) in text
    assert "plain-text" not in text


def test_oss_rules_region_and_kms_key() -> None:
    found = problems(
        MINIMAL
        + """
storage:
  oss:
    endpoint: https://oss-cn-hangzhou.aliyuncs.com
    bucket: my-backups
    prefix: no-slash
    access_key_id: {env: ID}
    access_key_secret: {env: SECRET}
    server_side_encryption: KMS
"""
    )
    assert found == [
        "At 'storage.oss.region': signature_version v4 needs the bucket's region",
        "At 'storage.oss.kms_key_id': server_side_encryption KMS needs a key id",
        "At 'storage.oss.prefix': 'no-slash' must end with '/'",
    ]


def test_the_shipped_example_config_loads_and_is_local_mode() -> None:
    config = load(str(REPO / "config.example.yaml"))
    assert config.storage.mode == "local"
    assert config.jobs[0].connection.host == "/var/run/postgresql"


def test_unreadable_file_is_one_clear_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(str(tmp_path / "missing.yaml"))
    assert caught.value.problems == ["cannot read the config file: No such file or directory"]


def _leaves(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    for key, prop in node.get("properties", {}).items():
        here = f"{path}.{key}" if path else key
        if "properties" in prop:
            out.append((here, prop))
            out.extend(_leaves(prop, here))
        elif prop.get("type") == "array" and "properties" in prop.get("items", {}):
            out.append((here, prop))
            out.extend(_leaves(prop["items"], here + "[]"))
        else:
            out.append((here, prop))
    return out


def test_every_schema_key_has_a_description_an_example_and_a_default_or_is_required() -> None:
    root = schema()
    missing = []
    for path, prop in _leaves(root):
        parent_required = _required_of(root, path)
        if "description" not in prop:
            missing.append(f"{path}: description")
        if "example" not in prop:
            missing.append(f"{path}: example")
        optional_section = prop.get("type") == "object" and path.startswith("storage.")
        if "default" not in prop and not parent_required and not optional_section:
            missing.append(f"{path}: default")
    assert missing == []


def _required_of(root: dict[str, Any], path: str) -> bool:
    node = root
    parts = path.replace("[]", ".[]").split(".")
    for part in parts[:-1]:
        node = node["items"] if part == "[]" else node["properties"][part]
    if parts[-1] == "[]":
        return True
    return parts[-1] in node.get("required", []) or path == "jobs"


def test_example_values_in_the_schema_are_themselves_valid() -> None:
    document = {"jobs": schema()["properties"]["jobs"]["example"]}
    loads(yaml.safe_dump(document))


# --- configuration errors: every mistake at once, each with its place ---------------------------


def test_config_that_is_not_utf8_is_one_problem_naming_the_byte_position(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(MINIMAL.encode() + "    # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load(str(path))
    offset = len(MINIMAL.encode()) + len(b"    # caf")
    assert caught.value.problems == [
        f"line 6, column 10 (byte offset {offset}): not UTF-8 text (byte 0xe9); "
        "save the file as UTF-8"
    ]


def test_unprintable_character_is_named_with_its_line_and_column() -> None:
    assert problems("jobs:\n  - name: a\x07\n") == [
        "line 2, column 12: not valid YAML: character U+0007 is not allowed "
        "(special characters are not allowed)"
    ]


def test_duplicate_top_level_key_names_both_lines() -> None:
    found = problems(
        """jobs:
  - {name: first, schedule: "0 1 * * *", databases: a}
storage: {mode: local}
jobs:
  - {name: second, schedule: "0 2 * * *", databases: b}
"""
    )
    assert found == [
        "At 'jobs': key given twice, at line 1 and line 4; keep one "
        "(YAML would silently use the last)"
    ]


def test_duplicate_key_inside_a_job_names_its_path_and_both_lines() -> None:
    found = problems(
        """storage: {mode: local}
jobs:
  - name: nightly
    schedule: "0 2 * * *"
    databases: shop
    retention: {days: 7}
    retention:
      days: 30
"""
    )
    assert found == [
        "At 'jobs[0].retention': key given twice, at line 6 and line 7; keep one "
        "(YAML would silently use the last)"
    ]


def test_a_key_that_overrides_a_merged_anchor_is_not_a_duplicate() -> None:
    config = loads(
        """storage: {mode: local}
jobs:
  - &base {name: a, schedule: "0 2 * * *", databases: shop}
  - <<: *base
    name: b
"""
    )
    assert [j.name for j in config.jobs] == ["a", "b"]


def test_unknown_key_does_not_hide_schedule_zone_and_duplicate_name_mistakes() -> None:
    found = problems(
        """storage: {mode: local}
jobs:
  - name: nightly
    schedule: "61 * * * *"
    timezone: Mars/Olympus
    databases: shop
    colour: blue
  - name: nightly
    schedule: "0 2 * * *"
    databases: crm
"""
    )
    text = "\n".join(found)
    assert "At 'jobs[0].colour': unknown key" in text
    assert "At 'jobs[0].schedule': not a valid cron expression: '61 * * * *'" in text
    assert "At 'jobs[0].timezone': unknown time zone 'Mars/Olympus'" in text
    assert "At 'jobs[1].name': 'nightly' is also the name of jobs[0]" in text
    assert len(found) == 4


def test_rules_skip_values_the_schema_already_rejects() -> None:
    found = problems(
        """storage: {mode: cloud}
directories: {data: 42}
jobs:
  - {name: [a], schedule: 5, timezone: 7, databases: x, dump: {jobs: many, format: tar}}
  - "not a job"
"""
    )
    assert found == [
        "At 'directories.data': must be string, got int 42",
        "At 'jobs[0].dump.format': 'tar' is not one of: custom, directory, plain",
        "At 'jobs[0].dump.jobs': must be integer, got str 'many'",
        "At 'jobs[0].name': must be string, got list ['a']",
        "At 'jobs[0].schedule': must be string, got int 5",
        "At 'jobs[0].timezone': must be string or null, got int 7",
        # A job's mapping holds its password: what stands in its place is not repeated.
        "At 'jobs[1]': must be object, got a string (not shown: a secret may be written here)",
        "At 'storage.mode': 'cloud' is not one of: local, oss, both",
    ]


def test_yaml_syntax_error_names_where_the_unclosed_quote_started_and_where_parsing_stopped() -> (
    None
):
    text = 'jobs:\n  - name: nightly\n    schedule: "0 2 * * *\n    databases: shop\n\n'
    assert problems(text) == [
        "line 6, column 1: not valid YAML: found unexpected end of stream "
        "(while scanning a quoted scalar that started at line 3, column 15)"
    ]


def test_yaml_error_without_a_separate_start_names_the_one_place() -> None:
    assert problems("jobs: [\n  oops: : :\n") == [
        "line 2, column 9: not valid YAML: expected the node content, but found ':' "
        "(while parsing a flow node)"
    ]


def test_not_utf8_column_counts_characters_not_bytes(tmp_path: Path) -> None:
    path = tmp_path / "mixed.yaml"
    path.write_bytes("# 备份\n# 备份 ".encode() + b"\xff\n")
    with pytest.raises(ConfigError) as caught:
        load(str(path))
    offset = len("# 备份\n# 备份 ".encode())
    assert caught.value.problems == [
        f"line 2, column 6 (byte offset {offset}): not UTF-8 text (byte 0xff); "
        "save the file as UTF-8"
    ]


def test_duplicate_keys_on_one_line_are_named_by_column() -> None:
    found = problems('jobs: [{name: a, schedule: "0 2 * * *", databases: x, name: b}]\n')
    assert found[0] == (
        "At 'jobs[0].name': key given twice, at line 1, columns 9 and 55; keep one "
        "(YAML would silently use the last)"
    )


def test_keys_that_are_not_strings_are_reported_not_a_crash() -> None:
    found = problems("1: a\nfoo: b\nnull: c\njobs:\n  - {name: a, schedule: '0 2 * * *', x: 1}\n")
    # Every top-level section of the schema (issue 10 adds several), in the message's order.
    known = f"known here: {', '.join(sorted(schema()['properties']))}"
    assert f"At '1': unknown key ({known})" in found
    assert f"At 'foo': unknown key ({known})" in found
    assert f"At 'None': unknown key ({known})" in found
    assert any(p.startswith("At 'jobs[0].x': unknown key") for p in found)
    assert "At 'jobs[0].databases': required key is missing" in found


def test_cross_field_rules_take_their_defaults_from_the_schema(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The rules read the storage mode's default from the schema, not from a copy of it: with
    # `local` as the schema's default, a job without a mode needs no remote section.
    changed = copy.deepcopy(schema())
    changed["properties"]["storage"]["properties"]["mode"]["default"] = "local"
    monkeypatch.setattr(schema_file, "schema", lambda: changed)
    assert loads(MINIMAL).jobs[0].mode == "local"


RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
LOCAL = "\nstorage:\n  mode: local\n"


def test_storage_encryption_is_every_jobs_default_and_a_job_can_override_or_turn_it_off() -> None:
    config = loads(f"""
storage:
  mode: local
  encryption:
    age:
      recipients: [{RECIPIENT}]
      identity: {{credential: age-identity}}
jobs:
  - {{name: inherits, schedule: "0 2 * * *", databases: a}}
  - {{name: unencrypted, schedule: "0 2 * * *", databases: a, encryption: false}}
  - name: own
    schedule: "0 2 * * *"
    databases: a
    encryption: {{age: {{recipients_file: /etc/db-backup/age-recipients.txt}}}}
""")
    inherits, unencrypted, own = config.jobs
    assert inherits.encryption is not None
    assert inherits.encryption.recipients == (RECIPIENT,)
    assert inherits.encryption.identity is not None
    assert inherits.encryption.identity.describe() == "credential 'age-identity'"
    assert unencrypted.encryption is None
    assert own.encryption is not None and own.encryption.recipients == ()
    assert str(own.encryption.recipients_file) == "/etc/db-backup/age-recipients.txt"
    assert own.encryption.identity is None
    assert loads(MINIMAL + LOCAL).jobs[0].encryption is None


def test_encryption_mistakes_are_named_with_their_place() -> None:
    found = problems(f"""
storage:
  mode: local
  encryption:
    age:
      recipients: [{RECIPIENT.upper()}, "age1short", "AGE-SECRET-KEY-1ABC"]
      passphrase: x
jobs:
  - {{name: a, schedule: "0 2 * * *", databases: a, encryption: true}}
""")
    text = "\n".join(found)
    assert "At 'storage.encryption.age.recipients[0]'" in text
    assert "At 'storage.encryption.age.recipients[1]'" in text
    assert "At 'storage.encryption.age.recipients[2]'" in text
    assert "At 'storage.encryption.age.passphrase': unknown key" in text
    assert "At 'jobs[0].encryption'" in text


def test_encryption_needs_a_recipient_and_refuses_the_directory_format() -> None:
    found = problems("""
storage:
  mode: local
  encryption: {age: {}}
jobs:
  - {name: a, schedule: "0 2 * * *", databases: a, dump: {format: directory}}
  - {name: b, schedule: "0 2 * * *", databases: a, dump: {format: directory}, encryption: false}
  - {name: c, schedule: "0 2 * * *", databases: a, encryption: {age: {recipients: []}}}
""")
    assert found == [
        "At 'jobs[0].dump.format': the directory format cannot be encrypted; use format custom "
        "(or plain), or set encryption: false on this job",
        "At 'jobs[2].encryption.age': needs at least one recipient (recipients or recipients_file)",
        "At 'storage.encryption.age': needs at least one recipient (recipients or recipients_file)",
    ]


def test_an_identity_file_beside_the_backups_is_refused() -> None:
    found = problems(f"""
directories: {{data: /srv/backups/data}}
storage:
  mode: local
  encryption:
    age:
      recipients: [{RECIPIENT}]
      identity: {{file: /srv/backups/data/key.txt}}
jobs:
  - name: a
    schedule: "0 2 * * *"
    databases: a
    encryption: {{age: {{recipients: [{RECIPIENT}], identity: {{file: /data/db-backups/reports/k}}}}}}
  - name: b
    schedule: "0 2 * * *"
    databases: a
    encryption: {{age: {{recipients: [{RECIPIENT}], identity: {{file: /etc/db-backup/age.key}}}}}}
""")
    assert found == [
        "At 'storage.encryption.age.identity': the identity is inside directories.data; keep the "
        "private key away from the backups (a systemd credential is best)",
        "At 'jobs[0].encryption.age.identity': the identity is inside directories.reports; keep "
        "the private key away from the backups (a systemd credential is best)",
    ]


def test_directory_format_to_a_remote_is_refused_with_rclone_only() -> None:
    text = """
jobs:
  - {name: a, schedule: "0 2 * * *", databases: x, mode: oss, dump: {format: directory, jobs: 2}}
  - {name: b, schedule: "0 2 * * *", databases: x, mode: local, dump: {format: directory}}
storage:
  mode: both
  tool: %s
  %s
"""
    rclone = problems(text % ("rclone", "rclone: {remote: 'r:bucket/p'}"))
    assert any(
        p.startswith(
            "At 'jobs[0].dump.format': the directory format cannot be uploaded with "
            "storage.tool: rclone"
        )
        for p in rclone
    ), rclone
    assert not any(p.startswith("At 'jobs[1].dump.format'") for p in rclone)
    oss2 = problems(
        text % ("oss2", "oss: {endpoint: 'https://oss-cn-hangzhou.aliyuncs.com', bucket: b}")
    )
    assert not any(".dump.format'" in p for p in oss2), oss2
