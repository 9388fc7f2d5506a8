"""Compares db-backup's one-pass streaming backup with bare pg_dump and the seed's sequential way.

Three variants run interleaved (the order rotates every repetition) against a cached dataset of
realistic entropy (random words, md5 strings, numerics, timestamps, jsonb):

(a) bare    ``pg_dump -Fc -Z 9 -f FILE``;
(b) seed    the same pg_dump to a file, then ``sha256sum FILE``, then an oss2 multipart
            upload of the file (8 MiB parts, 2 threads, what ``oss2.resumable_upload`` does) to
            the loopback OSS server, all in one helper process;
(c) stream  ``db-backup run JOB`` with ``storage.mode: both`` and default upload settings (local file + OSS multipart upload
            from the pipe) against the same server.

The loopback OSS server (tests/support/oss_server.py) runs as a separate process with a body
bandwidth limit set to dump size / dump time of a calibration run of (a), so that an upload alone
takes about as long as the dump. Peak RSS of db-backup is VmHWM of the db-backup Python process
itself (pg_dump, its child, is not included), read from /proc/<pid>/status every 50 ms until it
exits; the largest VmRSS sample and the process tree's ru_maxrss from wait4() are reported too.
A second database with every table doubled measures the peak RSS at twice the data size.

Usage::

    .venv/bin/python benchmarks/bench_stream.py [--reps 3] [--scale 1.0] [--rebuild]

Not part of the test suite. Writes the section "Streaming backup vs bare pg_dump (issue 3)" of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from results_file import git_revision, machine_lines, write_section  # noqa: E402

from tests.support.pgcluster import Cluster, free_port, start_cluster  # noqa: E402

PYTHON = REPO / ".venv" / "bin" / "python"
DB_BACKUP = REPO / ".venv" / "bin" / "db-backup"
HEADING = "Streaming backup vs bare pg_dump (issue 3)"
BUCKET = "bench-backups"
REGION = "cn-bench"
ACCESS_KEY_ID = "bench-ak"
ACCESS_KEY_SECRET = "bench-secret-not-real"
SEED_PART_SIZE = 8 * 1024 * 1024  # (b): the seed's upload of a finished file
SEED_PARALLEL_PARTS = 2
DB_1X = "bench"
DB_2X = "bench_2x"
CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL_SECONDS = 0.05
MIB = 1024 * 1024

TARGET_VS_BARE = 1.10
TARGET_VS_SEED = 0.65
TARGET_RSS_MB = 100.0

# Rows per unit of --scale; about 1 GB of pg_database_size at --scale 1.0.
ROWS = {"customers": 600_000, "orders": 960_000, "events": 1_320_000}
BATCH = 200_000

_VOCABULARY_TEXT = """
the of and to in is was for on that with as by at from his her they this which but not be are
have had one all were when there can an your more so what about if out up into time them some
could no him only other new than then its over also after first two may any like these would way
our most very just where much before through back years because good well down should people
long each work water must between even place still world while around here own life same three
again night never found under last house order small large public number every system data
service report table backup server region account payment invoice customer product shipping
warehouse delivery ticket support release version update cluster storage network message queue
latency timeout retry success failure pending active closed archived review approved rejected
shanghai hangzhou beijing shenzhen chengdu wuhan nanjing suzhou xian tianjin qingdao dalian
monday tuesday wednesday thursday friday saturday sunday january february march april june july
august september october november december red green blue yellow black white orange purple small
medium large extra premium basic standard gold silver bronze alpha beta gamma delta omega sigma
kernel thread process memory socket buffer cache index vacuum commit rollback replica primary
standby snapshot checkpoint segment partition schema trigger function cursor session transaction
"""
VOCABULARY = _VOCABULARY_TEXT.split()

COUNTRIES = ["CN", "US", "DE", "JP", "SG", "GB", "FR", "KR", "IN", "BR", "AU", "CA"]
AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 Version/17.2 Safari/605",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) Mobile/15E148 MicroMessenger/8.0.47",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/120.0 Mobile Safari",
    "okhttp/4.12.0",
    "curl/8.5.0",
    "python-requests/2.31.0",
]


def _words(count: int, optional: int = 0) -> str:
    """Returns an SQL expression of `count` random vocabulary words (plus up to `optional`)."""
    parts = ["v.w[1 + floor(random() * v.n)::int]"] * count
    parts += ["CASE WHEN random() < 0.5 THEN v.w[1 + floor(random() * v.n)::int] END"] * optional
    return f"concat_ws(' ', {', '.join(parts)})"


def _pick(array: str, length: int) -> str:
    """Returns an SQL expression picking a random element of an array literal."""
    return f"({array})[1 + floor(random() * {length})::int]"


def _array(items: Sequence[str]) -> str:
    quoted = ",".join("'" + item.replace("'", "''") + "'" for item in items)
    return f"ARRAY[{quoted}]::text[]"


SCHEMA_SQL = """
CREATE TABLE bench_vocab (w text[] NOT NULL, n int NOT NULL);
CREATE TABLE customers (
    id bigint PRIMARY KEY, name text NOT NULL, email text NOT NULL, country char(2) NOT NULL,
    created_at timestamptz NOT NULL, balance numeric(14,2) NOT NULL, profile jsonb NOT NULL);
