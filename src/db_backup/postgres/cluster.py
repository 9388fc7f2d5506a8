"""Throwaway PostgreSQL clusters for drills, and removing what a killed one left behind.

A throwaway cluster is made by `initdb` under a directory of its own, listens on a unix socket
only, runs with every durability setting off (nothing in it has to survive a crash), and is
removed afterwards: its server stopped (`pg_ctl stop -m immediate`, then signals), every process
still working in its data directory waited for or killed (found through /proc), its files
deleted. The same removal runs at the start of the next drill, for what a killed drill left.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from db_backup.config import Connection
from db_backup.util.execute import CommandError, child_env, run

SOCKET_PATH_MAX = 100  # sun_path is 108 bytes, minus "/.s.PGSQL.5432"
SOCKET_MARKER = "socket-dir"
SOCKET_PREFIX = "db-backup-drill-"
QUOTE = "'"
SERVER_SETTINGS = {
    # A throwaway cluster: nothing here needs to survive a crash, everything needs to be fast.
    "listen_addresses": "",
    "port": "5432",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "30min",
    "autovacuum": "off",
    "jit": "off",
    "maintenance_work_mem": "256MB",
}


class ClusterError(Exception):
    """A throwaway cluster could not be made, started or removed; the message says why."""


def as_user(run_as: str | None, argv: list[str]) -> list[str]:
    """Returns argv run as `run_as` (through runuser) when we are root, else unchanged."""
    if run_as and os.geteuid() == 0:
        return ["runuser", "-u", run_as, "--", *argv]
    return argv


def user_entry(name: str) -> pwd.struct_passwd:
    """Returns the passwd entry of `name`; raises ClusterError naming the setting otherwise."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ClusterError(
            f"drill.run_as: there is no OS user {name!r} to run the throwaway cluster as"
        ) from None


def conf_lines(settings: dict[str, str]) -> str:
    """Returns postgresql.conf lines setting `settings` (values quoted as the file wants)."""
    return "".join(
        f"{name} = '{value.replace(QUOTE, QUOTE * 2)}'\n" for name, value in settings.items()
    )


@dataclass
class ThrowawayCluster:
    """A PostgreSQL cluster made for one drill: initdb, unix socket only, removed afterwards."""

    root: Path
    bindir: Path
    run_as: str | None
    socket_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.socket_dir = self.root / "sock"

    @property
    def data_dir(self) -> Path:
        """Returns the cluster's data directory."""
        return self.root / "data"

    def start(self) -> Connection:
        """Creates and starts the cluster; returns the connection to it (role postgres)."""
        initdb = self.bindir / "initdb"
        if not initdb.exists():
            major = self.bindir.parent.name
            raise ClusterError(
                f"{initdb} not found: the drill needs the PostgreSQL {major} server binaries "
                f"(apt install postgresql-{major}), or set drill.bindir"
            )
        owner = user_entry(self.run_as) if self.run_as and os.geteuid() == 0 else None
        self._make_directories(owner)
        env = child_env()
        argv = [str(initdb), "--pgdata", str(self.data_dir), "--username=postgres"]
        argv += ["--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"]
        run(as_user(self.run_as, argv), env=env, timeout=600)
        settings = {**SERVER_SETTINGS, "unix_socket_directories": str(self.socket_dir)}
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# db-backup drill: a throwaway cluster\n" + conf_lines(settings))
        log_file = self.root / "server.log"
        log_file.touch(mode=0o600)
        if owner is not None:
            os.chown(log_file, owner.pw_uid, owner.pw_gid)
        pg_ctl = [str(self.bindir / "pg_ctl"), "--pgdata", str(self.data_dir)]
        pg_ctl += ["--log", str(log_file), "--wait", "--timeout=120", "start"]
        try:
            run(as_user(self.run_as, pg_ctl), env=env, timeout=180)
        except CommandError as exc:
            tail = " | ".join(_tail(log_file, 5))
            raise ClusterError(f"the throwaway server did not start: {exc} (log: {tail})") from None
        return Connection(str(self.socket_dir), 5432, "postgres", None, 10)

    def _make_directories(self, owner: pwd.struct_passwd | None) -> None:
        """Makes the cluster's root and socket directories, owned by `owner` when given."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if len(str(self.socket_dir)) > SOCKET_PATH_MAX:
            # A unix socket path is limited to 107 bytes: use a short private directory and
            # write down where it is, so a later drill can remove it after a crash.
            self.socket_dir = Path(tempfile.mkdtemp(prefix=SOCKET_PREFIX))
            (self.root / SOCKET_MARKER).write_text(str(self.socket_dir), encoding="utf-8")
        else:
            self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        if owner is not None:
            for path in (self.root, self.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)

    def remove(self) -> None:
        """Stops the server (immediate) if it runs and deletes every file of the cluster."""
        stop_and_remove(self.root, self.bindir, self.run_as)


def _tail(path: Path, lines: int) -> list[str]:
    """Returns the last `lines` lines of a log file (none when it cannot be read)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def stop_and_remove(root: Path, bindir: Path | None, run_as: str | None) -> bool:
    """Stops a (possibly orphaned) throwaway server under `root` and deletes `root`.

    Returns True when there was something to remove. Used after every drill and at the start
    of the next one, for what a killed drill left behind.
    """
    if not root.exists():
        return False
    data = root / "data"
    pid_file = data / "postmaster.pid"
    if pid_file.exists():
        pg_ctl = (bindir / "pg_ctl") if bindir else _pg_ctl_for(data)
        if pg_ctl is not None:
            argv = [str(pg_ctl), "--pgdata", str(data), "--mode=immediate", "--wait"]
            with contextlib.suppress(CommandError):
                run(as_user(run_as, [*argv, "--timeout=60", "stop"]), env=child_env(), timeout=90)
        _kill_postmaster(pid_file)
    # Backends of an immediate shutdown may still be finishing a write: wait for every process
    # working in the data directory (postgres chdirs into it) before deleting it.
    _wait_for_processes_in(data)
    _remove_socket_dir(root / SOCKET_MARKER)
    for _ in range(50):
        shutil.rmtree(root, ignore_errors=True)
        if not root.exists():
            return True
        time.sleep(0.2)
    raise ClusterError(f"{root}: could not be removed (what is still writing there?)")


