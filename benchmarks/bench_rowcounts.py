"""Measures what exact row counts cost a backup: `db-backup run` with `row_counts: exact` vs `off`.

Both variants run the same job (local storage, pg_dump -Fc -Z 9, no globals) against the
benchmark database of bench_stream.py (same generator, same scale; only the 1x database is
built), interleaved in the order off, exact, exact, off, off, exact, ... so drift in the
machine's load hits both alike. Wall time is fork to wait4() of `db-backup run`. Counting
alone (every table counted in one REPEATABLE READ transaction, no dump running) is timed once
at the end, to show how much work ran alongside the dump.

Usage::

    .venv/bin/python benchmarks/bench_rowcounts.py [--reps 5] [--scale 1.0] [--rebuild]

Not part of the test suite. Writes the section "Row counts in the dump's snapshot (issue 9)"
of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from bench_stream import (  # noqa: E402
    BATCH,
    CLK_TCK,
    DB_1X,
    ROWS,
    SCHEMA_SQL,
    VOCABULARY,
    Measurement,
    _array,
    database_size,
    insert_sql,
    run_measured,
)
from results_file import git_revision, machine_lines, write_section  # noqa: E402

from db_backup.backup.rowcounts import exact_counts  # noqa: E402
from tests.support.pgcluster import Cluster, free_port, start_cluster  # noqa: E402

DB_BACKUP = REPO / ".venv" / "bin" / "db-backup"
HEADING = "Row counts in the dump's snapshot (issue 9)"
TARGET = 1.03
VARIANTS = ("off", "exact")


def dataset_ready(cluster: Cluster, scale: float) -> bool:
    """Returns whether the cached cluster holds the benchmark database at `scale`."""
    try:
        found = cluster.psql("SELECT scale FROM bench_meta", DB_1X)
    except RuntimeError:
        return False
    return bool(found) and abs(float(found) - scale) < 1e-9


def build_dataset(cluster: Cluster, scale: float) -> None:
    """Creates the benchmark database at `scale` with bench_stream.py's generator."""
    cluster.psql(f"DROP DATABASE IF EXISTS {DB_1X}")
    cluster.psql(f"CREATE DATABASE {DB_1X}")
    cluster.psql(SCHEMA_SQL, DB_1X)
    vocab = _array(VOCABULARY)
    cluster.psql(f"INSERT INTO bench_vocab VALUES ({vocab}, cardinality({vocab}))", DB_1X)
    counts = {table: max(1000, int(rows * scale)) for table, rows in ROWS.items()}
    pieces = [
        (table, first, min(first + BATCH - 1, count))
        for table, count in counts.items()
        for first in range(1, count + 1, BATCH)
    ]
    started = time.monotonic()

    def one(piece: tuple[str, int, int]) -> None:
        table, first, last = piece
        cluster.psql(insert_sql(table, first, last, counts["customers"]), DB_1X)
        print(f"  {table} {first}..{last} ({time.monotonic() - started:.0f} s)", file=sys.stderr)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(one, pieces))
    cluster.psql("VACUUM (FREEZE, ANALYZE)", DB_1X)
    cluster.psql(f"INSERT INTO bench_meta (scale) VALUES ({scale!r})", DB_1X)


