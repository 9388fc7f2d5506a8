"""`bench_many_databases.py --compare consumers`: db-backup against a bare pg_dump loop (issue 21).

Three variants over the same `databases: all` set of small databases, run side by side in every
repetition (the order rotates):

bare  a shell loop of bare `pg_dump -Fc -Z 9 -f <file> <db>` over the databases;
off   `db-backup run` (mode local, defaults: globals, exact row counts, capacity, retention);
on    the same with the consumers a production host has: the database sink (into a database of
      the same cluster), the metrics textfile, one webhook channel (a loopback receiver).

Before every db-backup run the reports and dumps of all but the previous run are removed, so
every run starts from the same state. `--profile` runs the `on` variant once more under
cProfile and prints where its own time goes.
"""

from __future__ import annotations

import http.server
import io
import os
import pstats
import shlex
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.pgcluster import Cluster

HEADING = "Many databases: db-backup against a bare pg_dump loop, consumers off and on (issue 21)"
VARIANTS = ("bare", "off", "on")
SINK_DB = "bench_sink"
SINK_ENV = "BENCH_SINK_DSN"
TARGET_CONSUMERS = 1.05
TARGET_BARE = 1.20


@dataclass
class Timed:
    """One timed run of a variant."""

    variant: str
    wall_s: float
    cpu_s: float


class _Webhook(http.server.BaseHTTPRequestHandler):
    """Answers every POST with 200 (the alert channel's receiver)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        """Quiet."""


def start_webhook() -> tuple[http.server.ThreadingHTTPServer, str]:
    """Starts the loopback webhook receiver; returns it and its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/hook"


def write_config(cluster: Cluster, root: Path, job: str, consumers: bool, url: str) -> Path:
    """Writes the one-job config of variant `off` or `on` under `root`; returns its path."""
    config: dict[str, Any] = {
        "run_as": None,
        "directories": {
            "data": str(root / "data"),
            "reports": str(root / "reports"),
            "state": str(root / "state"),
            "logs": None,
        },
        "storage": {"mode": "local"},
        "jobs": [
            {
                "name": job,
                "schedule": "0 3 1 1 *",
                "timezone": "UTC",
                "databases": "all",
                "exclude_databases": ["postgres", SINK_DB],
                "connection": {
                    "host": str(cluster.socket_dir),
                    "port": cluster.port,
                    "user": "postgres",
                },
            }
        ],
    }
    if consumers:
        config["sink"] = {"dsn": {"env": SINK_ENV}}
        config["metrics"] = {"textfile_dir": str(root / "metrics")}
        config["notifications"] = {
            "channels": [{"name": "hook", "type": "webhook", "url": {"env": "BENCH_HOOK_URL"}}]
        }
        (root / "metrics").mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def child_env(cluster: Cluster, url: str) -> dict[str, str]:
    """Returns the environment of the db-backup runs (the sink's DSN, the webhook URL)."""
    dsn = f"host={cluster.socket_dir} port={cluster.port} dbname={SINK_DB} user=postgres"
    return {**os.environ, SINK_ENV: dsn, "BENCH_HOOK_URL": url}


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, bytes]:
    """Runs argv; returns (wall, user+system CPU of it and its children, stdout); raises on error."""
    before = os.times()
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, check=False, env=env)
    wall = time.perf_counter() - started
    after = os.times()
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv[:3])} failed: {done.stderr.decode()[-3000:]}")
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return wall, cpu, done.stdout


