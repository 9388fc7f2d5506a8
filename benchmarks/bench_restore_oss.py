"""Restore from OSS against the seed's manual way (issue 20); run by `bench_restore.py --oss`.

The backup is made once by `db-backup run` with `storage.mode: oss` (no local copy), so both
variants start from the same object on the loopback OSS server:

(manual)  one child process: oss2 `get_object_to_file` of the dump and its `.sha256` (oss2's
          CRC-64 check on), `sha256sum -c`, `createdb`, `pg_restore -j 2 --exit-on-error`;
(restore) `db-backup restore REPORT --to-database ... -j 2` (download with CRC-64, sha256
          against the report and the `.sha256`, `pg_restore --list`, create, `pg_restore -j 2`).

Each variant restores into the same database name of the benchmark cluster, dropped before
every repetition; the order alternates. The restored row counts are compared with the source
once per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml
from bench_stream import ACCESS_KEY_ID, ACCESS_KEY_SECRET, BUCKET, DB_1X, REGION, Bench
from results_file import git_revision, machine_lines, write_section

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PYTHON = REPO / ".venv" / "bin" / "python"
DB_BACKUP = REPO / ".venv" / "bin" / "db-backup"
HEADING = "Restore from OSS against the manual way (issue 20)"
TARGET = "bench_from_oss"
TARGET_RATIO = 1.0


def oss_config(bench: Bench) -> Path:
    """Writes the config of the OSS benchmark: mode oss, no roles file, job `bench`."""
    assert bench.cluster is not None
    job_dir = bench.work / "job"
    config = {
        "run_as": None,
        "directories": {k: str(job_dir / k) for k in ("data", "reports", "state")},
        "storage": {
            "mode": "oss",
            "tool": "oss2",
            "oss": {
                "endpoint": bench.endpoint,
                "bucket": BUCKET,
                "region": REGION,
                "signature_version": "v4",
                "access_key_id": {"env": "BENCH_OSS_ID"},
                "access_key_secret": {"env": "BENCH_OSS_SECRET"},
            },
        },
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
                "dump": {"format": "custom", "compression": 9},
                "globals": False,
            }
        ],
    }
    job_dir.mkdir(parents=True, exist_ok=True)
    path = job_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def oss_way(spec_json: str) -> int:
    """The manual way, as one process: download, sha256sum -c, createdb, pg_restore -j 2."""
    import oss2

    spec = json.loads(spec_json)
    workdir = Path(spec["dir"])
    workdir.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    started = time.monotonic()
    bucket = oss2.Bucket(
        oss2.AuthV4(os.environ["BENCH_OSS_ID"], os.environ["BENCH_OSS_SECRET"]),
        spec["endpoint"],
        BUCKET,
        region=REGION,
    )
    name = spec["key"].rsplit("/", 1)[-1]
    bucket.get_object_to_file(spec["key"], str(workdir / name))
    bucket.get_object_to_file(f"{spec['key']}.sha256", str(workdir / f"{name}.sha256"))
    times["download_s"] = time.monotonic() - started
    mark = time.monotonic()
    subprocess.run(
        ["sha256sum", "-c", f"{name}.sha256"], cwd=workdir, check=True, stdout=subprocess.DEVNULL
    )
    times["sha256_s"] = time.monotonic() - mark
    mark = time.monotonic()
    subprocess.run(["createdb", *spec["conn"], spec["database"]], check=True)
    times["createdb_s"] = time.monotonic() - mark
    mark = time.monotonic()
    subprocess.run(
        ["pg_restore", *spec["conn"], "-d", spec["database"], "--exit-on-error", "-j", "2",
         str(workdir / name)],
        check=True,
    )  # fmt: skip
    times["pg_restore_s"] = time.monotonic() - mark
    shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(times))
    return 0


def run_ours(argv: list[str], env: dict[str, str]) -> tuple[float, dict[str, float]]:
    """Runs db-backup restore; returns its wall time and when its progress lines appeared."""
    started = time.monotonic()
    child = subprocess.Popen(
        argv, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, text=True
    )
    marks: dict[str, float] = {}
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith("verified sha256"):
            marks["downloaded_and_verified_s"] = time.monotonic() - started
    code = child.wait()
    wall = time.monotonic() - started
    if code != 0:
        raise RuntimeError(f"db-backup restore failed with status {code}")
    return wall, marks


def counts(bench: Bench, database: str) -> dict[str, int]:
    """Returns count(*) of every user table of `database`."""
    assert bench.cluster is not None
    tables = bench.cluster.psql(
        "SELECT schemaname || '.' || tablename FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
        database,
    ).splitlines()
    return {t: int(bench.cluster.psql(f"SELECT count(*) FROM {t}", database)) for t in tables}


def measure_oss(bench: Bench, args: argparse.Namespace, command: str) -> int:
    """Backs up to OSS once, measures both variants interleaved, records RESULTS.md."""
    cluster = bench.cluster
    assert cluster is not None
    env = bench.env()
    env["BENCH_OSS_ID"], env["BENCH_OSS_SECRET"] = ACCESS_KEY_ID, ACCESS_KEY_SECRET
    bench.start_server(0)
    try:
        config = oss_config(bench)
        base = [str(DB_BACKUP), "--config", str(config), "--log-format", "json"]
        subprocess.run([*base, "run", "bench"], env=env, check=True, capture_output=True)
        [report_path] = sorted((bench.work / "job" / "reports").glob("*.json"))
        report = json.loads(report_path.read_text())
        assert report["status"] == "SUCCESS" and not report["local"]["file"], report
        key = report["remote"]["urls"][0].split("/", 3)[3]
        conn = ["-h", str(cluster.socket_dir), "-p", str(cluster.port), "-U", "postgres"]
        spec = {"endpoint": bench.endpoint, "key": key, "dir": str(bench.work / "manual"),
                "conn": conn, "database": TARGET}  # fmt: skip
        manual_argv = [
            str(PYTHON),
            str(HERE / "bench_restore.py"),
            "--manual-way",
            json.dumps(spec),
        ]
        ours_argv = [*base, "restore", str(report_path), "--to-database", TARGET, "-j", "2"]
        expected = counts(bench, DB_1X)
        results: dict[str, list[float]] = {"manual": [], "restore": []}
        steps: dict[str, list[dict[str, float]]] = {"manual": [], "restore": []}
        for rep in range(args.reps):
            order = ["manual", "restore"] if rep % 2 == 0 else ["restore", "manual"]
            for name in order:
                cluster.psql(f"DROP DATABASE IF EXISTS {TARGET}")
                started = time.monotonic()
                if name == "manual":
                    out = subprocess.run(manual_argv, env=env, check=True, capture_output=True)
                    wall = time.monotonic() - started
                    steps[name].append(json.loads(out.stdout.decode().strip().splitlines()[-1]))
                else:
                    wall, marks = run_ours(ours_argv, env)
                    steps[name].append(marks)
                if rep < 2:  # both variants checked once, outside the timing
                    assert counts(bench, TARGET) == expected, name
                results[name].append(wall)
                print(f"rep {rep + 1} {name}: {wall:.1f} s", file=sys.stderr, flush=True)
        cluster.psql(f"DROP DATABASE IF EXISTS {TARGET}")
        size = int(report["local"].get("sizeBytes") or 0) or int(report.get("sizeBytes", 0))
        body = render(args, command, results, steps, size, expected)
        print(body)
        if not args.no_write:
            print(f"wrote {write_section(HEADING, body)}", file=sys.stderr)
    finally:
        bench.stop_server()
    return 0


def render(
    args: argparse.Namespace,
    command: str,
    results: dict[str, list[float]],
    steps: dict[str, list[dict[str, float]]],
    dump_size: int,
    expected: dict[str, int],
) -> str:
    """Returns the RESULTS.md section."""
    manual, ours = (statistics.median(results[n]) for n in ("manual", "restore"))
    ratio = ours / manual
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    pairs = zip(results["restore"], results["manual"], strict=True)
    paired = statistics.median(ours_s / manual_s for ours_s, manual_s in pairs)

    def step(name: str, key: str) -> float:
        return statistics.median(s[key] for s in steps[name] if key in s)

    def runs(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} s ({min(values):.1f}-{max(values):.1f})"

    manual_steps = ", ".join(
        f"{key.removesuffix('_s')} {step('manual', key):.1f} s"
        for key in ("download_s", "sha256_s", "createdb_s", "pg_restore_s")
    )
    ours_first = step("restore", "downloaded_and_verified_s")
    return "\n".join(
        [
            f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC at revision {git_revision(REPO)}, "
            f"`{command}` ({args.reps} repetitions, order alternating, medians with min-max).",
            "",
            *machine_lines(),
            "",
            f"Dataset: `{DB_1X}` of benchmarks/bench_stream.py at scale {args.scale}: "
            f"{len(expected)} tables, {sum(expected.values()):,} rows; dump (`-Fc -Z 9`) "
            f"{dump_size / 1e6:.0f} MB, stored only on the loopback OSS server (its own "
            "process, no bandwidth limit).",
            "",
            "| variant | wall time | vs manual |",
            "| --- | --- | --- |",
            f"| manual: oss2 download, `sha256sum -c`, `createdb`, `pg_restore -j 2` | "
            f"{runs(results['manual'])} | 1.00x |",
            f"| `db-backup restore REPORT -j 2` (from OSS) | {runs(results['restore'])} | "
            f"**{ratio:.2f}x** |",
            "",
            f"- Ratio **{ratio:.2f}x** (target <= {TARGET_RATIO}x: {verdict}); the median of "
            f"the per-repetition ratios (each pair ran back to back) is {paired:.2f}x.",
            f"- Manual way, medians per step: {manual_steps}.",
            f"- `db-backup restore`: download, CRC-64 and sha256 done after {ours_first:.1f} s "
            f"(median); `pg_restore --list`, create and `pg_restore -j 2` took the rest "
            f"({ours - ours_first:.1f} s).",
            "- Both restored databases were checked against the source's row counts.",
        ]
    )
