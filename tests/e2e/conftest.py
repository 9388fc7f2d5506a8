"""End-to-end tier: the built .deb, installed in a Debian 12 container booted by systemd-nspawn.

Fixtures meant for reuse by other e2e modules:

- ``deb_path``: the .deb under test (built once per session, or ``$DB_BACKUP_DEB``).
- ``container``: a session-wide booted container with the .deb installed and PostgreSQL running.
  Tests that change it (config, drop-ins) must put it back.
- ``exec``: ``container.exec`` (``exec(["systemctl", "status", "db-backup"], check=False)``).
- ``boot_container``: a context-manager factory for a fresh container of your own
  (``with boot_container("mine", install=True) as ct: ...``), for tests that break things.
- ``upgrade_deb_path``: the same tree built with a higher version and a changed shipped config
  (built in the background).

The tier needs root, debootstrap and systemd-nspawn (installed with apt when missing) and the
Debian mirror; it skips with the reason otherwise. It runs when selected explicitly
(``pytest tests/e2e``, ``-m e2e``) or with ``DB_BACKUP_E2E=1``; a plain ``pytest`` skips it.

Environment:
  DB_BACKUP_DEB            use this .deb instead of building one
  DB_BACKUP_DEB_UPGRADE    use this .deb as the upgrade target instead of building one
  DB_BACKUP_E2E_PLACEHOLDERS=1  build with packaging/build-deb.sh --placeholders
  DB_BACKUP_E2E_CACHE      rootfs cache (default /var/cache/db-backup-e2e); logs go to its logs/
  DB_BACKUP_E2E_KEEP=1     keep the containers' root directories after the run
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
sys.path.insert(0, str(PACKAGING))

from container import CommandFailed, Container, ContainerError, wait_for  # noqa: E402

from tests.support.oss_fixtures import (  # noqa: E402
    OSS_ACCESS_KEY_ID,
    OSS_ACCESS_KEY_SECRET,
    OSS_BUCKET,
    OSS_REGION,
    OssServerProcess,
    start_oss_server_process,
)

__all__ = ["CommandFailed", "Container", "wait_for"]

E2E_DIR = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("DB_BACKUP_E2E_CACHE", "/var/cache/db-backup-e2e"))
HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

_timings: dict[str, float] = {}


def _timed(label: str, seconds: float) -> None:
    _timings[label] = _timings.get(label, 0.0) + seconds


# -- collection: mark and opt-in -------------------------------------------------------------


def _selected_explicitly(config: pytest.Config) -> bool:
    if os.environ.get("DB_BACKUP_E2E") == "1":
        return True
    if "e2e" in (config.getoption("markexpr", "") or "").split():
        return True
    for arg in config.args:
        path = Path(arg.split("::", 1)[0]).resolve()
        if path == E2E_DIR or E2E_DIR in path.parents:
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    explicit = _selected_explicitly(config)
    skip = pytest.mark.skip(
        reason="e2e tier (builds the .deb, boots containers): run `pytest tests/e2e` "
        "or set DB_BACKUP_E2E=1"
    )
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)
            if not explicit:
                item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _timings:
        terminalreporter.section("db-backup e2e timings")
        for label, seconds in _timings.items():
            terminalreporter.write_line(f"{label:<48} {seconds:7.1f} s")


# -- host prerequisites ----------------------------------------------------------------------


def _host_run(argv: list[str], timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": HOST_PATH + ":" + os.environ.get("PATH", "")}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def e2e_logs() -> Path:
    """Directory that keeps this run's container journals and nspawn logs (not deleted)."""
    path = CACHE / "logs" / time.strftime("%Y%m%dT%H%M%S")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def rootfs_base(_deb_builds: _Builds) -> Path:
    """The cached Debian 12 base (debootstrap + PostgreSQL), built on first use.

    Depends on ``_deb_builds`` only so that the .deb builds run while debootstrap does.
    """
    if os.geteuid() != 0:
        pytest.skip("e2e tests need root (debootstrap, systemd-nspawn, nsenter)")
    if not shutil.which("systemd-nspawn", path=HOST_PATH) or not shutil.which(
        "debootstrap", path=HOST_PATH
    ):
        result = _host_run(
            ["apt-get", "install", "-y", "--no-install-recommends",
             "-o", "DPkg::Lock::Timeout=300", "debootstrap", "systemd-container"]
        )  # fmt: skip
        if result.returncode != 0:
            pytest.skip(
                "debootstrap/systemd-nspawn are missing and not installable: "
                + result.stderr.strip()[-500:]
            )
    t0 = time.monotonic()
    result = _host_run([str(PACKAGING / "rootfs.sh"), "base"])
    _timed("rootfs base (debootstrap+postgresql, or reuse)", time.monotonic() - t0)
    if result.returncode != 0:
        pytest.fail(f"packaging/rootfs.sh base failed:\n{result.stderr[-4000:]}")
    base = Path(result.stdout.strip().splitlines()[-1])
    # Can this machine run systemd-nspawn at all? (Read-only: the base must stay clean.)
    probe = _host_run(
        ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--read-only",
         "-D", str(base), "/bin/true"],
        timeout=120,
    )  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"systemd-nspawn cannot run a container here: {probe.stderr.strip()[-500:]}")
    return base


