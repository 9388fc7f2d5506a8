"""Cost of `db-backup status` and of one retention step as reports pile up: full read vs index.

For 200, 2,000 and 20,000 generated reports of one job and one database (realistic documents,
hourly start times), measured side by side, interleaved (the order rotates every repetition):

- `db-backup status` as a command, wall time from fork to exit:
  before  the previous version's command (`--before`, the db-backup of a checkout of the commit
          before the index; it reads every report);
  warm    this version, index up to date;
  +1      this version, one new report since the index was last used (what follows every run);
  cold    this version, no index yet (its one-off rebuild); measured once per count;
  and, for the floor, this version's `status` over an empty reports directory.
- One retention step in-process (what `job.apply_retention` does before it deletes anything:
  read the job's reports of the database, then `choose_expired`), each time after one new
  report appeared, as in a run:
  before  `report.load_reports` + filter + `retention.backup_of` (the code before the index);
  listed  `report_index.retention_backups` listing the directory (the new report written
          behind the index's back, as before `own_change`);
  after   the run's own report written through `report_index.own_change` (timed apart), then
          `report_index.retention_backups(..., quick=True)`, as `job._finish` does.

Usage::

    .venv/bin/python benchmarks/bench_reports.py [--before /path/to/old/.venv/bin/db-backup]
        [--reps 5] [--counts 200,2000,20000]

Not part of the test suite. Writes the section "Reports index: status and retention (issue 12)"
of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "src"))

from results_file import git_revision, machine_lines, write_section  # noqa: E402

from db_backup.reports import index as report_index  # noqa: E402
from db_backup.reports.model import SUCCESS, Report, load_reports, stem  # noqa: E402
from db_backup.reports.retention import Backup, backup_of, choose_expired  # noqa: E402
from db_backup.util.fsutil import write_atomically  # noqa: E402

DB_BACKUP = REPO / ".venv" / "bin" / "db-backup"
HEADING = "Reports index: status and retention (issue 12)"
JOB = "hourly"
DATABASE = "shop"
# Hourly reports up to about now, kept by a retention window longer than all of them: the steady
# state of a host that keeps its history (the 20,000 reports kept for 90 days).
T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=25_000)
RETENTION_DAYS = 1100
KEEP_LAST = 3
TARGET_STATUS_S = 0.3


def report_document(number: int) -> tuple[str, bytes]:
    """Returns (file name, JSON bytes) of the report of run `number` (hourly, every 7th failed)."""
    started = T0 + timedelta(hours=number)
    name = stem(DATABASE, started, "db01")
    report = Report(
        job=JOB,
        database=DATABASE,
        host="127.0.0.1",
        port=5432,
        mode="both",
        tool="oss2",
        stem=name,
        started=started,
        status=SUCCESS if number % 7 else "FAILED",
        local_file=f"/var/lib/db-backup/data/{name}.dump",
        globals_file=f"/var/lib/db-backup/data/{name}_globals.sql",
        checksum_file=f"/var/lib/db-backup/data/{name}.dump.sha256",
        sha256="ab" * 32,
        size_bytes=123_456_789 + number,
        remote_urls=[f"oss://bucket/postgres/backups/{name}.dump"],
        artefacts=[f"{name}.dump", f"{name}_globals.sql", f"{name}.dump.sha256"],
        pg_dump_version="15.18",
        server_version="15.18",
    )
    report.finished = started + timedelta(minutes=3)
    document = json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n"
    return f"{name}.json", document.encode()


def populate(reports_dir: Path, count: int) -> int:
    """Writes `count` reports (plain writes: generating 20,000 with fsync would take minutes)."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        name, data = report_document(number)
        (reports_dir / name).write_bytes(data)
    return count


def write_config(root: Path, name: str = "config.yaml", run_as: bool = True) -> Path:
    """Writes a one-job local config under `root` and returns its path.

    `run_as: false` leaves the key out, for the version before it existed (which stays root).
    """
    root.mkdir(parents=True, exist_ok=True)
    config: dict[str, object] = {
        "run_as": None,  # a root-started benchmark stays root (its directories are root's)
        "directories": {
            "data": str(root / "data"),
            "reports": str(root / "reports"),
            "state": str(root / "state"),
            "logs": None,
        },
        "storage": {"mode": "local"},
        "jobs": [{"name": JOB, "schedule": "0 * * * *", "databases": [DATABASE]}],
    }
    if not run_as:
        del config["run_as"]
    path = root / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


