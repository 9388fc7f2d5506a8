"""No child process gets the operator's environment, not even one a library starts (issue 21, 11).

croniter's import asks `platform.architecture()`, which runs `file -b` with the whole
environment. A fake `file` first on PATH records the environment it gets: with `{env:}` secrets
in the environment, the real `db-backup` command must never hand them to it (nor run it at all).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RunCli, Setup
from tests.integration.test_job_remote import OSS_ENV, use_oss
from tests.support.oss_fixtures import OSS_ACCESS_KEY_SECRET
from tests.support.oss_server import OssServer

pytestmark = pytest.mark.integration

UNRELATED = "operator-only-token-7f3a9"
# Programs a library may run on its own: platform (file, uname), ctypes.util (ldconfig, gcc, ld).
TRACED = ("file", "uname", "ldconfig", "gcc", "ld")


@pytest.fixture
def tracer(tmp_path: Path) -> tuple[Path, Path]:
    """A directory of fake programs that record their environment, and where they record it."""
    fakes, traces = tmp_path / "fakes", tmp_path / "traces"
    fakes.mkdir()
    traces.mkdir()
    for name in TRACED:
        fake = fakes / name
        fake.write_text(f'#!/bin/sh\nenv > "{traces}/{name}.$$"\necho "ELF 64-bit LSB"\n')
        fake.chmod(0o755)
    return fakes, traces


def _env(fakes: Path, **extra: str) -> dict[str, str]:
    return {"PATH": f"{fakes}:{os.environ['PATH']}", "DBB_UNRELATED": UNRELATED, **extra}


def _traces(traces: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(traces.iterdir())}


def test_the_fake_file_sees_the_secret_when_croniter_is_imported_unguarded(
    tracer: tuple[Path, Path],
) -> None:
    fakes, traces = tracer
    env = {**os.environ, **_env(fakes, **OSS_ENV)}
    subprocess.run([sys.executable, "-c", "import croniter"], env=env, check=True)
    # The trap works: croniter's own import hands the whole environment to `file`.
    [(name, seen)] = _traces(traces).items()
    assert name.startswith("file.") and OSS_ACCESS_KEY_SECRET in seen and UNRELATED in seen


def test_a_run_with_env_secrets_starts_no_child_with_the_operators_environment(
    setup: Setup, run_cli: RunCli, oss_server: OssServer, tracer: tuple[Path, Path]
) -> None:
    fakes, traces = tracer
    use_oss(setup, oss_server, "both")
    env = _env(fakes, **OSS_ENV)
    for args in (("check-config",), ("run", "nightly"), ("status",), ("next",)):
        done = run_cli("--config", str(setup.path), *args, env=env)
        assert done.returncode == 0, (args, done.stderr)
    [report] = setup.reports_json()
    assert report["status"] == "SUCCESS"
    seen = _traces(traces)
    assert not any(OSS_ACCESS_KEY_SECRET in text or UNRELATED in text for text in seen.values())
    assert seen == {}, f"a library started {sorted(seen)}"


def test_the_guard_refuses_a_library_child_and_lets_executes_own_through(
    tracer: tuple[Path, Path],
) -> None:
    fakes, traces = tracer
    script = """
import platform, subprocess
from db_backup.util import children, execute
with children.guarded():
    print(platform.architecture()[0])            # answered without running `file`
    try:
        subprocess.run(["true"], check=True)
    except PermissionError as exc:
        print("refused:", exc)
    print(execute.run(["echo", "ours"]).strip())  # execute's children, own environment
subprocess.run(["true"], check=True)             # outside the block: not refused
"""
    env = {**os.environ, **_env(fakes, **OSS_ENV)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    lines = done.stdout.splitlines()
    assert lines[0] == "64bit" and lines[2] == "ours"
    assert lines[1].startswith("refused: db-backup starts child processes only through")
    assert _traces(traces) == {}