CREATE TABLE orders (
    id bigint PRIMARY KEY, customer_id bigint NOT NULL, placed_at timestamptz NOT NULL,
    status text NOT NULL, total numeric(12,2) NOT NULL, items jsonb NOT NULL, note text,
    tracking text);
CREATE TABLE events (
    id bigint PRIMARY KEY, at timestamptz NOT NULL, session text NOT NULL, kind text NOT NULL,
    ip inet NOT NULL, user_agent text NOT NULL, payload jsonb NOT NULL, message text NOT NULL);
CREATE TABLE bench_meta (scale float8 NOT NULL, built_at timestamptz NOT NULL DEFAULT now());
"""

COLUMNS = {
    "customers": "name, email, country, created_at, balance, profile",
    "orders": "customer_id, placed_at, status, total, items, note, tracking",
    "events": "at, session, kind, ip, user_agent, payload, message",
}


def insert_sql(table: str, first: int, last: int, customers: int) -> str:
    """Returns the INSERT ... SELECT that generates rows first..last of `table`."""
    src = f"FROM generate_series({first}, {last}) AS i, bench_vocab AS v"
    if table == "customers":
        return f"""
INSERT INTO customers
SELECT i, initcap({_words(2)}) || ' ' || (i % 997),
       substr(md5(random()::text), 1, 8 + (i % 9)) || '.' || v.w[1 + (i % v.n)] || '@'
         || {_pick(_array(["example.com", "mail.cn", "corp.local", "qq.com", "163.com"]), 5)},
       {_pick(_array(COUNTRIES), len(COUNTRIES))},
       timestamptz '2015-01-01' + random() * interval '3000 days',
       round((random() * 100000)::numeric, 2),
       jsonb_build_object('bio', {_words(4, 6)}, 'token', md5(random()::text),
         'phone', '+86 1' || lpad(floor(random() * 1e10)::bigint::text, 10, '0'),
         'prefs', jsonb_build_object('lang', {_pick(_array(["zh", "en", "ja", "de"]), 4)},
           'newsletter', random() < 0.3, 'theme', v.w[1 + floor(random() * v.n)::int]),
         'score', floor(random() * 1000)::int)
{src}"""
    if table == "orders":
        return f"""
INSERT INTO orders
SELECT i, 1 + floor(random() * {customers})::bigint,
       timestamptz '2020-01-01' + random() * interval '1500 days',
       {_pick(_array(["new", "paid", "shipped", "delivered", "cancelled", "refunded"]), 6)},
       round((random() * 5000)::numeric, 2),
       jsonb_build_array(
         jsonb_build_object('sku', 'SKU-' || floor(random() * 90000)::int,
           'qty', 1 + floor(random() * 5)::int, 'price', round((random() * 900)::numeric, 2),
           'name', {_words(2, 2)}),
         jsonb_build_object('sku', 'SKU-' || floor(random() * 90000)::int,
           'qty', 1 + floor(random() * 3)::int, 'price', round((random() * 300)::numeric, 2))),
       CASE WHEN random() < 0.6 THEN {_words(3, 4)} || ' ref ' || substr(md5(random()::text), 1, 12)
       END,
       CASE WHEN random() < 0.8 THEN upper(substr(md5(random()::text), 1, 20)) END
{src}"""
    if table == "events":
        return f"""
INSERT INTO events
SELECT i, timestamptz '2024-01-01' + i * interval '37 milliseconds'
            + random() * interval '2 seconds',
       md5(random()::text),
       {_pick(_array(["click", "view", "login", "logout", "purchase", "search", "error"]), 7)},
       ('10.' || floor(random() * 256)::int || '.' || floor(random() * 256)::int || '.'
         || floor(random() * 256)::int)::inet,
       {_pick(_array(AGENTS), len(AGENTS))},
       jsonb_build_object('path', '/' || v.w[1 + floor(random() * v.n)::int] || '/'
           || floor(random() * 100000)::int, 'ref', substr(md5(random()::text), 1, 12),
         'ms', floor(random() * 3000)::int, 'ok', random() < 0.97),
       {_words(3, 4)} || ' id=' || substr(md5(random()::text), 1, 10 + (i % 12))
         || ' n=' || floor(random() * 1e9)::bigint
{src}"""
    raise ValueError(table)


# --- measurement ------------------------------------------------------------------------------


@dataclass
class Measurement:
    """What one run of one variant cost."""

    variant: str
    wall_s: float
    own_hwm_mb: float = 0.0  # VmHWM of the measured process itself (last read before exit)
    own_rss_max_mb: float = 0.0  # largest VmRSS sample (50 ms polling)
    tree_maxrss_mb: float = 0.0  # wait4() ru_maxrss: largest process of the waited tree
    own_cpu_s: float = 0.0  # utime + stime of the measured process itself (last read)
    tree_cpu_s: float = 0.0  # wait4() user + sys of the process and its reaped children
    server_cpu_s: float = 0.0  # the OSS server's CPU time during the run
    dump_bytes: int = 0
    steps: dict[str, float] = field(default_factory=dict)


def read_proc(pid: int) -> tuple[float, float, float] | None:
    """Returns (VmHWM MiB, VmRSS MiB, utime+stime s) of a live process, or None once it exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    values = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(value.split()[0]) / 1024
    if "VmHWM" not in values:  # a zombie has no memory fields
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return values["VmHWM"], values["VmRSS"], cpu


