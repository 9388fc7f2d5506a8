"""What client-side encryption with age costs: mode `both` with encryption against without.

Two variants run interleaved (the order alternates every repetition) on bench_stream.py's
dataset (realistic entropy: words, md5 strings, numerics, timestamps, jsonb):

(plain)  ``db-backup run`` with ``storage.mode: both`` (local file + OSS multipart upload from the
         pipe) against the loopback OSS server (separate process, no bandwidth limit);
(age)    the same job with ``storage.encryption.age.recipients`` set: pg_dump -> age -> sinks.

Peak RSS is VmHWM of the db-backup Python process itself (pg_dump and age, its children, are not
included), polled every 50 ms (bench_stream.run_measured); CPU incl. children adds pg_dump and
age (wait4()).

Usage::

    .venv/bin/python benchmarks/bench_encrypt.py [--reps 5] [--scale 0.25]

Not part of the test suite. Writes the section "Client-side encryption with age (issue 13)" of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_stream import (  # noqa: E402
    DB_1X,
    DB_BACKUP,
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

HEADING = "Client-side encryption with age (issue 13)"
TARGET_RATIO = 1.03
TARGET_RSS_DELTA_MB = 10.0


def age_recipient(work: Path) -> str:
    """Makes a throwaway age identity in `work` and returns its public key."""
    key = work / "age-identity.txt"
    key.unlink(missing_ok=True)
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    return subprocess.run(
        ["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True
    ).stdout.strip()


def run_variant(bench: Bench, variant: str, recipient: str) -> Measurement:
    """Runs the mode-both job once, encrypted or not; every report must say SUCCESS."""
    assert bench.server is not None
    job_dir = bench.work / variant
    shutil.rmtree(job_dir, ignore_errors=True)
    job_dir.mkdir(parents=True)
    path = bench.write_config(DB_1X, job_dir)
    if variant == "age":
        config = yaml.safe_load(path.read_text())
        config["storage"]["encryption"] = {"age": {"recipients": [recipient]}}
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [str(DB_BACKUP), "--config", str(path), "run", "bench"]
    m, out = run_measured(variant, argv, bench.env(), bench.server.pid)
    [report] = [json.loads(p.read_text()) for p in (job_dir / "reports").glob("*.json")]
    if report["status"] != "SUCCESS":
        raise RuntimeError(f"{variant}: {report['errorMessage']} {out[-2000:]}")
    stored = Path(report["local"]["file"])
    if variant == "age" and not stored.read_bytes()[:22] == b"age-encryption.org/v1\n":
        raise RuntimeError("the encrypted variant stored something that is not an age file")
    m.dump_bytes = int(report["local"]["sizeBytes"])
    shutil.rmtree(job_dir, ignore_errors=True)
    bench.clear_bucket()
    return m


def render(command: str, size: int, runs: list[Measurement], scale: float) -> str:
    """Returns the RESULTS.md section."""

    def of(variant: str) -> list[Measurement]:
        return [m for m in runs if m.variant == variant]

    plain, age = of("plain"), of("age")
    wall_plain, wall_age = median([m.wall_s for m in plain]), median([m.wall_s for m in age])
    hwm_plain, hwm_age = median([m.own_hwm_mb for m in plain]), median([m.own_hwm_mb for m in age])
    ratio = wall_age / wall_plain
    # Each repetition runs both variants back to back: their ratio cancels slow drifts of the
    # machine's load better than the ratio of the medians.
    paired = median([a.wall_s / p.wall_s for p, a in zip(plain, age, strict=True)])
    delta_mb = (hwm_age - hwm_plain) * 1024 * 1024 / 1e6
    bytes_plain = int(median([m.dump_bytes for m in plain]))
    bytes_age = int(median([m.dump_bytes for m in age]))
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} at {git_revision(HERE.parent)}.",
        *machine_lines(),
        "",
        f"Command: `{command}`",
        "",
        f"Dataset at `--scale {scale}`: database `{DB_1X}` of {size / 1e6:.0f} MB "
        f"(pg_database_size), `-Fc -Z 9`, storage mode `both` (local file + OSS multipart upload "
        f"to the loopback server, no bandwidth limit), globals off; dump "
        f"{bytes_plain / 1e6:.1f} MB, encrypted {bytes_age / 1e6:.1f} MB "
        f"({100 * (bytes_age - bytes_plain) / bytes_plain:+.3f} %: age's header and a 16-byte "
        f"tag per 64 KiB). {len(plain)} runs each, interleaved (the order alternates every "
        "repetition).",
        "",
        "| variant | wall time (runs) | median wall | median peak RSS (VmHWM) | "
        "median CPU of db-backup | median CPU incl. pg_dump and age |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        *(
            f"| {label} | {fmt_runs([m.wall_s for m in group])} | "
            f"{median([m.wall_s for m in group]):.1f} s | "
            f"{median([m.own_hwm_mb for m in group]):.1f} MiB | "
            f"{median([m.own_cpu_s for m in group]):.2f} s | "
            f"{median([m.tree_cpu_s for m in group]):.2f} s |"
            for label, group in (("mode both", plain), ("mode both + age", age))
        ),
        "",
        f"- wall time, age / plain (ratio of medians): **{ratio:.3f}** (target <= "
        f"{TARGET_RATIO}: {'met' if ratio <= TARGET_RATIO else 'missed'}); median of the "
        f"per-repetition ratios: {paired:.3f}",
        f"- peak RSS of db-backup, age - plain (medians): **{delta_mb:+.1f} MB** (target within "
        f"{TARGET_RSS_DELTA_MB:.0f} MB: {'met' if abs(delta_mb) <= TARGET_RSS_DELTA_MB else 'missed'})",
        "",
        "How it was measured: wall time from fork to wait4() of `db-backup run`; peak RSS is the "
        "VmHWM of the db-backup process itself (age and pg_dump are its children and not "
        "included; age streams in 64 KiB chunks; its own peak RSS is about 5 MiB by `/usr/bin/time -f %M`); CPU incl. "
        "children is wait4()'s user + sys of db-backup, pg_dump and age. The machine is shared "
        "(see the load average above): the spread of the wall times is mostly other work; the "
        "CPU columns are the steadier measure of what encryption costs.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Builds or reuses the dataset, measures the two variants interleaved, records the result."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--cache", type=Path, default=Path("/var/tmp/db-backup-bench-age"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    command = shlex.join([".venv/bin/python", "benchmarks/bench_encrypt.py", *sys.argv[1:]])
    bench = Bench(args.cache)
    bench.cache.mkdir(parents=True, exist_ok=True)
    os.chmod(bench.cache, 0o755)
    shutil.rmtree(bench.work, ignore_errors=True)
    bench.work.mkdir(parents=True)
    try:
        bench.cluster = start_cluster(bench.cache / "cluster", free_port())
        if not cluster_ready(bench, args.scale):
            print(f"building the dataset at scale {args.scale} ...", file=sys.stderr)
            build_dataset(bench, args.scale)
        bench.start_server(0)
        recipient = age_recipient(bench.work)
        size = database_size(bench.cluster, DB_1X)
        runs: list[Measurement] = []
        for rep in range(args.reps):
            for variant in ("plain", "age") if rep % 2 == 0 else ("age", "plain"):
                m = run_variant(bench, variant, recipient)
                runs.append(m)
                print(
                    f"rep {rep + 1} {variant}: {m.wall_s:.1f} s, hwm {m.own_hwm_mb:.1f} MiB, "
                    f"tree cpu {m.tree_cpu_s:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
        body = render(command, size, runs, args.scale)
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
