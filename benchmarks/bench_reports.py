"""Cost of `db-backup status` and of one retention step as reports pile up: full read vs index.

For 200, 2,000 and 20,000 generated reports of one job and one database (realistic documents,
hourly start times), measured side by side, interleaved (the order rotates every repetition):

- `db-backup status` as a command, wall time from fork to exit:
  before  the previous version's command (`--before`, the db-backup of a checkout of an earlier
          commit), when given;
  warm    this version, index up to date;
  +1      this version, one new report since the index was last used (what follows every run);
  cold    this version, no index yet (its one-off rebuild); measured once per count;
  and, for the start-up floor, each version's `status` over an empty reports directory.
- One retention step in-process (what a run of one database does for retention: read the
  job's reports of the database, then `choose_expired`), each time after a new report was
  written (to the directory only: no writer tells the index):
  full    `model.load_reports` + filter + `retention.backup_of` (every report parsed);
  read    a run's one read of the job's reports through the index (`backup.history`: one
          listing of the directory, the new report read, the database's rows); the script
          checks that it lists exactly once;
  step    the retention step after it, in memory (`backup.prune.plan_deletions`).

Usage::

    .venv/bin/python benchmarks/bench_reports.py [--before /path/to/old/.venv/bin/db-backup]
        [--reps 5] [--counts 200,2000,20000]

Not part of the test suite. Writes the section "Reports index, one listing per query (issue 19)"
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

from db_backup.backup.prune import plan_deletions  # noqa: E402
from db_backup.reports import index as report_index  # noqa: E402
from db_backup.reports import index_db  # noqa: E402
from db_backup.reports.calendar import Policy  # noqa: E402
from db_backup.reports.model import SUCCESS, Report, TargetResult, load_reports, stem  # noqa: E402
from db_backup.reports.retention import Backup, backup_of, choose_expired  # noqa: E402

DB_BACKUP = REPO / ".venv" / "bin" / "db-backup"
HEADING = "Reports index, one listing per query (issue 19)"
JOB = "hourly"
DATABASE = "shop"
# Hourly reports up to about now, kept by a retention window longer than all of them: the steady
# state of a host that keeps its history (the 20,000 reports kept for 90 days).
T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=25_000)
RETENTION_DAYS = 1100
KEEP_LAST = 3
TARGET_STATUS_S = 0.35
TARGET_RETENTION_S = 0.15


def report_document(number: int) -> tuple[str, bytes]:
    """Returns (file name, JSON bytes) of the report of run `number` (hourly, every 7th failed)."""
    started = T0 + timedelta(hours=number)
    name = stem(DATABASE, started, "db01")
    data = "/var/lib/db-backup/data"
    local, remote = [f"{name}.dump", f"{name}_globals.sql", f"{name}.dump.sha256"], [f"{name}.dump"]
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
        sha256="ab" * 32,
        size_bytes=123_456_789 + number,
        stored={"local": local, "oss": remote},
        targets={
            "local": TargetResult(
                SUCCESS,
                location=f"{data}/{name}.dump",
                size_bytes=123_456_789 + number,
                globals_location=f"{data}/{name}_globals.sql",
                checksum_location=f"{data}/{name}.dump.sha256",
            ),
            "oss": TargetResult(
                SUCCESS,
                location=f"oss://bucket/postgres/backups/{name}.dump",
                size_bytes=123_456_789 + number,
                extra={"crc64": "1234567890123456789"},
            ),
        },
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


def write_config(root: Path, name: str = "config.yaml", state: str = "state") -> Path:
    """Writes a one-job local config under `root` and returns its path.

    Each version gets its own state directory: their indexes differ in format, and sharing
    one would rebuild it at every switch.
    """
    root.mkdir(parents=True, exist_ok=True)
    config: dict[str, object] = {
        "run_as": None,  # a root-started benchmark stays root (its directories are root's)
        "directories": {
            "data": str(root / "data"),
            "reports": str(root / "reports"),
            "state": str(root / state),
            "logs": None,
        },
        "storage": {"mode": "local"},
        "jobs": [{"name": JOB, "schedule": "0 * * * *", "databases": [DATABASE]}],
    }
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
    real: Callable[[Path], index_db.Listing],
) -> Callable[[Path], index_db.Listing]:
    def listing(reports_dir: Path) -> index_db.Listing:
        LISTINGS[0] += 1
        return real(reports_dir)

    return listing


index_db.list_reports = _counted_listing(index_db.list_reports)  # type: ignore[assignment]


def run_read(reports_dir: Path, index: Path) -> list[Backup]:
    """A run's one read of the job's reports of the database (`backup.history`): one listing
    of the directory, the reports that changed read, the rows of the database."""
    with report_index.snapshot(reports_dir, index) as snap:
        return snap.backups(JOB, DATABASE)


def retention_step(history: list[Backup]) -> None:
    """A run's retention step after that read, in memory (`backup.prune`): what expires."""
    policy = Policy(days=RETENTION_DAYS, keep_last=KEEP_LAST)
    plan_deletions(history, policy, now=datetime.now(UTC))


