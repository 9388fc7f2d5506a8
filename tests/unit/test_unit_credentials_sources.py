"""Reading systemd 252's answer about a unit's credentials (util.unit_credentials)."""

from __future__ import annotations

import pytest

from db_backup.util.unit_credentials import (
    Source,
    candidates,
    object_path,
    parse_properties,
)

# Captured from systemd 252.39 (Debian 12) for a unit with LoadCredential=alpha:/etc/probe/alpha,
# LoadCredential=beta, SetCredential=gamma:hello world, LoadCredentialEncrypted=delta:...
ANSWER_252 = """{"type":"a(ss)","data":[["alpha","/etc/probe/alpha"],["beta","beta"]]}
{"type":"a(ss)","data":[["delta","/etc/probe/delta.cred"]]}
{"type":"a(say)","data":[["gamma",[104,101,108,108,111,32,119,111,114,108,100]]]}
{"type":"a(say)","data":[]}
"""


def test_busctl_answer_of_systemd_252_is_read_in_order() -> None:
    assert parse_properties(ANSWER_252) == [
        Source("LoadCredential", "alpha", path="/etc/probe/alpha"),
        Source("LoadCredential", "beta", path="beta"),
        Source("LoadCredentialEncrypted", "delta", path="/etc/probe/delta.cred"),
        Source("SetCredential", "gamma", data=b"hello world"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "LoadCredential=[unprintable]\n",  # what `systemctl show -p LoadCredential` prints on 252
        '{"type":"a(ss)","data":[]}\n' * 3,
    ],
)
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_properties(text)


def test_object_path_escapes_like_sd_bus() -> None:
    assert (
        object_path("db-backup.service") == "/org/freedesktop/systemd1/unit/db_2dbackup_2eservice"
    )
    assert object_path("db-backup@nightly.service").endswith("db_2dbackup_40nightly_2eservice")


def test_load_comes_before_set_and_a_directory_lends_its_files() -> None:
    sources = [
        Source("SetCredential", "pg", data=b"fallback"),
        Source("LoadCredential", "pg", path="/etc/db-backup/credentials/pg"),
        Source("LoadCredential", "keys", path="/etc/db-backup/keys"),
    ]
    assert [s.setting for s, _ in candidates(sources, "pg")] == ["LoadCredential", "SetCredential"]
    assert candidates(sources, "keys_oss") == [(sources[2], "oss")]
    assert candidates(sources, "other") == []
    assert sources[0].describe() == "SetCredential=pg of db-backup.service"  # never the value


def test_an_encrypted_set_credential_goes_to_systemd_creds_as_base64() -> None:
    from db_backup.util.unit_credentials import _as_base64

    assert _as_base64(b"\x00\xffblob") == b"AP9ibG9i"
    assert _as_base64(b"AP9i\nbG9i") == b"AP9i\nbG9i"  # already the text systemd-creds wrote
