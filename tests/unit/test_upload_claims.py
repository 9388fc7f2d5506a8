"""Which uploads are this program's: the claim that owns a name, the sweep's name pattern."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from db_backup.backup.claims import Claim, LiveClaims, _uploads
from db_backup.storage.oss.target import OWN_UPLOAD_NAME


@pytest.mark.parametrize(
    ("name", "own"),
    [
        ("shop_20261120T020000Z_db1.dump", True),
        ("shop_20261120T020000Z_db1.sql", True),
        ("shop_20261120T020000Z_db1.dump.age", True),
        ("shop_20261120T020000Z_db1.dump.sha256", True),
        ("shop_20261120T020000Z_db1_globals.sql.age", True),
        ("shop_20261120T020000Z_db1.dump.d/toc.dat", True),
        ("shop_20261120T020000Z_db1.dump.d/3001.dat.gz", True),
        ("archive/shop_20261120T020000Z_db1.dump", False),
        ("shop_20261120T020000Z_db1.dump.d/a/b", False),
        ("someone-elses-file.tar", False),
        ("shop_20261120_db1.dump", False),
        ("shop_20261120T020000Z_db1.tar", False),
        ("", False),
    ],
)
def test_the_sweep_takes_only_this_programs_names(name: str, own: bool) -> None:
    assert (OWN_UPLOAD_NAME.fullmatch(name) is not None) is own


def _claim(stem: str) -> Claim:
    return Claim(None, stem, datetime.now(UTC), -1, "nightly")


def test_an_upload_is_recorded_in_the_claim_of_the_longest_matching_stem() -> None:
    live = LiveClaims()
    short = live.add(_claim("a_20261120T020000Z_h"))
    longer = live.add(_claim("a_20261120T020000Z_h2"))
    assert live.owner("a_20261120T020000Z_h2.dump") is longer
    assert live.owner("a_20261120T020000Z_h.dump.d/toc.dat") is short
    assert live.owner("b_20261120T020000Z_h.dump") is None
    longer.release()
    assert live.owner("a_20261120T020000Z_h2.dump") is short  # a released claim owns nothing


def test_a_claim_file_holds_the_uploads_and_a_bad_record_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "stem"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    claim = Claim(path, "stem", datetime.now(UTC), fd, "nightly")
    claim.intend({"oss": ["stem.dump"]})
    claim.record_upload("oss", "p/stem.dump", "UPLOAD1")
    claim.intend({"oss": ["stem.dump", "stem.dump.sha256"]})  # keeps the uploads
    text = path.read_text()
    assert '"uploads": [{"target": "oss", "key": "p/stem.dump", "uploadId": "UPLOAD1"}]' in text
    claim.release()
    claim.record_upload("oss", "p/late", "UPLOAD2")  # after release: nothing written, no error
    assert not path.exists()
    recorded = [{"target": "oss", "key": "k", "uploadId": "u"}, {"key": "k"}, "x", {"target": 1}]
    assert [(u.target, u.key, u.upload_id) for u in _uploads(recorded)] == [("oss", "k", "u")]
    assert _uploads(None) == []
