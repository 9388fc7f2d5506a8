"""Every child process this program starts goes through here.

argv is always a list (never a shell string); stdout is streamed or captured; the last lines of
stderr are kept for the error message; a stop request terminates the child (SIGTERM, then SIGKILL
after a grace period).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NoReturn

from db_backup.util import children, polling
from db_backup.util.cancel import Cancelled, CancelToken
from db_backup.util.secrets import is_secret, mask

STDERR_TAIL_LINES = 25
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_SIZE = 1024 * 1024  # /proc/sys/fs/pipe-max-size allows this to unprivileged users
TERMINATE_GRACE_SECONDS = 10.0


class CommandError(Exception):
    """A child failed; the message names the program, its exit status and its stderr tail."""

    def __init__(
        self, program: str, returncode: int | None, stderr_tail: str, what: str = ""
    ) -> None:
        self.program = program
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        if returncode is None:
            status = "could not be started"
        elif returncode < 0:
            status = f"was killed by signal {signal.Signals(-returncode).name}"
        else:
            status = f"exited with status {returncode}"
        text = what or f"{program} {status}"
        if stderr_tail:
            text += f": {stderr_tail}"
        super().__init__(mask(text))


def read_until_eof(
    fd: int,
    size: int,
    cancel: CancelToken | None,
    terminate: Callable[[], None],
    idle: Callable[[], None] | None = None,
) -> Iterator[bytes]:
    """Yields what a child writes to `fd`, `size` bytes at most at a time, until EOF.

    A stop request calls `terminate` (the child goes) and raises Cancelled; the poll timeout
    keeps stop requests noticed while the child is silent, and calls `idle` then.
    """
    while True:
        if cancel is not None and cancel.is_cancelled():
            terminate()
            raise Cancelled(cancel.reason)
        ready, _ = polling.ready([fd], timeout=0.5)
        if not ready:
            if idle is not None:
                idle()
            continue
        data = os.read(fd, size)
        if not data:
            return
        yield data


class StderrTail:
    """Collects a child's stderr in a thread, keeping the last lines for error messages."""

    def __init__(self, stream: object) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: object) -> None:
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._lines.append(line)
        stream.close()  # type: ignore[attr-defined]

    def text(self, timeout: float = 2.0) -> str:
        """Returns the kept lines joined by ' | ', secrets masked."""
        self._thread.join(timeout)
        return mask(" | ".join(self._lines))


# What a child may inherit from our environment: nothing else, so a secret given as
# `{env: NAME}` (or any variable of the service's) never reaches /proc/<child>/environ.
CHILD_ENV_NAMES = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "TZ", "TMPDIR", "LANG", "LANGUAGE", "TERM"}
)
# libpq's connection variables that carry no secret (never PGPASSWORD); PGPASSFILE is a path.
LIBPQ_ENV_NAMES = frozenset(
    {
        "PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE",
        "PGSYSCONFDIR", "PGSSLMODE", "PGSSLCERT", "PGSSLKEY", "PGSSLROOTCERT", "PGSSLCRL",
        "PGSSLCRLDIR", "PGSSLSNI", "PGREQUIRESSL", "PGSSLCOMPRESSION", "PGSSLMINPROTOCOLVERSION",
        "PGSSLMAXPROTOCOLVERSION", "PGGSSENCMODE", "PGKRBSRVNAME", "PGGSSLIB",
        "PGREQUIREAUTH", "PGCHANNELBINDING", "PGCONNECT_TIMEOUT", "PGCLIENTENCODING",
        "PGOPTIONS", "PGAPPNAME", "PGTARGETSESSIONATTRS", "PGLOADBALANCEHOSTS", "PGTZ",
        "PGDATESTYLE", "PGLOCALEDIR",
    }
)  # fmt: skip