def _remove_socket_dir(marker: Path) -> None:
    """Removes the short socket directory `marker` names, if this module made it."""
    if not marker.exists():
        return
    with contextlib.suppress(OSError):
        sock = Path(marker.read_text(encoding="utf-8").strip())
        # Only a directory ThrowawayCluster made is removed, whatever the marker says.
        if sock.parent == Path(tempfile.gettempdir()) and sock.name.startswith(SOCKET_PREFIX):
            shutil.rmtree(sock, ignore_errors=True)


def _processes_in(directory: Path) -> list[int]:
    """Returns the pids of processes whose working directory is `directory` or below it."""
    found = []
    prefix = str(directory)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd == prefix or cwd.startswith(prefix + "/"):
                found.append(int(entry.name))
    return found


def _wait_for_processes_in(directory: Path, seconds: float = 10.0) -> None:
    """Waits until no process works in `directory`; kills what is left after `seconds`."""
    deadline = time.monotonic() + seconds
    while (pids := _processes_in(directory)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _processes_in(directory) and time.monotonic() < deadline:
        time.sleep(0.1)


def _pg_ctl_for(data: Path) -> Path | None:
    """Returns the pg_ctl of the major version `data` was made by, if it is installed."""
    with contextlib.suppress(OSError, ValueError):
        major = (data / "PG_VERSION").read_text(encoding="utf-8").strip()
        candidate = Path(f"/usr/lib/postgresql/{int(major)}/bin/pg_ctl")
        if candidate.exists():
            return candidate
    return None


def _kill_postmaster(pid_file: Path) -> None:
    """Kills the postmaster of `pid_file` if pg_ctl could not stop it (SIGQUIT, then SIGKILL)."""
    try:
        pid = int(pid_file.read_text(encoding="utf-8").splitlines()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return
    if b"postgres" not in cmdline:
        return  # the pid was reused by something else
    for sig in (signal.SIGQUIT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
        if not Path(f"/proc/{pid}").exists():
            return


def stop_processes_naming(root: Path, grace: float = 5.0) -> list[int]:
    """Stops the processes whose command line names `root` (SIGTERM, then SIGKILL).

    Returns their pids. This process itself is never one of them.
    """
    needle = str(root).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGTERM)
                found.append(int(entry.name))
    deadline = time.monotonic() + grace
    while found and time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() for pid in found):
            break
        time.sleep(0.1)
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return found
