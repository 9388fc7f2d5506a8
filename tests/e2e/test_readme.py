"""Every command of the README, as written, in README order, on the installed package.

The commands are read from README.md itself (its ```sh blocks), so the README and this test
cannot drift. Each runs in a fresh Debian 12 container with the package installed, as the user
it names: `sudo ...` and `sudoedit ...` through the real sudo by an ordinary administrator
account `dba`, `$ ...` as `dba` itself. `$ make ...` lines are source-tree commands: `make -n`
checks that the target exists. The config is the README's own (its `readme:config` block, put
in place by `sudoedit` as the README says) with the OSS endpoint, bucket and region of the
loopback OSS server, and the secrets are the README's style: files under
/etc/db-backup/credentials typed in through `sudo tee`, loaded by the unit's `LoadCredential=`.

Every command runs even after one fails; the test fails at the end listing each failed command
with its exit status and the end of its output. Beyond exit statuses, the timer that
`db-backup timers --apply` set up must elapse at the job's next slot as `db-backup next`
computes it (the README's 02:00 Asia/Shanghai job: 18:00 UTC).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support.oss_fixtures import (
    OSS_ACCESS_KEY_ID,
    OSS_ACCESS_KEY_SECRET,
    OSS_BUCKET,
    OSS_REGION,
    OssServerProcess,
)

from .conftest import PSQL, REPO, BootContainer, Container

pytestmark = pytest.mark.e2e

README = REPO / "README.md"
HOME = "/home/dba"
CONFIG_COPY = f"{HOME}/readme-config.yaml"  # what the "editor" of `sudoedit` writes
# What the administrator types into `sudo tee FILE` (then Ctrl-D).
TYPED = {
    "/etc/db-backup/credentials/oss-access-key-id": OSS_ACCESS_KEY_ID + "\n",
    "/etc/db-backup/credentials/oss-access-key-secret": OSS_ACCESS_KEY_SECRET + "\n",
}


@dataclass(frozen=True)
class Step:
    """One command of the README: its text (heredoc included) and the section it is in."""

    text: str
    section: str


def readme_steps() -> list[Step]:
    """Returns every command of the README's ```sh blocks, in order (a heredoc is one command)."""
    steps: list[Step] = []
    section = ""
    lines = README.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if line.startswith("## "):
            section = line[3:]
        if line != "```sh":
            continue
        while lines[index] != "```":
            command = lines[index]
            index += 1
            heredoc = re.search(r"<<'(\w+)'", command)
            if heredoc:
                body = []
                while lines[index] != heredoc.group(1):
                    body.append(lines[index])
                    index += 1
                index += 1
                command = "\n".join([command, *body, heredoc.group(1)])
            steps.append(Step(command, section))
        index += 1
    return steps


