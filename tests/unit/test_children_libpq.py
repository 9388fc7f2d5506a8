"""psycopg's pure-Python build finds libpq under the child-process guard without a child."""

from __future__ import annotations

import ctypes
import ctypes.util

import pytest

from db_backup.util import children


def test_libpq_is_found_inside_the_guard_without_running_ldconfig() -> None:
    try:
        ctypes.CDLL("libpq.so.5")
    except OSError:
        pytest.skip("libpq5 is not installed on this machine")
    with children.guarded():
        assert ctypes.util.find_library("pq") == "libpq.so.5"
        # Anything else still takes the usual search, which the guard refuses to run: no name.
        assert ctypes.util.find_library("no-such-library-xyz") is None


def test_psycopg_pure_python_imports_inside_the_guard() -> None:
    # The package ships psycopg without its binary wheel: it loads Debian's libpq through ctypes.
    import os
    import subprocess
    import sys

    try:
        ctypes.CDLL("libpq.so.5")
    except OSError:
        pytest.skip("libpq5 is not installed on this machine")
    code = (
        "from db_backup.util import children\n"
        "with children.guarded():\n"
        "    import psycopg\n"
        "    print(psycopg.pq.__impl__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PSYCOPG_IMPL": "python"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "python"
