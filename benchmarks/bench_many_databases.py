"""A `databases: all` run of many small databases, with and without many other reports present.

One job (`databases: all`, mode `local`, defaults otherwise: globals, exact row counts, the
capacity check, retention) dumps 200 small databases (copies of one template with a few tables,
made with CREATE DATABASE ... TEMPLATE) of a throwaway cluster. Two variants, each with its own
data, reports and state directories, run interleaved (the order rotates every repetition):

(empty)    the reports directory holds only this job's reports of its previous run;
(crowded)  the same, plus 20,000 other reports (synthetic but valid: copies of a real report of
           this job, renamed to 50 other jobs and 8 databases each, hourly start times).

Each variant is run once untimed first (its report index built, the previous run's reports in
place); before every timed run, the reports (and dumps) of all but the job's latest run are
removed, so every timed run starts from the same state: one earlier run's 200 reports, whose
sizes the capacity estimate and the size guard read, and whose files retention looks at.
Wall time is that of `db-backup run JOB` from fork to exit; CPU is its user + system time.

Usage::

    .venv/bin/python benchmarks/bench_many_databases.py [--reps 3] [--databases 200]
        [--others 20000]
    .venv/bin/python benchmarks/bench_many_databases.py --compare consumers [--reps 7]
        [--profile]

Not part of the test suite. Writes the section "Many databases with many other reports
(issue 19)" of benchmarks/RESULTS.md; with `--compare consumers`, the issue 21 section (a bare
pg_dump loop, db-backup with consumers off and on, side by side: see many_consumers.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import many_consumers as mc  # noqa: E402
from results_file import git_revision, machine_lines, write_section  # noqa: E402

from tests.support.pgcluster import Cluster, free_port, start_cluster  # noqa: E402

DB_BACKUP = REPO / ".venv" / "bin" / "db-backup"
HEADING = "Many databases with many other reports (issue 19)"
JOB = "many"
TEMPLATE = "many_template"
OTHER_JOBS = 50
OTHER_DATABASES = 8
TARGET_RATIO = 1.10
VARIANTS = ("empty", "crowded")

TEMPLATE_SQL = """
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, created timestamptz NOT NULL);
CREATE TABLE orders (id int PRIMARY KEY, customer int NOT NULL REFERENCES customers,
                     total numeric(10,2) NOT NULL);
INSERT INTO customers SELECT i, md5(i::text), now() - i * interval '1 hour'
  FROM generate_series(1, 200) i;
INSERT INTO orders SELECT i, 1 + i % 200, (i % 977) / 7.0 FROM generate_series(1, 500) i;
"""


def database_names(count: int) -> list[str]:
    """Returns the names of the job's databases."""
    return [f"many_{number:03d}" for number in range(count)]


