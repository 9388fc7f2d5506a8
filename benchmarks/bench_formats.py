"""Wall time and size of the dump formats a DBA can choose, on the streaming benchmark's dataset.

Four variants of ``db-backup run JOB`` in ``storage.mode: local`` (globals off) dump the same
database, interleaved (the order rotates every repetition, so noise from other work on the
machine hits every variant alike):

- ``-Fc -Z 9``  custom format, compression 9 (the default, the seed's choice);
- ``-Fc -Z 6``  custom format, compression 6;
- ``-Fc -Z 1``  custom format, compression 1;
- ``-Fd -j 2``  directory format, 2 dump workers, compression 9 (only format and workers change).

The dataset is bench_stream.py's database ``bench`` (about 1 GB at ``--scale 1.0``), built once
into its own cached cluster (default ``/var/tmp/db-backup-bench-formats``). Size is the report's
``local.sizeBytes`` (the .dump file, or the sum of the directory's files).

Usage::

    .venv/bin/python benchmarks/bench_formats.py [--reps 3] [--scale 1.0] [--cache DIR]

Not part of the test suite. Writes the section "Dump formats: wall time and size (issue 12)" of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from bench_stream import (  # noqa: E402
    DB_1X,
    DB_BACKUP,
    Bench,
    Measurement,
    build_dataset,
    database_size,
    fmt_runs,
    median,
    run_measured,
    table_data_size,
)
from results_file import git_revision, machine_lines, write_section  # noqa: E402

from tests.support.pgcluster import free_port, start_cluster  # noqa: E402

HEADING = "Dump formats: wall time and size (issue 12)"


@dataclass(frozen=True)
class Variant:
    """One dump setting as a job's `dump:` section."""

    name: str
    label: str
    dump: dict[str, object]


VARIANTS = (
    Variant("z9", "custom `-Fc -Z 9` (default)", {"format": "custom", "compression": 9}),
    Variant("z6", "custom `-Fc -Z 6`", {"format": "custom", "compression": 6}),
    Variant("z1", "custom `-Fc -Z 1`", {"format": "custom", "compression": 1}),
    Variant(
        "dir_j2",
        "directory `-Fd -j 2 -Z 9`",
        {"format": "directory", "compression": 9, "jobs": 2},
    ),
)


def write_config(bench: Bench, variant: Variant, job_dir: Path) -> Path:
    """Writes a local-mode config for one variant and returns its path."""
    assert bench.cluster is not None
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
                    "host": str(bench.cluster.socket_dir),
                    "port": bench.cluster.port,
                    "user": "postgres",
                },
                "dump": variant.dump,
                "globals": False,
            }
        ],
    }
    path = job_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_variant(bench: Bench, variant: Variant) -> Measurement:
    """Runs `db-backup run bench` with the variant's dump settings; returns time and size."""
    job_dir = bench.work / variant.name
    shutil.rmtree(job_dir, ignore_errors=True)
    job_dir.mkdir(parents=True)
    config = write_config(bench, variant, job_dir)
    argv = [str(DB_BACKUP), "--config", str(config), "run", "bench"]
    m, out = run_measured(variant.name, argv, bench.env(), 0)
    reports = sorted((job_dir / "reports").glob("*.json"))
    if not reports:
        raise RuntimeError(f"db-backup wrote no report: {out[-2000:]}")
    report = json.loads(reports[-1].read_text())
    if report.get("status") != "SUCCESS":
        raise RuntimeError(f"db-backup run failed: {report.get('errorMessage')}")
    m.dump_bytes = int(report["local"]["sizeBytes"])
    shutil.rmtree(job_dir, ignore_errors=True)
    return m


def dataset_ready(bench: Bench, scale: float) -> bool:
    """Returns whether the cached cluster has database `bench` built at `scale`."""
    assert bench.cluster is not None
    try:
        found = bench.cluster.psql("SELECT scale FROM bench_meta", DB_1X)
    except RuntimeError:
        return False
    return bool(found) and abs(float(found) - scale) < 1e-9


