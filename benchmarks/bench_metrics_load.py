"""The daemon's /metrics under 2,000 concurrent scrapes and 2,000 slow connections (issue 21).

A real `db-backup daemon` runs as under systemd (`NOTIFY_SOCKET` bound and drained here,
`WATCHDOG_USEC` = 10 s) with one job every minute dumping two databases of a throwaway cluster,
and `metrics.listen` on a loopback port. Two client processes (`tests/support/crowd.py`, one
selectors loop each) then keep 2,000 scrapes in flight and 2,000 slowloris connections open
(a header line a second, never the end of the request) for `--seconds`, while this script
makes one ordinary scrape a second, samples the daemon's RSS, threads and descriptors, and
records every WATCHDOG=1. The attack starts at second 50 of a minute, so the scheduled run at
the next full minute falls inside it, and SIGTERM is sent while the crowds still push: the time
from SIGTERM to the daemon's exit is measured under load. Loopback only; everything it starts
stops by itself (the crowds after `--seconds`, the daemon at SIGTERM, the cluster at the end).

Usage::

    .venv/bin/python benchmarks/bench_metrics_load.py [--seconds 60] [--scrapes 2000]
        [--slow 2000] [--no-write]

Not part of the test suite. Writes the section "Metrics endpoint under load (issue 21)" of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import resource
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
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from results_file import git_revision, machine_lines, write_section  # noqa: E402

from tests.support.crowd import SCRAPE, SLOW, Crowd  # noqa: E402
from tests.support.pgcluster import free_port, load_sample, start_cluster  # noqa: E402

DB_BACKUP = REPO / ".venv" / "bin" / "db-backup"
HEADING = "Metrics endpoint under load (issue 21)"
WATCHDOG_SEC = 10
RSS_TARGET_MB = 200.0
SIGTERM_TARGET_S = 10.0


@dataclass
class Notify:
    """Drains the sd_notify socket in a thread; keeps when each WATCHDOG=1 came, and STATUS."""

    path: Path
    watchdog: list[float] = field(default_factory=list)
    status: str = ""
    ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        """Binds the socket and starts draining it."""
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.settimeout(0.5)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            for line in data.decode("utf-8", "replace").splitlines():
                key, _, value = line.partition("=")
                if key == "WATCHDOG":
                    self.watchdog.append(time.monotonic())
                elif key == "STATUS":
                    self.status = value
                elif key == "READY":
                    self.ready.set()

    def largest_gap(self, start: float, end: float) -> float:
        """Returns the longest stretch without WATCHDOG=1 between `start` and `end`."""
        moments = [start, *(t for t in self.watchdog if start < t < end), end]
        return max(b - a for a, b in itertools.pairwise(moments))

    def close(self) -> None:
        """Closes the socket (the draining thread ends)."""
        self._sock.close()


def raise_fd_limit(wanted: int) -> int:
    """Raises this process's RLIMIT_NOFILE soft limit towards `wanted`; returns the new one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, min(wanted, hard))
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def crowd_process(port: int, size: int, kind: str, seconds: float, out: Any) -> None:
    """Runs one crowd for `seconds` in this (child) process and sends its tally back."""
    raise_fd_limit(size + 256)
    with Crowd(port, size, kind, reopen_after=0.05) as crowd:
        time.sleep(seconds)
        tally = crowd.tally
    latencies = sorted(tally.latencies)
    out.put(
        {
            "kind": kind,
            "opened": tally.opened,
            "answered": tally.answered,
            "unanswered": tally.unanswered,
            "refused": tally.refused,
            "p50": latencies[len(latencies) // 2] if latencies else None,
            "p99": latencies[int(len(latencies) * 0.99)] if latencies else None,
        }
    )


def proc_figures(pid: int) -> tuple[float, int, int]:
    """Returns (VmRSS MiB, threads, open descriptors) of `pid`."""
    rss = threads = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, int(threads), len(os.listdir(f"/proc/{pid}/fd"))


def scrape_once(port: int) -> float | None:
    """Returns the seconds one ordinary scrape took, None when it got no answer in 5 s."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            if answer.status == 200 and b"db_backup_" in answer.read():
                return time.monotonic() - started
    except OSError:
        return None
    return None


def write_config(root: Path, socket_dir: Path, pg_port: int, port: int) -> Path:
    """Writes the daemon's config: one job a minute, two databases, /metrics on `port`."""
    document = {
        "run_as": None,
        "directories": {name: str(root / name) for name in ("data", "reports", "state", "logs")},
        "storage": {"mode": "local"},
        "metrics": {"listen": f"127.0.0.1:{port}"},
        "jobs": [
            {
                "name": "minutely",
                "schedule": "* * * * *",
                "timezone": "UTC",
                "databases": ["shop", "bulk"],
                "connection": {"host": str(socket_dir), "port": pg_port, "user": "postgres"},
                "globals": False,
                "retention": {"keep_last": 3},
            }
        ],
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def wait_for_second(second: int) -> None:
    """Sleeps until the wall clock's seconds reach `second` (this minute or the next)."""
    now = datetime.now(UTC)
    wait = (second - now.second - now.microsecond / 1e6) % 60
    time.sleep(wait)


def fill(cluster: Any) -> None:
    """Creates the two databases the job dumps: `shop` (sample) and `bulk` (one big table)."""
    load_sample(cluster, "shop", 20000)
    cluster.psql("CREATE DATABASE bulk")
    cluster.psql(
        "CREATE TABLE blob AS SELECT i, md5(i::text) || md5((i*3)::text) AS a "
        "FROM generate_series(1, 400000) i",
        "bulk",
    )


def watch(
    pid: int, port: int, seconds: float
) -> tuple[list[tuple[float, int, int]], list[float | None]]:
    """Samples the daemon's /proc and makes one ordinary scrape, every second for `seconds`;
    returns the samples and each scrape's time (None: no answer)."""
    started = time.monotonic()
    samples: list[tuple[float, int, int]] = []
    ordinary: list[float | None] = []
    while time.monotonic() - started < seconds:
        samples.append(proc_figures(pid))
        ordinary.append(scrape_once(port))
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started) % 1.0))
    return samples, ordinary