CPU: dict[str, list[float]] = {}  # variant -> CPU seconds (user + system) of each command


def time_command(argv: list[str], variant: str = "") -> float:
    """Runs argv (output discarded, must exit 0) and returns its wall time in seconds.

    The command's CPU time (user + system, from the children's rusage) goes to CPU[variant].
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed: {done.stderr.decode()[-2000:]}")
    if variant:
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        CPU.setdefault(variant, []).append(cpu)
    return elapsed


def retention_before(reports_dir: Path) -> list[Backup]:
    """The retention step as it was: every report parsed."""
    reports, _ = load_reports(reports_dir)
    own = [r for r in reports if r.job == JOB and r.document["database"] == DATABASE]
    backups = [backup_of(r) for r in own]
    choose_expired(backups, days=RETENTION_DAYS, keep_last=KEEP_LAST, now=datetime.now(UTC))
    return backups


LISTINGS = [0]  # how many times the index listed the reports directory in this process


def _counted_listing(
    real: Callable[[Path], dict[bytes, bytes | None]],
) -> Callable[[Path], dict[bytes, bytes | None]]:
    def listing(reports_dir: Path) -> dict[bytes, bytes | None]:
        LISTINGS[0] += 1
        return real(reports_dir)

    return listing


report_index._listing = _counted_listing(report_index._listing)  # type: ignore[assignment]


def retention_after(reports_dir: Path, index: Path, quick: bool = True) -> list[Backup]:
    """The retention step through the index, as `job.apply_retention` takes it.

    `quick=False`: as before the step could skip the listing (every step lists).
    """
    now = datetime.now(UTC)
    backups = report_index.retention_backups(
        reports_dir,
        index,
        JOB,
        DATABASE,
        days=RETENTION_DAYS,
        keep_last=KEEP_LAST,
        now=now,
        quick=quick,
    )
    choose_expired(backups, days=RETENTION_DAYS, keep_last=KEEP_LAST, now=now)
    return backups


IMPORTS = ("jsonschema", "structlog", "croniter", "yaml", "sqlite3", "db_backup.reports.index")


def import_breakdown(config: Path, reps: int) -> dict[str, float]:
    """Returns median seconds of the interpreter alone and of the main imports of `status`."""
    python = str(REPO / ".venv" / "bin" / "python")
    found: dict[str, list[float]] = {"interpreter (python -c pass)": []}
    for _ in range(reps):
        found["interpreter (python -c pass)"].append(time_command([python, "-c", "pass"]))
        done = subprocess.run(
            [python, "-X", "importtime", "-m", "db_backup.cli", "--config", str(config), "status"],
            capture_output=True,
            text=True,
            check=True,
        )
        for line in done.stderr.splitlines():
            parts = line.split("|")
            if len(parts) == 3 and parts[2].strip() in IMPORTS:
                found.setdefault(f"import {parts[2].strip()}", []).append(int(parts[1]) / 1e6)
    return {name: median(values) for name, values in found.items()}


def median(values: list[float]) -> float:
    return statistics.median(values)


def fmt(values: list[float]) -> str:
    """Returns 'median (min-max)' in milliseconds, or seconds from 1 s up."""
    m = median(values)
    if m >= 1:
        return f"{m:.2f} s ({min(values):.2f}-{max(values):.2f})"
    return f"{m * 1000:.0f} ms ({min(values) * 1000:.0f}-{max(values) * 1000:.0f})"


def measure(count: int, reps: int, before: Path | None, work: Path) -> dict[str, list[float]]:
    """Returns the timings of every variant at one report count."""
    root = work / f"n{count}"
    shutil.rmtree(root, ignore_errors=True)
    config = write_config(root)
    reports_dir = root / "reports"
    index = report_index.default_path(root / "state")
    next_number = populate(reports_dir, count)
    status_new = [str(DB_BACKUP), "--config", str(config), "status"]
    results: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)

    add("status cold", time_command(status_new))  # builds the index
    if not index.exists():
        raise RuntimeError("status did not create the index")

    def new_report() -> None:
        nonlocal next_number
        name, data = report_document(next_number)
        (reports_dir / name).write_bytes(data)
        next_number += 1

    def status_plus_one() -> float:
        new_report()
        return time_command(status_new, f"{count}:status +1")

    def ret_before() -> float:
        new_report()
        cpu, started = time.process_time(), time.perf_counter()
        retention_before(reports_dir)
        CPU.setdefault(f"{count}:retention before", []).append(time.process_time() - cpu)
        return time.perf_counter() - started

    def ret_listed() -> float:
        new_report()
        cpu, started = time.process_time(), time.perf_counter()
        retention_after(reports_dir, index, quick=False)
        CPU.setdefault(f"{count}:retention listed", []).append(time.process_time() - cpu)
        return time.perf_counter() - started

    def own_report() -> None:
        """Writes the next report as a run does (`job._finish`): atomically, through the index."""
        nonlocal next_number
        name, data = report_document(next_number)
        next_number += 1
        cpu, started = time.process_time(), time.perf_counter()
        report_index.own_change(
            reports_dir,
            index,
            [name],
            lambda: write_atomically(reports_dir / name, data, 0o640),
        )
        CPU.setdefault(f"{count}:own write", []).append(time.process_time() - cpu)
        add("own write", time.perf_counter() - started)

    def ret_after() -> float:
        # Untimed: the index in step with the directory, as the previous run's own changes
        # leave it (the other variants here write behind its back, as no run does).
        report_index._settled_stat(reports_dir, wait_s=1.0)
        report_index.backups(reports_dir, index, JOB, DATABASE)
        own_report()
        listed = LISTINGS[0]
        cpu, started = time.process_time(), time.perf_counter()
        retention_after(reports_dir, index)
        CPU.setdefault(f"{count}:retention after", []).append(time.process_time() - cpu)
        elapsed = time.perf_counter() - started
        if LISTINGS[0] != listed:
            raise RuntimeError("the retention step after the run's own report listed the directory")
        return elapsed

    variants: list[tuple[str, Callable[[], float]]] = [
        ("status warm", lambda: time_command(status_new, f"{count}:status warm")),
        ("status +1", status_plus_one),
        ("retention before", ret_before),
        ("retention listed", ret_listed),
        ("retention after", ret_after),
    ]
    if before is not None:
        old_config = write_config(root, "config-before.yaml", run_as=False)
        status_old = [str(before), "--config", str(old_config), "status"]
        variants.insert(
            0, ("status before", lambda: time_command(status_old, f"{count}:status before"))
        )
    time_command(status_new)  # settle the racy (just written) entries
    for rep in range(reps):
        shift = rep % len(variants)
        for name, run in variants[shift:] + variants[:shift]:
            add(name, run())
    # Same answers, as a check that the two paths measured do the same work.
    now = datetime.now(UTC)
    every = retention_before(reports_dir)
    if every != report_index.backups(reports_dir, index, JOB, DATABASE):
        raise RuntimeError("the index and a full read disagree")
    view = report_index.retention_backups(
        reports_dir, index, JOB, DATABASE, days=RETENTION_DAYS, keep_last=KEEP_LAST, now=now
    )
    for backups in (every, view):
        expired, _ = choose_expired(backups, days=RETENTION_DAYS, keep_last=KEEP_LAST, now=now)
        if expired:
            raise RuntimeError("nothing should expire in this benchmark")
    shutil.rmtree(root, ignore_errors=True)
    return results


def render(
    command: str,
    counts: list[int],
    reps: int,
    table: dict[int, dict[str, list[float]]],
    floor: list[float],
    imports: dict[str, float],
    before: Path | None,
    total_s: float,
) -> str:
    lines = [
        f"Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; "
        f"db-backup at {git_revision(REPO)}.",
        "",
        f"Command: `{command}` (took {total_s / 60:.1f} min)",
        "",
        "Machine:",
        "",
        *machine_lines(),
        "",
        f"Reports of one job and one database, hourly start times, every 7th FAILED; median of "
        f"{reps} repetitions (min-max), variants interleaved (the order rotates every "
        "repetition); other people's tests and benchmarks ran on this 2-core machine at the "
        "same time, so absolute figures are noisy, ratios less so. `+1` and the retention steps "
        "each follow one new report, as after a run.",
        "",
        "`db-backup status` (the command, default page of 20 rows). Wall time from fork to "
        "exit; CPU = user + system time of the command (its rusage), the steadier figure when "
        "the machine is overloaded (a process waiting for a core shows in wall time only):",
        "",
        "| Reports | before: wall | before: CPU | index up to date: wall | index +1 report: "
        "wall | index +1 report: CPU | index cold (one-off rebuild): wall | before / index +1 "
        "(wall, CPU) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for count in counts:
        row = table[count]
        old = row.get("status before")
        old_cpu = CPU.get(f"{count}:status before")
        new_cpu = CPU[f"{count}:status +1"]
        ratio = (
            f"{median(old) / median(row['status +1']):.1f}x, "
            f"{median(old_cpu) / median(new_cpu):.1f}x"
            if old and old_cpu
            else "-"
        )
        lines.append(
            f"| {count:,} | {fmt(old) if old else 'not measured'} | "
            f"{fmt(old_cpu) if old_cpu else '-'} | {fmt(row['status warm'])} | "
            f"{fmt(row['status +1'])} | {fmt(new_cpu)} | {row['status cold'][0]:.2f} s | "
            f"{ratio} |"
        )
    lines += [
        "",
        f"Floor: `db-backup status` over an empty reports directory takes {fmt(floor)} wall, "
        f"{fmt(CPU['floor'])} CPU (interpreter start, imports, config validation). Where it goes (`python -X importtime`, cumulative, "
        "medians; jsonschema, yaml and croniter serve the config validation every command does, "
        "sqlite3 the index; structlog and oss2 are not imported by `status`):",
        "",
        "| Part | Time |",
        "|---|---:|",
        *(f"| {name} | {value * 1000:.0f} ms |" for name, value in imports.items()),
        "",
        "One retention step (in-process, CPU = process time): `before` reads every report; "
        "`listed` is the index listing the directory (one new report written behind its back); "
        "`index` follows the run's own report written through the index (`own_change`, its "
        "cost in the last column), as `job._finish` does, and lists nothing:",
        "",
        "| Reports | before: wall | before: CPU | listed: wall | listed: CPU | index: wall | "
        "index: CPU | before / index (wall) | own report write: wall, CPU |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for count in counts:
        row = table[count]
        lines.append(
            f"| {count:,} | {fmt(row['retention before'])} | "
            f"{fmt(CPU[f'{count}:retention before'])} | {fmt(row['retention listed'])} | "
            f"{fmt(CPU[f'{count}:retention listed'])} | {fmt(row['retention after'])} | "
            f"{fmt(CPU[f'{count}:retention after'])} | "
            f"{median(row['retention before']) / median(row['retention after']):.0f}x | "
            f"{fmt(row['own write'])}, {fmt(CPU[f'{count}:own write'])} |"
        )
    top = table[counts[-1]]
    status_s = median(top["status +1"])
    status_cpu = median(CPU[f"{counts[-1]}:status +1"])
    lines += [
        "",
        "Targets:",
        "",
        "| Target | Measured | Verdict |",
        "|---|---:|---|",
        f"| `status` at {counts[-1]:,} reports <= {TARGET_STATUS_S} s | wall {status_s:.2f} s "
        f"(+1 report), {median(top['status warm']):.2f} s (up to date); CPU "
        f"{status_cpu:.2f} s | wall {'**met**' if status_s <= TARGET_STATUS_S else '**missed**'}"
        f", CPU {'**met**' if status_cpu <= TARGET_STATUS_S else '**missed**'} |",
        f"| retention step does not grow with the count | "
        f"{', '.join(fmt(table[c]['retention after']).split(' (')[0] for c in counts)} "
        f"for {', '.join(f'{c:,}' for c in counts)} | see below |",
    ]
    if before is not None:
        lines += [
            "",
            f"`before` is the db-backup command of a checkout of the base commit: `{before}`.",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--counts", default="200,2000,20000")
    parser.add_argument("--before", type=Path, help="db-backup command of the version before")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    command = shlex.join([".venv/bin/python", "benchmarks/bench_reports.py", *sys.argv[1:]])
    counts = [int(c) for c in args.counts.split(",")]
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="db-backup-bench-reports-", dir=args.work))
    try:
        empty = work / "empty"
        config = write_config(empty)
        (empty / "reports").mkdir(parents=True)
        floor = [
            time_command([str(DB_BACKUP), "--config", str(config), "status"], "floor")
            for _ in range(args.reps)
        ]
        imports = import_breakdown(config, args.reps)
        table: dict[int, dict[str, list[float]]] = {}
        for count in counts:
            table[count] = measure(count, args.reps, args.before, work)
            summary = {name: f"{median(v) * 1000:.0f} ms" for name, v in table[count].items()}
            print(f"{count}: {summary}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    body = render(
        command,
        counts,
        args.reps,
        table,
        floor,
        imports,
        args.before,
        time.monotonic() - started,
    )
    print(body)
    if not args.no_write:
        print(f"\nwritten to {write_section(HEADING, body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
