"""A host's backup window: a job of 4 databases dumped one at a time against two at a time.

Variants, run interleaved (the order rotates every repetition) on 4 databases of the same size
(copies of bench_stream.py's dataset at a smaller scale, made with CREATE DATABASE ... TEMPLATE):

(serial)    ``db-backup run`` of one job with ``parallel_databases: 1``, mode ``local``;
(parallel)  the same job with ``parallel_databases: 2`` (``daemon.max_dumps: 2``), mode ``local``;
(both-2)    ``parallel_databases: 2`` in mode ``both`` against the loopback OSS server (no
            bandwidth limit): the peak RSS of db-backup with two dumps streaming to OSS at once.

Peak RSS is VmHWM of the db-backup process itself (pg_dump children excluded), polled every
50 ms (bench_stream.run_measured).

Usage::

    .venv/bin/python benchmarks/bench_parallel.py [--reps 3] [--scale 0.25]

Not part of the test suite. Writes the section "Parallel databases (issue 12)" of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_stream import (  # noqa: E402
    BUCKET,
    DB_1X,
    DB_BACKUP,
    REGION,
    Bench,
    Measurement,
    build_dataset,
    cluster_ready,
    database_size,
    fmt_runs,
    median,
    run_measured,
)
from results_file import git_revision, machine_lines, write_section  # noqa: E402

from tests.support.pgcluster import free_port, start_cluster  # noqa: E402

HEADING = "Parallel databases (issue 12)"
COPIES = [f"par_{i}" for i in range(4)]
TARGET_RATIO = 0.60
TARGET_RSS_MB = 150.0


def make_copies(bench: Bench) -> None:
    """Creates the 4 databases as copies of the dataset (kept between runs)."""
    assert bench.cluster is not None
    existing = bench.cluster.psql("SELECT datname FROM pg_database").split()
    for name in COPIES:
        if name not in existing:
            bench.cluster.psql(f"CREATE DATABASE {name} TEMPLATE {DB_1X}")


def write_config(bench: Bench, job_dir: Path, parallel: int, mode: str) -> Path:
    """Writes a config with one job dumping the 4 copies and returns its path."""
    assert bench.cluster is not None
    storage: dict[str, object] = {"mode": mode}
    if mode != "local":
        storage["oss"] = {
            "endpoint": bench.endpoint,
            "bucket": BUCKET,
            "region": REGION,
            "signature_version": "v4",
            "access_key_id": {"env": "BENCH_OSS_ID"},
            "access_key_secret": {"env": "BENCH_OSS_SECRET"},
        }
    config = {
        "run_as": None,  # a root-started benchmark stays root (its directories are root's)
        "directories": {
            "data": str(job_dir / "data"),
            "reports": str(job_dir / "reports"),
            "state": str(job_dir / "state"),
            "logs": None,
        },
        "storage": storage,
        "daemon": {"max_dumps": 2},
        "jobs": [
            {
                "name": "window",
                "schedule": "0 3 1 1 *",
                "timezone": "UTC",
                "databases": COPIES,
                "parallel_databases": parallel,
                "connection": {
                    "host": str(bench.cluster.socket_dir),
                    "port": bench.cluster.port,
                    "user": "postgres",
                },
                "globals": True,
            }
        ],
    }
    path = job_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_window(bench: Bench, variant: str, parallel: int, mode: str) -> Measurement:
    """Runs the job once and returns its measurement; every report must say SUCCESS."""
    job_dir = bench.work / variant
    shutil.rmtree(job_dir, ignore_errors=True)
    job_dir.mkdir(parents=True)
    config = write_config(bench, job_dir, parallel, mode)
    argv = [str(DB_BACKUP), "--config", str(config), "run", "window"]
    server_pid = bench.server.pid if bench.server else 0
    m, out = run_measured(variant, argv, bench.env(), server_pid)
    reports = [json.loads(p.read_text()) for p in (job_dir / "reports").glob("*.json")]
    if len(reports) != len(COPIES) or any(r["status"] != "SUCCESS" for r in reports):
        raise RuntimeError(f"{variant}: not every database succeeded: {out[-2000:]}")
    m.dump_bytes = sum(int(r["local"]["sizeBytes"]) for r in reports)
    shutil.rmtree(job_dir, ignore_errors=True)
    if mode != "local":
        bench.clear_bucket()
    return m


def render(command: str, size: int, runs: list[Measurement]) -> str:
    """Returns the RESULTS.md section."""
    serial = [m.wall_s for m in runs if m.variant == "serial"]
    parallel = [m.wall_s for m in runs if m.variant == "parallel"]
    both = [m for m in runs if m.variant == "both-2"]
    ratio = median(parallel) / median(serial)
    rss = max(m.own_hwm_mb for m in both) if both else 0.0
    rss_mb = rss * 1024 * 1024 / 1e6
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} at {git_revision(HERE.parent)}.",
        *machine_lines(),
        "",
        f"Command: `{command}`",
        "",
        f"Job of {len(COPIES)} databases of {size / 1e6:.0f} MB each (pg_database_size), "
        f"`-Fc -Z 9`, globals on; dumps {median([m.dump_bytes for m in runs]) / 1e6:.0f} MB "
        "in total per run.",
        "",
        "| variant | wall time (runs) | median |",
        "| --- | --- | ---: |",
        f"| parallel_databases: 1, mode local | {fmt_runs(serial)} | {median(serial):.1f} s |",
        f"| parallel_databases: 2, mode local | {fmt_runs(parallel)} | {median(parallel):.1f} s |",
        f"| parallel_databases: 2, mode both (peak RSS) | {fmt_runs([m.wall_s for m in both])} | "
        f"{median([m.wall_s for m in both]):.1f} s |",
        "",
        f"- parallel 2 / parallel 1 (ratio of medians): **{ratio:.3f}** (target <= {TARGET_RATIO}: "
        f"{'met' if ratio <= TARGET_RATIO else 'missed'})",
        f"- peak RSS of db-backup with 2 dumps streaming to OSS: **{rss:.1f} MiB** "
        f"({rss_mb:.1f} MB; target <= {TARGET_RSS_MB:.0f} MB: "
        f"{'met' if rss_mb <= TARGET_RSS_MB else 'missed'})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Builds or reuses the dataset, measures the variants interleaved, records the result."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--cache", type=Path, default=Path("/var/tmp/db-backup-bench-parallel"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    command = shlex.join([".venv/bin/python", "benchmarks/bench_parallel.py", *sys.argv[1:]])
    bench = Bench(args.cache)
    bench.cache.mkdir(parents=True, exist_ok=True)
    os.chmod(bench.cache, 0o755)
    shutil.rmtree(bench.work, ignore_errors=True)
    bench.work.mkdir(parents=True)
    try:
        bench.cluster = start_cluster(bench.cache / "cluster", free_port())
        if not cluster_ready(bench, args.scale):
            build_dataset(bench, args.scale)
            for name in COPIES:
                bench.cluster.psql(f"DROP DATABASE IF EXISTS {name}")
        make_copies(bench)
        bench.start_server(0)
        size = database_size(bench.cluster, COPIES[0])
        variants = [("serial", 1, "local"), ("parallel", 2, "local"), ("both-2", 2, "both")]
        runs: list[Measurement] = []
        for rep in range(args.reps):
            for name, parallel, mode in variants[rep % 3 :] + variants[: rep % 3]:
                m = run_window(bench, name, parallel, mode)
                runs.append(m)
                print(
                    f"rep {rep + 1} {name}: {m.wall_s:.1f} s, hwm {m.own_hwm_mb:.1f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
        body = render(command, size, runs)
        print(body)
        if not args.no_write:
            print(f"\nwritten to {write_section(HEADING, body)}")
    finally:
        bench.stop_server()
        if bench.cluster is not None:
            bench.cluster.stop()
        shutil.rmtree(bench.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