def write_config(cluster: Cluster, job_dir: Path, row_counts: str) -> Path:
    """Writes the config of one variant and returns its path."""
    config = {
        "run_as": None,  # a root-started benchmark stays root (its directories are root's)
        "directories": {
            "data": str(job_dir / "data"),
            "reports": str(job_dir / "reports"),
            "state": str(job_dir / "state"),
            "logs": None,
        },
        "storage": {"mode": "local"},
        "jobs": [
            {
                "name": "bench",
                "schedule": "0 3 1 1 *",
                "timezone": "UTC",
                "databases": [DB_1X],
                "connection": {
                    "host": str(cluster.socket_dir),
                    "port": cluster.port,
                    "user": "postgres",
                },
                "dump": {"format": "custom", "compression": 9},
                "globals": False,
                "row_counts": row_counts,
            }
        ],
    }
    path = job_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class BackendCpu(threading.Thread):
    """Polls the CPU time (utime + stime) of the server backends of the job's connections.

    The backends are found by application name in pg_stat_activity: `db-backup/bench` (pg_dump)
    and `db-backup/bench/row-counts` (the counting session); their CPU is read from
    /proc/<pid>/stat every 50 ms until they exit, so the last reading is their total.
    """

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.stop = threading.Event()
        self.cpu: dict[str, dict[int, float]] = {"pg_dump": {}, "row-counts": {}}

    def run(self) -> None:
        with psycopg.connect(
            host=str(self.cluster.socket_dir),
            port=self.cluster.port,
            user="postgres",
            dbname="postgres",
            autocommit=True,
        ) as conn:
            while not self.stop.is_set():
                rows = conn.execute(
                    "SELECT pid, application_name FROM pg_stat_activity "
                    "WHERE application_name IN ('db-backup/bench', 'db-backup/bench/row-counts')"
                ).fetchall()
                for pid, name in rows:
                    kind = "row-counts" if name.endswith("/row-counts") else "pg_dump"
                    try:
                        stat = Path(f"/proc/{pid}/stat").read_text()
                    except OSError:
                        continue
                    fields = stat[stat.rindex(")") + 2 :].split()
                    self.cpu[kind][pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
                self.stop.wait(0.05)

    def total(self, kind: str) -> float:
        """Returns the summed last CPU reading of the backends of `kind`."""
        return sum(self.cpu[kind].values())


def run_variant(
    cluster: Cluster, work: Path, row_counts: str
) -> tuple[Measurement, dict[str, Any]]:
    """Runs `db-backup run` once with `row_counts`; returns its measurement and its report."""
    job_dir = work / row_counts
    shutil.rmtree(job_dir, ignore_errors=True)
    job_dir.mkdir(parents=True)
    config = write_config(cluster, job_dir, row_counts)
    env = dict(os.environ)
    env["PATH"] = f"{cluster.bindir}:{env.get('PATH', '/usr/bin:/bin')}"
    env.pop("PGPASSWORD", None)
    argv = [str(DB_BACKUP), "--config", str(config), "run", "bench"]
    backends = BackendCpu(cluster)
    backends.start()
    try:
        m, out = run_measured(row_counts, argv, env, 0)
    finally:
        backends.stop.set()
        backends.join()
    m.steps = {"server_dump_cpu_s": backends.total("pg_dump")}
    m.steps["server_count_cpu_s"] = backends.total("row-counts")
    [report_path] = sorted((job_dir / "reports").glob("*.json"))
    report: dict[str, Any] = json.loads(report_path.read_text())
    if report["status"] != "SUCCESS" or report["rowCounts"] != row_counts:
        raise RuntimeError(f"unexpected report: {report} {out[-2000:]}")
    m.dump_bytes = int(report["local"]["sizeBytes"])
    shutil.rmtree(job_dir, ignore_errors=True)
    return m, report


def time_counting_alone(cluster: Cluster) -> tuple[float, dict[str, int | None]]:
    """Returns (seconds, counts) of counting every table in one REPEATABLE READ transaction."""
    with psycopg.connect(
        host=str(cluster.socket_dir), port=cluster.port, user="postgres", dbname=DB_1X
    ) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.execute("SET max_parallel_workers_per_gather = 0")
        conn.commit()
        t0 = time.monotonic()
        counts = exact_counts(conn)
        return time.monotonic() - t0, counts


def fmt_runs(values: list[float]) -> str:
    """Returns 'median s (min-max)'."""
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def render(
    command: str,
    runs: list[Measurement],
    counts: dict[str, int | None],
    counting_s: float,
    facts: dict[str, Any],
) -> str:
    """Returns the RESULTS.md section body."""
    off = [m.wall_s for m in runs if m.variant == "off"]
    exact = [m.wall_s for m in runs if m.variant == "exact"]
    ratio = statistics.median(exact) / statistics.median(off)
    pairs = [e / o for o, e in zip(off, exact, strict=True)]
    cpu_off = statistics.median([m.tree_cpu_s for m in runs if m.variant == "off"])
    cpu_exact = statistics.median([m.tree_cpu_s for m in runs if m.variant == "exact"])
    rows = sum(v or 0 for v in counts.values())
    count_cpu = [m.steps["server_count_cpu_s"] for m in runs if m.variant == "exact"]
    dump_cpu = {
        v: statistics.median([m.steps["server_dump_cpu_s"] for m in runs if m.variant == v])
        for v in VARIANTS
    }
    pair_median = statistics.median(pairs)
    lines = [
        f"Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; "
        f"db-backup at {git_revision(REPO)}.",
        "",
        f"Command: `{command}` (took {facts['total_s'] / 60:.1f} min)",
        "",
        "Machine:",
        "",
        *machine_lines(),
        f"- {facts['pg_version']}",
        "",
        f"Dataset: the `bench` database of bench_stream.py (scale {facts['scale']}), "
        f"pg_database_size {facts['size'] / 1e9:.2f} GB, {rows:,} rows in {len(counts)} tables; "
        f"dump (-Fc -Z 9) {facts['dump_bytes'] / 1e6:.0f} MB. Cluster cached under "
        f"`{facts['cache']}` (`fsync=off`).",
        "",
        "Both variants: `db-backup run` of one job, `storage.mode: local`, `dump.format: custom`, "
        "`compression: 9`, `globals: false`; only `row_counts` differs. "
        f"{len(off)} runs each, interleaved (off, exact, exact, off, ...).",
        "",
        "| Variant | Wall time, median (min-max) | CPU of db-backup + pg_dump | "
        "CPU of pg_dump's server backend | CPU of the counting backend |",
        "|---|---:|---:|---:|---:|",
        f"| `row_counts: off` | {fmt_runs(off)} | {cpu_off:.1f} s | {dump_cpu['off']:.1f} s | - |",
        f"| `row_counts: exact` | {fmt_runs(exact)} | {cpu_exact:.1f} s | "
        f"{dump_cpu['exact']:.1f} s | {statistics.median(count_cpu):.2f} s "
        f"({min(count_cpu):.2f}-{max(count_cpu):.2f}) |",
        "",
        f"Counting alone (no dump running; one REPEATABLE READ transaction, no parallel "
        f"workers): {counting_s:.2f} s wall. CPU columns are medians; server backends' CPU is "
        "read from /proc/<pid>/stat of the backends found by application name, every 50 ms.",
        "",
        "| Target | Measured | Verdict |",
        "|---|---:|---|",
        f"| exact / off wall time <= {TARGET} (ratio of medians) | {ratio:.3f} "
        f"({statistics.median(exact):.2f} s / {statistics.median(off):.2f} s) | "
        f"{'**met**' if ratio <= TARGET else '**missed**'} |",
        f"| same, median of the per-repetition ratios | {pair_median:.3f} | "
        f"{'**met**' if pair_median <= TARGET else '**missed**'} |",
        f"| counting backend CPU / median wall time of `off` (the cost if counting ran on "
        f"the dump's own core) | {statistics.median(count_cpu) / statistics.median(off):.3f} | "
        "for reference |",
        "",
        "Pairs in run order (exact / off of the same repetition): "
        + ", ".join(f"{p:.3f}" for p in pairs)
        + ".",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Builds or reuses the dataset, runs both variants interleaved, prints and records."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="runs per variant")
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = about 1 GB of data")
    parser.add_argument("--rebuild", action="store_true", help="recreate the cached dataset")
    parser.add_argument("--cache", type=Path, default=Path("/var/tmp/db-backup-bench-rowcounts"))
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    command = shlex.join([".venv/bin/python", "benchmarks/bench_rowcounts.py", *sys.argv[1:]])
    started = time.monotonic()
    args.cache.mkdir(parents=True, exist_ok=True)
    os.chmod(args.cache, 0o755)
    work = args.cache / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if args.rebuild:
        shutil.rmtree(args.cache / "cluster", ignore_errors=True)
    cluster = start_cluster(args.cache / "cluster", free_port())
    try:
        if not dataset_ready(cluster, args.scale):
            print(f"building the dataset at scale {args.scale} ...", file=sys.stderr)
            build_dataset(cluster, args.scale)
        runs: list[Measurement] = []
        reports: list[dict[str, Any]] = []
        for rep in range(args.reps):
            for variant in VARIANTS if rep % 2 == 0 else VARIANTS[::-1]:
                m, report = run_variant(cluster, work, variant)
                runs.append(m)
                reports.append(report)
                print(f"rep {rep + 1} {variant}: {m.wall_s:.2f} s", file=sys.stderr, flush=True)
        counting_s, counts = time_counting_alone(cluster)
        recorded = [r["tables"] for r in reports if r["rowCounts"] == "exact"]
        if any(tables != counts for tables in recorded):
            raise RuntimeError(f"recorded counts differ from a fresh count: {recorded} {counts}")
        facts = {
            "scale": args.scale,
            "size": database_size(cluster, DB_1X),
            "dump_bytes": statistics.median([m.dump_bytes for m in runs]),
            "cache": args.cache,
            "pg_version": cluster.psql("SELECT version()").split(" on ")[0],
            "total_s": time.monotonic() - started,
        }
        body = render(command, runs, counts, counting_s, facts)
        print(body)
        if not args.no_write:
            print(f"\nwritten to {write_section(HEADING, body)}")
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
