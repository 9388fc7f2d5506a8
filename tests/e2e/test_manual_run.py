"""`sudo db-backup run nightly` next to the service, as the README shows it, on a minimal host.

A fresh container with the shipped config. An admin (a login in group sudo, home 0700) runs the
job by hand with sudo; then the service runs it on its schedule; then the admin again. Every run
succeeds, every file belongs to postgres, and retention run by either one prunes the other's
backups.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from .conftest import BootContainer, Container, wait_for

UNIT = "db-backup.service"
CONFIG = "/etc/db-backup/config.yaml"
DATA = "/data/db-backups/data"
REPORTS = "/data/db-backups/reports"
SHARED = ("/var/lib/db-backup", DATA, REPORTS, "/var/log/db-backup")
ADMIN = "dba"


@pytest.fixture(scope="module")
def host(boot_container: BootContainer) -> Iterator[Container]:
    """A container with the package and sudo, and an admin login allowed to use it."""
    with boot_container("manual-run", install=True) as ct:
        ct.exec(
            ["apt-get", "install", "-y", "--no-install-recommends", "sudo"],
            env={"DEBIAN_FRONTEND": "noninteractive"},
            timeout=300,
        )
        ct.exec(["useradd", "--create-home", "--groups", "sudo", "--shell", "/bin/sh", ADMIN])
        ct.exec(["chmod", "0700", f"/home/{ADMIN}"])  # as adduser makes homes on bookworm
        ct.write_file(f"/etc/sudoers.d/{ADMIN}", f"{ADMIN} ALL=(ALL) NOPASSWD: ALL\n", 0o440)
        ct.wait_active(UNIT)
        yield ct


def sudo_run(ct: Container) -> list[str]:
    """Run `sudo db-backup run nightly` as the admin, from their home; return the report paths."""
    done = ct.exec(
        ["runuser", "-l", ADMIN, "-c", "sudo db-backup run nightly"],
        check=False,
        timeout=300,
    )
    print(f"sudo db-backup run nightly: exit {done.returncode}\n{done.stdout}{done.stderr}")
    assert done.returncode == 0, done.stderr
    paths = [line for line in done.stdout.splitlines() if line.endswith(".json")]
    assert paths, done.stdout
    return paths


def report(ct: Container, path: str) -> dict:
    return json.loads(ct.read_file(path))


def report_paths(ct: Container) -> set[str]:
    out = ct.sh(f"ls {REPORTS}/*.json 2>/dev/null || true").stdout
    return set(out.split())


def not_owned_by_postgres(ct: Container) -> list[str]:
    found = ct.exec(["find", *SHARED, "-mindepth", "1", "!", "-user", "postgres"]).stdout
    return found.split()


def age(ct: Container, path: str) -> None:
    """Move a report's startedAt back to 2020: a new file renamed over it, as an editor saves
    (owner and mode kept; retention sees a replaced report at once, an in-place edit only at the
    next listing, see README)."""
    ct.sh(
        f'sed -E \'s/("startedAt": *")[0-9]{{4}}-/\\12020-/\' {path} >/tmp/aged.json'
        f' && install -o postgres -g postgres -m "$(stat -c %a {path})" /tmp/aged.json {path}.aged'
        f" && mv -f {path}.aged {path} && rm /tmp/aged.json"
    )
    assert report(ct, path)["startedAt"].startswith("2020-")


def set_config(ct: Container, schedule: str) -> None:
    """The shipped config with another schedule and keep_last: 1 (the admin's edit)."""
    shipped = ct.read_file(CONFIG)
    edited = re.sub(r'schedule: "[^"]*"', f'schedule: "{schedule}"', shipped, count=1)
    edited = re.sub(r"keep_last: \d+", "keep_last: 1", edited, count=1)
    assert edited.count(schedule) == 1 and "keep_last: 1" in edited
    ct.sh(f"cat >{CONFIG}", input=edited)  # in place: root:postgres 0640 stays


def artefacts(ct: Container, path: str) -> list[str]:
    """Return the dump and checksum files a report names."""
    local = report(ct, path)["local"]
    return [local["file"], f"{local['file']}.sha256"]


def exists(ct: Container, path: str) -> bool:
    return ct.exec(["test", "-e", path], check=False).returncode == 0


def test_sudo_run_then_scheduled_run_then_sudo_run_share_files_and_prune_each_other(
    host: Container,
) -> None:
    # 1. By hand, with the config exactly as shipped.
    [first] = sudo_run(host)
    assert report(host, first)["status"] == "SUCCESS"
    assert report(host, first)["database"] == "postgres"
    assert not_owned_by_postgres(host) == []
    first_files = artefacts(host, first)
    assert all(exists(host, f) for f in first_files)
    age(host, first)

    # 2. The service, on its schedule: every minute, keep_last 1. `systemctl reload` works on a
    #    minimal host (no procps) and the next slot runs the job.
    set_config(host, "* * * * *")
    host.systemctl("reload", UNIT)

    def scheduled_success() -> str | None:
        for path in sorted(report_paths(host) - {first}):
            if report(host, path)["status"] == "SUCCESS":
                return path
        return None

    scheduled = wait_for(scheduled_success, 150, what="a SUCCESS report of a scheduled run")
    print(host.exec(["journalctl", "-u", UNIT, "--no-pager", "-n", "30"]).stdout)
    # The service (User=postgres) pruned what the root-started run made.
    wait_for(
        lambda: not any(exists(host, f) for f in [*first_files, first]),
        60,
        what="the manual run's backup to be pruned by the service",
    )

    # 3. Back to the nightly schedule; once the service is idle, by hand again.
    set_config(host, "0 2 * * *")
    host.systemctl("reload", UNIT)

    def idle_on_the_nightly_schedule() -> bool:
        status = host.unit_property(UNIT, "StatusText")
        return "running" not in status and re.search(r"next nightly \S+ 02:00", status) is not None

    wait_for(idle_on_the_nightly_schedule, 300, what="the service idle on the reloaded schedule")
    by_service = report_paths(host) - {first}
    assert scheduled in by_service
    service_files = [f for path in sorted(by_service) for f in artefacts(host, path)]
    for path in by_service:
        age(host, path)
    [last] = sudo_run(host)
    assert report(host, last)["status"] == "SUCCESS"
    # The root-started run (as postgres) pruned what the service made.
    assert not any(exists(host, f) for f in [*service_files, *by_service])
    assert report_paths(host) == {last}
    assert not_owned_by_postgres(host) == []
    assert host.is_active(UNIT) == "active"
