"""Measures the RSS and CPU use of an idle `db-backup daemon` that has 20 scheduled jobs.

The daemon runs as it would under systemd: `NOTIFY_SOCKET` points at a datagram socket this
script binds and drains (counting READY, STATUS and WATCHDOG messages) and `WATCHDOG_USEC` is 60 s.
Every job is due far in the future (`0 3 1 1 *`), so nothing runs during the window. After a
settle time the script samples VmRSS from /proc/<pid>/status once a second and reads the CPU time
(utime + stime, all threads) from /proc/<pid>/stat at the start and end of the window.

Usage::

    .venv/bin/python benchmarks/bench_idle_daemon.py [--seconds 600] [--settle 10] [--no-write]

Not part of the test suite. Writes the section "Idle daemon with 20 jobs (issue 4)" of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import git_revision, machine_lines, write_section

REPO = Path(__file__).resolve().parent.parent
DB_BACKUP = REPO / ".venv" / "bin" / "db-backup"
HEADING = "Idle daemon with 20 jobs (issue 4)"
JOBS = 20
SCHEDULE = "0 3 1 1 *"
WATCHDOG_USEC = 60_000_000
RSS_TARGET_MB = 60.0
CPU_TARGET_PCT = 0.1
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class NotifyListener:
    """Drains a bound AF_UNIX datagram socket in a thread and counts sd_notify messages."""

    path: Path
    counts: dict[str, int] = field(default_factory=dict)
    times: dict[str, list[float]] = field(default_factory=dict)
    last_status: str = ""
    ready: threading.Event = field(default_factory=threading.Event)
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Binds the socket and starts the draining thread."""
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.settimeout(0.5)
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            for line in data.decode("utf-8", "replace").splitlines():
                key, _, value = line.partition("=")
                self.counts[key] = self.counts.get(key, 0) + 1
                self.times.setdefault(key, []).append(now)
                if key == "STATUS":
                    self.last_status = value
                if key == "READY":
                    self.ready.set()

    def count_between(self, key: str, start: float, end: float) -> int:
        """Returns how many `key=` messages arrived between two monotonic times."""
        return sum(1 for t in self.times.get(key, []) if start <= t <= end)

    def close(self) -> None:
        """Closes the socket, which ends the draining thread."""
        if self._sock is not None:
            self._sock.close()


def write_config(root: Path) -> Path:
    """Writes a config with 20 local-mode jobs due once a year; returns its path."""
    sock_dir = root / "sock"
    sock_dir.mkdir()
    config = {
        "run_as": None,  # the benchmark's directories belong to whoever runs it
        "directories": {
            "data": str(root / "data"),
            "reports": str(root / "reports"),
            "state": str(root / "state"),
            "logs": str(root / "logs"),
        },
        "storage": {"mode": "local"},
        "jobs": [
            {
                "name": f"job{i:02d}",
                "schedule": SCHEDULE,
                "timezone": "UTC",
                "databases": [f"db{i:02d}"],
                "connection": {"host": str(sock_dir), "port": 5432, "user": "postgres"},
                "globals": False,
            }
            for i in range(1, JOBS + 1)
        ],
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def cpu_ticks(pid: int) -> tuple[int, int]:
    """Returns (utime + stime, cutime + cstime) of `pid` in clock ticks from /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is state (field 3); utime is field 14 -> index 11.
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def proc_status(pid: int) -> dict[str, str]:
    """Returns /proc/<pid>/status as a dict of raw values."""
    result = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        result[key] = value.strip()
    return result


def kib(value: str) -> float:
    """Converts a '1234 kB' status value to MiB."""
    return int(value.split()[0]) / 1024


def context_switches(pid: int) -> int:
    """Returns the voluntary + involuntary context switches summed over all threads of `pid`."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text().splitlines()
        except OSError:
            continue
        for line in status:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split(":")[1])
    return total


def measure(seconds: float, settle: float) -> dict[str, object]:
    """Runs the daemon, measures it over the window and returns the figures."""
    root = Path(tempfile.mkdtemp(prefix="db-backup-idle-"))
    listener = NotifyListener(root / "notify.sock")
    proc: subprocess.Popen[bytes] | None = None
    try:
        config = write_config(root)
        listener.start()
        env = dict(os.environ)
        env.update(
            NOTIFY_SOCKET=str(listener.path),
            WATCHDOG_USEC=str(WATCHDOG_USEC),
            PYTHONUNBUFFERED="1",
        )
        env.pop("WATCHDOG_PID", None)
        stderr_path = root / "daemon.stderr"
        with open(stderr_path, "wb") as stderr:
            proc = subprocess.Popen(
                [str(DB_BACKUP), "--config", str(config), "daemon"],
                env=env,
                stdout=stderr,
                stderr=stderr,
            )
        t_launch = time.monotonic()
        if not listener.ready.wait(60):
            raise RuntimeError(f"daemon sent no READY=1: {stderr_path.read_text()[-2000:]}")
        startup_s = time.monotonic() - t_launch
        time.sleep(settle)
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited: {stderr_path.read_text()[-2000:]}")
        pid = proc.pid
        start_status = proc_status(pid)
        log_bytes_start = stderr_path.stat().st_size + dir_size(root / "logs")
        ticks0, child0 = cpu_ticks(pid)
        ctx0 = context_switches(pid)
        t0 = time.monotonic()
        rss: list[float] = []
        deadline = t0 + seconds
        while True:
            rss.append(kib(proc_status(pid)["VmRSS"]))
            now = time.monotonic()
            if now >= deadline:
                break
            time.sleep(min(1.0, deadline - now))
        ticks1, child1 = cpu_ticks(pid)
        ctx1 = context_switches(pid)
        t1 = time.monotonic()
        end_status = proc_status(pid)
        log_bytes_end = stderr_path.stat().st_size + dir_size(root / "logs")
        window = t1 - t0
        cpu_s = (ticks1 - ticks0) / CLK_TCK
        result: dict[str, object] = {
            "window_s": window,
            "settle_s": settle,
            "startup_s": startup_s,
            "rss_start_mb": kib(start_status["VmRSS"]),
            "rss_max_mb": max(rss),
            "rss_final_mb": rss[-1],
            "rss_median_mb": statistics.median(rss),
            "hwm_mb": kib(end_status["VmHWM"]),
            "threads": end_status.get("Threads", "?"),
            "cpu_s": cpu_s,
            "cpu_pct": 100.0 * cpu_s / window,
            "child_cpu_s": (child1 - child0) / CLK_TCK,
            "ctx_per_s": (ctx1 - ctx0) / window,
            "watchdog_msgs": listener.count_between("WATCHDOG", t0, t1),
            "status_msgs": listener.count_between("STATUS", t0, t1),
            "log_bytes": log_bytes_end - log_bytes_start,
            "last_status": listener.last_status,
        }
        proc.send_signal(signal.SIGTERM)
        result["exit_code"] = proc.wait(60)
        return result
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        listener.close()
        shutil.rmtree(root, ignore_errors=True)


