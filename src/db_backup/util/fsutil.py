"""File helpers every part uses: atomic replacement, durable renames, readable OS errors."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

StatKey = tuple[int, int, int]  # st_ino, st_size, st_mtime_ns


def stat_key(path: Path) -> StatKey | None:
    """Returns what tells one version of a file that is only appended to from the next.

    None when the file is gone. A writer that appends changes the size (and the mtime); one
    that replaces the file changes the inode.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def disk_size(path: Path) -> int:
    """Returns the bytes of a file, or of every file under a directory; 0 when it is gone."""
    try:
        if path.is_dir() and not path.is_symlink():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def fsync_dir(directory: Path) -> None:
    """Makes a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replaces `path` with `data` so a reader sees the old file or the whole new one.

    Temporary file in the same directory, explicit mode (the unit's UMask would otherwise
    decide), fsync, rename, fsync of the directory.
    """
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)


def describe_os_error(exc: OSError, path: Path | str) -> str:
    """Returns a message naming the path and the cause, with a hint for the usual ones."""
    hint = ""
    if exc.errno == errno.ENOSPC:
        hint = " (the file system is full)"
    elif exc.errno in {errno.EACCES, errno.EPERM, errno.EROFS}:
        hint = f" (user {_user()} may not write there)"
    return f"{path}: {exc.strerror or exc}{hint}"


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (KeyError, ImportError):
        return str(os.geteuid())


@contextlib.contextmanager
def private_file(
    directory: Path | None, name: str, text: str, temp_prefix: str = "db-backup-"
) -> Iterator[Path]:
    """Yields `directory/name` holding `text`, mode 0600 in a fresh 0700 directory.

    The directory (whatever a killed run left in it first) is removed when the block ends.
    Give a `directory` under the state directory, so that even a SIGKILL leaves the file where
    only the service user can reach it and the next use clears it; without one a fresh
    directory under $TMPDIR is used.
    """
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix=temp_prefix))
    else:
        shutil.rmtree(directory, ignore_errors=True)
        directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory.mkdir(mode=0o700)
    try:
        os.chmod(directory, 0o700)
        path = directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)
