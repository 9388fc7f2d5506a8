"""Encryption configured on a host without age (the package only recommends it): a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from db_backup.storage.crypto import EncryptionError, check_recipients, identity_recipients

RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"


@pytest.fixture
def no_age(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PATH on which neither age nor age-keygen exists."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


@pytest.mark.usefixtures("no_age")
def test_encrypting_without_age_says_to_install_it() -> None:
    with pytest.raises(EncryptionError) as caught:
        check_recipients([RECIPIENT])
    assert str(caught.value) == (
        "encryption is configured but the age program is not installed (apt install age); "
        "it encrypts the backups"
    )


@pytest.mark.usefixtures("no_age")
def test_decrypting_without_age_keygen_says_to_install_age(tmp_path: Path) -> None:
    identity = tmp_path / "identity"
    identity.write_text("AGE-SECRET-KEY-1...\n")
    with pytest.raises(
        EncryptionError, match=r"age-keygen program is not installed \(apt install age\)"
    ):
        identity_recipients(identity)