def dir_size(path: Path) -> int:
    """Returns the total size of the regular files under `path` (0 if it does not exist)."""
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def verdict(ok: bool) -> str:
    """Returns the markdown verdict word."""
    return "**met**" if ok else "**missed**"


def render(r: dict[str, object], command: str) -> str:
    """Returns the RESULTS.md section body for measurement `r`."""
    rss_max = float(r["rss_max_mb"])  # type: ignore[arg-type]
    rss_final = float(r["rss_final_mb"])  # type: ignore[arg-type]
    cpu_pct = float(r["cpu_pct"])  # type: ignore[arg-type]
    window = float(r["window_s"])  # type: ignore[arg-type]
    lines = [
        f"Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; "
        f"db-backup at {git_revision(REPO)}.",
        "",
        f"Command: `{command}`",
        "",
        "Machine:",
        "",
        *machine_lines(),
        "",
        f'Setup: {JOBS} jobs, each `schedule: "{SCHEDULE}"` (UTC), local mode, '
        "`globals: false`; `NOTIFY_SOCKET` bound and drained by the benchmark, "
        f"`WATCHDOG_USEC={WATCHDOG_USEC}`. READY=1 came {float(r['startup_s']):.2f} s after "  # type: ignore[arg-type]
        f"launch; the window starts {float(r['settle_s']):.0f} s after READY=1."  # type: ignore[arg-type]
        " RSS = VmRSS of the daemon process from /proc/<pid>/status, sampled every 1 s;"
        " CPU = utime + stime of the process (all threads) from /proc/<pid>/stat at the window's"
        " start and end, divided by the window's wall time.",
        "",
        "| Figure | Value | Target | Verdict |",
        "|---|---:|---:|---|",
        f"| Window | {window:.0f} s | 600 s | "
        f"{'full' if window >= 599 else 'shortened (quick check)'} |",
        f"| RSS max over window | {rss_max:.1f} MiB | <= {RSS_TARGET_MB:.0f} MB | "
        f"{verdict(rss_max * 1.048576 <= RSS_TARGET_MB)} |",
        f"| RSS final | {rss_final:.1f} MiB | <= {RSS_TARGET_MB:.0f} MB | "
        f"{verdict(rss_final * 1.048576 <= RSS_TARGET_MB)} |",
        f"| RSS at window start / median | {float(r['rss_start_mb']):.1f} / "  # type: ignore[arg-type]
        f"{float(r['rss_median_mb']):.1f} MiB | | |",  # type: ignore[arg-type]
        f"| VmHWM (peak since start, incl. startup) | {float(r['hwm_mb']):.1f} MiB | | |",  # type: ignore[arg-type]
        f"| CPU time over window | {float(r['cpu_s']):.2f} s | | |",  # type: ignore[arg-type]
        f"| CPU % of one core | {cpu_pct:.4f} % | <= {CPU_TARGET_PCT} % | "
        f"{verdict(cpu_pct <= CPU_TARGET_PCT)} |",
        f"| Children's CPU time (reaped) | {float(r['child_cpu_s']):.2f} s | | |",  # type: ignore[arg-type]
        f"| Threads | {r['threads']} | | |",
        f"| Context switches (all threads) | {float(r['ctx_per_s']):.2f} /s | | |",  # type: ignore[arg-type]
        f"| WATCHDOG=1 / STATUS= messages in window | {r['watchdog_msgs']} / "
        f"{r['status_msgs']} | | |",
        f"| Log output in window (stderr + log dir) | {r['log_bytes']} bytes | | |",
        f"| Exit code after SIGTERM | {r['exit_code']} | 0 | |",
        "",
        f"Last STATUS: `{r['last_status']}`",
        "",
        "MiB = 2^20 bytes; the 60 MB target is checked as 60 * 10^6 bytes.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parses arguments, runs the measurement, prints and records the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="measurement window")
    parser.add_argument("--settle", type=float, default=10.0, help="wait after READY=1")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    command = shlex.join([".venv/bin/python", "benchmarks/bench_idle_daemon.py", *sys.argv[1:]])
    result = measure(args.seconds, args.settle)
    body = render(result, command)
    print(body)
    if not args.no_write:
        print(f"\nwritten to {write_section(HEADING, body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