def ensure_databases(cluster: Cluster, count: int) -> None:
    """Creates the template and the `count` databases that are missing (kept between runs)."""
    existing = set(cluster.psql("SELECT datname FROM pg_database").split())
    if TEMPLATE not in existing:
        cluster.psql(f"CREATE DATABASE {TEMPLATE}")
        cluster.psql(TEMPLATE_SQL, TEMPLATE)
        # A template is not a database `databases: all` backs up (datistemplate).
        cluster.psql(f"ALTER DATABASE {TEMPLATE} IS_TEMPLATE true")
    for name in database_names(count):
        if name not in existing:
            cluster.psql(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    wanted = set(database_names(count))
    for name in existing:
        if name.startswith("many_") and name != TEMPLATE and name not in wanted:
            cluster.psql(f"DROP DATABASE {name}")


def write_config(cluster: Cluster, root: Path) -> Path:
    """Writes the one-job config of a variant under `root` and returns its path."""
    config = {
        "run_as": None,  # a root-started benchmark stays root (its directories are root's)
        "directories": {
            "data": str(root / "data"),
            "reports": str(root / "reports"),
            "state": str(root / "state"),
            "logs": None,
        },
        "storage": {"mode": "local"},
        "jobs": [
            {
                "name": JOB,
                "schedule": "0 3 1 1 *",
                "timezone": "UTC",
                "databases": "all",
                "exclude_databases": ["postgres"],
                "connection": {
                    "host": str(cluster.socket_dir),
                    "port": cluster.port,
                    "user": "postgres",
                },
            }
        ],
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def own_reports(reports_dir: Path) -> list[tuple[str, Path, dict[str, Any]]]:
    """Returns (startedAt, path, document) of every report of the job, oldest first."""
    found = []
    for path in reports_dir.glob("many_*.json"):
        document = json.loads(path.read_bytes())
        if document.get("job") == JOB:
            found.append((str(document["startedAt"]), path, document))
    return sorted(found, key=lambda item: item[0])


def keep_latest_run(root: Path, databases: int) -> None:
    """Removes the job's reports and dumps of every run but its latest (`databases` reports)."""
    found = own_reports(root / "reports")
    for _, path, document in found[:-databases]:
        for name in document.get("artefacts", []):
            target = root / "data" / name
            if target.is_dir():
                shutil.rmtree(target)
            elif name != path.name:
                target.unlink(missing_ok=True)
        path.unlink()


def other_reports(template: dict[str, Any], count: int) -> list[tuple[str, bytes]]:
    """Returns (file name, JSON) of `count` reports of other jobs, made from a real report."""
    text = json.dumps(template, indent=2, ensure_ascii=False) + "\n"
    old_stem = Path(str(template["local"]["file"])).name.removesuffix(".dump")
    host = old_stem.rsplit("_", 1)[1]
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    made = []
    for number in range(count):
        job = f"other-{number % OTHER_JOBS:02d}"
        database = f"app_{number // OTHER_JOBS % OTHER_DATABASES}"
        started = start - timedelta(hours=1 + number)
        stem = f"{database}_{started:%Y%m%dT%H%M%SZ}_{host}"
        document = json.loads(text.replace(old_stem, stem))
        document.update(
            job=job,
            database=database,
            id=f"00000000-0000-4000-8000-{number:012d}",
            startedAt=started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            finishedAt=(started + timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        made.append((f"{stem}.json", (json.dumps(document, indent=2) + "\n").encode()))
    return made


@dataclass
class Timed:
    """One timed run of a variant."""

    variant: str
    wall_s: float
    cpu_s: float


def run_job(config: Path, variant: str, databases: int) -> Timed:
    """Runs the job once; returns its wall and CPU time (every report must say SUCCESS)."""
    argv = [str(DB_BACKUP), "--config", str(config), "run", JOB]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    reported = done.stdout.decode().split()
    if done.returncode != 0 or len(reported) != databases:
        raise RuntimeError(f"{variant}: run failed: {done.stderr.decode()[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timed(variant, wall, cpu)


def median(values: list[float]) -> float:
    """Returns the median (0 for no values)."""
    return statistics.median(values) if values else 0.0


def runs_text(values: list[float]) -> str:
    """Returns the runs in order, one decimal each."""
    return ", ".join(f"{value:.1f}" for value in values)


def paired_ratios(runs: list[Timed]) -> list[float]:
    """Returns crowded / empty wall time of each repetition (the two runs next to each other)."""
    empty = [t.wall_s for t in runs if t.variant == "empty"]
    crowded = [t.wall_s for t in runs if t.variant == "crowded"]
    return [c / e for c, e in zip(crowded, empty, strict=True)]


def render(command: str, databases: int, others: int, runs: list[Timed]) -> str:
    """Returns the RESULTS.md section."""
    wall = {v: [t.wall_s for t in runs if t.variant == v] for v in VARIANTS}
    cpu = {v: [t.cpu_s for t in runs if t.variant == v] for v in VARIANTS}
    ratio = median(wall["crowded"]) / median(wall["empty"])
    cpu_ratio = median(cpu["crowded"]) / median(cpu["empty"])
    pairs = paired_ratios(runs)
    per_database_ms = (median(wall["crowded"]) - median(wall["empty"])) / databases * 1000
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} at {git_revision(REPO)}.",
        *machine_lines(),
        "",
        f"Command: `{command}`",
        "",
        f"One job, `databases: all` over {databases} small databases (two tables, 700 rows), "
        "mode `local`, defaults otherwise (globals, exact row counts, capacity check, "
        f"retention); {len(runs) // 2} repetitions per variant, interleaved. Each timed run "
        f"starts with the job's previous run's {databases} reports in place. CPU: user + "
        "system time of db-backup and its children (pg_dump, psql; not the server's).",
        "",
        "| variant | wall time per run (s) | median wall | median CPU |",
        "| --- | --- | ---: | ---: |",
        f"| no other reports | {runs_text(wall['empty'])} | {median(wall['empty']):.1f} s | "
        f"{median(cpu['empty']):.1f} s |",
        f"| {others:,} other reports | {runs_text(wall['crowded'])} | "
        f"{median(wall['crowded']):.1f} s | {median(cpu['crowded']):.1f} s |",
        "",
        f"- with / without other reports (ratio of median wall times): **{ratio:.3f}** "
        f"(target <= {TARGET_RATIO}: {'met' if ratio <= TARGET_RATIO else 'missed'}); "
        f"{per_database_ms:+.0f} ms per database",
        f"- the same per repetition (the two runs side by side): "
        f"{', '.join(f'{r:.3f}' for r in pairs)}; median {median(pairs):.3f}",
        f"- ratio of median CPU times: {cpu_ratio:.3f}",
    ]
    return "\n".join(lines)


def prepare(cluster: Cluster, work: Path, databases: int, others: int) -> dict[str, Path]:
    """Makes both variants' directories, runs each once untimed, adds the other reports."""
    configs = {}
    for variant in VARIANTS:
        shutil.rmtree(work / variant, ignore_errors=True)
        configs[variant] = write_config(cluster, work / variant)
    first = run_job(configs["empty"], "empty", databases)
    print(f"warm-up empty: {first.wall_s:.1f} s", file=sys.stderr, flush=True)
    _, _, template = own_reports(work / "empty" / "reports")[0]
    reports_dir = work / "crowded" / "reports"
    reports_dir.mkdir(parents=True, exist_ok=True)
    for name, data in other_reports(template, others):
        (reports_dir / name).write_bytes(data)
    # Untimed: builds the crowded variant's index (once, as on a host that has run before).
    warm = run_job(configs["crowded"], "crowded", databases)
    print(f"warm-up crowded: {warm.wall_s:.1f} s", file=sys.stderr, flush=True)
    return configs


def compare_consumers(cluster: Cluster, args: argparse.Namespace, command: str) -> str:
    """Measures the bare loop and db-backup with consumers off and on; returns the section."""
    mc.ensure_sink_database(cluster)
    webhook, url = mc.start_webhook()
    env = mc.child_env(cluster, url)
    work = args.cache / "consumers"
    configs = {}
    for variant in ("off", "on"):
        shutil.rmtree(work / variant, ignore_errors=True)
        configs[variant] = mc.write_config(cluster, work / variant, JOB, variant == "on", url)
        first = mc.run_db_backup(DB_BACKUP, configs[variant], JOB, variant, args.databases, env)
        print(f"warm-up {variant}: {first.wall_s:.1f} s", file=sys.stderr, flush=True)
    names = database_names(args.databases)
    runs: list[mc.Timed] = []
    loads: list[float] = []
    try:
        for rep in range(args.reps):
            loads.append(os.getloadavg()[0])
            shift = rep % len(mc.VARIANTS)
            for variant in mc.VARIANTS[shift:] + mc.VARIANTS[:shift]:
                if variant == "bare":
                    timed = mc.bare_loop(cluster, names, work / "bare")
                else:
                    keep_latest_run(configs[variant].parent, args.databases)
                    timed = mc.run_db_backup(
                        DB_BACKUP, configs[variant], JOB, variant, args.databases, env
                    )
                runs.append(timed)
                print(
                    f"rep {rep + 1} {variant}: {timed.wall_s:.2f} s (cpu {timed.cpu_s:.2f} s)",
                    file=sys.stderr,
                    flush=True,
                )
        if args.profile:
            keep_latest_run(configs["on"].parent, args.databases)
            print(mc.profile_run(DB_BACKUP, configs["on"], JOB, env), file=sys.stderr)
    finally:
        webhook.shutdown()
    if not runs:
        raise SystemExit("--reps 0: nothing measured (the profile, if asked for, is above)")
    head = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} at {git_revision(REPO)}.",
        *machine_lines(),
    ]
    return mc.render(command, args.databases, runs, head, loads)


def main(argv: list[str] | None = None) -> int:
    """Starts or reuses the cluster, measures both variants interleaved, records the result."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--databases", type=int, default=200)
    parser.add_argument("--others", type=int, default=20_000)
    parser.add_argument("--cache", type=Path, default=Path("/var/tmp/db-backup-bench-many"))
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--compare", choices=["reports", "consumers"], default="reports")
    parser.add_argument("--profile", action="store_true", help="consumers: cProfile one run")
    args = parser.parse_args(argv)
    command = shlex.join([".venv/bin/python", "benchmarks/bench_many_databases.py", *sys.argv[1:]])
    args.cache.mkdir(parents=True, exist_ok=True)
    args.cache.chmod(0o755)
    cluster = start_cluster(args.cache / "cluster", free_port())
    if args.compare == "consumers":
        try:
            ensure_databases(cluster, args.databases)
            body = compare_consumers(cluster, args, command)
        finally:
            cluster.stop()
        print(body)
        if not args.no_write:
            print(f"written to {write_section(mc.HEADING, body)}", file=sys.stderr)
        return 0
    try:
        ensure_databases(cluster, args.databases)
        configs = prepare(cluster, args.cache / "work", args.databases, args.others)
        runs: list[Timed] = []
        for rep in range(args.reps):
            order = VARIANTS[rep % 2 :] + VARIANTS[: rep % 2]
            for variant in order:
                keep_latest_run(configs[variant].parent, args.databases)
                timed = run_job(configs[variant], variant, args.databases)
                runs.append(timed)
                print(
                    f"rep {rep + 1} {variant}: {timed.wall_s:.1f} s (cpu {timed.cpu_s:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        cluster.stop()
    body = render(command, args.databases, args.others, runs)
    print(body)
    if not args.no_write:
        print(f"written to {write_section(HEADING, body)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