def process_cpu(pid: int) -> float:
    """Returns utime + stime of a live process in seconds (0 if it is gone)."""
    found = read_proc(pid)
    return found[2] if found else 0.0


def run_measured(
    variant: str, argv: Sequence[str], env: dict[str, str], server_pid: int
) -> tuple[Measurement, str]:
    """Runs argv, polling /proc every 50 ms; returns the measurement and the child's stdout."""
    server_cpu0 = process_cpu(server_pid)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        list(argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    out_parts: list[str] = []
    reader = threading.Thread(target=lambda: out_parts.append(proc.stdout.read()))  # type: ignore[union-attr]
    reader.start()
    hwm = rss_max = cpu = 0.0
    done = threading.Event()

    def poll() -> None:
        nonlocal hwm, rss_max, cpu
        while not done.is_set():
            found = read_proc(proc.pid)
            if found is not None:
                hwm = max(hwm, found[0])
                rss_max = max(rss_max, found[1])
                cpu = max(cpu, found[2])
            done.wait(POLL_SECONDS)

    poller = threading.Thread(target=poll)
    poller.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    done.set()
    poller.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    output = "".join(out_parts)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} failed ({proc.returncode}): {output[-3000:]}")
    measurement = Measurement(
        variant,
        wall,
        own_hwm_mb=hwm,
        own_rss_max_mb=rss_max,
        tree_maxrss_mb=usage.ru_maxrss / 1024,
        own_cpu_s=cpu,
        tree_cpu_s=usage.ru_utime + usage.ru_stime,
        server_cpu_s=process_cpu(server_pid) - server_cpu0,
    )
    return measurement, output


# --- the pieces -------------------------------------------------------------------------------


