"""A loopback HTTP receiver for webhooks: records every request, answers as told.

It can check signatures the way Feishu's and DingTalk's servers do (recomputed from the received
timestamp with the bot's secret, and the timestamp within an hour of now), answering a mismatch
with those servers' own error bodies, so a sender that signs wrongly is refused for real.

    with Receiver() as receiver:
        receiver.reply(500)                   # the next answer; then the default (200 `{}`)
        ... point a channel at receiver.url("/hook") ...
        [request] = receiver.wait_for(1)
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import selectors
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


@dataclass
class Received:
    """One request as the receiver saw it."""

    method: str
    path: str  # without the query
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    answered: int = 0  # the status code it was answered with

    def json(self) -> Any:
        """Returns the body parsed as JSON."""
        return json.loads(self.body)


@dataclass
class _Reply:
    status: int
    body: bytes
    delay: float = 0.0


Check = Callable[[Received], "tuple[int, dict[str, Any]] | None"]


@dataclass
class Receiver:
    """A `ThreadingHTTPServer` on 127.0.0.1 with a free port; start with `with` or `start()`."""

    default_status: int = 200
    default_body: dict[str, Any] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    check: Check | None = None  # e.g. feishu_check(secret): refuses a bad signature

    def __post_init__(self) -> None:
        self._replies: list[_Reply] = []
        self._changed = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- control -------------------------------------------------------------------------

    def start(self) -> Receiver:
        """Starts serving in a background thread; returns self."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                receiver._serve(self)

            do_GET = do_POST
            do_PUT = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving and closes the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "receiver not started"
        return int(self._server.server_address[1])

    def url(self, path: str = "/") -> str:
        """Returns the URL of `path` on this receiver."""
        return f"http://127.0.0.1:{self.port}{path}"

    def reply(
        self, status: int, body: dict[str, Any] | str | None = None, delay: float = 0
    ) -> None:
        """Queues one answer (used by the next request), optionally after `delay` seconds."""
        raw = body if isinstance(body, str) else json.dumps(body if body is not None else {})
        self._replies.append(_Reply(status, raw.encode(), delay))

    def wait_for(self, count: int, timeout: float = 60) -> list[Received]:
        """Returns the first `count` requests once they have arrived; fails after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout} s waiting for {count} request(s); "
                        f"got {len(self.requests)}"
                    )
                self._changed.wait(left)
            return list(self.requests[:count])

    # --- serving -------------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        parsed = urllib.parse.urlsplit(handler.path)
        received = Received(
            method=handler.command,
            path=parsed.path,
            query=dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)),
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=body,
        )
        with self._changed:
            queued = self._replies.pop(0) if self._replies else None
        if queued is not None and queued.delay:
            time.sleep(queued.delay)  # a slow server, for timeout tests
        refusal = self.check(received) if self.check is not None else None
        if refusal is not None:
            status, answer = refusal[0], json.dumps(refusal[1]).encode()
        elif queued is not None:
            status, answer = queued.status, queued.body
        else:
            status, answer = self.default_status, json.dumps(self.default_body).encode()
        received.answered = status
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(answer)))
            handler.end_headers()
            handler.wfile.write(answer)
        except OSError:
            pass  # the client gave up (timeout test); the request is still recorded
        with self._changed:
            self.requests.append(received)
            self._changed.notify_all()


# --- how the bots' servers check signatures -------------------------------------------------

ONE_HOUR = 3600


def feishu_check(secret: str, now: Callable[[], float] = time.time) -> Check:
    """Returns a check refusing what Feishu refuses: a sign that does not match the timestamp."""

    def check(request: Received) -> tuple[int, dict[str, Any]] | None:
        try:
            body = request.json()
            timestamp = str(body["timestamp"])
            sign = str(body["sign"])
        except (ValueError, KeyError, TypeError):
            return 200, {
                "code": 19021,
                "msg": "sign match fail or timestamp is not within one hour from current time",
            }
        key = f"{timestamp}\n{secret}".encode()
        expected = base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
        fresh = timestamp.isdigit() and abs(now() - int(timestamp)) < ONE_HOUR
        if not fresh or not hmac.compare_digest(sign, expected):
            return 200, {
                "code": 19021,
                "msg": "sign match fail or timestamp is not within one hour from current time",
            }
        return None

    return check


def dingtalk_check(secret: str, now: Callable[[], float] = time.time) -> Check:
    """Returns a check refusing what DingTalk refuses: a sign or timestamp that does not match."""

    def check(request: Received) -> tuple[int, dict[str, Any]] | None:
        timestamp = request.query.get("timestamp", "")
        sign = request.query.get(
            "sign", ""
        )  # parse_qsl has URL-decoded it once, as the server does
        if not timestamp.isdigit() or abs(now() * 1000 - int(timestamp)) > ONE_HOUR * 1000:
            return 200, {"errcode": 310000, "errmsg": "invalid timestamp"}
        message = f"{timestamp}\n{secret}".encode()
        expected = base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest())
        if not hmac.compare_digest(sign.encode(), expected):
            return 200, {"errcode": 310000, "errmsg": "sign not match"}
        return None

    return check


# --- servers that do not answer --------------------------------------------------------------


class Silent:
    """A TCP server on 127.0.0.1 that accepts connections, reads what comes and never answers
    (a hung webhook); with `close_at_once`, it closes each connection as it comes (a dead SMTP
    server). `accepted` counts the connections; `close()` of the test ends them all."""

    def __init__(self, close_at_once: bool = False) -> None:
        self.close_at_once = close_at_once
        self.accepted = 0
        self.received = b""
        self._changed = threading.Condition()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._selector = selectors.DefaultSelector()
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Silent:
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop = True
        self._thread.join(5)
        for key in list(self._selector.get_map().values()):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            sock.close()
        self._selector.close()

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def url(self, path: str = "/") -> str:
        """Returns the URL of `path` on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_for(self, count: int, timeout: float = 30) -> None:
        """Returns once `count` connections were accepted; fails after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.accepted < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.accepted} connection(s), {count} expected")
                self._changed.wait(left)

    def _serve(self) -> None:
        while not self._stop:
            for key, _ in self._selector.select(0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    conn, _ = sock.accept()
                    with self._changed:
                        self.accepted += 1
                        self._changed.notify_all()
                    if self.close_at_once:
                        conn.close()
                    else:
                        self._selector.register(conn, selectors.EVENT_READ)
                    continue
                data = b""
                with contextlib.suppress(OSError):
                    data = sock.recv(65536)
                if data:
                    self.received += data
                else:
                    self._selector.unregister(sock)
                    sock.close()