def measure(seconds: float, scrapes: int, slow: int) -> dict[str, Any]:
    """Runs the whole scenario and returns its figures."""
    root = Path(tempfile.mkdtemp(prefix="db-backup-load-"))
    os.chmod(root, 0o755)
    cluster = start_cluster(root / "pg")
    notify = Notify(root / "notify.sock")
    daemon: subprocess.Popen[bytes] | None = None
    try:
        fill(cluster)
        port = free_port()
        config = write_config(root, cluster.socket_dir, cluster.port, port)
        notify.start()
        env = {
            **os.environ,
            "NOTIFY_SOCKET": str(notify.path),
            "WATCHDOG_USEC": str(WATCHDOG_SEC * 1_000_000),
            "DB_BACKUP_LOG_FORMAT": "json",
        }
        env.pop("WATCHDOG_PID", None)
        with open(root / "daemon.log", "wb") as log:
            daemon = subprocess.Popen(
                [str(DB_BACKUP), "--config", str(config), "daemon"],
                env=env,
                stdout=log,
                stderr=log,
            )
        if not notify.ready.wait(60):
            raise RuntimeError("no READY=1 from the daemon")
        wait_for_second(50)  # the run at the next full minute falls inside the attack
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        crowds = [
            context.Process(target=crowd_process, args=(port, slow, SLOW, seconds + 5, results)),
            context.Process(
                target=crowd_process, args=(port, scrapes, SCRAPE, seconds + 5, results)
            ),
        ]
        for crowd in crowds:
            crowd.start()
        started = time.monotonic()
        started_utc = datetime.now(UTC)
        samples, ordinary = watch(daemon.pid, port, seconds)
        ended = time.monotonic()
        status_at_sigterm = notify.status
        stopping = time.monotonic()
        daemon.send_signal(signal.SIGTERM)  # the crowds still push
        exit_code = daemon.wait(120)
        sigterm_s = time.monotonic() - stopping
        tallies = {r["kind"]: r for r in (results.get(timeout=60) for _ in crowds)}
        for crowd in crowds:
            crowd.join(30)
        reports = [json.loads(p.read_text()) for p in sorted((root / "reports").glob("*.json"))]
        during = [r for r in reports if r["startedAt"] >= started_utc.isoformat()[:19]]
        return {
            "seconds": ended - started,
            "scrapes": scrapes,
            "slow": slow,
            "gap": notify.largest_gap(started, ended),
            "pings": sum(1 for t in notify.watchdog if started <= t <= ended),
            "rss_max": max(s[0] for s in samples),
            "rss_median": statistics.median(s[0] for s in samples),
            "threads_max": max(s[1] for s in samples),
            "fds_max": max(s[2] for s in samples),
            "ordinary": ordinary,
            "tallies": tallies,
            "backups": [(r["database"], r["status"], r["errorMessage"]) for r in during],
            "sigterm_s": sigterm_s,
            "exit_code": exit_code,
            "status_at_sigterm": status_at_sigterm,
        }
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        notify.close()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def verdict(ok: bool) -> str:
    """Returns the markdown verdict word."""
    return "**met**" if ok else "**missed**"


