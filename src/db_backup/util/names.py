"""Names safe for files: this host's label and the file-name form of any text."""

from __future__ import annotations

import socket


def host_label() -> str:
    """Returns this machine's short host name, safe for a file name."""
    return safe_name(socket.gethostname().split(".")[0]) or "host"


def safe_name(text: str) -> str:
    """Returns `text` with every character outside [A-Za-z0-9._-] replaced by '-'."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-" for c in text)
