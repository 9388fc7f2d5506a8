"""The .deb as an ops engineer meets it: install, files and modes, upgrade, remove, purge."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import REPO, BootContainer, Container, deb_version, install_deb, wait_for

CONFIG = "/etc/db-backup/config.yaml"
UNIT_DIR = "/etc/systemd/system"
REQUIRED_UNITS = (
    "db-backup.service",
    "db-backup@.service",
    "db-backup@.timer",
    "db-backup-drill@.service",
    "db-backup-drill@.timer",
)
BACKUP_MARKER = "/data/db-backups/data/e2e-marker.dump"
REPORT_MARKER = "/data/db-backups/reports/e2e-marker.json"


def stat(ct: Container, path: str) -> str:
    """Return 'MODE OWNER GROUP' of a path inside the container, e.g. '750 postgres postgres'."""
    return ct.exec(["stat", "-c", "%a %U %G", path]).stdout.strip()


def package_status(ct: Container) -> str:
    """Return dpkg's status words and version for db-backup ('install ok installed 0.1.0')."""
    return ct.exec(
        ["dpkg-query", "-W", "-f=${Status} ${Version}", "db-backup"], check=False
    ).stdout.strip()


def conffiles(ct: Container) -> dict[str, str]:
    """Return db-backup's conffiles as {path: md5sum} from dpkg's database."""
    out = ct.exec(["dpkg-query", "-W", "-f=${Conffiles}", "db-backup"]).stdout
    return dict(
        (parts[0], parts[1]) for parts in (line.split() for line in out.splitlines()) if parts
    )


def shipped_units(ct: Container) -> list[str]:
    """Return the unit files the package put under /etc/systemd/system."""
    files = ct.exec(["dpkg-query", "-L", "db-backup"]).stdout.splitlines()
    return sorted(f for f in files if re.fullmatch(rf"{UNIT_DIR}/[^/]+\.(service|timer)", f))


def upstream_version(version: str) -> str:
    """Return the upstream part of a Debian version ('0.1.0' of '0.1.0-1' or '0.1.0+e2e1')."""
    return re.split(r"[-+~]", version.split(":", 1)[-1])[0]


# -- a fresh install (the shared container) --------------------------------------------------


def test_package_installs_and_is_configured(container: Container, deb_path: Path) -> None:
    assert package_status(container) == f"install ok installed {deb_version(deb_path)}"


def test_db_backup_command_on_path_reports_version(container: Container, deb_path: Path) -> None:
    assert container.exec(["readlink", "/usr/bin/db-backup"]).stdout.strip() == (
        "/opt/venvs/db-backup/bin/db-backup"
    )
    result = container.exec(["db-backup", "--version"], check=False)
    assert result.returncode == 0, f"db-backup --version failed:\n{result.stderr}"
    assert upstream_version(deb_version(deb_path)) in result.stdout + result.stderr


def test_virtualenv_has_every_locked_dependency_and_working_extensions(
    container: Container,
) -> None:
    venv_python = "/opt/venvs/db-backup/bin/python"
    assert (
        container.exec(["readlink", "-f", venv_python])
        .stdout.strip()
        .startswith("/usr/bin/python3")
    )
    # Every locked distribution at its locked version (pip itself is not shipped; the build
    # ran `pip check` before removing it).
    locked = dict(
        re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\]+)", (REPO / "packaging/requirements.lock")
                   .read_text(), re.M)
    )  # fmt: skip
    assert "oss2" in locked
    installed = container.exec(
        [venv_python, "-c",
         "import importlib.metadata as m, json; "
         "print(json.dumps({d.metadata['Name'].lower().replace('_', '-'): d.version "
         "for d in m.distributions()}))"]
    ).stdout  # fmt: skip
    found = json.loads(installed)
    wrong = {
        name: (version, found.get(name.lower().replace("_", "-")))
        for name, version in locked.items()
        if found.get(name.lower().replace("_", "-")) != version
    }
    assert wrong == {}, f"locked version -> installed: {wrong}"
    # Compiled extensions survive dh_strip and load against Debian's libc and python3.11:
    # crcmod's C CRC (oss2 falls back to a slow pure-Python CRC without it), pycryptodome,
    # cryptography (aliyun-python-sdk-core), PyYAML's libyaml loader.
    container.exec(
        [
            venv_python, "-c",
            "import crcmod._crcfunext, Crypto.Cipher.AES, cryptography.hazmat.bindings._rust, "
            "yaml, oss2, croniter, sdnotify, structlog, jsonschema, db_backup; "
            "assert yaml.__with_libyaml__",
        ]
    )  # fmt: skip
    # psycopg runs on Debian's libpq (libpq5), not on a copy bundled in a wheel.
    container.exec(
        [
            venv_python, "-c",
            "import re, psycopg; assert psycopg.pq.__impl__ == 'python', psycopg.pq.__impl__; "
            "maps = open('/proc/self/maps').read(); "
            "assert re.search(r' /usr/lib/[^/ ]*-linux-gnu/libpq[.]so[.]5', maps), 'no libpq5'",
        ]
    )  # fmt: skip