def render(r: dict[str, Any], command: str) -> str:
    """Returns the RESULTS.md section for measurement `r`."""
    flood, slowloris = r["tallies"][SCRAPE], r["tallies"][SLOW]
    answered = [t for t in r["ordinary"] if t is not None]
    backups = r["backups"]
    good = all(status == "SUCCESS" for _, status, _ in backups) and bool(backups)
    rss_ok = r["rss_max"] * 1.048576 < RSS_TARGET_MB
    gap_ok = r["gap"] < WATCHDOG_SEC / 2
    names = ", ".join(f"{db} {status}" for db, status, _ in backups) or "none"
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC at {git_revision(REPO)}.",
        *machine_lines(),
        "",
        f"Command: `{command}`",
        "",
        f"Setup: `db-backup daemon` with `WATCHDOG_USEC` = {WATCHDOG_SEC} s and one job every "
        "minute (`* * * * *`, local mode, databases `shop` (20,000 customers) and `bulk` "
        "(400,000 rows)); `metrics.listen` on 127.0.0.1. For "
        f"{r['seconds']:.0f} s, one process keeps {r['scrapes']} scrapes in flight and another "
        f"{r['slow']} slowloris connections open (`tests/support/crowd.py`: a closed connection "
        "is opened again 50 ms later); this script makes one ordinary scrape a second and samples "
        "the daemon's /proc every second. SIGTERM is sent at the end, the crowds still pushing.",
        "",
        "| Figure | Value | Target | Verdict |",
        "|---|---:|---:|---|",
        f"| Scheduled backups during the attack | {names} | every one SUCCESS | {verdict(good)} |",
        f"| Largest watchdog gap | {r['gap']:.2f} s ({r['pings']} pings) | "
        f"< {WATCHDOG_SEC / 2:.0f} s (half of WatchdogSec) | {verdict(gap_ok)} |",
        f"| RSS max / median | {r['rss_max']:.1f} / {r['rss_median']:.1f} MiB | "
        f"< {RSS_TARGET_MB:.0f} MB | {verdict(rss_ok)} |",
        f"| SIGTERM to exit (under load) | {r['sigterm_s']:.2f} s, exit {r['exit_code']} | "
        f"<= {SIGTERM_TARGET_S:.0f} s | {verdict(r['sigterm_s'] <= SIGTERM_TARGET_S)} |",
        f"| Daemon threads / descriptors, max | {r['threads_max']} / {r['fds_max']} | | |",
        f"| Ordinary scrapes answered | {len(answered)} of {len(r['ordinary'])}, slowest "
        f"{max(answered, default=0):.3f} s | | |",
        f"| Flood: answered / closed unanswered | {flood['answered']} / {flood['unanswered']} "
        f"({flood['answered'] / r['seconds']:.0f} answers/s; p50 {flood['p50'] or 0:.3f} s, "
        f"p99 {flood['p99'] or 0:.3f} s) | | |",
        f"| Slowloris: connections opened / cut by the daemon / answered | "
        f"{slowloris['opened']} / {slowloris['unanswered']} / {slowloris['answered']} | | |",
        "",
        f"STATUS at SIGTERM: `{r['status_at_sigterm']}`",
        "",
        "Reading the figures: the flood's latencies sit at about 1 s, 3 s and 7 s, the TCP SYN "
        "retry times: with 4,000 clients connecting at once the listen queue (128) overflows, and "
        "a client then waits for the kernel's retry, not for the daemon, which answers what it "
        "accepts from its snapshot at once. The ordinary scrapes that took seconds, or got no "
        "answer within 5 s, waited the same way.",
    ]
    failed = [f"{db}: {error}" for db, status, error in backups if status != "SUCCESS"]
    if failed:
        lines += ["", "Failed backups: " + "; ".join(failed)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parses arguments, runs the scenario, prints and records the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the attack")
    parser.add_argument("--scrapes", type=int, default=2000, help="scrapes kept in flight")
    parser.add_argument("--slow", type=int, default=2000, help="slowloris connections")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    command = shlex.join([".venv/bin/python", "benchmarks/bench_metrics_load.py", *sys.argv[1:]])
    result = measure(args.seconds, args.scrapes, args.slow)
    body = render(result, command)
    print(body)
    if not args.no_write:
        print(f"\nwritten to {write_section(HEADING, body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