@dataclass
class Bench:
    """The cached cluster, the OSS server and the work directory of one benchmark run."""

    cache: Path
    cluster: Cluster | None = None
    server: subprocess.Popen[bytes] | None = None
    server_port: int = 0
    bandwidth: int = 0

    @property
    def work(self) -> Path:
        return self.cache / "work"

    @property
    def oss_root(self) -> Path:
        return self.cache / "work" / "oss"

    def env(self) -> dict[str, str]:
        """Returns the environment of every measured command (same pg_dump on PATH for all)."""
        assert self.cluster is not None
        env = dict(os.environ)
        env["PATH"] = f"{self.cluster.bindir}:{env.get('PATH', '/usr/bin:/bin')}"
        env["BENCH_OSS_ID"] = ACCESS_KEY_ID
        env["BENCH_OSS_SECRET"] = ACCESS_KEY_SECRET
        env["PYTHONPATH"] = str(REPO)
        env.pop("PGPASSWORD", None)
        return env

    def pg_dump_argv(self, database: str, output: Path) -> list[str]:
        """Returns the bare pg_dump command line (same flags as db-backup's)."""
        assert self.cluster is not None
        return [
            str(self.cluster.bindir / "pg_dump"),
            "--host",
            str(self.cluster.socket_dir),
            "--port",
            str(self.cluster.port),
            "--username",
            "postgres",
            "--no-password",
            "--format=c",
            "--compress=9",
            f"--file={output}",
            f"--dbname={database}",
        ]

    def start_server(self, bandwidth: int) -> None:
        """Starts the loopback OSS server as its own process with a body bandwidth limit."""
        self.stop_server()
        shutil.rmtree(self.oss_root, ignore_errors=True)
        self.oss_root.mkdir(parents=True)
        port_file = self.work / "oss.port"
        port_file.unlink(missing_ok=True)
        argv = [
            str(PYTHON),
            "-m",
            "tests.support.oss_server",
            "--root",
            str(self.oss_root),
            "--bucket",
            BUCKET,
            "--access-key-id",
            ACCESS_KEY_ID,
            "--access-key-secret",
            ACCESS_KEY_SECRET,
            "--region",
            REGION,
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--bandwidth",
            str(bandwidth),
        ]
        log = open(self.work / "oss-server.log", "ab")  # noqa: SIM115 - handed to the child
        self.server = subprocess.Popen(argv, env=self.env(), stdout=log, stderr=log, cwd=REPO)
        log.close()
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the OSS server did not start; see work/oss-server.log")
            time.sleep(0.1)
        self.server_port = int(port_file.read_text().strip())
        self.bandwidth = bandwidth

    def stop_server(self) -> None:
        """Stops the OSS server (SIGTERM) if this script started it."""
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        self.server = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def clear_bucket(self) -> None:
        """Deletes every object in the bucket through oss2 (keeps disk use flat between runs)."""
        import oss2

        bucket = oss2.Bucket(
            oss2.AuthV4(ACCESS_KEY_ID, ACCESS_KEY_SECRET), self.endpoint, BUCKET, region=REGION
        )
        keys = [obj.key for obj in oss2.ObjectIterator(bucket)]
        for start in range(0, len(keys), 500):
            bucket.batch_delete_objects(keys[start : start + 500])

    def write_config(self, database: str, job_dir: Path) -> Path:
        """Writes the db-backup config of variant (c) and returns its path."""
        assert self.cluster is not None
        config = {
            "run_as": None,  # the benchmark's directories belong to whoever runs it
            "directories": {
                "data": str(job_dir / "data"),
                "reports": str(job_dir / "reports"),
                "state": str(job_dir / "state"),
                "logs": None,
            },
            "storage": {
                "mode": "both",
                "tool": "oss2",
                "oss": {
                    "endpoint": self.endpoint,
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
                    "databases": [database],
                    "connection": {
                        "host": str(self.cluster.socket_dir),
                        "port": self.cluster.port,
                        "user": "postgres",
                    },
                    "dump": {"format": "custom", "compression": 9},
                    "globals": False,
                }
            ],
        }
        path = job_dir / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # --- variants --------------------------------------------------------------------------

    def run_bare(self, database: str) -> Measurement:
        """Variant (a): bare pg_dump to a file."""
        output = self.work / "bare.dump"
        output.unlink(missing_ok=True)
        server_pid = self.server.pid if self.server else 0
        m, _ = run_measured("bare", self.pg_dump_argv(database, output), self.env(), server_pid)
        m.dump_bytes = output.stat().st_size
        output.unlink()
        return m

    def run_seed(self, database: str) -> Measurement:
        """Variant (b): pg_dump to a file, sha256sum, oss2 resumable_upload, in one process."""
        assert self.server is not None
        output = self.work / "seed.dump"
        output.unlink(missing_ok=True)
        spec = {
            "pg_dump": self.pg_dump_argv(database, output),
            "file": str(output),
            "endpoint": self.endpoint,
            "key": f"seed/{database}-{time.time_ns()}.dump",
        }
        argv = [str(PYTHON), str(Path(__file__).resolve()), "--seed-way", json.dumps(spec)]
        m, out = run_measured("seed", argv, self.env(), self.server.pid)
        steps = json.loads(out.strip().splitlines()[-1])
        m.steps = {k: float(v) for k, v in steps.items() if k != "bytes"}
        m.dump_bytes = int(steps["bytes"])
        output.unlink(missing_ok=True)
        self.clear_bucket()
        return m

    def run_stream(self, database: str) -> Measurement:
        """Variant (c): `db-backup run` in mode both against the loopback server."""
        assert self.server is not None
        job_dir = self.work / "dbbackup"
        shutil.rmtree(job_dir, ignore_errors=True)
        job_dir.mkdir(parents=True)
        config = self.write_config(database, job_dir)
        argv = [str(DB_BACKUP), "--config", str(config), "run", "bench"]
        m, out = run_measured("stream", argv, self.env(), self.server.pid)
        reports = sorted((job_dir / "reports").glob("*.json"))
        if not reports:
            raise RuntimeError(f"db-backup wrote no report: {out[-2000:]}")
        report = json.loads(reports[-1].read_text())
        if report.get("status") != "SUCCESS":
            raise RuntimeError(f"db-backup run failed: {report.get('errorMessage')}")
        m.dump_bytes = int(report["local"]["sizeBytes"])
        shutil.rmtree(job_dir, ignore_errors=True)
        self.clear_bucket()
        return m


def upload_defaults() -> str:
    """Returns db-backup's default part size, parallel parts and buffer, from its schema."""
    schema = yaml.safe_load((REPO / "src" / "db_backup" / "config" / "schema.yaml").read_text())
    oss = schema["properties"]["storage"]["properties"]["oss"]["properties"]
    return ", ".join(
        f"`{name}: {oss[name]['default']}`"
        for name in ("part_size_mib", "parallel_parts", "buffer_mib")
    )