def test_config_is_installed_readable_only_by_root_and_postgres(container: Container) -> None:
    assert stat(container, CONFIG) == "640 root postgres"
    assert stat(container, "/etc/db-backup") == "750 root postgres"
    assert CONFIG in conffiles(container)
    # The daemon's user can read it, others cannot.
    container.exec(["runuser", "-u", "postgres", "--", "cat", CONFIG])
    assert container.exec(["runuser", "-u", "nobody", "--", "cat", CONFIG], check=False).returncode


@pytest.mark.parametrize(
    "path",
    [
        "/data/db-backups/data",
        "/data/db-backups/reports",
        "/var/log/db-backup",
        "/var/lib/db-backup",
    ],
)
def test_state_directories_belong_to_postgres(container: Container, path: str) -> None:
    assert stat(container, path) == "750 postgres postgres"


def test_unit_files_are_in_etc_systemd_system_as_conffiles(container: Container) -> None:
    units = shipped_units(container)
    for name in REQUIRED_UNITS:
        assert f"{UNIT_DIR}/{name}" in units
    registered = conffiles(container)
    assert [u for u in units if u not in registered] == []
    # systemd sees the installed unit where the customer wants it.
    assert container.unit_property("db-backup.service", "FragmentPath") == (
        f"{UNIT_DIR}/db-backup.service"
    )


def test_service_is_enabled_after_install(container: Container) -> None:
    assert container.systemctl("is-enabled", "db-backup.service", check=False).stdout.strip() == (
        "enabled"
    )


def test_migration_and_docs_are_installed(container: Container) -> None:
    sql = container.read_file("/usr/share/db-backup/sql/V1__create_db_backup_job.sql")
    assert "db_backup_job" in sql
    docs = set(container.exec(["ls", "/usr/share/doc/db-backup"]).stdout.split())
    assert {"README.md", "docs", "copyright"} <= docs
    pages = set(container.exec(["ls", "/usr/share/doc/db-backup/docs"]).stdout.split())
    assert {"packaging.md", "systemd.md", "configuration.md"} <= pages


def test_man_page_and_bash_completion_are_installed_and_name_every_command(
    container: Container,
) -> None:
    man = container.exec(["zcat", "/usr/share/man/man1/db-backup.1.gz"]).stdout
    completion = "/usr/share/bash-completion/completions/db-backup"
    words = container.exec(
        [
            "bash",
            "-c",
            f"source {completion}; COMP_WORDS=(db-backup ''); COMP_CWORD=1; "
            "_db_backup; printf '%s\\n' \"${COMPREPLY[@]}\"",
        ]
    ).stdout.split()
    # The installed program's own list of commands: the lines of --help indented by 4.
    names = re.findall(r"^    ([a-z][a-z-]+)", container.exec(["db-backup", "--help"]).stdout, re.M)
    assert "restore" in names
    for name in names:
        assert f".SS {name.replace('-', chr(92) + '-')}" in man
        assert name in words


