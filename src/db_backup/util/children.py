"""Child processes only through `util.execute`: none inherits the operator's environment.

`execute` builds every child's environment from an allow-list (`child_env`), so no secret held in
the operator's environment (an `{env:}` reference: a password, an OSS key) reaches it. A library
that starts a child of its own passes the whole environment instead: croniter's import asks
`platform.architecture()`, which runs `file -b` with `os.environ` (plus LC_ALL). An audit hook
(`sys.addaudithook`, PEP 578) sees every process start before it happens and refuses, with a
PermissionError (an OSError, which such callers already expect from a missing program):

- inside `refused()` (around an import known to start a child), any process start;
- inside `guarded()` (the `db-backup` command runs in it, from its first line to its last), any
  process start not made by `execute` inside `ours()`.

Replacing the process (`os.exec*`) is not a child and is not refused. The hook costs one set
lookup per audit event.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

SPAWN_EVENTS = frozenset({"subprocess.Popen", "os.posix_spawn", "os.spawn", "os.system"})

_local = threading.local()
_lock = threading.Lock()
_installed = False
# How many `guarded()` and `refused()` blocks are running: the hook treats both alike.
_refusing = 0


def _hook(event: str, args: tuple[object, ...]) -> None:
    if event not in SPAWN_EVENTS:
        return
    if getattr(_local, "ours", False):
        return
    if _refusing:
        program = args[0] if args else "?"
        raise PermissionError(
            f"db-backup starts child processes only through db_backup.util.execute, with an "
            f"environment of their own: {event} {program!r} refused"
        )


# Shared libraries that a library looks up with ctypes.util.find_library, named by their
# soname: the lookup runs ldconfig (then gcc and ld) with the whole environment, which the hook
# refuses. psycopg's pure-Python build (the package's, on Debian's libpq5) finds libpq and libc so.
KNOWN_SONAMES = {"pq": "libpq.so.5", "c": "libc.so.6"}


def _find_library_without_children(original: Callable[[str], str | None]) -> Callable[..., Any]:
    """Returns a find_library that answers KNOWN_SONAMES by loading them (dlopen, no child)."""

    def find_library(name: str) -> str | None:
        soname = KNOWN_SONAMES.get(name)
        if soname is not None:
            try:
                ctypes.CDLL(soname)
            except OSError:
                pass  # not installed under that name: the usual search says so
            else:
                return soname
        return original(name)

    return find_library


def _install() -> None:
    global _installed
    with _lock:
        if not _installed:
            sys.addaudithook(_hook)
            ctypes.util.find_library = _find_library_without_children(ctypes.util.find_library)
            _installed = True


@contextlib.contextmanager
def _refusing_while() -> Iterator[None]:
    """Counts the block as one more that refuses process starts (the hook reads the count)."""
    global _refusing
    _install()
    with _lock:
        _refusing += 1
    try:
        yield
    finally:
        with _lock:
            _refusing -= 1


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """Refuses, while the block runs, every process start that `execute` does not make."""
    with _refusing_while():
        yield


@contextlib.contextmanager
def refused() -> Iterator[None]:
    """Refuses every process start (in any thread) while the block runs: for an import."""
    with _refusing_while():
        yield


@contextlib.contextmanager
def ours() -> Iterator[None]:
    """Marks the process starts of this thread, while the block runs, as `execute`'s own."""
    before = getattr(_local, "ours", False)
    _local.ours = True
    try:
        yield
    finally:
        _local.ours = before