def bare_loop(cluster: Cluster, names: list[str], out: Path) -> Timed:
    """Runs the shell loop of bare `pg_dump -Fc -Z 9` over `names` into `out`."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    connection = f"-h {shlex.quote(str(cluster.socket_dir))} -p {cluster.port} -U postgres"
    script = (
        f"set -e; for db in {' '.join(names)}; do "
        f'pg_dump {connection} -Fc -Z 9 -f {shlex.quote(str(out))}/"$db".dump "$db"; done'
    )
    wall, cpu, _ = timed(["bash", "-c", script])
    return Timed("bare", wall, cpu)


def run_db_backup(
    db_backup: Path, config: Path, job: str, variant: str, databases: int, env: dict[str, str]
) -> Timed:
    """Runs the job once; returns its wall and CPU time (every database must be reported)."""
    wall, cpu, stdout = timed([str(db_backup), "--config", str(config), "run", job], env)
    if len(stdout.decode().split()) != databases:
        raise RuntimeError(f"{variant}: {len(stdout.split())} reports, not {databases}")
    return Timed(variant, wall, cpu)


def profile_run(db_backup: Path, config: Path, job: str, env: dict[str, str]) -> str:
    """Runs the job once under cProfile; returns the top of its profile (cumulative time)."""
    out = config.parent / "run.prof"
    python = db_backup.parent / "python"
    argv = [str(python), "-m", "cProfile", "-o", str(out), str(db_backup)]
    timed([*argv, "--config", str(config), "run", job], env)
    text = io.StringIO()
    stats = pstats.Stats(str(out), stream=text)
    stats.sort_stats("cumulative").print_stats(45)
    stats.sort_stats("tottime").print_stats(25)
    return text.getvalue()


def ensure_sink_database(cluster: Cluster) -> None:
    """Creates the sink's database (the tables come from db-backup's own migrations)."""
    if SINK_DB not in cluster.psql("SELECT datname FROM pg_database").split():
        cluster.psql(f"CREATE DATABASE {SINK_DB}")


def median(values: list[float]) -> float:
    """Returns the median of `values` (0 for none)."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def render(
    command: str, databases: int, runs: list[Timed], head: list[str], loads: list[float]
) -> str:
    """Returns the RESULTS.md section: wall and CPU per variant, the two ratios."""
    wall = {v: [t.wall_s for t in runs if t.variant == v] for v in VARIANTS}
    cpu = {v: [t.cpu_s for t in runs if t.variant == v] for v in VARIANTS}
    med = {v: median(wall[v]) for v in VARIANTS}
    on_off = med["on"] / med["off"]
    on_bare = med["on"] / med["bare"]
    off_bare = med["off"] / med["bare"]
    per_db = {v: (med[v] - med["bare"]) / databases * 1000 for v in ("off", "on")}
    pairs = [(n / f, n / b) for b, f, n in zip(wall["bare"], wall["off"], wall["on"], strict=True)]
    names = {"bare": "bare `pg_dump -Fc -Z 9` loop", "off": "db-backup, consumers off",
             "on": "db-backup, consumers on"}  # fmt: skip
    lines = [
        *head,
        "",
        f"Command: `{command}`",
        "",
        f"`databases: all` over {databases} small databases (two tables, 700 rows), mode "
        "`local`, defaults otherwise (globals, exact row counts, capacity check, retention); "
        f"{len(wall['bare'])} repetitions, the three variants side by side in each (order "
        "rotating). Consumers on: the database sink (a database of the same cluster), the "
        "metrics textfile, one webhook channel (a loopback receiver). CPU: user + system time "
        "of the command and its children (not the server's). Load average (1 min) sampled "
        f"before each repetition: {', '.join(f'{x:.1f}' for x in loads)} (median "
        f"{median(loads):.1f}) on 2 cores shared with other work.",
        "",
        "| variant | wall time per run (s) | median wall | median CPU |",
        "| --- | --- | ---: | ---: |",
        *(
            f"| {names[v]} | {', '.join(f'{x:.1f}' for x in wall[v])} | {med[v]:.1f} s | "
            f"{median(cpu[v]):.1f} s |"
            for v in VARIANTS
        ),
        "",
        f"- consumers on / off (median wall): **{on_off:.3f}** (target <= {TARGET_CONSUMERS}: "
        f"{'met' if on_off <= TARGET_CONSUMERS else 'missed'})",
        f"- whole run, consumers on / bare loop: **{on_bare:.3f}** (target <= {TARGET_BARE}: "
        f"{'met' if on_bare <= TARGET_BARE else 'missed'}); consumers off / bare: {off_bare:.3f}",
        f"- our own time per database over the bare loop: {per_db['off']:+.0f} ms (off), "
        f"{per_db['on']:+.0f} ms (on)",
        "- per repetition (on/off, on/bare): " + ", ".join(f"{a:.3f}/{b:.3f}" for a, b in pairs),
    ]
    return "\n".join(lines)
