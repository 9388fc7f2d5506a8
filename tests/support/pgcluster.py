"""A throwaway PostgreSQL cluster for tests and the demo: initdb in a temp dir, free port.

initdb refuses to run as root, so when we are root the cluster runs as the `postgres` system
user in a directory it owns. The socket lives in the cluster directory; TCP listens on
127.0.0.1 with scram-sha-256, so password tests are real.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.waiting import wait_until


def pg_bindir() -> Path:
    """Returns the newest /usr/lib/postgresql/<major>/bin that has initdb."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if not candidates:
        raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    return Path(candidates[-1]).parent


def free_port() -> int:
    """Returns a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    """A running cluster: connect by `socket_dir` + `port` (trust) or 127.0.0.1 (password)."""

    root: Path
    port: int
    bindir: Path
    run_as: str | None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def _cmd(self, argv: Sequence[str]) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *argv] if self.run_as else list(argv)

    def psql_argv(self, database: str, *args: str, user: str = "postgres") -> list[str]:
        """Returns a psql command line connected over the socket to `database`, then `args`."""
        return [
            str(self.bindir / "psql"), "-h", str(self.socket_dir), "-p", str(self.port),
            "-U", user, "-d", database, "-X", *args,
        ]  # fmt: skip

    def psql(self, sql: str, database: str = "postgres", *, user: str = "postgres") -> str:
        """Runs SQL over the socket as a superuser and returns the unaligned output."""
        done = subprocess.run(
            self.psql_argv(database, "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql, user=user),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def restore(self, dump: Path, database: str, jobs: int = 2) -> None:
        """Recreates `database` and restores a custom/directory dump into it with pg_restore -j."""
        self.psql(f'DROP DATABASE IF EXISTS "{database}"')
        self.psql(f'CREATE DATABASE "{database}"')
        subprocess.run(
            [
                str(self.bindir / "pg_restore"), "-h", str(self.socket_dir), "-p", str(self.port),
                "-U", "postgres", "-d", database, "--exit-on-error", "-j", str(jobs), str(dump),
            ],
            check=True, capture_output=True,
        )  # fmt: skip

    def stop(self) -> None:
        """Stops the server (fast mode) if it runs."""
        subprocess.run(
            self._cmd(
                [str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"]
            ),
            capture_output=True,
            check=False,
        )


def start_cluster(
    root: Path | None = None, port: int | None = None, env: dict[str, str] | None = None
) -> Cluster:
    """Creates (if needed) and starts a cluster under `root`; returns it once it accepts connections.

    `env`: variables added to the server's environment (LOCPATH: locales only it can load).
    """
    bindir = pg_bindir()
    run_as = "postgres" if os.geteuid() == 0 else None
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="db-backup-pg-"))
    root.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(root, port or free_port(), bindir, run_as)
    cluster.socket_dir.mkdir(exist_ok=True)
    if run_as:
        entry = pwd.getpwnam(run_as)
        for path in (root, cluster.socket_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        os.chmod(root, 0o755)
    if not (cluster.data_dir / "PG_VERSION").exists():
        subprocess.run(
            cluster._cmd(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(cluster.data_dir),
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ]
            ),
            check=True,
            capture_output=True,
        )
    log = root / "server.log"
    if run_as:
        log.touch()
        entry = pwd.getpwnam(run_as)
        os.chown(log, entry.pw_uid, entry.pw_gid)
    options = (
        f"-p {cluster.port} -k {cluster.socket_dir} -c listen_addresses=127.0.0.1 "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    subprocess.run(
        cluster._cmd(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(cluster.data_dir),
                "-l",
                str(log),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
        env={**os.environ, **env} if env else None,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            cluster.psql("SELECT 1")
            break
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return cluster


@contextlib.contextmanager
def locked_table(cluster: Cluster, database: str, table: str) -> Iterator[None]:
    """Holds ACCESS EXCLUSIVE on `table` from another session for the block.

    Returns once the lock is granted, so anything that reads the table (pg_dump) stalls on it for
    real; on exit the holding session is terminated and the lock released.
    """
    application = f"test-locker-{os.getpid()}"
    locker = subprocess.Popen(
        cluster.psql_argv(
            database,
            "-c",
            f"BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(600);",
        ),
        env={**os.environ, "PGAPPNAME": application},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: (
                cluster.psql(
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    f"WHERE a.application_name = '{application}' AND l.granted "
                    f"AND l.mode = 'AccessExclusiveLock' AND l.relation = '{table}'::regclass",
                    database,
                )
                == "1"
            ),
            f"the lock on {database}.{table}",
        )
        yield
    finally:
        cluster.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE application_name = '{application}'"
        )
        locker.kill()
        locker.wait()


def wait_for_lock_wait(cluster: Cluster, application_name: str, timeout: float = 60) -> None:
    """Returns once a session named `application_name` is waiting for a lock (it is stalled)."""
    wait_until(
        lambda: (
            cluster.psql(
                "SELECT count(*) FROM pg_stat_activity "
                f"WHERE application_name = '{application_name}' AND wait_event_type = 'Lock'"
            )
            != "0"
        ),
        f"{application_name} to wait for a lock",
        timeout,
    )


@contextlib.contextmanager
def running_cluster() -> Iterator[Cluster]:
    """Yields a fresh cluster and removes it afterwards."""
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


SAMPLE_SQL = """
CREATE TABLE customers (id bigserial PRIMARY KEY, name text NOT NULL, email text UNIQUE,
                        created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE products (id serial PRIMARY KEY, sku text NOT NULL UNIQUE, title text,
                       price numeric(10,2) NOT NULL, attributes jsonb);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint REFERENCES customers(id),
                     placed_at timestamptz NOT NULL, status text NOT NULL);
