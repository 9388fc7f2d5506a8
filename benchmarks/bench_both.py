"""One large database in mode both: bare pg_dump, the custom format, and the directory format.

Three variants on bench_stream.py's database ``bench`` (about 1 GB at ``--scale 1.0``), run
interleaved (the order rotates every repetition, so noise from other work on the machine hits
every variant alike), with the loopback OSS server as its own process and no bandwidth limit:

(bare)     ``pg_dump -Fc -Z 9 -f FILE``: what a dump costs without db-backup;
(custom)   ``db-backup run`` in mode ``both``, ``-Fc -Z 9`` (the default): the dump streams to
           the local file and to an OSS multipart upload at once, with its sha256;
(dir-j2)   ``db-backup run`` in mode ``both``, ``format: directory, jobs: 2, compression: 9``:
           pg_dump writes the directory with 2 workers while each file it closes is uploaded
           (multipart where large, CRC-64 checked), with the ``.dump.d.sha256`` manifest;
and, to show where the directory variant's time goes:
(bare-dir) ``pg_dump -Fd -j 2 -Z 9 -f DIR``: what the directory format costs without db-backup;
(dir-local) ``db-backup run`` in mode ``local`` with the directory format: no upload.

Targets (issue 12): custom / bare <= 1.05 and dir-j2 / custom <= 0.60 (ratios of medians).

pg_dump's ``-j`` works table by table, so the directory format can only be as fast as its
largest share of tables allows: ``--split N`` runs the same variants on a copy of the database
(``bench_splitN``) whose three tables are each split into N tables by ``id % N`` (the same rows
and bytes, finer grains for pg_dump's workers).

Usage::

    .venv/bin/python benchmarks/bench_both.py [--reps 3] [--scale 1.0] [--split N] [--cache DIR]

Not part of the test suite. Writes the section "Mode both: custom and directory format against
bare pg_dump (issue 12)" of benchmarks/RESULTS.md (with ``--split N``: a section of its own).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from bench_formats import dataset_ready  # noqa: E402
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
)
from results_file import git_revision, machine_lines, write_section  # noqa: E402

from tests.support.pgcluster import free_port, start_cluster  # noqa: E402

HEADING = "Mode both: custom and directory format against bare pg_dump (issue 12)"
TARGET_CUSTOM = 1.05
TARGET_DIRECTORY = 0.60
DUMPS = {
    "custom": {"format": "custom", "compression": 9},
    "dir-j2": {"format": "directory", "compression": 9, "jobs": 2},
}


TABLES = ("customers", "orders", "events")


def make_split(bench: Bench, parts: int) -> str:
    """Creates (once) database `bench_split<parts>`: each table split into `parts` by id."""
    assert bench.cluster is not None
    name = f"{DB_1X}_split{parts}"
    if name in bench.cluster.psql("SELECT datname FROM pg_database").split():
        return name
    bench.cluster.psql(f"CREATE DATABASE {name} TEMPLATE {DB_1X}")
    statements = []
    for table in TABLES:
        for part in range(parts):
            statements.append(
                f"CREATE TABLE {table}_p{part} AS SELECT * FROM {table} WHERE id % {parts} = {part}"
            )
        statements.append(f"DROP TABLE {table}")
    bench.cluster.psql("; ".join(statements), name)
    bench.cluster.psql("VACUUM ANALYZE", name)
    return name


def run_bare_directory(bench: Bench, database: str) -> Measurement:
    """Runs bare `pg_dump -Fd -j 2 -Z 9` into a directory (db-backup's connection flags)."""
    output = bench.work / "bare.dump.d"
    shutil.rmtree(output, ignore_errors=True)
    argv = [a for a in bench.pg_dump_argv(database, output) if not a.startswith("--format")]
    argv[-1:-1] = ["--format=d", "--jobs=2"]
    assert bench.server is not None
    m, _ = run_measured("bare-dir", argv, bench.env(), bench.server.pid)
    m.dump_bytes = sum(p.stat().st_size for p in output.iterdir())
    shutil.rmtree(output)
    return m


def run_db_backup(bench: Bench, variant: str, database: str, mode: str = "both") -> Measurement:
    """Runs `db-backup run bench` in `mode` with the variant's dump settings."""
    assert bench.server is not None
    job_dir = bench.work / variant
    shutil.rmtree(job_dir, ignore_errors=True)
    job_dir.mkdir(parents=True)
    path = bench.write_config(database, job_dir)  # mode both, oss2, the loopback server
    config = yaml.safe_load(path.read_text())
    config["jobs"][0]["dump"] = DUMPS[variant.removesuffix("-local")]
    config["storage"]["mode"] = mode
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [str(DB_BACKUP), "--config", str(path), "run", "bench"]
    m, out = run_measured(variant, argv, bench.env(), bench.server.pid)
    reports = sorted((job_dir / "reports").glob("*.json"))
    if not reports:
        raise RuntimeError(f"{variant}: db-backup wrote no report: {out[-2000:]}")
    report = json.loads(reports[-1].read_text())
    if report.get("status") != "SUCCESS":
        raise RuntimeError(f"{variant}: db-backup run failed: {report.get('errorMessage')}")
    m.dump_bytes = int(report["local"]["sizeBytes"])
    m.steps = {"objects": float(len(report["remote"]["urls"]))}
    if mode == "local":
        m.dump_bytes = sum(p.stat().st_size for p in Path(report["local"]["file"]).iterdir())
    shutil.rmtree(job_dir, ignore_errors=True)
    bench.clear_bucket()
    return m


def render(
    command: str, pg_version: str, database: str, size: int, split: int, runs: list[Measurement]
) -> str:
    """Returns the RESULTS.md section body."""

    def group(name: str) -> list[Measurement]:
        return [m for m in runs if m.variant == name]

    def wall(name: str) -> float:
        return median([m.wall_s for m in group(name)])

    custom_ratio = wall("custom") / wall("bare")
    dir_ratio = wall("dir-j2") / wall("custom")
    labels = {
        "bare": "bare `pg_dump -Fc -Z 9 -f`",
        "custom": "db-backup, mode both, custom `-Fc -Z 9`",
        "dir-j2": "db-backup, mode both, directory `-Fd -j 2 -Z 9`",
        "bare-dir": "bare `pg_dump -Fd -j 2 -Z 9 -f`",
        "dir-j2-local": "db-backup, mode local, directory `-Fd -j 2 -Z 9`",
    }
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} at {git_revision(REPO)}.",
        *machine_lines(),
        f"- {pg_version}",
        "",
        f"Command: `{command}`",
        "",
        f"Dataset: bench_stream.py's database `{DB_1X}`"
        + (
            f", copied as `{database}` with each of its three tables split into {split} "
            "tables by `id % N` (the same rows)"
            if split
            else " (three tables)"
        )
        + f"; pg_database_size {size / 1e9:.2f} GB, "
        "cached cluster with `fsync=off`; globals off; OSS is the loopback server "
        "(`tests/support/oss_server.py`, its own process, no bandwidth limit).",
        "",
        "| variant | wall time (runs) | median | CPU of db-backup | CPU incl. children | "
        "OSS server CPU | size |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, label in labels.items():
        g = group(name)
        lines.append(
            f"| {label} | {fmt_runs([m.wall_s for m in g])} | {wall(name):.1f} s | "
            f"{median([m.own_cpu_s for m in g]):.1f} s | "
            f"{median([m.tree_cpu_s for m in g]):.1f} s | "
            f"{median([m.server_cpu_s for m in g]):.1f} s | "
            f"{median([m.dump_bytes for m in g]) / 1e6:.0f} MB |"
        )
    lines += [
        "",
        f"- mode both, custom / bare pg_dump (ratio of medians): **{custom_ratio:.3f}** "
        f"(target <= {TARGET_CUSTOM}: {'met' if custom_ratio <= TARGET_CUSTOM else 'missed'})",
        f"- directory `-j 2` / custom `-Z 9`, both in mode both (ratio of medians): "
        f"**{dir_ratio:.3f}** (target <= {TARGET_DIRECTORY}: "
        f"{'met' if dir_ratio <= TARGET_DIRECTORY else 'missed'})",
        f"- where the directory variant's time goes, against custom `-Z 9` in mode both: bare "
        f"`pg_dump -Fd -j 2` **{wall('bare-dir') / wall('custom'):.3f}**, db-backup in mode "
        f"local **{wall('dir-j2-local') / wall('custom'):.3f}**, in mode both "
        f"**{dir_ratio:.3f}**",
        "",
        "How it was measured: wall time from fork to wait4(); CPU of db-backup is utime + stime "
        "of its own process (sha256, the local write, the OSS client); CPU incl. children adds "
        "pg_dump (wait4()); the OSS server's CPU is read from /proc before and after each run.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Builds or reuses the dataset, runs the variants interleaved, prints and records."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions per variant")
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = about 1 GB of data")
    parser.add_argument("--cache", type=Path, default=Path("/var/tmp/db-backup-bench-formats"))
    parser.add_argument("--split", type=int, default=0, help="split each table into N tables")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    heading = HEADING + (f", tables split in {args.split}" if args.split else "")
    command = shlex.join([".venv/bin/python", "benchmarks/bench_both.py", *sys.argv[1:]])
    bench = Bench(args.cache)
    bench.cache.mkdir(parents=True, exist_ok=True)
    os.chmod(bench.cache, 0o755)
    shutil.rmtree(bench.work, ignore_errors=True)
    bench.work.mkdir(parents=True)
    try:
        bench.cluster = start_cluster(bench.cache / "cluster", free_port())
        if not dataset_ready(bench, args.scale):
            build_dataset(bench, args.scale, doubled=False)
        pg_version = bench.cluster.psql("SELECT version()").split(" on ")[0]
        database = make_split(bench, args.split) if args.split else DB_1X
        size = database_size(bench.cluster, database)
        bench.start_server(0)
        variants: dict[str, Callable[[], Measurement]] = {
            "bare": lambda: bench.run_bare(database),
            "custom": lambda: run_db_backup(bench, "custom", database),
            "dir-j2": lambda: run_db_backup(bench, "dir-j2", database),
            "bare-dir": lambda: run_bare_directory(bench, database),
            "dir-j2-local": lambda: run_db_backup(bench, "dir-j2-local", database, "local"),
        }
        order = list(variants)
        runs: list[Measurement] = []
        for rep in range(args.reps):
            shift = rep % len(order)
            for name in order[shift:] + order[:shift]:
                m = variants[name]()
                runs.append(m)
                print(
                    f"rep {rep + 1} {name}: {m.wall_s:.1f} s, own cpu {m.own_cpu_s:.1f} s, "
                    f"tree cpu {m.tree_cpu_s:.1f} s, server cpu {m.server_cpu_s:.1f} s, "
                    f"load {os.getloadavg()[0]:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
        body = render(command, pg_version, database, size, args.split, runs)
        print(body)
        if not args.no_write:
            print(f"\nwritten to {write_section(heading, body)}")
    finally:
        bench.stop_server()
        if bench.cluster is not None:
            bench.cluster.stop()
        shutil.rmtree(bench.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