# -- the packages under test -----------------------------------------------------------------


def _build_deb(extra: list[str], out: Path | None = None) -> Path:
    argv = [str(PACKAGING / "build-deb.sh"), *extra]
    if os.environ.get("DB_BACKUP_E2E_PLACEHOLDERS") == "1":
        argv.append("--placeholders")
    if out is not None:
        argv += ["--out", str(out)]
    result = _host_run(argv)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stderr[-6000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def deb_version(deb: Path) -> str:
    """Return the Version field of a .deb."""
    return _host_run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()


class _Background:
    """Runs one function in a thread; ``result()`` waits for it and re-raises its error."""

    def __init__(self, fn: Callable[[], Path]) -> None:
        self._value: Path | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Path]) -> None:
        try:
            self._value = fn()
        except BaseException as exc:
            self._error = exc

    def result(self) -> Path:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


class _Builds:
    """The .deb builds of this session, started in the background as early as possible."""

    def __init__(self, main: _Background, upgrade: _Background | None) -> None:
        self.main = main
        self.upgrade = upgrade


@pytest.fixture(scope="session")
def _deb_builds(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> _Builds:
    """Start building the .deb (and, when a selected test needs it, the upgrade .deb) now.

    The main build overlaps with debootstrap; the upgrade build starts when the main one is done
    and overlaps with the first tests.
    """
    if os.environ.get("DB_BACKUP_DEB"):
        given = Path(os.environ["DB_BACKUP_DEB"]).resolve()
        if not given.is_file():
            pytest.fail(f"DB_BACKUP_DEB={given} does not exist")
        main = _Background(lambda: given)
    else:
        if os.geteuid() != 0:
            pytest.skip("e2e tests need root (the .deb build installs its build dependencies)")

        def build_main() -> Path:
            t0 = time.monotonic()
            path = _build_deb([])
            _timed("build .deb (background)", time.monotonic() - t0)
            return path

        main = _Background(build_main)

    wanted = any(
        "upgrade_deb_path" in getattr(item, "fixturenames", ()) for item in request.session.items
    )
    upgrade = None
    if wanted and not os.environ.get("DB_BACKUP_DEB_UPGRADE"):
        out = tmp_path_factory.mktemp("upgrade-deb")

        def build_upgrade() -> Path:
            version = deb_version(main.result()) + "+e2e1"
            t0 = time.monotonic()
            # A different shipped config, as between real releases: the conffile case that
            # makes dpkg ask unless told what to do (--force-confdef/--force-confold).
            note = f"changed in {version} (e2e upgrade build)"
            path = _build_deb(["--version", version, "--config-note", note], out)
            _timed("build upgrade .deb (background)", time.monotonic() - t0)
            return path

        upgrade = _Background(build_upgrade)
    return _Builds(main, upgrade)


@pytest.fixture(scope="session")
def deb_path(_deb_builds: _Builds) -> Path:
    """The .deb under test: $DB_BACKUP_DEB, or packaging/build-deb.sh's output (dist/)."""
    t0 = time.monotonic()
    path = _deb_builds.main.result()
    _timed("waiting for the .deb", time.monotonic() - t0)
    return path


@pytest.fixture(scope="session")
def upgrade_deb_path(_deb_builds: _Builds, deb_path: Path) -> Path:
    """The same tree built as a higher version (``<version>+e2e1``), for upgrade tests."""
    if os.environ.get("DB_BACKUP_DEB_UPGRADE"):
        return Path(os.environ["DB_BACKUP_DEB_UPGRADE"]).resolve()
    assert _deb_builds.upgrade is not None
    t0 = time.monotonic()
    path = _deb_builds.upgrade.result()
    _timed("waiting for the upgrade .deb", time.monotonic() - t0)
    return path


# -- containers ------------------------------------------------------------------------------


# The non-interactive upgrade docs/packaging.md documents: a conffile the admin changed is kept
# (the package's new one goes beside it as .dpkg-dist), one the admin left alone is updated.
CONFFILE_OPTIONS = [
    "-o",
    "Dpkg::Options::=--force-confdef",
    "-o",
    "Dpkg::Options::=--force-confold",
]


def install_deb(ct: Container, deb: Path, confold: bool = True) -> subprocess.CompletedProcess[str]:
    """Install (or upgrade to) ``deb`` inside ``ct`` with apt, stdin closed; return apt's output."""
    target = f"/root/{deb.name}"
    ct.copy_in(deb, target)
    argv = ["apt-get", "install", "-y", "--no-install-recommends"]
    if confold:
        argv += CONFFILE_OPTIONS
    return ct.exec([*argv, target], env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=300)


def wait_postgresql(ct: Container, timeout: float = 60) -> None:
    """Wait until the container's PostgreSQL accepts connections on its default socket."""
    wait_for(
        lambda: ct.exec(["pg_isready", "-q"], check=False).returncode == 0,
        timeout,
        what="PostgreSQL in the container",
    )


BootContainer = Callable[..., contextlib.AbstractContextManager[Container]]


@pytest.fixture(scope="session")
def boot_container(rootfs_base: Path, deb_path: Path, e2e_logs: Path) -> BootContainer:
    """Factory: ``with boot_container(name, install=True) as ct`` boots a fresh copy of the base.

    With ``install`` the .deb under test is installed and PostgreSQL is up before it yields.
    At exit the container's journal is saved to the e2e log directory and the copy deleted.
    """
    runs = CACHE / "runs"
    runs.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def boot(name: str, install: bool = True) -> Iterator[Container]:
        root = runs / f"{name}-{uuid.uuid4().hex[:8]}"
        t0 = time.monotonic()
        result = _host_run([str(PACKAGING / "rootfs.sh"), "copy", str(root)])
        if result.returncode != 0:
            pytest.fail(f"rootfs.sh copy failed:\n{result.stderr[-3000:]}")
        _timed("copy rootfs", time.monotonic() - t0)
        ct = Container(root, log_path=e2e_logs / f"{name}.nspawn.log", name=name)
        try:
            t0 = time.monotonic()
            try:
                ct.start()
            except ContainerError as exc:
                # One retry: a boot that never gets going (seen once, under the load of the
                # background .deb build) says nothing about the package under test. The
                # failure is kept in the log directory and reported as a warning.
                (e2e_logs / f"{name}.boot-failure.txt").write_text(str(exc))
                print(f"\ne2e: booting {name!r} failed, retrying once: {exc}", file=sys.stderr)
                ct = Container(root, log_path=e2e_logs / f"{name}.nspawn.log", name=name)
                ct.start()
            _timed("boot container", time.monotonic() - t0)
            wait_postgresql(ct)
            if install:
                t0 = time.monotonic()
                install_deb(ct, deb_path)
                _timed("install .deb", time.monotonic() - t0)
            yield ct
        finally:
            if ct.pid is not None:
                journal = ct.exec(
                    ["journalctl", "-b", "--no-pager", "-o", "short-precise"], check=False
                )
                (e2e_logs / f"{name}.journal.txt").write_text(journal.stdout)
            ct.stop()
            if os.environ.get("DB_BACKUP_E2E_KEEP") != "1":
                shutil.rmtree(root, ignore_errors=True)

    return boot


@pytest.fixture(scope="session")
def container(boot_container: BootContainer) -> Iterator[Container]:
    """A booted container shared by the session, with the .deb installed and PostgreSQL up."""
    with boot_container("main", install=True) as ct:
        yield ct


@pytest.fixture(scope="session")
def exec(container: Container) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``exec(argv, check=True, timeout=120, input=None, env=None)`` in the shared container."""
    return container.exec


# -- OSS for the containers ------------------------------------------------------------------

# psql as the postgres role over the container's local socket, stopping at the first error.
PSQL = ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1"]


@pytest.fixture(scope="module")
def oss(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OssServerProcess]:
    """A loopback OSS server on the host, one per module (containers share the host network)."""
    server = start_oss_server_process(tmp_path_factory.mktemp("e2e-oss"))
    yield server
    server.stop()


def use_oss(ct: Container, server: OssServerProcess, unit: str, mode: str) -> str:
    """Gives `unit` the OSS keys (LoadCredential= drop-in); returns the config's storage block.

    `unit` is the unit file's name (`db-backup.service`, `db-backup@.service`).
    """
    ct.write_file("/etc/db-backup/credentials/oss-id", OSS_ACCESS_KEY_ID, 0o600)
    ct.write_file("/etc/db-backup/credentials/oss-secret", OSS_ACCESS_KEY_SECRET, 0o600)
    ct.write_file(
        f"/etc/systemd/system/{unit}.d/e2e-credentials.conf",
        "[Service]\n"
        "LoadCredential=oss-id:/etc/db-backup/credentials/oss-id\n"
        "LoadCredential=oss-secret:/etc/db-backup/credentials/oss-secret\n",
    )
    return f"""storage:
  mode: {mode}
  oss:
    endpoint: {server.endpoint}
    bucket: {OSS_BUCKET}
    region: {OSS_REGION}
    signature_version: v4
    access_key_id: {{credential: oss-id}}
    access_key_secret: {{credential: oss-secret}}
    part_size_mib: 1
"""