CREATE TABLE order_items (order_id bigint REFERENCES orders(id), product_id int REFERENCES products(id),
                          quantity int NOT NULL, note text, PRIMARY KEY (order_id, product_id));
INSERT INTO customers (name, email, created_at)
  SELECT '客户 ' || i, 'user' || i || '@example.com', timestamptz '2024-01-01' + i * interval '1 hour'
  FROM generate_series(1, {n}) i;
INSERT INTO products (sku, title, price, attributes)
  SELECT 'SKU-' || i, md5(i::text), (i % 500) + 0.99, jsonb_build_object('color', i % 7, 'tag', md5((i*7)::text))
  FROM generate_series(1, 200) i;
INSERT INTO orders (customer_id, placed_at, status)
  SELECT 1 + (i % {n}), timestamptz '2024-06-01' + i * interval '7 minutes',
         (ARRAY['new','paid','shipped','cancelled'])[1 + i % 4]
  FROM generate_series(1, {n} * 2) i;
INSERT INTO order_items (order_id, product_id, quantity, note)
  SELECT o, 1 + (o * 13 + k) % 200, 1 + (o + k) % 5, CASE WHEN k = 0 THEN 'gift ' || md5(o::text) END
  FROM generate_series(1, {n} * 2) o, generate_series(0, 2) k;
CREATE VIEW order_totals AS
  SELECT o.id, sum(p.price * i.quantity) AS total FROM orders o
  JOIN order_items i ON i.order_id = o.id JOIN products p ON p.id = i.product_id GROUP BY o.id;
"""


def load_sample(cluster: Cluster, database: str, rows: int = 1000) -> None:
    """Creates `database` with four related tables, a view and about `rows` customers."""
    cluster.psql(f'CREATE DATABASE "{database}"')
    cluster.psql(SAMPLE_SQL.format(n=rows), database)


def table_fingerprint(cluster: Cluster, database: str) -> dict[str, tuple[int, str]]:
    """Returns {table: (row count, md5 of all rows in key order)} for every user table."""
    tables = cluster.psql(
        "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
        database,
    ).splitlines()
    result = {}
    for table in tables:
        out = cluster.psql(
            f"SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') "
            f"FROM {table} t",
            database,
        )
        count, _, digest = out.partition(" ")
        result[table] = (int(count), digest)
    return result
