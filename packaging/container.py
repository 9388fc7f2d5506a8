"""Boot a Debian rootfs under systemd-nspawn and run commands in it (end-to-end test harness).

The container is booted with ``systemd-nspawn -D ROOT --register=no --keep-unit --boot``: no
machined or host systemd is needed (``--register=no``, ``--keep-unit``), and it shares the host's
network, so a loopback server on the host is reachable from inside. Commands run through
``nsenter -t <pid of the container's systemd> -a``, with a clean environment.

Usage::

    with Container(Path("/var/tmp/root")) as ct:
        ct.exec(["systemctl", "is-system-running"])

Run ``python3 packaging/container.py ROOT`` to boot ROOT and get a shell in it (debugging).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar

T = TypeVar("T")

CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ContainerError(RuntimeError):
    """The container could not be booted, reached, or stopped."""


class CommandFailed(subprocess.CalledProcessError):
    """A command inside the container exited non-zero; str() shows its output."""

    def __str__(self) -> str:
        return (
            f"command in container exited {self.returncode}: {shlex.join(self.cmd)}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


def _children(pid: int) -> list[int]:
    """Return the PIDs whose parent is ``pid`` (all threads' children)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for tid in tasks:
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def wait_for(
    probe: Callable[[], T | None], timeout: float, interval: float = 0.5, what: str = "condition"
) -> T:
    """Return the first truthy result of ``probe()``, polling until ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Container:
    """A systemd-booted Debian container on directory ``root``; ``exec`` runs commands inside."""

    def __init__(self, root: Path, log_path: Path | None = None, name: str | None = None) -> None:
        self.root = Path(root)
        self.name = name or self.root.name
        self.log_path = log_path or self.root.with_name(self.root.name + ".nspawn.log")
        self.pid: int | None = None  # the container's systemd, as seen from the host
        self._nspawn: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.boot_seconds: float | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 90) -> Container:
        """Boot the container and return once systemd says the system is running (or degraded)."""
        if self._nspawn is not None:
            raise ContainerError("container already started")
        t0 = time.monotonic()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        argv = [
            "systemd-nspawn",
            "--quiet",
            "-D", str(self.root),
            "--machine", self.name,
            "--register=no",  # no machined on the host to register with
            "--keep-unit",  # nor a host systemd to create a scope unit
            "--boot",
            # passive: /dev/console exists but nspawn neither needs a TTY nor pipes it to us.
            "--console=passive",
        ]  # fmt: skip
        self._nspawn = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # keep ^C in the test runner from reaching it directly
        )

        def systemd_pid() -> int | None:
            assert self._nspawn is not None
            if self._nspawn.poll() is not None:
                raise ContainerError(
                    f"systemd-nspawn exited with {self._nspawn.returncode} while booting "
                    f"{self.root}; see {self.log_path}:\n{self._log_tail()}"
                )
            for child in _children(self._nspawn.pid):
                if _comm(child) == "systemd":
                    return child
            return None

        try:
            self.pid = wait_for(systemd_pid, timeout=30, interval=0.1, what="container systemd")
            state = wait_for(
                self._system_state, timeout=timeout, interval=0.5, what="boot to finish"
            )
        except TimeoutError as exc:
            jobs = ""
            if self.pid is not None:
                jobs = self.exec(["systemctl", "list-jobs", "--no-pager"], check=False).stdout
            self.stop()
            raise ContainerError(f"{exc}; pending jobs:\n{jobs}\n{self._log_tail()}") from None
        except Exception:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - t0
        if state not in ("running", "degraded"):
            failed = self.exec(["systemctl", "--failed", "--no-pager"], check=False).stdout
            self.stop()
            raise ContainerError(f"container booted into state {state!r}:\n{failed}")
        return self

    def _system_state(self) -> str | None:
        # --wait blocks until start-up finished; before the manager listens it fails quickly.
        try:
            result = self.exec(
                ["systemctl", "is-system-running", "--wait"], check=False, timeout=20
            )
        except subprocess.TimeoutExpired:
            return None
        state = result.stdout.strip()
        if state in ("running", "degraded", "maintenance", "stopping", "offline"):
            return state
        return None

    def stop(self, timeout: float = 30) -> None:
        """Power the container off; kill it when it does not stop within ``timeout`` seconds."""
        proc, self._nspawn = self._nspawn, None
        if proc is not None:
            if proc.poll() is None and self.pid is not None:
                self.exec(["systemctl", "poweroff", "--no-block"], check=False, timeout=15)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # SIGKILL to the namespace's init takes every process in the container with it.
                if self.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGKILL)
                proc.kill()
                proc.wait(timeout=15)
        self.pid = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Container:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- commands -------------------------------------------------------------------------------

    def nsenter_argv(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
        """Return the host argv that runs ``argv`` inside the container with a clean environment."""
        if self.pid is None:
            raise ContainerError("container is not running")
        environment = {"PATH": CONTAINER_PATH, "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb"}
        environment.update(env or {})
        return [
            "nsenter", "-t", str(self.pid), "-a", "--",
            "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in environment.items()),
            *argv,
        ]  # fmt: skip

    def exec(
        self,
        argv: Sequence[str],
        check: bool = True,
        timeout: float = 120,
        input: str | bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the container and return its result (text stdout and stderr).

        Raises CommandFailed when ``check`` and the exit status is not 0.
        """
        data = input.encode() if isinstance(input, str) else input
        result = subprocess.run(
            self.nsenter_argv(argv, env),
            input=data,
            stdin=None if data is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
        )
        completed = subprocess.CompletedProcess(
            list(argv),
            result.returncode,
            result.stdout.decode(errors="replace"),
            result.stderr.decode(errors="replace"),
        )
        if check and completed.returncode != 0:
            raise CommandFailed(
                completed.returncode, list(argv), completed.stdout, completed.stderr
            )
        return completed

    def sh(self, script: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run a shell script inside the container (``sh -ec``); same options as ``exec``."""
        return self.exec(["/bin/sh", "-ec", script], **kwargs)  # type: ignore[arg-type]

    def copy_in(self, host_path: Path | str, container_path: str, mode: int = 0o644) -> None:
        """Copy a host file into the running container (streamed; the container's /tmp is its own)."""
        data = Path(host_path).read_bytes()
        self.write_file(container_path, data, mode)

    def write_file(self, container_path: str, data: str | bytes, mode: int = 0o644) -> None:
        """Write ``data`` to ``container_path`` inside the container, creating parent directories."""
        self.exec(
            [
                "/bin/sh", "-ec",
                'mkdir -p "$(dirname "$1")"; cat >"$1.tmp-copy-in"; chmod "$2" "$1.tmp-copy-in"; '
                'mv -f "$1.tmp-copy-in" "$1"',
                "sh", container_path, f"{mode:o}",
            ],
            input=data,
        )  # fmt: skip

    def read_file(self, container_path: str) -> str:
        """Return the text of a file inside the container."""
        return self.exec(["cat", "--", container_path]).stdout

    # -- systemd helpers ------------------------------------------------------------------------

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``systemctl --no-pager ARGS`` inside the container."""
        return self.exec(["systemctl", "--no-pager", *args], check=check)

    def unit_property(self, unit: str, prop: str) -> str:
        """Return one property of a unit (``systemctl show -p PROP --value``)."""
        return self.systemctl("show", "-p", prop, "--value", unit).stdout.strip()

    def is_active(self, unit: str) -> str:
        """Return the unit's ActiveState word (``active``, ``failed``, ...)."""
        return self.systemctl("is-active", unit, check=False).stdout.strip()

    def wait_active(self, unit: str, timeout: float = 60) -> None:
        """Wait until the unit is active; raise with its status when it is not."""
        try:
            wait_for(lambda: self.is_active(unit) == "active", timeout, what=f"{unit} active")
        except TimeoutError as exc:
            status = self.systemctl("status", unit, check=False).stdout
            raise TimeoutError(f"{exc}\n{status}") from None


def main(argv: list[str]) -> int:
    """Boot the rootfs named on the command line and open a shell in it."""
    if len(argv) != 2:
        print("usage: container.py ROOTFS", file=sys.stderr)
        return 2
    with Container(Path(argv[1])) as ct:
        print(f"booted in {ct.boot_seconds:.1f} s; container systemd is PID {ct.pid}", flush=True)
        return subprocess.call(ct.nsenter_argv(["/bin/bash", "-l"]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
