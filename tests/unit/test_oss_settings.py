"""Every `storage.oss` key of the config reaches the OSS target's settings, defined once."""

from __future__ import annotations

import dataclasses

import pytest

from db_backup.config import OssConfig, OssOptions, loads, schema
from db_backup.storage import oss_settings
from db_backup.storage.oss import OssSettings

CONFIG = """
storage:
  mode: oss
  oss:
    endpoint: https://oss-cn-shanghai.aliyuncs.com
    bucket: other-bucket
    prefix: pg/
    region: cn-shanghai
    signature_version: v1
    access_key_id: {env: TEST_OSS_ID}
    access_key_secret: {env: TEST_OSS_SECRET}
    security_token: {env: TEST_OSS_TOKEN}
    server_side_encryption: KMS
    kms_key_id: key-1
    storage_class: IA
    connect_timeout_seconds: 3
    read_timeout_seconds: 33
    retries: 9
    part_size_mib: 4
    parallel_parts: 3
    buffer_mib: 40
    bandwidth_limit_mbps: 80
jobs:
  - name: nightly
    schedule: "0 2 * * *"
    databases: shop
"""


def test_the_config_dataclass_has_exactly_the_schema_keys() -> None:
    keys = set(schema()["properties"]["storage"]["properties"]["oss"]["properties"])
    assert {f.name for f in dataclasses.fields(OssConfig)} == keys


def test_only_settings_in_other_units_change_their_name_on_the_way_to_the_target() -> None:
    config_fields = {f.name for f in dataclasses.fields(OssConfig)}
    target_fields = {f.name for f in dataclasses.fields(OssSettings)}
    assert config_fields - target_fields == {"part_size_mib", "buffer_mib", "bandwidth_limit_mbps"}
    assert target_fields - config_fields == {"part_size", "buffer_size", "bandwidth_limit"}


def test_what_the_config_and_the_target_share_is_declared_once() -> None:
    shared = {f.name for f in dataclasses.fields(OssConfig)} & {
        f.name for f in dataclasses.fields(OssSettings)
    }
    secrets = {"access_key_id", "access_key_secret", "security_token"}
    assert shared - secrets == {f.name for f in dataclasses.fields(OssOptions)}
    assert issubclass(OssConfig, OssOptions) and issubclass(OssSettings, OssOptions)


def test_every_oss_key_arrives_in_the_target_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_OSS_ID", "id-1")
    monkeypatch.setenv("TEST_OSS_SECRET", "secret-value-1")
    monkeypatch.setenv("TEST_OSS_TOKEN", "token-value-1")
    settings = oss_settings(loads(CONFIG))
    assert settings == OssSettings(
        endpoint="https://oss-cn-shanghai.aliyuncs.com",
        bucket="other-bucket",
        prefix="pg/",
        region="cn-shanghai",
        signature_version="v1",
        access_key_id="id-1",
        access_key_secret="secret-value-1",
        security_token="token-value-1",
        server_side_encryption="KMS",
        kms_key_id="key-1",
        storage_class="IA",
        connect_timeout_seconds=3,
        read_timeout_seconds=33,
        retries=9,
        part_size=4 * 1024 * 1024,
        parallel_parts=3,
        buffer_size=40 * 1024 * 1024,
        bandwidth_limit=10_000_000,
    )


def test_the_target_settings_defaults_are_the_schema_defaults() -> None:
    # OssSettings has defaults so that code and tests can build one directly; they must say
    # what the schema says.
    keys = schema()["properties"]["storage"]["properties"]["oss"]["properties"]
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(OssSettings)
        if f.default is not dataclasses.MISSING
    }
    in_units = {"part_size": "part_size_mib", "buffer_size": "buffer_mib"}
    for name, default in defaults.items():
        if name in in_units:
            assert default == keys[in_units[name]]["default"] * 1024 * 1024, name
        elif name == "bandwidth_limit":
            assert default is None and keys["bandwidth_limit_mbps"]["default"] is None
        elif name in ("access_key_id", "access_key_secret"):
            assert default == ""  # required in the config; no usable default
        else:
            assert default == keys[name]["default"], name