def every_backup(reports_dir: Path, index: Path) -> list[Backup]:
    """Returns every report of the job and database, through the index."""
    with report_index.snapshot(reports_dir, index) as snap:
        entries = snap.entries(report_index.Match(job=JOB, database=DATABASE))
    return [entry.backup() for entry in entries]


IMPORTS = ("jsonschema", "structlog", "croniter", "yaml", "sqlite3", "db_backup.reports.index")


def import_breakdown(config: Path, reps: int) -> dict[str, float]:
    """Returns median seconds of the interpreter alone and of the main imports of `status`."""
    python = str(REPO / ".venv" / "bin" / "python")
    found: dict[str, list[float]] = {"interpreter (python -c pass)": []}
    for _ in range(reps):
        found["interpreter (python -c pass)"].append(time_command([python, "-c", "pass"]))
        done = subprocess.run(
            [python, "-X", "importtime", str(DB_BACKUP), "--config", str(config), "status"],
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

    cold = time_command(status_new)  # builds the index
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

    def timed(variant: str, step: Callable[[], object]) -> float:
        new_report()  # the run's own report, written before its retention step
        cpu, started = time.process_time(), time.perf_counter()
        step()
        CPU.setdefault(f"{count}:{variant}", []).append(time.process_time() - cpu)
        return time.perf_counter() - started

    def ret_full() -> float:
        return timed("retention full", lambda: retention_before(reports_dir))

    def ret_index() -> float:
        new_report()  # the run's own report, written before its retention step
        listed = LISTINGS[0]
        cpu, started = time.process_time(), time.perf_counter()
        history = run_read(reports_dir, index)
        cpu_read, read = time.process_time(), time.perf_counter()
        retention_step(history)
        cpu_end, end = time.process_time(), time.perf_counter()
        if LISTINGS[0] != listed + 1:
            raise RuntimeError(f"the run's read listed {LISTINGS[0] - listed} times, not once")
        for name, wall, spent in (
            ("run read", read - started, cpu_read - cpu),
            ("retention step", end - read, cpu_end - cpu_read),
        ):
            add(name, wall)
            CPU.setdefault(f"{count}:{name}", []).append(spent)
        CPU.setdefault(f"{count}:retention index", []).append(cpu_end - cpu)
        return end - started

    variants: list[tuple[str, Callable[[], float]]] = [
        ("status warm", lambda: time_command(status_new, f"{count}:status warm")),
        ("status +1", status_plus_one),
        ("retention full", ret_full),
        ("retention index", ret_index),
    ]
    if before is not None:
        old_config = write_config(root, "config-before.yaml", "state-before")
        status_old = [str(before), "--config", str(old_config), "status"]
        variants.insert(
            0, ("status before", lambda: time_command(status_old, f"{count}:status before"))
        )
    time.sleep(index_db.RACY_SECONDS)  # the reports just written are re-read until then
    for name, run in variants:
        if name.startswith("status"):
            run()  # untimed: each version's index built, racy entries settled
    results.clear()
    CPU.update({k: [] for k in CPU if k.startswith(f"{count}:")})
    add("status cold", cold)
    for rep in range(reps):
        shift = rep % len(variants)
        for name, run in variants[shift:] + variants[:shift]:
            add(name, run())
    # Same answers, as a check that the two paths measured do the same work.
    now = datetime.now(UTC)
    every = retention_before(reports_dir)
    if every != every_backup(reports_dir, index):
        raise RuntimeError("the index and a full read disagree")
    for backups in (every, run_read(reports_dir, index)):
        expired, _ = choose_expired(backups, days=RETENTION_DAYS, keep_last=KEEP_LAST, now=now)
        if expired:
            raise RuntimeError("nothing should expire in this benchmark")
    shutil.rmtree(root, ignore_errors=True)
    return results


def verdict(value: float, target: float) -> str:
    return "**met**" if value <= target else "**missed**"


def render(
    command: str,
    counts: list[int],
    reps: int,
    table: dict[int, dict[str, list[float]]],
    floors: dict[str, list[float]],
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
        f"{reps} repetitions (min-max), variants interleaved. Other work ran on this 2-core "
        "machine at the same time: wall time includes waiting for a core, CPU (user + system) "
        "does not. `+1` and the retention steps each follow one new report, as after a run.",
        "",
        "`db-backup status` (the command, default page of 20 rows):",
        "",
        "| Reports | before: wall | before: CPU | up to date: wall | +1 report: wall | "
        "+1 report: CPU | cold (one-off rebuild): wall |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for count in counts:
        row = table[count]
        old = row.get("status before")
        old_cpu = CPU.get(f"{count}:status before")
        lines.append(
            f"| {count:,} | {fmt(old) if old else '-'} | {fmt(old_cpu) if old_cpu else '-'} | "
            f"{fmt(row['status warm'])} | {fmt(row['status +1'])} | "
            f"{fmt(CPU[f'{count}:status +1'])} | {row['status cold'][0]:.2f} s |"
        )
    lines += [
        "",
        "Retention after a new report (in-process; CPU = process time): `full` parses every "
        "report; a run reads the job's reports through the index once (`run's read`: one "
        "listing, the new report read, the database's rows) and its retention step then "
        "decides in memory (`step`); `read + step` is what a run of one database spends:",
        "",
        "| Reports | full: wall | full: CPU | run's read: wall | run's read: CPU | step: wall | "
        "step: CPU | read + step: CPU |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for count in counts:
        row = table[count]
        lines.append(
            f"| {count:,} | {fmt(row['retention full'])} | "
            f"{fmt(CPU[f'{count}:retention full'])} | {fmt(row['run read'])} | "
            f"{fmt(CPU[f'{count}:run read'])} | {fmt(row['retention step'])} | "
            f"{fmt(CPU[f'{count}:retention step'])} | {fmt(CPU[f'{count}:retention index'])} |"
        )
    lines += [
        "",
        "Start-up floor (`status` over an empty reports directory) and where this version's "
        "goes (`python -X importtime`, cumulative, medians):",
        "",
        "| Part | Time |",
        "|---|---:|",
        *(f"| floor, {name}: wall | {fmt(values)} |" for name, values in floors.items()),
        *(f"| floor, {name}: CPU | {fmt(CPU[f'floor {name}'])} |" for name in floors),
        *(f"| {name} | {value * 1000:.0f} ms |" for name, value in imports.items()),
    ]
    lines += targets(counts[-1], table[counts[-1]], "before" in floors)
    if before is not None:
        lines += ["", f"`before` is the db-backup command of an earlier commit: `{before}`."]
    return "\n".join(lines)


def targets(count: int, top: dict[str, list[float]], with_before: bool) -> list[str]:
    """Returns the table of the issue's targets at the largest count."""
    status_s, status_cpu = median(top["status +1"]), median(CPU[f"{count}:status +1"])
    step_s, step_cpu = median(top["retention step"]), median(CPU[f"{count}:retention step"])
    both_s, both_cpu = median(top["retention index"]), median(CPU[f"{count}:retention index"])
    lines = [
        "",
        "| Target | Measured | Verdict |",
        "|---|---:|---|",
        f"| `status` at {count:,} reports <= {TARGET_STATUS_S} s | wall {status_s:.2f} s, "
        f"CPU {status_cpu:.2f} s | wall {verdict(status_s, TARGET_STATUS_S)}, "
        f"CPU {verdict(status_cpu, TARGET_STATUS_S)} |",
        f"| retention step at {count:,} reports <= {TARGET_RETENTION_S} s | wall "
        f"{step_s:.3f} s, CPU {step_cpu:.3f} s | wall {verdict(step_s, TARGET_RETENTION_S)}, "
        f"CPU {verdict(step_cpu, TARGET_RETENTION_S)} |",
        f"| the same with the run's one read (a run of one database) <= {TARGET_RETENTION_S} s "
        f"| wall {both_s:.3f} s, CPU {both_cpu:.3f} s | wall "
        f"{verdict(both_s, TARGET_RETENTION_S)}, CPU {verdict(both_cpu, TARGET_RETENTION_S)} |",
    ]
    if with_before:  # within 5%: the noise of this machine
        floor_new, floor_old = median(CPU["floor this version"]), median(CPU["floor before"])
        lines.append(
            f"| start-up not regressed (CPU within 5%) | floor CPU {floor_new * 1000:.0f} ms, "
            f"before {floor_old * 1000:.0f} ms | {verdict(floor_new, floor_old * 1.05)} |"
        )
    return lines


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
        commands = {"this version": [str(DB_BACKUP), "--config", str(config), "status"]}
        if args.before is not None:
            old_config = write_config(empty, "config-before.yaml", "state-before")
            commands["before"] = [str(args.before), "--config", str(old_config), "status"]
        floors: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.reps):
            for name, argv in commands.items():
                floors[name].append(time_command(argv, f"floor {name}"))
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
        floors,
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
