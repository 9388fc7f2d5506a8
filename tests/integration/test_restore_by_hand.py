"""docs/restore-by-hand.md, run step by step as written: a database named `-...`, an encrypted one.

The guide's commands are read from the page itself (between its markers), the placeholders are
filled in, and each step runs as the `postgres` user in bash with `set -o pipefail`, as the page
says, against a fresh cluster of its own. The plain guide for an ordinary database is run by
tests/integration/test_restore.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunCli, Setup
from tests.integration.test_encryption import AgeKey, encrypt_to, keys  # noqa: F401
from tests.support.pgcluster import Cluster, load_sample, start_cluster, table_fingerprint

pytestmark = pytest.mark.integration

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "restore-by-hand.md"
DASH_DB = "-dash_db"


def guide_steps(marker: str) -> list[str]:
    """Returns the commands of the guide's block between `<!-- MARKER:begin/end -->`, in order."""
    text = GUIDE.read_text(encoding="utf-8")
    match = re.search(
        rf"<!-- {marker}:begin -->\s*```sh\n(.*?)```\s*<!-- {marker}:end -->", text, re.S
    )
    assert match, f"docs/restore-by-hand.md must keep the block between its {marker} markers"
    steps = [line.split("  #", 1)[0].rstrip() for line in match.group(1).splitlines()]
    return [step for step in steps if step and not step.startswith("#")]


@pytest.fixture
def fresh() -> Iterator[Cluster]:
    """A cluster of its own, where the source's roles and databases do not exist."""
    started = start_cluster()
    try:
        yield started
    finally:
        started.stop()
        shutil.rmtree(started.root, ignore_errors=True)


@pytest.fixture
def workdir(request: pytest.FixtureRequest) -> Path:
    """An empty directory owned by postgres (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="db-backup-by-hand-"))
    request.addfinalizer(lambda: shutil.rmtree(path, ignore_errors=True))
    shutil.chown(path, "postgres", "postgres")
    return path


def run_guide(
    steps: list[str], values: dict[str, str], workdir: Path, target: Cluster, data: Path
) -> list[subprocess.CompletedProcess[str]]:
    """Runs each step with the placeholders filled in; fails naming the first step that fails."""
    env = {"PATH": f"{target.bindir}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp"}
    done_steps = []
    for step in steps:
        command = step.replace("/data/db-backups/data", str(data))
        for placeholder, value in values.items():
            command = command.replace(placeholder, value)
        assert "<" not in command, f"unsubstituted placeholder in {step!r}"
        argv = ["bash", "-c", f"set -o pipefail; {command}"]
        if not command.startswith("cp "):  # the copy reads root's test directory
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True)
        if command.startswith("cp "):
            for path in workdir.iterdir():
                shutil.chown(path, "postgres", "postgres")
        assert done.returncode == 0, f"step {step!r} failed: {done.stdout} {done.stderr}"
        done_steps.append(done)
    return done_steps


def test_the_plain_guide_restores_a_database_whose_name_starts_with_a_dash(
    setup: Setup, cluster: Cluster, run_cli: RunCli, fresh: Cluster, workdir: Path
) -> None:
    if DASH_DB not in cluster.psql("SELECT datname FROM pg_database").split("\n"):
        load_sample(cluster, DASH_DB, 200)
    setup.job()["databases"] = [DASH_DB]
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 0, done.stderr
    [report] = setup.reports_json()
    stem = report["artefacts"][0][: -len(".dump")]
    assert stem.startswith("-")
    values = {
        "<stem>": stem,
        "<db>": DASH_DB,
        "<host>": str(fresh.socket_dir),
        "<port>": str(fresh.port),
    }
    results = run_guide(guide_steps("manual-restore"), values, workdir, fresh, setup.data)
    [checked] = [r for r in results if "sha256sum" in r.args[-1]]
    assert checked.stdout.splitlines() == [f"{stem}.dump: OK", f"{stem}_globals.sql: OK"]
    assert table_fingerprint(fresh, DASH_DB) == table_fingerprint(cluster, DASH_DB)


def test_the_encrypted_guide_restores_roles_and_data_and_its_roles_step_stops_on_error(
    setup: Setup,
    cluster: Cluster,
    run_cli: RunCli,
    fresh: Cluster,
    workdir: Path,
    keys: list[AgeKey],  # noqa: F811
) -> None:
    cluster.psql("DO $$BEGIN CREATE ROLE zz_by_hand_owner LOGIN; "
                 "EXCEPTION WHEN duplicate_object THEN NULL; END$$")  # fmt: skip
    cluster.psql("ALTER TABLE orders OWNER TO zz_by_hand_owner", "shop")
    try:
        encrypt_to(setup, keys[0])
        done = run_cli("--config", str(setup.path), "run", "nightly")
        assert done.returncode == 0, done.stderr
    finally:
        cluster.psql("ALTER TABLE orders OWNER TO postgres", "shop")
    [report] = setup.reports_json()
    stem = report["artefacts"][0][: -len(".dump.age")]
    identity = workdir / "identity.txt"
    shutil.copy(keys[0].path, identity)
    shutil.chown(identity, "postgres", "postgres")
    identity.chmod(0o600)
    values = {
        "<stem>": stem,
        "<db>": "shop",
        "<host>": str(fresh.socket_dir),
        "<port>": str(fresh.port),
        "<identity>": str(identity),
    }
    steps = guide_steps("manual-restore-age")
    roles_step = next(s for s in steps if "_globals.sql.age" in s and "psql" in s)
    assert "ON_ERROR_STOP=1" in roles_step and "-p <port>" in roles_step
    assert all("-p <port>" in s for s in steps if re.search(r"\b(psql|createdb|pg_restore)\b", s))
    run_guide(steps, values, workdir, fresh, setup.data)
    assert table_fingerprint(fresh, "shop") == table_fingerprint(cluster, "shop")
    owner = "SELECT tableowner FROM pg_tables WHERE tablename = 'orders'"
    assert fresh.psql(owner, "shop") == "zz_by_hand_owner"
    # The roles step stops at the first error: a roles file whose statement fails is not
    # carried on past it (an unknown role in GRANT makes psql exit 3).
    broken = workdir / "broken_globals.sql"
    broken.write_text("GRANT no_such_role TO postgres;\nCREATE ROLE zz_after_the_error;\n")
    shutil.chown(broken, "postgres", "postgres")
    command = (
        roles_step.replace("age -d -i <identity> ./<stem>_globals.sql.age", f"cat {broken}")
        .replace("<host>", str(fresh.socket_dir))
        .replace("<port>", str(fresh.port))
    )
    failed = subprocess.run(
        ["runuser", "-u", "postgres", "--", "bash", "-c", f"set -o pipefail; {command}"],
        cwd=workdir, capture_output=True, text=True,
        env={"PATH": f"{fresh.bindir}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp"},
    )  # fmt: skip
    assert failed.returncode != 0
    assert "zz_after_the_error" not in fresh.psql("SELECT rolname FROM pg_roles")
