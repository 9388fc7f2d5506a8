"""Restore and drill timings on the benchmark dataset (issue 9).

One `db-backup run` dumps the dataset of benchmarks/bench_stream.py (database `bench`, -Fc -Z 9,
local storage); the test writes exact per-table row counts into its report (`tables`) so the
drill compares real counts. Then four variants run interleaved (the order rotates every
repetition), each from the same dump:

(j1)      ``createdb`` + bare ``pg_restore -j 1 --exit-on-error`` into the benchmark cluster;
(j2)      the same with ``-j 2``;
(restore) ``db-backup restore REPORT --to-database ... -j 2`` (sha256 check, ``pg_restore --list``,
          create, ``pg_restore -j 2``) into the same cluster;
(drill)   ``db-backup drill bench``: a throwaway cluster (initdb, start), globals, sha256,
          ``pg_restore -j 2``, every table's count(*) compared with the report, cluster removed.

The benchmark cluster and the drill's throwaway cluster both run with fsync=off (see
tests/support/pgcluster.py and drill.SERVER_SETTINGS), so the comparison is of the work, not
of the disks' flush behaviour. Target: drill <= 1.15 x the bare ``pg_restore -j 2``.

Usage::

    .venv/bin/python benchmarks/bench_restore.py [--reps 3] [--scale 1.0] [--rebuild]

Not part of the test suite. Writes the section "Restore and drill (issue 9)" of
benchmarks/RESULTS.md.

With ``--oss`` (issue 20), the backup is stored only on the loopback OSS server
(tests/support/oss_server.py, its own process, no bandwidth limit) and two variants run
interleaved on the same object: the seed's manual way (oss2 download of the dump and its
``.sha256``, ``sha256sum -c``, ``createdb``, ``pg_restore -j 2``, in one child process) and
``db-backup restore REPORT --to-database ... -j 2``. That writes the section "Restore from OSS
against the manual way (issue 20)"; target <= 1.0x.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from bench_restore_oss import measure_oss, oss_way  # noqa: E402
from bench_stream import DB_1X, Bench, build_dataset, cluster_ready  # noqa: E402
from results_file import git_revision, machine_lines, write_section  # noqa: E402

from tests.support.pgcluster import free_port, start_cluster  # noqa: E402

DB_BACKUP = REPO / ".venv" / "bin" / "db-backup"
HEADING = "Restore and drill (issue 9)"
TARGET_DRILL_VS_RESTORE = 1.15
TARGET_DATABASE = "bench_restored"


def write_config(bench: Bench) -> Path:
    """Writes the db-backup config of the benchmark: local storage, drill under the work dir."""
    assert bench.cluster is not None
    work = bench.work
    drill_dir = work / "drill"
    drill_dir.mkdir(parents=True, exist_ok=True)
    for path in (bench.cache, work, drill_dir):
        os.chmod(path, 0o755)  # the throwaway cluster runs as postgres
    document = {
        "run_as": None,  # a root-started benchmark stays root (its directories are root's)
        "directories": {
            "data": str(work / "data"),
            "reports": str(work / "reports"),
            "state": str(work / "state"),
        },
        "storage": {"mode": "local"},
        "jobs": [
            {
                "name": "bench",
                "schedule": "0 2 * * *",
                "databases": DB_1X,
                "connection": {
                    "host": str(bench.cluster.socket_dir),
                    "port": bench.cluster.port,
                    "user": "postgres",
                },
                "drill": {"directory": str(drill_dir), "jobs": 2},
            }
        ],
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def record_counts(bench: Bench, report_path: Path) -> dict[str, int]:
    """Writes exact row counts of the (idle) benchmark database into the report."""
    assert bench.cluster is not None
    report = json.loads(report_path.read_text())
    tables = bench.cluster.psql(
        "SELECT schemaname || '.' || tablename FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
        DB_1X,
    ).splitlines()
    counts = {t: int(bench.cluster.psql(f"SELECT count(*) FROM {t}", DB_1X)) for t in tables}
    report["tables"] = counts
    report["rowCounts"] = "exact"
    report_path.write_text(json.dumps(report, indent=2))
    return counts


def timed(argv: list[str], env: dict[str, str]) -> float:
    """Runs argv to completion (it must succeed) and returns its wall time in seconds."""
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed: {done.stderr[-2000:]}")
    return wall


def main(argv: list[str] | None = None) -> int:
    """Builds or reuses the dataset, dumps once, measures the variants, records RESULTS.md."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions per variant")
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = about 1 GB of data")
    parser.add_argument("--rebuild", action="store_true", help="recreate the cached dataset")
    parser.add_argument("--cache", type=Path, default=Path("/var/tmp/db-backup-bench-restore"))
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    parser.add_argument(
        "--oss", action="store_true", help="restore from OSS against the manual way (issue 20)"
    )
    parser.add_argument("--manual-way", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.manual_way:
        return oss_way(args.manual_way)
    command = shlex.join([".venv/bin/python", "benchmarks/bench_restore.py", *sys.argv[1:]])
    bench = Bench(args.cache)
    bench.cache.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(bench.work, ignore_errors=True)
    bench.work.mkdir(parents=True)
    try:
        if args.rebuild:
            shutil.rmtree(bench.cache / "cluster", ignore_errors=True)
        bench.cluster = start_cluster(bench.cache / "cluster", free_port())
        cluster = bench.cluster
        if not cluster_ready(bench, args.scale):
            print(f"building the dataset at scale {args.scale} ...", file=sys.stderr)
            build_dataset(bench, args.scale)
        env = bench.env()
        if args.oss:
            return measure_oss(bench, args, command)
        config = write_config(bench)
        base = [str(DB_BACKUP), "--config", str(config), "--log-format", "json"]
        dump_s = timed([*base, "run", "bench"], env)
        [report_path] = sorted((bench.work / "reports").glob("*.json"))
        report = json.loads(report_path.read_text())
        dump = Path(report["local"]["file"])
        counts = record_counts(bench, report_path)
        db_size = int(cluster.psql(f"SELECT pg_database_size('{DB_1X}')"))
        conn = ["--host", str(cluster.socket_dir), "--port", str(cluster.port), "-U", "postgres"]
        bindir = cluster.bindir

        def reset() -> None:
            cluster.psql(f"DROP DATABASE IF EXISTS {TARGET_DATABASE}")

        def bare(jobs: int) -> float:
            reset()
            create = timed([str(bindir / "createdb"), *conn, TARGET_DATABASE], env)
            restore = timed(
                [str(bindir / "pg_restore"), *conn, "-d", TARGET_DATABASE, "--exit-on-error",
                 f"--jobs={jobs}", str(dump)],
                env,
            )  # fmt: skip
            return create + restore

        def command_restore() -> float:
            reset()
            return timed(
                [*base, "restore", str(report_path), "--to-database", TARGET_DATABASE, "-j", "2"],
                env,
            )

        drill_details: list[dict[str, float]] = []

        def drill() -> float:
            wall = timed([*base, "drill", "bench"], env)
            newest = max((bench.work / "reports" / "drills").glob("*.json"), key=os.path.getmtime)
            document = json.loads(newest.read_text())
            assert document["status"] == "SUCCESS", document["errorMessage"]
            assert document["tablesChecked"] == len(counts) and not document["mismatches"]
            drill_details.append(
                {"restore": document["restoreSeconds"], "duration": document["durationSeconds"]}
            )
            return wall

        variants: dict[str, Callable[[], float]] = {
            "j1": lambda: bare(1),
            "j2": lambda: bare(2),
            "restore": command_restore,
            "drill": drill,
        }
        order = list(variants)
        results: dict[str, list[float]] = {name: [] for name in order}
        for rep in range(args.reps):
            shift = rep % len(order)
            for name in order[shift:] + order[:shift]:
                wall = variants[name]()
                results[name].append(wall)
                print(f"rep {rep + 1} {name}: {wall:.1f} s", file=sys.stderr, flush=True)
        reset()
        body = render(
            args, command, results, drill_details, dump.stat().st_size, db_size, dump_s, counts
        )
        print(body)
        if not args.no_write:
            print(f"wrote {write_section(HEADING, body)}", file=sys.stderr)
    finally:
        if bench.cluster is not None:
            bench.cluster.stop()
    return 0


def med(values: list[float]) -> float:
    """Returns the median."""
    return statistics.median(values)


def runs(values: list[float]) -> str:
    """Returns 'median (min-max)'."""
    return f"{med(values):.1f} s ({min(values):.1f}-{max(values):.1f})"


def render(
    args: argparse.Namespace,
    command: str,
    results: dict[str, list[float]],
    drill_details: list[dict[str, float]],
    dump_size: int,
    db_size: int,
    dump_s: float,
    counts: dict[str, int],
) -> str:
    """Returns the RESULTS.md section."""
    j1, j2, restore, drill = (med(results[n]) for n in ("j1", "j2", "restore", "drill"))
    ratio = drill / j2
    verdict = "met" if ratio <= TARGET_DRILL_VS_RESTORE else "NOT met"
    drill_restore = med([d["restore"] for d in drill_details])
    rows = sum(counts.values())
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC at revision {git_revision(REPO)}, "
        f"`{command}` ({args.reps} interleaved repetitions, medians with min-max).",
        "",
        *machine_lines(),
        "",
        f"Dataset: `{DB_1X}` of benchmarks/bench_stream.py at scale {args.scale}: "
        f"{db_size / 1e6:.0f} MB in the server, {len(counts)} tables, {rows:,} rows; dump "
        f"(`-Fc -Z 9`) {dump_size / 1e6:.0f} MB, taken by `db-backup run` in {dump_s:.1f} s.",
        "",
        "| variant | wall time | vs bare `pg_restore -j 2` |",
        "| --- | --- | --- |",
        f"| bare `createdb` + `pg_restore -j 1` | {runs(results['j1'])} | {j1 / j2:.2f}x |",
        f"| bare `createdb` + `pg_restore -j 2` | {runs(results['j2'])} | 1.00x |",
        f"| `db-backup restore REPORT -j 2` | {runs(results['restore'])} | {restore / j2:.2f}x |",
        f"| `db-backup drill` (throwaway cluster) | {runs(results['drill'])} | {ratio:.2f}x |",
        "",
        f"- `-j 2` against `-j 1`: {j1 / j2:.2f}x faster ({j1:.1f} s -> {j2:.1f} s) on 2 cores; "
        "the data loads in parallel per table, the indexes and constraints after it.",
        f"- Drill against bare `pg_restore -j 2`: **{ratio:.2f}x** (target <= "
        f"{TARGET_DRILL_VS_RESTORE}x: {verdict}). Inside the drill, `pg_restore -j 2` itself took "
        f"{drill_restore:.1f} s (median of the drill reports' `restoreSeconds`); the rest is "
        "initdb and start of the throwaway cluster, the sha256 of the dump, the globals, "
        "count(*) of every table and removing the cluster.",
        f"- `db-backup restore` adds the sha256 check and `pg_restore --list` to the bare restore: "
        f"{restore / j2:.2f}x.",
        "- The machine is shared with other benchmark and test runs of the same repository; "
        "figures can move by several per cent between runs.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
