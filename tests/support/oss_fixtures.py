"""Pytest fixtures that start the loopback OSS server in-process or as a separate process.

Import them into a conftest (`from tests.support.oss_fixtures import *`-style, or name by name).
`oss_server` gives a fresh in-process server per test; `oss_server_process` runs
`python -m tests.support.oss_server` in a child process (for daemons and benchmarks that must
reach it from elsewhere) and is steered through its `/_control` endpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import oss2
import pytest

from db_backup.storage.oss import OssSettings
from tests.support.oss_server import Credential, OssServer

OSS_BUCKET = "db-backup-test"
OSS_ACCESS_KEY_ID = "LTAI-test-access-key"
OSS_ACCESS_KEY_SECRET = "test-secret-do-not-log-3f9a"
OSS_REGION = "cn-test"
_REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class OssServerProcess:
    """A loopback OSS server running in a child process."""

    process: subprocess.Popen[bytes]
    port: int
    root: Path

    @property
    def endpoint(self) -> str:
        """Returns the endpoint URL for oss2."""
        return f"http://127.0.0.1:{self.port}"

    def control(self, **command: Any) -> dict[str, Any]:
        """Sends one control command (see `OssServer.control`) and returns the server state."""
        request = urllib.request.Request(
            f"{self.endpoint}/_control",
            data=json.dumps(command).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            result: dict[str, Any] = json.load(response)
        return result

    def requests(self) -> list[dict[str, Any]]:
        """Returns the server's request log."""
        with urllib.request.urlopen(f"{self.endpoint}/_control/requests", timeout=10) as response:
            result: list[dict[str, Any]] = json.load(response)
        return result

    def stop(self) -> None:
        """Terminates the child and waits for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_oss_server_process(
    root: Path, *, bucket: str = OSS_BUCKET, extra_args: tuple[str, ...] = ()
) -> OssServerProcess:
    """Starts `python -m tests.support.oss_server` and waits until it listens."""
    port_file = root / "port"
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "tests.support.oss_server",
        "--root",
        str(data),
        "--bucket",
        bucket,
        "--access-key-id",
        OSS_ACCESS_KEY_ID,
        "--access-key-secret",
        OSS_ACCESS_KEY_SECRET,
        "--region",
        OSS_REGION,
        "--port",
        "0",
        "--port-file",
        str(port_file),
        *extra_args,
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
    process = subprocess.Popen(argv, cwd=_REPO_ROOT, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the loopback OSS server did not start")
        time.sleep(0.05)
    return OssServerProcess(process, int(port_file.read_text()), data)


@pytest.fixture
def oss_server(tmp_path: Path) -> Iterator[OssServer]:
    """Yields a fresh in-process loopback OSS server with one bucket, `OSS_BUCKET`."""
    server = OssServer(
        tmp_path / "oss-server",
        [OSS_BUCKET],
        [Credential(OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET)],
        region=OSS_REGION,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def target_settings(server: OssServer, **overrides: Any) -> OssSettings:
    """Returns OSS target settings for the loopback server's bucket, with `overrides`."""
    settings = OssSettings(
        endpoint=server.endpoint,
        bucket=OSS_BUCKET,
        region=OSS_REGION,
        access_key_id=OSS_ACCESS_KEY_ID,
        access_key_secret=OSS_ACCESS_KEY_SECRET,
    )
    return replace(settings, **overrides)


@pytest.fixture
def oss_bucket(oss_server: OssServer) -> oss2.Bucket:
    """Returns a V1-signed oss2 bucket with CRC checks on, pointed at `oss_server`."""
    auth = oss2.Auth(OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET)
    return oss2.Bucket(auth, oss_server.endpoint, OSS_BUCKET, enable_crc=True, connect_timeout=10)


@pytest.fixture
def oss_server_process(tmp_path: Path) -> Iterator[OssServerProcess]:
    """Yields a loopback OSS server running in a child process."""
    server = start_oss_server_process(tmp_path / "oss-server-process")
    try:
        yield server
    finally:
        server.stop()