def test_venv_ships_neither_pip_nor_the_powershell_activate_script(container: Container) -> None:
    venv = "/opt/venvs/db-backup"
    assert container.exec(["test", "-e", f"{venv}/bin/Activate.ps1"], check=False).returncode
    assert container.exec([f"{venv}/bin/python", "-c", "import pip"], check=False).returncode
    container.exec([f"{venv}/bin/python", "-c", "import db_backup.cli"])


def test_log_files_are_deleted_30_days_after_their_last_write(container: Container) -> None:
    old = "/var/log/db-backup/backup_2026-01-01.log"
    recent = "/var/log/db-backup/backup_2026-01-02.log"
    as_postgres = ["runuser", "-u", "postgres", "--"]
    container.exec([*as_postgres, "touch", "-d", "31 days ago", old])
    container.exec([*as_postgres, "touch", "-d", "29 days ago", recent])
    try:
        # What systemd-tmpfiles-clean.timer runs daily, with the package's tmpfiles.d file.
        container.exec(["systemd-tmpfiles", "--clean"])
        assert container.exec(["test", "-e", old], check=False).returncode != 0
        container.exec(["test", "-f", recent])
    finally:
        container.exec(["rm", "-f", old, recent])


def test_unit_documentation_links_resolve(container: Container) -> None:
    for unit in shipped_units(container):
        text = container.read_file(unit)
        lines = re.findall(r"^Documentation=(.*)$", text, flags=re.M)
        for path in re.findall(r"file://(\S+)", " ".join(lines)):
            assert container.exec(["test", "-f", path], check=False).returncode == 0, (
                f"{unit}: Documentation= points at missing {path}"
            )


# -- lifecycle: upgrade, remove, purge (a container of its own; tests run in file order) -----


@pytest.fixture(scope="module")
def lifecycle(boot_container: BootContainer) -> Iterator[Container]:
    with boot_container("lifecycle", install=True) as ct:
        yield ct


def ensure_installed(ct: Container, deb: Path) -> None:
    if not package_status(ct).startswith("install ok installed"):
        install_deb(ct, deb)


def test_upgrade_over_an_edited_config_is_non_interactive_and_keeps_the_edit(
    lifecycle: Container, deb_path: Path, upgrade_deb_path: Path
) -> None:
    ensure_installed(lifecycle, deb_path)
    was_active = lifecycle.is_active("db-backup.service") == "active"
    started_before = lifecycle.unit_property("db-backup.service", "ExecMainStartTimestampMonotonic")
    edit = "# edited by the e2e upgrade test\n"
    lifecycle.exec(["sh", "-c", f"printf '%s' '{edit}' >>{CONFIG}"])
    before = lifecycle.read_file(CONFIG)

    # The upgrade ships a different config.yaml: without the documented options dpkg would ask
    # (and, with no terminal, fail). With them, stdin closed, apt finishes on its own.
    output = install_deb(lifecycle, upgrade_deb_path, confold=True)
    print(output.stdout)

    assert package_status(lifecycle) == f"install ok installed {deb_version(upgrade_deb_path)}"
    assert lifecycle.read_file(CONFIG) == before
    shipped = lifecycle.read_file(f"{CONFIG}.dpkg-dist")  # the new default, for the admin to merge
    assert f"changed in {deb_version(upgrade_deb_path)}" in shipped
    assert stat(lifecycle, CONFIG) == "640 root postgres"
    assert lifecycle.systemctl("is-enabled", "db-backup.service", check=False).stdout.strip() == (
        "enabled"
    )
    if was_active:  # a running daemon is restarted onto the new code
        lifecycle.wait_active("db-backup.service", timeout=60)
        assert (
            lifecycle.unit_property("db-backup.service", "ExecMainStartTimestampMonotonic")
            != started_before
        )


TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
PROM = f"{TEXTFILE_DIR}/db_backup.prom"
TIMER = "db-backup@nightly.timer"
TIMER_LINK = f"{UNIT_DIR}/timers.target.wants/{TIMER}"