def readme_config(server: OssServerProcess) -> str:
    """Returns the README's config with the loopback OSS server's endpoint, bucket and region."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- readme:config -->\s*```yaml\n(.*?)```", text, re.S)
    assert match, "README.md must keep its config between <!-- readme:config --> and the block"
    config = match.group(1)
    for key, value in (
        ("endpoint", server.endpoint),
        ("bucket", OSS_BUCKET),
        ("region", OSS_REGION),
    ):
        config, count = re.subn(rf"(\n\s+{key}: )\S+", rf"\g<1>{value}", config, count=1)
        assert count == 1, f"the README's config has no storage.oss.{key}"
    return config


def without_comment(command: str) -> str:
    """Returns the command without its trailing `  # comment` (the first line only)."""
    first, newline, rest = command.partition("\n")
    return first.split("  #", 1)[0].rstrip() + newline + rest


@pytest.fixture(scope="module")
def host(
    boot_container: BootContainer, deb_path: Path, oss: OssServerProcess
) -> Iterator[Container]:
    """A fresh container with the package, sudo, an administrator `dba` and a database `app`."""
    with boot_container("readme", install=True) as ct:
        ct.exec(["apt-get", "install", "-y", "-q", "sudo"], timeout=300,
                env={"DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
        # A real host resolves its own name (sudo looks it up); the bare container does not.
        ct.sh('echo "127.0.1.1 $(hostname)" >> /etc/hosts')
        ct.exec(["useradd", "--create-home", "--shell", "/bin/bash", "dba"])
        ct.write_file("/etc/sudoers.d/dba", "dba ALL=(ALL:ALL) NOPASSWD: ALL\n", 0o440)
        # The package as `make deb` leaves it, where the README's `apt install` looks for it.
        ct.copy_in(deb_path, f"{HOME}/dist/{deb_path.name}")
        ct.write_file(CONFIG_COPY, readme_config(oss))
        ct.exec(["chown", "-R", "dba:dba", HOME])
        # The DBA's own data: what the README's `databases: all` job backs up and restores.
        ct.exec([*PSQL, "-c", "CREATE DATABASE app"])
        ct.exec([*PSQL, "-d", "app", "-c",
                 "CREATE TABLE orders (id int PRIMARY KEY, total numeric);"
                 "INSERT INTO orders SELECT i, i * 1.5 FROM generate_series(1, 5000) i"])  # fmt: skip
        yield ct


def run_step(ct: Container, step: Step) -> subprocess.CompletedProcess[str]:
    """Runs one README command as the user it names; returns the finished process."""
    command = without_comment(step.text)
    if command.startswith("$ make "):
        target = command.removeprefix("$ make ").split()[0]
        return subprocess.run(
            ["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=120
        )
    if command.startswith("$ "):
        command = command.removeprefix("$ ")
    typed = next((text for path, text in TYPED.items() if f"tee {path} " in command), None)
    return ct.exec(
        ["runuser", "-u", "dba", "--", "bash", "-c", f"cd ~ && {command}"],
        check=False,
        timeout=600,
        input=typed,
        env={"HOME": HOME, "USER": "dba", "LOGNAME": "dba", "SUDO_EDITOR": f"cp {CONFIG_COPY}"},
    )


def next_slot_utc(ct: Container) -> datetime:
    """Returns the nightly job's next slot as `db-backup next` prints it (UTC)."""
    out = ct.exec(["db-backup", "next", "nightly", "-n", "1"]).stdout
    [stamp] = re.findall(r"=\s+(\S+Z)", out)
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def timer_elapse_utc(ct: Container) -> datetime:
    """Returns when systemd will next start db-backup@nightly.timer (UTC)."""
    value = ct.systemctl("show", "-p", "NextElapseUSecRealtime", "--value",
                         "db-backup@nightly.timer").stdout.strip()  # fmt: skip
    # systemd 252 prints it as "Sun 2026-12-06 18:00:00 UTC" in the container's zone (UTC).
    match = re.fullmatch(r"\w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", value)
    assert match, f"unexpected NextElapseUSecRealtime {value!r}"
    return datetime.fromisoformat(match.group(1)).replace(tzinfo=UTC)


def test_every_readme_command_works_as_written_as_the_user_it_names(
    host: Container, e2e_logs: Path
) -> None:
    steps = readme_steps()
    assert len(steps) >= 30, "the README's commands were not found"
    failures: list[str] = []
    transcript: list[str] = []
    for step in steps:
        done = run_step(host, step)
        output = (done.stdout + done.stderr).strip()
        transcript.append(f"[{step.section}] {step.text}\n-> exit {done.returncode}\n{output}\n")
        if done.returncode != 0:
            tail = " | ".join(output.splitlines()[-4:])
            failures.append(f"[{step.section}] {step.text.splitlines()[0]}: exit "
                            f"{done.returncode}: {tail}")  # fmt: skip
        if "systemctl list-timers" in step.text:
            # The timer keeps the job's schedule and zone, not the template's midnight UTC.
            elapse, slot = timer_elapse_utc(host), next_slot_utc(host)
            if elapse != slot:
                failures.append(
                    f"db-backup@nightly.timer elapses {elapse}, the job's slot is {slot}"
                )
    (e2e_logs / "readme-commands.txt").write_text("\n".join(transcript))
    assert failures == [], "README commands that failed:\n" + "\n".join(failures)