def child_env(
    extra: Mapping[str, str] | None = None, *, inherit_prefixes: Sequence[str] = ()
) -> dict[str, str]:
    """Returns the environment built for a child: an allow-list of ours, plus `extra`.

    Inherited: PATH, HOME, the locale (LANG, LC_*), TZ, TMPDIR, libpq's non-secret connection
    variables, and variables starting with one of `inherit_prefixes` (rclone's RCLONE_*). A
    variable whose value is a secret this process resolved is never passed on.
    """
    env: dict[str, str] = {}
    for name, value in os.environ.items():
        allowed = (
            name in CHILD_ENV_NAMES
            or name in LIBPQ_ENV_NAMES
            or name.startswith("LC_")
            or any(name.startswith(prefix) for prefix in inherit_prefixes)
        )
        if allowed and not is_secret(value):
            env[name] = value
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LC_ALL", "C.UTF-8")
    if extra:
        env.update(extra)
    return env


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 600,
    input_bytes: bytes | None = None,
) -> str:
    """Runs a child to completion and returns its stdout; raises CommandError on failure.

    `input_bytes` is written to its stdin (e.g. a SQL script for psql -f -).
    """
    program = os.path.basename(argv[0])
    try:
        with children.ours():
            done = subprocess.run(
                list(argv),
                env=dict(env) if env is not None else child_env(),
                input=input_bytes,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
    except FileNotFoundError:
        raise CommandError(program, None, "", f"{program} not found on PATH") from None
    except subprocess.TimeoutExpired:
        raise CommandError(program, None, "", f"{program} did not finish in {timeout} s") from None
    if done.returncode != 0:
        tail = " | ".join(
            done.stderr.decode("utf-8", "replace").strip().splitlines()[-STDERR_TAIL_LINES:]
        )
        raise CommandError(program, done.returncode, mask(tail))
    return done.stdout.decode("utf-8", "replace")


def _widen_pipe(fd: int) -> None:
    """Makes a pipe 1 MiB instead of 64 KiB: its writer blocks and wakes us far less often."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)


class _Child:
    """A running child in its own session; knows how to stop it and what it said on stderr."""

    def __init__(
        self, argv: Sequence[str], env: Mapping[str, str] | None, *, stdin: int, stdout: int
    ) -> None:
        self.program = os.path.basename(argv[0])
        try:
            with children.ours():
                self._proc = subprocess.Popen(
                    list(argv),
                    env=dict(env) if env is not None else child_env(),
                    stdin=stdin,
                    stdout=stdout,
                    stderr=subprocess.PIPE,
                    start_new_session=True,  # a Ctrl-C reaches us first; a stop its children
                )
        except FileNotFoundError:
            raise CommandError(
                self.program, None, "", f"{self.program} not found on PATH"
            ) from None
        except OSError as exc:
            raise CommandError(
                self.program, None, "", f"{self.program} could not be started: {exc.strerror}"
            ) from None
        assert self._proc.stderr is not None
        self._stderr = StderrTail(self._proc.stderr)

    @property
    def pid(self) -> int:
        """Returns the child's process id."""
        return self._proc.pid

    def poll(self) -> int | None:
        """Returns the exit status if the child has exited, else None."""
        return self._proc.poll()

    def stderr_tail(self) -> str:
        """Returns the last lines the child wrote to stderr, secrets masked."""
        return self._stderr.text()

    def terminate(self, grace: float = TERMINATE_GRACE_SECONDS) -> None:
        """Stops the child: SIGTERM, then SIGKILL if it is still there after `grace` seconds."""
        if self._proc.poll() is not None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self._proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()


class StreamingChild(_Child):
    """A child whose stdout is read in chunks while it runs (pg_dump feeding the sinks)."""

    def __init__(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, stdin: int | None = None
    ) -> None:
        """Starts the child; `stdin` is a file descriptor it reads (default: nothing)."""
        stdin_fd = subprocess.DEVNULL if stdin is None else stdin
        super().__init__(argv, env, stdin=stdin_fd, stdout=subprocess.PIPE)
        assert self._proc.stdout is not None
        self._stdout_fd = self._proc.stdout.fileno()
        _widen_pipe(self._stdout_fd)

    @property
    def stdout_fd(self) -> int:
        """Returns the file descriptor of the child's stdout (for a FilterChild to pump)."""
        return self._stdout_fd

    def chunks(
        self,
        size: int,
        cancel: CancelToken | None = None,
        idle: Callable[[], None] | None = None,
    ) -> Iterator[bytes]:
        """Yields stdout in pieces of at most `size` bytes until EOF; stops the child if cancelled.

        `idle` is called about every 0.5 s while the child writes nothing.
        """
        return read_until_eof(self._stdout_fd, size, cancel, self.terminate, idle)

    def wait(self) -> int:
        """Waits for the child to exit and returns its exit status (negative: signal)."""
        assert self._proc.stdout is not None
        self._proc.stdout.close()
        return self._proc.wait()

    def check(self) -> None:
        """Waits for exit and raises CommandError unless the child exited 0."""
        code = self.wait()
        if code != 0:
            raise CommandError(self.program, code, self.stderr_tail())


class FeedingChild(_Child):
    """A child that reads what we write to its stdin (rclone rcat uploading a dump)."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        super().__init__(argv, env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        assert self._proc.stdin is not None
        self._stdin = self._proc.stdin

    def write(self, data: bytes) -> None:
        """Writes `data` to the child's stdin; raises CommandError when the child has gone away."""
        try:
            self._stdin.write(data)
        except (BrokenPipeError, ValueError, OSError):
            code = self._proc.wait()
            raise CommandError(self.program, code, self.stderr_tail()) from None

    def finish(self) -> int:
        """Closes the child's stdin (end of input) and returns its exit status."""
        with contextlib.suppress(BrokenPipeError, ValueError, OSError):
            self._stdin.close()
        return self._proc.wait()

    def check(self) -> None:
        """Ends the input and raises CommandError unless the child exited 0."""
        code = self.finish()
        if code != 0:
            raise CommandError(self.program, code, self.stderr_tail())

    def terminate(self, grace: float = TERMINATE_GRACE_SECONDS) -> None:
        """Closes the child's stdin, then stops it like any child."""
        with contextlib.suppress(BrokenPipeError, ValueError, OSError):
            self._stdin.close()
        super().terminate(grace)


class FilterChild(_Child):
    """A child that transforms a byte stream (age): we write its stdin and read its stdout.

    `pump` moves a source child's stdout through it in one thread with poll(), so neither
    side can block the other: bytes are read from the source only when the filter took the
    previous ones, and the filter's output is drained whenever it is ready. With
    `with_stdin=False` the child reads its input itself (a file named in argv; see `output`).
    """

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        with_stdin: bool = True,
    ) -> None:
        stdin = subprocess.PIPE if with_stdin else subprocess.DEVNULL
        super().__init__(argv, env, stdin=stdin, stdout=subprocess.PIPE)
        assert self._proc.stdout is not None
        self.stdout_fd = self._proc.stdout.fileno()
        self.stdin_fd = self._proc.stdin.fileno() if self._proc.stdin is not None else -1
        for fd in (self.stdout_fd, self.stdin_fd):
            if fd >= 0:
                _widen_pipe(fd)
        if self.stdin_fd >= 0:
            os.set_blocking(self.stdin_fd, False)

    def pump(
        self,
        source_fd: int,
        size: int,
        cancel: CancelToken | None = None,
        observe_input: Callable[[bytes], None] | None = None,
    ) -> Iterator[bytes]:
        """Feeds `source_fd` (to EOF) into the child and yields its output until it ends.

        `observe_input` sees every input chunk first (the plaintext's checksum). Raises
        CommandError when the child stops reading or ends its output before the input ended,
        Cancelled (after stopping the child) when `cancel` fires.
        """
        pending = memoryview(b"")
        source_open = True
        while True:
            if cancel is not None and cancel.is_cancelled():
                self.terminate()
                raise Cancelled(cancel.reason)
            readable = [self.stdout_fd]
            if source_open and not pending:
                readable.append(source_fd)
            writable = [self.stdin_fd] if pending else []
            ready_read, ready_write = polling.ready(readable, writable, 0.5)
            if source_fd in ready_read:
                data = os.read(source_fd, size)
                if data:
                    if observe_input is not None:
                        observe_input(data)
                    pending = memoryview(data)
                else:
                    source_open = False
                    self.close_stdin()
            if ready_write:
                try:
                    written = os.write(self.stdin_fd, pending)
                except BlockingIOError:
                    written = 0
                except BrokenPipeError:
                    self.fail(f"{self.program} stopped reading its input")
                pending = pending[written:]
                if not pending and not source_open:
                    self.close_stdin()
            if self.stdout_fd in ready_read:
                out = os.read(self.stdout_fd, size)
                if not out:
                    if source_open or pending:
                        self.fail(f"{self.program} ended its output before its input ended")
                    return
                yield out

    def output(self, size: int, cancel: CancelToken | None = None) -> Iterator[bytes]:
        """Yields the child's stdout until EOF (when it reads its input itself)."""
        return read_until_eof(self.stdout_fd, size, cancel, self.terminate)

    def wait(self, timeout: float | None = None) -> int | None:
        """Returns the child's exit status, or None if it still runs after `timeout` seconds."""
        try:
            return self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def close_stdin(self) -> None:
        """Tells the child its input ended (EOF)."""
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()

    def terminate(self, grace: float = TERMINATE_GRACE_SECONDS) -> None:
        """Stops the child like any child (after closing its stdin) and closes our pipe ends."""
        self.close_stdin()
        super().terminate(grace)
        assert self._proc.stdout is not None
        self._proc.stdout.close()

    def check(self) -> None:
        """Waits for exit and raises CommandError unless the child exited 0."""
        self.close_stdin()
        assert self._proc.stdout is not None
        self._proc.stdout.close()
        code = self._proc.wait()
        if code != 0:
            raise CommandError(self.program, code, self.stderr_tail())

    def fail(self, what: str) -> NoReturn:
        """Raises CommandError: the child's own failure if it exited non-zero, else `what`."""
        self.close_stdin()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=2.0)  # it is usually on its way out: let it say why
        self.terminate(grace=2.0)
        code = self._proc.returncode
        if code:
            raise CommandError(self.program, code, self.stderr_tail())
        raise CommandError(self.program, code, self.stderr_tail(), what)