def remove(ct: Container) -> str:
    """Runs `apt-get remove db-backup` and returns what it printed."""
    done = ct.exec(
        ["apt-get", "remove", "-y", "db-backup"], env={"DEBIAN_FRONTEND": "noninteractive"}
    )
    return done.stdout + done.stderr


def test_remove_disables_the_timer_instances_and_deletes_the_metrics_file(
    lifecycle: Container, deb_path: Path
) -> None:
    ensure_installed(lifecycle, deb_path)
    # node_exporter's textfile directory, writable by the daemon; the daemon writes the file at
    # start. And a job on the timer variant, enabled as docs/systemd.md says.
    lifecycle.exec(["install", "-d", "-o", "postgres", "-g", "postgres", TEXTFILE_DIR])
    lifecycle.exec(
        ["sh", "-c", f"printf 'metrics: {{textfile_dir: {TEXTFILE_DIR}}}\\n' >>{CONFIG}"]
    )
    lifecycle.systemctl("restart", "db-backup.service")
    wait_for(lambda: lifecycle.exec(["test", "-s", PROM], check=False).returncode == 0, 60,
             what="the metrics file")  # fmt: skip
    lifecycle.systemctl("enable", "--now", TIMER)
    assert lifecycle.is_active(TIMER) == "active"

    output = remove(lifecycle)
    print(output)

    assert lifecycle.exec(["test", "-e", PROM], check=False).returncode != 0
    assert f"removed the metrics file {PROM}" in output
    assert lifecycle.exec(["test", "-e", TIMER_LINK], check=False).returncode != 0
    assert lifecycle.is_active(TIMER) != "active"
    assert f"disabled {TIMER}" in output
    # Nothing of db-backup would start at boot (the timer's unit file, a conffile, is still there).
    assert lifecycle.systemctl("is-enabled", TIMER, check=False).stdout.strip() == "disabled"


def test_reinstall_after_remove_enables_the_service_and_the_timers_again(
    lifecycle: Container, deb_path: Path
) -> None:
    if package_status(lifecycle).startswith("install ok installed"):
        remove(lifecycle)
    install_deb(lifecycle, deb_path)
    assert lifecycle.systemctl("is-enabled", "db-backup.service", check=False).stdout.strip() == (
        "enabled"
    )
    assert lifecycle.systemctl("is-enabled", TIMER, check=False).stdout.strip() == "enabled"
    assert lifecycle.is_active(TIMER) == "active"


def test_remove_keeps_config_and_backups_and_disables_the_service(
    lifecycle: Container, deb_path: Path
) -> None:
    ensure_installed(lifecycle, deb_path)
    lifecycle.exec(["runuser", "-u", "postgres", "--", "touch", BACKUP_MARKER, REPORT_MARKER])

    print(remove(lifecycle))

    assert package_status(lifecycle).startswith("deinstall ok config-files")
    assert lifecycle.exec(["test", "-e", "/usr/bin/db-backup"], check=False).returncode != 0
    assert lifecycle.exec(["test", "-d", "/opt/venvs/db-backup/bin"], check=False).returncode != 0
    assert stat(lifecycle, CONFIG) == "640 root postgres"
    for unit in REQUIRED_UNITS:  # conffiles stay until purge
        lifecycle.exec(["test", "-f", f"{UNIT_DIR}/{unit}"])
    lifecycle.exec(["test", "-f", BACKUP_MARKER])
    lifecycle.exec(["test", "-f", REPORT_MARKER])
    # Not started at the next boot: the program it would run is gone.
    assert (
        lifecycle.exec(
            ["test", "-e", f"{UNIT_DIR}/multi-user.target.wants/db-backup.service"], check=False
        ).returncode
        != 0
    )
    assert lifecycle.is_active("db-backup.service") != "active"