def seed_way(spec_json: str) -> int:
    """Runs the seed script's sequential steps (dump, sha256sum, upload) and prints their times."""
    import oss2

    spec = json.loads(spec_json)
    times: dict[str, float] = {}
    t0 = time.monotonic()
    subprocess.run(spec["pg_dump"], check=True)
    times["dump_s"] = time.monotonic() - t0
    t1 = time.monotonic()
    subprocess.run(["sha256sum", spec["file"]], check=True, stdout=subprocess.DEVNULL)
    times["sha256_s"] = time.monotonic() - t1
    t2 = time.monotonic()
    bucket = oss2.Bucket(
        oss2.AuthV4(os.environ["BENCH_OSS_ID"], os.environ["BENCH_OSS_SECRET"]),
        spec["endpoint"],
        BUCKET,
        region=REGION,
    )
    # oss2.resumable_upload would do the same, but it first lists the parts of its upload
    # (ListParts), which the loopback server does not implement; this is its multipart core.
    key, path = spec["key"], spec["file"]
    size = os.path.getsize(path)
    upload_id = bucket.init_multipart_upload(key).upload_id

    def part(number: int) -> oss2.models.PartInfo:
        offset = (number - 1) * SEED_PART_SIZE
        length = min(SEED_PART_SIZE, size - offset)
        with open(path, "rb") as f:
            f.seek(offset)
            result = bucket.upload_part(key, upload_id, number, oss2.SizedFileAdapter(f, length))
        return oss2.models.PartInfo(number, result.etag, size=length)

    count = max(1, -(-size // SEED_PART_SIZE))
    with ThreadPoolExecutor(max_workers=SEED_PARALLEL_PARTS) as pool:
        parts = list(pool.map(part, range(1, count + 1)))
    bucket.complete_multipart_upload(key, upload_id, parts)
    times["upload_s"] = time.monotonic() - t2
    print(json.dumps({**times, "bytes": os.path.getsize(spec["file"])}))
    return 0


# --- dataset ----------------------------------------------------------------------------------


def cluster_ready(bench: Bench, scale: float) -> bool:
    """Returns whether the cached cluster has both databases built at `scale`."""
    assert bench.cluster is not None
    for database in (DB_1X, DB_2X):
        try:
            found = bench.cluster.psql("SELECT scale FROM bench_meta", database)
        except RuntimeError:
            return False
        if not found or abs(float(found) - scale) > 1e-9:
            return False
    return True


def build_dataset(bench: Bench, scale: float, *, doubled: bool = True) -> None:
    """Creates database `bench` at `scale` and (if `doubled`) `bench_2x` with every table doubled."""
    cluster = bench.cluster
    assert cluster is not None
    for database in (DB_2X, DB_1X):
        cluster.psql(f"DROP DATABASE IF EXISTS {database}")
    cluster.psql(f"CREATE DATABASE {DB_1X}")
    cluster.psql(SCHEMA_SQL, DB_1X)
    vocab = _array(VOCABULARY)
    cluster.psql(
        f"INSERT INTO bench_vocab VALUES ({vocab}, cardinality({vocab}))",
        DB_1X,
    )
    counts = {table: max(1000, int(rows * scale)) for table, rows in ROWS.items()}
    statements = []
    for table, count in counts.items():
        for first in range(1, count + 1, BATCH):
            last = min(first + BATCH - 1, count)
            statements.append((table, first, last))
    started = time.monotonic()

    def one(item: tuple[str, int, int]) -> None:
        table, first, last = item
        cluster.psql(insert_sql(table, first, last, counts["customers"]), DB_1X)
        print(
            f"  {table} {first}..{last} ({time.monotonic() - started:.0f} s)",
            file=sys.stderr,
            flush=True,
        )

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(one, statements))
    cluster.psql("VACUUM (FREEZE, ANALYZE)", DB_1X)
    print(f"  {DB_1X} built in {time.monotonic() - started:.0f} s", file=sys.stderr)
    if not doubled:
        cluster.psql(f"INSERT INTO bench_meta (scale) VALUES ({scale!r})", DB_1X)
        return
    cluster.psql(f"CREATE DATABASE {DB_2X} TEMPLATE {DB_1X}")

    def double(table: str) -> None:
        offset = counts[table]
        cluster.psql(
            f"INSERT INTO {table} SELECT id + {offset}, {COLUMNS[table]} FROM {table}", DB_2X
        )

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(double, COLUMNS))
    cluster.psql("VACUUM (FREEZE, ANALYZE)", DB_2X)
    for database in (DB_1X, DB_2X):
        cluster.psql(f"INSERT INTO bench_meta (scale) VALUES ({scale!r})", database)
    print(f"  {DB_2X} built in {time.monotonic() - started:.0f} s in total", file=sys.stderr)


def table_data_size(cluster: Cluster, database: str) -> int:
    """Returns the summed pg_table_size (heap + TOAST, no indexes) of the benchmark tables."""
    tables = ", ".join(f"'{name}'" for name in ROWS)
    return int(
        cluster.psql(
            f"SELECT sum(pg_table_size(c.oid)) FROM pg_class c WHERE c.relname IN ({tables}) "
            "AND c.relkind = 'r'",
            database,
        )
    )