def render(
    command: str,
    pg_version: str,
    size: int,
    tables: int,
    runs: list[Measurement],
    reps: int,
    total_s: float,
) -> str:
    """Returns the RESULTS.md section body."""
    base = [m for m in runs if m.variant == "z9"]
    base_wall = median([m.wall_s for m in base])
    base_size = median([m.dump_bytes for m in base])
    lines = [
        f"Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; "
        f"db-backup at {git_revision(REPO)}.",
        "",
        f"Command: `{command}` (took {total_s / 60:.1f} min)",
        "",
        "Machine:",
        "",
        *machine_lines(),
        f"- {pg_version}",
        "",
        f"Dataset: bench_stream.py's database `{DB_1X}` (pg_database_size {size / 1e9:.2f} GB, "
        f"tables without indexes {tables / 1e9:.2f} GB; three tables of random words, md5 "
        "strings, numerics, timestamps, inet and jsonb), cached cluster with `fsync=off`.",
        "",
        f"Each variant is `db-backup run` in mode `local` (globals off), median of {reps} "
        "repetitions (min-max); the order of the variants rotates every repetition, so noise "
        "from other work on this shared machine (other benchmarks ran at the same time) hits "
        "every variant alike. CPU is user + system of db-backup and pg_dump (wait4()).",
        "",
        "| Dump setting | Wall time | vs `-Z 9` | CPU | Size | vs `-Z 9` |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for variant in VARIANTS:
        group = [m for m in runs if m.variant == variant.name]
        wall = median([m.wall_s for m in group])
        dump = median([m.dump_bytes for m in group])
        lines.append(
            f"| {variant.label} | {fmt_runs([m.wall_s for m in group])} | "
            f"{wall / base_wall:.2f}x | {fmt_runs([m.tree_cpu_s for m in group])} | "
            f"{dump / 1e6:.0f} MB | {dump / base_size:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Builds or reuses the dataset, runs the variants interleaved, prints and records."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions per variant")
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = about 1 GB of data")
    parser.add_argument("--cache", type=Path, default=Path("/var/tmp/db-backup-bench-formats"))
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    command = shlex.join([".venv/bin/python", "benchmarks/bench_formats.py", *sys.argv[1:]])
    started = time.monotonic()
    bench = Bench(args.cache)
    bench.cache.mkdir(parents=True, exist_ok=True)
    os.chmod(bench.cache, 0o755)
    shutil.rmtree(bench.work, ignore_errors=True)
    bench.work.mkdir(parents=True)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        bench.cluster = start_cluster(bench.cache / "cluster", free_port())
        if not dataset_ready(bench, args.scale):
            print(f"building the dataset at scale {args.scale} ...", file=sys.stderr)
            build_dataset(bench, args.scale, doubled=False)
        cluster = bench.cluster
        pg_version = cluster.psql("SELECT version()").split(" on ")[0]
        runs: list[Measurement] = []
        for rep in range(args.reps):
            shift = rep % len(VARIANTS)
            for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                m = run_variant(bench, variant)
                runs.append(m)
                print(
                    f"rep {rep + 1} {variant.name}: {m.wall_s:.1f} s, cpu {m.tree_cpu_s:.1f} s, "
                    f"{m.dump_bytes / 1e6:.1f} MB",
                    file=sys.stderr,
                    flush=True,
                )
        body = render(
            command,
            pg_version,
            database_size(cluster, DB_1X),
            table_data_size(cluster, DB_1X),
            runs,
            args.reps,
            time.monotonic() - started,
        )
        print(body)
        if not args.no_write:
            print(f"\nwritten to {write_section(HEADING, body)}")
        (bench.cache / "last-run.json").write_text(
            json.dumps({"runs": [m.__dict__ for m in runs]}, indent=1)
        )
    finally:
        if bench.cluster is not None:
            bench.cluster.stop()
        shutil.rmtree(bench.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
