"""The error a config file that cannot be used raises, and how a place in it is written."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class ConfigError(Exception):
    """A config file that cannot be used; `problems` holds one line per mistake."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        """Keeps the file and its problems; the message lists them one per line."""
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


def format_path(parts: Iterable[str | int]) -> str:
    """Returns a config path like `jobs[1].connection.port` for messages."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"