def database_size(cluster: Cluster, database: str) -> int:
    """Returns pg_database_size of `database` in bytes."""
    return int(cluster.psql(f"SELECT pg_database_size('{database}')"))


# --- report -----------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """Returns the median (0 for no values)."""
    return statistics.median(values) if values else 0.0


def fmt_runs(values: Sequence[float], unit: str = "s") -> str:
    """Returns 'median (min-max)' for a list of numbers."""
    if len(values) == 1:
        return f"{values[0]:.1f} {unit}"
    return f"{median(values):.1f} {unit} ({min(values):.1f}-{max(values):.1f})"


def verdict(ok: bool) -> str:
    """Returns the markdown verdict word."""
    return "**met**" if ok else "**missed**"


@dataclass
class Context:
    """Facts about the run that go into the report."""

    command: str
    pg_version: str
    size_1x: int
    size_2x: int
    tables_1x: int
    tables_2x: int
    dump_1x: int
    dump_2x: int
    calib_dump_s: float
    bandwidth: int
    reps: int
    build_s: float | None
    total_s: float = 0.0


def by_variant(runs: list[Measurement], variant: str) -> list[Measurement]:
    """Returns the runs of one variant."""
    return [m for m in runs if m.variant == variant]


def render(ctx: Context, runs: list[Measurement], runs_2x: list[Measurement]) -> str:
    """Returns the RESULTS.md section body."""
    bare, seed, stream = (by_variant(runs, v) for v in ("bare", "seed", "stream"))
    bare_2x, stream_2x = by_variant(runs_2x, "bare"), by_variant(runs_2x, "stream")
    med = {k: median([m.wall_s for m in v]) for k, v in (("a", bare), ("b", seed), ("c", stream))}
    vs_bare = med["c"] / med["a"]
    vs_seed = med["c"] / med["b"]
    hwm_1x = max(m.own_hwm_mb for m in stream)
    hwm_2x = max((m.own_hwm_mb for m in stream_2x), default=0.0)
    mb = 1_000_000 / MIB  # 1 MB in MiB
    lines = [
        f"Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; "
        f"db-backup at {git_revision(REPO)}.",
        "",
        f"Command: `{ctx.command}` (took {ctx.total_s / 60:.1f} min"
        + (f", of which {ctx.build_s / 60:.1f} min building the dataset" if ctx.build_s else "")
        + ")",
        "",
        "Machine:",
        "",
        *machine_lines(),
        f"- {ctx.pg_version}",
        "",
        "Dataset (cached cluster under `/var/tmp/db-backup-bench/`, `fsync=off`): three tables "
        "(customers, orders, events) of random vocabulary words, md5 strings, numerics, "
        "timestamps, inet and jsonb.",
        "",
        f"- `{DB_1X}`: pg_database_size {ctx.size_1x / 1e9:.2f} GB (tables without indexes "
        f"{ctx.tables_1x / 1e9:.2f} GB), pg_dump -Fc -Z 9 {ctx.dump_1x / 1e6:.0f} MB "
        f"(database / dump {ctx.size_1x / ctx.dump_1x:.2f}x, tables / dump "
        f"{ctx.tables_1x / ctx.dump_1x:.2f}x)",
        f"- `{DB_2X}` (every table doubled, for the RSS check): pg_database_size "
        f"{ctx.size_2x / 1e9:.2f} GB (tables {ctx.tables_2x / 1e9:.2f} GB), dump "
        f"{ctx.dump_2x / 1e6:.0f} MB",
        f"- OSS server bandwidth limit: {ctx.bandwidth / 1e6:.2f} MB/s = calibration dump size "
        f"/ calibration dump time ({ctx.dump_1x / 1e6:.0f} MB / {ctx.calib_dump_s:.1f} s); "
        f"(b) uploads parts of {SEED_PART_SIZE // MIB} MiB, {SEED_PARALLEL_PARTS} in parallel; "
        f"(c) runs with db-backup's default upload settings ({upload_defaults()})",
        "",
        f"Wall time, median of {ctx.reps} interleaved repetitions (min-max), on `{DB_1X}`:",
        "",
        "| Variant | Wall time | CPU of measured process | CPU incl. children | "
        "OSS server CPU | Peak RSS (own VmHWM) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    names = {
        "bare": "(a) bare `pg_dump -Fc -Z 9 -f`",
        "seed": "(b) seed: pg_dump to file, `sha256sum`, oss2 multipart upload",
        "stream": "(c) `db-backup run`, mode both (file + OSS)",
    }
    for variant, group in (("bare", bare), ("seed", seed), ("stream", stream)):
        lines.append(
            f"| {names[variant]} | {fmt_runs([m.wall_s for m in group])} | "
            f"{fmt_runs([m.own_cpu_s for m in group])} | "
            f"{fmt_runs([m.tree_cpu_s for m in group])} | "
            f"{fmt_runs([m.server_cpu_s for m in group]) if variant != 'bare' else '-'} | "
            f"{max(m.own_hwm_mb for m in group):.1f} MiB |"
        )
    if seed:
        steps = {k: median([m.steps.get(k, 0.0) for m in seed]) for k in seed[0].steps}
        lines += [
            "",
            "Steps of (b), medians: "
            + ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in steps.items())
            + ".",
        ]
    lines += [
        "",
        "Peak RSS of db-backup (variant c), all runs:",
        "",
        "| Database | Dump size | Wall time (c) | Wall time (a) | VmHWM (own) | max VmRSS sample "
        "| ru_maxrss of process tree |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, group_c, group_a, dump in (
        (DB_1X, stream, bare, ctx.dump_1x),
        (DB_2X, stream_2x, bare_2x, ctx.dump_2x),
    ):
        if not group_c:
            continue
        lines.append(
            f"| `{label}` | {dump / 1e6:.0f} MB | {fmt_runs([m.wall_s for m in group_c])} | "
            f"{fmt_runs([m.wall_s for m in group_a]) if group_a else '-'} | "
            f"{', '.join(f'{m.own_hwm_mb:.1f}' for m in group_c)} MiB | "
            f"{', '.join(f'{m.own_rss_max_mb:.1f}' for m in group_c)} MiB | "
            f"{', '.join(f'{m.tree_maxrss_mb:.1f}' for m in group_c)} MiB |"
        )
    rss_ok_1x = hwm_1x <= TARGET_RSS_MB * mb
    growth = hwm_2x - hwm_1x
    same_peak = bool(stream_2x) and growth <= 0.05 * hwm_1x
    lines += [
        "",
        "Targets:",
        "",
        "| Target | Measured | Verdict |",
        "|---|---:|---|",
        f"| (c)/(a) wall time <= {TARGET_VS_BARE:.2f} | {vs_bare:.3f} "
        f"({med['c']:.1f} s / {med['a']:.1f} s) | {verdict(vs_bare <= TARGET_VS_BARE)}"
        + (f", over by {100 * (vs_bare / TARGET_VS_BARE - 1):.1f} %" if vs_bare > 1.10 else "")
        + " |",
        f"| (c)/(b) wall time <= {TARGET_VS_SEED:.2f} | {vs_seed:.3f} "
        f"({med['c']:.1f} s / {med['b']:.1f} s) | {verdict(vs_seed <= TARGET_VS_SEED)}"
        + (f", over by {100 * (vs_seed / TARGET_VS_SEED - 1):.1f} %" if vs_seed > 0.65 else "")
        + " |",
        f"| Peak RSS of db-backup <= {TARGET_RSS_MB:.0f} MB | {hwm_1x:.1f} MiB "
        f"({hwm_1x / mb:.1f} MB) | {verdict(rss_ok_1x)} |",
        f"| Same peak at 2x data (growth <= 5 %) | {hwm_2x:.1f} MiB ({growth:+.1f} MiB, "
        f"{100 * growth / hwm_1x:+.1f} % vs 1x) | "
        f"{verdict(same_peak) if stream_2x else 'not measured'}"
        + (
            f"; absolute {hwm_2x / mb:.1f} MB is {verdict(hwm_2x <= TARGET_RSS_MB * mb)[2:-2]} "
            f"vs <= {TARGET_RSS_MB:.0f} MB"
            if stream_2x
            else ""
        )
        + " |",
        "",
        f"Upload-bound floor: dump size / bandwidth limit = {ctx.dump_1x / ctx.bandwidth:.1f} s, "
        f"i.e. (c) cannot end before {ctx.dump_1x / ctx.bandwidth / med['a']:.2f} x (a) once the "
        f"limit is below the dump rate of the measured runs; (c) took "
        f"{med['c'] - ctx.dump_1x / ctx.bandwidth:+.1f} s over that floor.",
        "",
        "How it was measured: wall time from fork to wait4() of the measured command. Peak RSS "
        "is the VmHWM of the db-backup Python process itself from /proc/<pid>/status, polled "
        "every 50 ms (its last value before exit; pg_dump is a separate process and not "
        "included); `ru_maxrss of process tree` is wait4()'s figure, the largest single "
        "process among db-backup and its reaped children. CPU of the measured process = "
        "utime + stime from /proc/<pid>/stat; CPU incl. children adds pg_dump (and "
        "sha256sum) from wait4(). The OSS server is a separate process; its CPU is listed "
        "on its own. The order of (a), (b), (c) rotates every repetition. Caveat: Linux "
        "carries a child's pre-exec RSS (the forked benchmark process, about 50 MiB) into "
        "ru_maxrss, so that column means nothing below about 50 MiB (e.g. for bare pg_dump).",
    ]
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Parses arguments, builds or reuses the dataset, measures, prints and records."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions per variant")
    parser.add_argument("--reps-2x", type=int, default=1, help="repetitions at 2x data")
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = about 1 GB of data")
    parser.add_argument("--rebuild", action="store_true", help="recreate the cached dataset")
    parser.add_argument("--cache", type=Path, default=Path("/var/tmp/db-backup-bench"))
    parser.add_argument("--bandwidth", type=int, help="bytes/s (default: calibrated)")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    parser.add_argument("--seed-way", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seed_way:
        return seed_way(args.seed_way)
    command = shlex.join([".venv/bin/python", "benchmarks/bench_stream.py", *sys.argv[1:]])
    started = time.monotonic()
    bench = Bench(args.cache)
    bench.cache.mkdir(parents=True, exist_ok=True)
    os.chmod(bench.cache, 0o755)
    shutil.rmtree(bench.work, ignore_errors=True)
    bench.work.mkdir(parents=True)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    build_s: float | None = None
    try:
        if args.rebuild:
            shutil.rmtree(bench.cache / "cluster", ignore_errors=True)
        bench.cluster = start_cluster(bench.cache / "cluster", free_port())
        if not cluster_ready(bench, args.scale):
            print(f"building the dataset at scale {args.scale} ...", file=sys.stderr)
            t_build = time.monotonic()
            build_dataset(bench, args.scale)
            build_s = time.monotonic() - t_build
        cluster = bench.cluster
        pg_version = cluster.psql("SELECT version()")
        size_1x, size_2x = database_size(cluster, DB_1X), database_size(cluster, DB_2X)
        print(f"{DB_1X}: {size_1x / 1e9:.2f} GB, {DB_2X}: {size_2x / 1e9:.2f} GB", file=sys.stderr)

        # Two calibration dumps, averaged: a single noisy run would set the limit too far either
        # way from the dumps it is then compared with.
        calibrations = [bench.run_bare(DB_1X) for _ in range(2)]
        calib = calibrations[0]
        calib_wall = sum(r.wall_s for r in calibrations) / len(calibrations)
        bandwidth = args.bandwidth or int(calib.dump_bytes / calib_wall)
        print(
            f"calibration: dump {calib.dump_bytes / 1e6:.0f} MB in {calib_wall:.1f} s (mean of 2) -> "
            f"bandwidth {bandwidth / 1e6:.2f} MB/s",
            file=sys.stderr,
        )
        bench.start_server(bandwidth)
        variants: dict[str, Callable[[str], Measurement]] = {
            "bare": bench.run_bare,
            "seed": bench.run_seed,
            "stream": bench.run_stream,
        }
        order = list(variants)
        runs: list[Measurement] = []
        for rep in range(args.reps):
            for name in order[rep % 3 :] + order[: rep % 3]:
                m = variants[name](DB_1X)
                runs.append(m)
                print(
                    f"rep {rep + 1} {name}: {m.wall_s:.1f} s, own cpu {m.own_cpu_s:.1f} s, "
                    f"tree cpu {m.tree_cpu_s:.1f} s, server cpu {m.server_cpu_s:.1f} s, "
                    f"hwm {m.own_hwm_mb:.1f} MiB {m.steps or ''}",
                    file=sys.stderr,
                    flush=True,
                )
        runs_2x: list[Measurement] = []
        for rep in range(args.reps_2x):
            for name in ("stream", "bare") if rep % 2 == 0 else ("bare", "stream"):
                m = variants[name](DB_2X)
                runs_2x.append(m)
                print(
                    f"2x rep {rep + 1} {name}: {m.wall_s:.1f} s, hwm {m.own_hwm_mb:.1f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
        dump_2x = median([m.dump_bytes for m in runs_2x]) if runs_2x else 0
        ctx = Context(
            command=command,
            pg_version=pg_version.split(" on ")[0],
            size_1x=size_1x,
            size_2x=size_2x,
            tables_1x=table_data_size(cluster, DB_1X),
            tables_2x=table_data_size(cluster, DB_2X),
            dump_1x=int(median([m.dump_bytes for m in runs if m.variant == "bare"])),
            dump_2x=int(dump_2x),
            calib_dump_s=calib_wall,
            bandwidth=bandwidth,
            reps=args.reps,
            build_s=build_s,
            total_s=time.monotonic() - started,
        )
        body = render(ctx, runs, runs_2x)
        print(body)
        if not args.no_write:
            print(f"\nwritten to {write_section(HEADING, body)}")
        (bench.cache / "last-run.json").write_text(
            json.dumps(
                {
                    "context": ctx.__dict__,
                    "runs": [m.__dict__ for m in runs],
                    "runs_2x": [m.__dict__ for m in runs_2x],
                },
                indent=1,
            )
        )
    finally:
        bench.stop_server()
        if bench.cluster is not None:
            bench.cluster.stop()
        shutil.rmtree(bench.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
