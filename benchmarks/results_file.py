"""Helpers shared by the benchmark scripts: machine facts and RESULTS.md section updates.

Each benchmark owns one `## ` section of `benchmarks/RESULTS.md`; writing a section replaces the
old one of the same heading and keeps every other section as it was.
"""

from __future__ import annotations

import fcntl
import os
import platform
import re
import subprocess
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TITLE = "# Benchmark results\n"
LOCK = Path(tempfile.gettempdir()) / "db-backup-bench-results.lock"


def cpu_model() -> str:
    """Returns the CPU model name from /proc/cpuinfo (or the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def os_release() -> str:
    """Returns PRETTY_NAME from /etc/os-release, or the kernel name."""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def machine_lines() -> list[str]:
    """Returns markdown bullet lines describing the machine the benchmark ran on."""
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    load = os.getloadavg()
    return [
        f"- CPU: {cpu_model()}, nproc = {os.cpu_count()}",
        f"- RAM: {mem_kib / 1024 / 1024:.1f} GiB; OS: {os_release()}, kernel {platform.release()}",
        f"- Python: {platform.python_version()}",
        f"- Load average at the end: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min)",
    ]


def git_revision(repo: Path) -> str:
    """Returns the checked-out commit (short) and whether the tree has local changes, read-only."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{rev}{' (src/ has uncommitted changes)' if dirty else ''}"


def write_section(heading: str, body: str) -> Path:
    """Replaces (or appends) the `## heading` section of RESULTS.md with `body`; returns the path."""
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = RESULTS.read_text() if RESULTS.exists() else TITLE
        section = f"## {heading}\n\n{body.strip()}\n"
        pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
        if pattern.search(text):
            text = pattern.sub(lambda _m: section + "\n", text, count=1)
        else:
            text = text.rstrip() + "\n\n" + section
        RESULTS.write_text(text.rstrip() + "\n")
    return RESULTS