def test_reinstall_keeps_a_disabled_service_disabled(lifecycle: Container, deb_path: Path) -> None:
    ensure_installed(lifecycle, deb_path)
    lifecycle.systemctl("disable", "db-backup.service")
    remove(lifecycle)
    install_deb(lifecycle, deb_path)
    assert lifecycle.systemctl("is-enabled", "db-backup.service", check=False).stdout.strip() == (
        "disabled"
    )
    assert lifecycle.is_active("db-backup.service") != "active"


def test_purge_removes_config_and_state_but_keeps_backups(
    lifecycle: Container, deb_path: Path
) -> None:
    ensure_installed(lifecycle, deb_path)
    lifecycle.exec(["runuser", "-u", "postgres", "--", "touch", BACKUP_MARKER, REPORT_MARKER])

    output = lifecycle.exec(
        ["apt-get", "purge", "-y", "db-backup"], env={"DEBIAN_FRONTEND": "noninteractive"}
    )
    print(output.stdout)

    assert package_status(lifecycle) == ""  # dpkg forgot the package entirely
    units = [f"{UNIT_DIR}/{u}" for u in REQUIRED_UNITS]
    for gone in ("/etc/db-backup", "/var/lib/db-backup", "/var/log/db-backup", TIMER_LINK, *units):
        assert lifecycle.exec(["test", "-e", gone], check=False).returncode != 0, gone
    lifecycle.exec(["test", "-f", BACKUP_MARKER])
    lifecycle.exec(["test", "-f", REPORT_MARKER])
    assert "backups and reports were kept in /data/db-backups" in output.stdout + output.stderr


AGE_KEY = "/etc/db-backup/credentials/age-identity.txt"
DROP_IN = f"{UNIT_DIR}/db-backup.service.d/credentials.conf"


def test_purge_keeps_the_admins_key_and_drop_in_and_says_where(
    lifecycle: Container, deb_path: Path
) -> None:
    ensure_installed(lifecycle, deb_path)
    # As docs/encryption.md has the admin do: the identity under /etc/db-backup/credentials,
    # handed to the service with LoadCredential= in a drop-in.
    key = "# created: 2026-11-24\nAGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ\n"
    lifecycle.write_file(AGE_KEY, key, 0o600)
    lifecycle.write_file(DROP_IN, f"[Service]\nLoadCredential=age-identity:{AGE_KEY}\n")

    output = lifecycle.exec(
        ["apt-get", "purge", "-y", "db-backup"], env={"DEBIAN_FRONTEND": "noninteractive"}
    )
    said = output.stdout + output.stderr
    print(said)

    assert package_status(lifecycle) == ""
    assert lifecycle.read_file(AGE_KEY) == key
    assert stat(lifecycle, AGE_KEY) == "600 root root"
    lifecycle.exec(["test", "-f", DROP_IN])
    for gone in (CONFIG, "/var/lib/db-backup", "/var/log/db-backup"):
        assert lifecycle.exec(["test", "-e", gone], check=False).returncode != 0, gone
    assert "kept these files an admin put there" in said
    assert f"db-backup:   {AGE_KEY}" in said and f"db-backup:   {DROP_IN}" in said


def test_reinstall_after_purge_starts_afresh_and_finds_the_key(
    lifecycle: Container, deb_path: Path
) -> None:
    install_deb(lifecycle, deb_path)
    assert package_status(lifecycle) == f"install ok installed {deb_version(deb_path)}"
    assert "edited by the e2e upgrade test" not in lifecycle.read_file(CONFIG)
    assert stat(lifecycle, CONFIG) == "640 root postgres"
    assert lifecycle.systemctl("is-enabled", "db-backup.service", check=False).stdout.strip() == (
        "enabled"
    )
    lifecycle.wait_active("db-backup.service")
    # The timer the admin had enabled before the purge is not revived by the new install.
    assert lifecycle.systemctl("is-enabled", TIMER, check=False).stdout.strip() == "disabled"
    # The kept key is where the drop-in says: the service starts with it as a credential.
    assert lifecycle.unit_property("db-backup.service", "LoadCredential") != ""
