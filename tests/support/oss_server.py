"""A loopback HTTP server speaking enough of the Aliyun OSS REST protocol for the real oss2 SDK.

Test, demo and benchmark infrastructure, not product. It verifies V1 (HMAC-SHA1) and V4
(OSS4-HMAC-SHA256) signatures, accepts STS tokens, stores objects on disk under a root directory
(bodies are streamed, never held whole in memory), answers with `x-oss-hash-crc64ecma`,
reports the bucket's usage (GetBucketStat, `GET /<bucket>/?stat`), and has
knobs for faults: 5xx answers, hung requests, connections dropped mid-body, corrupted CRCs and a
process-wide bandwidth limit on request bodies.

In-process::

    server = OssServer(tmp_path, ["bucket"], [Credential("ak", "secret")])
    server.start()
    oss2.Bucket(oss2.Auth("ak", "secret"), server.endpoint, "bucket")
    server.fail_request(503, operation="UploadPart")
    server.stop()

From a shell::

    python -m tests.support.oss_server --root DIR --bucket b --access-key-id ak \\
        --access-key-secret secret --port 0 --port-file PORTFILE

When it runs in another process, `POST /_control` with a JSON body sets the same knobs
(`{"action": "fail", "status": 503, "operation": "UploadPart"}`; see `OssServer.control`), and
`GET /_control/requests` returns the request log.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import email.utils
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit
from xml.etree import ElementTree

from db_backup.storage.crc64 import crc64_combine
from tests.support.crc64 import Crc64

MIN_PART_SIZE = 100 * 1024
MAX_PART_NUMBER = 10_000
_READ_CHUNK = 256 * 1024

# Sub-resources that take part in the V1 canonical resource (oss2's ProviderAuth list; OSS
# documents the same set).
_V1_SUBRESOURCE_NAMES = """
    response-content-type response-content-language response-cache-control logging
    response-content-encoding acl uploadId uploads partNumber group link delete website location
    objectInfo objectMeta response-expires response-content-disposition cors lifecycle restore qos
    referer stat bucketInfo append position security-token live comp status vod startTime endTime
    x-oss-process symlink callback callback-var tagging encryption versions versioning versionId
    policy requestPayment x-oss-traffic-limit qosInfo asyncFetch x-oss-request-payer sequential
    inventory inventoryId continuation-token worm wormId wormExtend replication
    replicationLocation replicationProgress transferAcceleration cname metaQuery
    x-oss-ac-source-ip x-oss-ac-subnet-mask x-oss-ac-vpc-id x-oss-ac-forward-allow resourceGroup
    style styleName x-oss-async-process regionList x-oss-write-get-object-response
    bucketArchiveDirectRead httpsConfig redundancyTransition x-oss-target-redundancy-type
    x-oss-redundancy-transition-taskid accessPoint accessPointPolicy publicAccessBlock
    x-oss-access-point-name requesterQosInfo qosRequester resourcePoolInfo resourcePool
    resourcePoolBuckets
"""
V1_SUBRESOURCES = frozenset(_V1_SUBRESOURCE_NAMES.split())

# Headers stored with an object at PutObject / InitiateMultipartUpload and returned on Head/Get.
_STORED_HEADERS = (
    "content-type",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "expires",
    "x-oss-server-side-encryption",
    "x-oss-server-side-encryption-key-id",
    "x-oss-server-side-data-encryption",
    "x-oss-storage-class",
)
_STORAGE_CLASSES = frozenset({"Standard", "IA", "Archive", "ColdArchive", "DeepColdArchive"})
_SSE_VALUES = frozenset({"AES256", "KMS", "SM4"})

# A body to send from disk: (file, size) segments, read back to back.
_Segments = tuple[tuple[Path, int], ...]
_Answer = tuple[int, dict[str, str], bytes | _Segments | None]  # status, headers, body


@dataclass(frozen=True)
class Credential:
    """An access key the server accepts, optionally bound to an STS security token."""

    access_key_id: str
    access_key_secret: str
    security_token: str | None = None


@dataclass
class Fault:
    """One armed fault: skips `skip` matching requests, then hits the next `times` ones."""

    kind: str  # "error" | "hang" | "drop" | "bad_crc"
    operation: str | None = None
    skip: int = 0
    times: int = 1
    status: int = 503
    code: str = "ServiceUnavailable"
    seconds: float = 0.0
    after_bytes: int = 0
    hits: int = 0

    def to_json(self) -> dict[str, Any]:
        """Returns this fault as a JSON-friendly dict."""
        return dict(self.__dict__)


@dataclass
class StoredObject:
    """The index entry of one object.

    The bytes live in the file `path`, or, for a completed multipart upload, in the part files
    listed in `parts` (inside the directory `path`), read back to back: like OSS, Complete
    records which parts make the object and does not rewrite the data.
    """

    key: str
    path: Path
    size: int
    etag: str
    crc64: int
    last_modified: float
    object_type: str  # "Normal" | "Multipart"
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    tags: dict[str, str] = field(default_factory=dict)
    parts: _Segments = ()

    def segments(self) -> _Segments:
        """Returns the (file, size) pieces whose concatenation is the object."""
        return self.parts or ((self.path, self.size),)

    def read_bytes(self) -> bytes:
        """Returns the whole content (for small objects in tests)."""
        return b"".join(path.read_bytes() for path, _ in self.segments())

    def remove_data(self) -> None:
        """Deletes the object's file or part directory."""
        if self.parts:
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            self.path.unlink(missing_ok=True)


@dataclass
class Part:
    """One uploaded part of a multipart upload."""

    number: int
    path: Path
    size: int
    etag: str
    md5: bytes
    crc64: int
    last_modified: float


@dataclass
class Upload:
    """A multipart upload in progress."""

    upload_id: str
    key: str
    initiated: float
    directory: Path
    headers: dict[str, str] = field(default_factory=dict)
    parts: dict[int, Part] = field(default_factory=dict)


@dataclass
class Bucket:
    """A bucket: objects by key, uploads by id, the stored lifecycle XML."""

    name: str
    directory: Path
    objects: dict[str, StoredObject] = field(default_factory=dict)
    uploads: dict[str, Upload] = field(default_factory=dict)
    lifecycle_xml: bytes | None = None


class OssError(Exception):
    """An error answer: HTTP status plus OSS error code and message."""

    def __init__(self, status: int, code: str, message: str, **extra: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


class _DropConnection(Exception):
    """Raised inside a handler to close the socket without answering."""


class _ClientGone(Exception):
    """The client closed the connection before the request body was complete."""


class TokenBucket:
    """A process-wide token bucket that paces request-body reads to a byte rate."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rate: float | None = None
        self._tokens = 0.0
        self._stamp = time.monotonic()

    @property
    def rate(self) -> float | None:
        """Returns the configured rate in bytes per second, or None when unlimited."""
        return self._rate

    def set_rate(self, bytes_per_second: float | None) -> None:
        """Sets the limit in bytes per second; None or 0 removes it."""
        with self._lock:
            self._rate = bytes_per_second or None
            self._tokens = 0.0
            self._stamp = time.monotonic()

    def take(self, amount: int, stop: threading.Event) -> float:
        """Blocks until `amount` bytes may be read under the current rate; returns the wait (s).

        Readers reserve tokens first and then sleep off their debt, so concurrent readers share
        the rate fairly without holding the lock while sleeping.
        """
        with self._lock:
            rate = self._rate
            if rate is None:
                return 0.0
            now = time.monotonic()
            # Allow a burst of at most 1/10 s worth so that pacing stays smooth.
            self._tokens = min(self._tokens + (now - self._stamp) * rate, rate / 10)
            self._stamp = now
            self._tokens -= amount
            wait = -self._tokens / rate if self._tokens < 0 else 0.0
        if wait > 0:
            stop.wait(wait)
        return wait


def _copy_file(source: int, destination: int, size: int) -> None:
    """Appends `size` bytes of `source` to `destination` with copy_file_range (in the kernel)."""
    left = size
    while left > 0:
        copied = os.copy_file_range(source, destination, left)
        if copied == 0:
            raise OSError(f"part file shorter than its recorded size ({size - left} of {size})")
        left -= copied


def _iso8601(timestamp: float) -> str:
    """Returns the listing form of a time, 2026-11-23T10:00:00.000Z (oss2 wants ".000")."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _http_date(timestamp: float) -> str:
    """Returns an RFC 1123 date with a two-digit day, as OSS sends in Last-Modified."""
    return email.utils.formatdate(timestamp, usegmt=True)


def _xml(root: ElementTree.Element) -> bytes:
    """Returns an XML document with declaration for an element tree."""
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(root, "utf-8")


def _child(parent: ElementTree.Element, tag: str, text: str | None = None) -> ElementTree.Element:
    """Adds a child element with optional text and returns it."""
    node = ElementTree.SubElement(parent, tag)
    if text is not None:
        node.text = text
    return node


def _v4_encode(text: str, keep_slash: bool) -> str:
    """Returns text percent-encoded the way OSS V4 canonicalises URIs and queries."""
    return quote(text.encode("utf-8"), safe="/~" if keep_slash else "~")


def operation_name(
    method: str, bucket: str, key: str, query: dict[str, str], has_copy: bool
) -> str:
    """Returns the OSS API name of a request, e.g. "UploadPart", used to target faults."""
    if not bucket:
        return "ListBuckets"
    if not key:
        table = {
            ("GET", "list-type"): "ListObjectsV2",
            ("GET", "uploads"): "ListMultipartUploads",
            ("GET", "lifecycle"): "GetBucketLifecycle",
            ("GET", "stat"): "GetBucketStat",
            ("PUT", "lifecycle"): "PutBucketLifecycle",
            ("DELETE", "lifecycle"): "DeleteBucketLifecycle",
            ("POST", "delete"): "DeleteMultipleObjects",
        }
        for (verb, param), name in table.items():
            if method == verb and param in query:
                return name
        return {"GET": "ListObjects", "PUT": "PutBucket", "DELETE": "DeleteBucket"}.get(
            method, "Unknown"
        )
    if method == "PUT":
        if "partNumber" in query and "uploadId" in query:
            return "UploadPart"
        if "tagging" in query:
            return "PutObjectTagging"
        return "CopyObject" if has_copy else "PutObject"
    if method == "POST":
        if "uploads" in query:
            return "InitiateMultipartUpload"
        if "uploadId" in query:
            return "CompleteMultipartUpload"
        return "Unknown"
    if method == "GET":
        return "GetObjectTagging" if "tagging" in query else "GetObject"
    if method == "HEAD":
        return "HeadObject"
    if method == "DELETE":
        if "uploadId" in query:
            return "AbortMultipartUpload"
        return "DeleteObjectTagging" if "tagging" in query else "DeleteObject"
    return "Unknown"


class _QuietHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that does not print tracebacks for clients hanging up."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignores connection errors (clients time out and hang up on purpose in tests)."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class OssServer:
    """An in-process loopback OSS server; `start()` serves on a thread, `stop()` ends it."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        buckets: list[str],
        credentials: list[Credential],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        region: str | None = None,
        min_part_size: int = MIN_PART_SIZE,
        bandwidth: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port
        self.region = region
        self.min_part_size = min_part_size
        self._credentials = {c.access_key_id: c for c in credentials}
        self._lock = threading.RLock()
        self._buckets: dict[str, Bucket] = {}
        for name in buckets:
            self.create_bucket(name)
        self._faults: list[Fault] = []
        self._log: list[dict[str, Any]] = []
        self.limiter = TokenBucket()
        self.limiter.set_rate(bandwidth)
        # A server that ignores ListMultipartUploads' `prefix` (a fault some stores show).
        self.ignore_upload_prefix = False
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    # ----------------------------------------------------------------- life cycle

    def create_bucket(self, name: str) -> None:
        """Creates an empty bucket (no-op when it exists)."""
        with self._lock:
            if name not in self._buckets:
                directory = self.root / name
                (directory / "objects").mkdir(parents=True, exist_ok=True)
                (directory / "uploads").mkdir(parents=True, exist_ok=True)
                self._buckets[name] = Bucket(name, directory)

    def start(self) -> OssServer:
        """Binds the socket and serves requests on a daemon thread; returns self."""
        handler = type("BoundHandler", (_Handler,), {"server_state": self})
        self._httpd = _QuietHTTPServer((self.host, self.port), handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="oss-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving, wakes hung requests and closes open connections."""
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OssServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """Returns the endpoint URL to give oss2 (path-style because it is an IP)."""
        return f"http://{self.host}:{self.port}"

    # ----------------------------------------------------------------- fault knobs

    def fail_request(
        self,
        status: int = 503,
        *,
        operation: str | None = None,
        nth: int = 1,
        times: int = 1,
        code: str | None = None,
    ) -> Fault:
        """Answers the `nth` matching request (and `times`-1 more) with a 5xx error."""
        default_code = {500: "InternalError", 503: "ServiceUnavailable"}.get(status, "Error")
        return self._arm(
            Fault("error", operation, nth - 1, times, status=status, code=code or default_code)
        )

    def hang_request(
        self, seconds: float, *, operation: str | None = None, nth: int = 1, times: int = 1
    ) -> Fault:
        """Holds the `nth` matching request for `seconds` before reading or answering it."""
        return self._arm(Fault("hang", operation, nth - 1, times, seconds=seconds))

    def drop_connection(
        self, *, operation: str | None = None, after_bytes: int = 0, nth: int = 1, times: int = 1
    ) -> Fault:
        """Reads `after_bytes` of the `nth` matching request's body, then closes the socket."""
        return self._arm(Fault("drop", operation, nth - 1, times, after_bytes=after_bytes))

    def corrupt_crc(self, *, operation: str | None = None, nth: int = 1, times: int = 1) -> Fault:
        """Sends a wrong `x-oss-hash-crc64ecma` in the answer to the `nth` matching request."""
        return self._arm(Fault("bad_crc", operation, nth - 1, times))

    def set_bandwidth(self, bytes_per_second: int | None) -> None:
        """Limits the rate at which all request bodies are read; None removes the limit."""
        self.limiter.set_rate(bytes_per_second)

    def clear_faults(self) -> None:
        """Disarms every fault."""
        with self._lock:
            self._faults.clear()

    def faults(self) -> list[Fault]:
        """Returns the armed faults with their hit counts."""
        with self._lock:
            return list(self._faults)

    def _arm(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def _take_fault(self, operation: str) -> Fault | None:
        """Returns the fault that applies to this request, consuming one count of it."""
        with self._lock:
            chosen = None
            for fault in self._faults:
                if fault.operation not in (None, operation) or fault.times <= 0:
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                if chosen is None:
                    fault.times -= 1
                    fault.hits += 1
                    chosen = fault
            return chosen

    def control(self, command: dict[str, Any]) -> dict[str, Any]:
        """Applies one JSON control command (what `POST /_control` accepts) and returns state.

        Actions: fail {status, operation, nth, times, code}; hang {seconds, operation, nth,
        times}; drop {operation, after_bytes, nth, times}; bad_crc {operation, nth, times};
        bandwidth {bytes_per_second}; clear; clear_log; state.
        """
        args = dict(command)
        action = args.pop("action", "state")
        if action == "fail":
            self.fail_request(args.pop("status", 503), **args)
        elif action == "hang":
            self.hang_request(float(args.pop("seconds")), **args)
        elif action == "drop":
            self.drop_connection(**args)
        elif action == "bad_crc":
            self.corrupt_crc(**args)
        elif action == "bandwidth":
            self.set_bandwidth(args.get("bytes_per_second"))
        elif action == "clear":
            self.clear_faults()
        elif action == "clear_log":
            self.clear_log()
        elif action != "state":
            raise ValueError(f"unknown control action {action!r}")
        return {
            "faults": [f.to_json() for f in self.faults()],
            "bandwidth": self.limiter.rate,
            "requests": len(self.requests),
        }

    # ----------------------------------------------------------------- inspection

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Returns the request log: method, path, query, headers, operation, status, and
        paced_seconds (how long the bandwidth limit held the request body back)."""
        with self._lock:
            return list(self._log)

    def requests_for(self, operation: str) -> list[dict[str, Any]]:
        """Returns the logged requests of one operation, e.g. "InitiateMultipartUpload"."""
        return [r for r in self.requests if r["operation"] == operation]

    def clear_log(self) -> None:
        """Empties the request log."""
        with self._lock:
            self._log.clear()

    def objects(self, bucket: str) -> dict[str, StoredObject]:
        """Returns the objects of a bucket by key."""
        with self._lock:
            return dict(self._buckets[bucket].objects)

    def object_bytes(self, bucket: str, key: str) -> bytes:
        """Returns the content of one object (for small objects in tests)."""
        return self.objects(bucket)[key].read_bytes()

    def pending_uploads(self, bucket: str) -> list[Upload]:
        """Returns the multipart uploads that were neither completed nor aborted."""
        with self._lock:
            return list(self._buckets[bucket].uploads.values())

    def lifecycle(self, bucket: str) -> bytes | None:
        """Returns the stored lifecycle XML of a bucket, or None."""
        with self._lock:
            return self._buckets[bucket].lifecycle_xml

    # ----------------------------------------------------------------- internals for handler

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._log.append(entry)

    def _bucket(self, name: str) -> Bucket:
        with self._lock:
            bucket = self._buckets.get(name)
        if bucket is None:
            raise OssError(
                404, "NoSuchBucket", "The specified bucket does not exist.", BucketName=name
            )
        return bucket

    def _credential(self, access_key_id: str) -> Credential:
        credential = self._credentials.get(access_key_id)
        if credential is None:
            raise OssError(
                403,
                "InvalidAccessKeyId",
                "The OSS Access Key Id you provided does not exist in our records.",
                OSSAccessKeyId=access_key_id,
            )
        return credential


class _Handler(BaseHTTPRequestHandler):
    """Handles one connection's requests against the `OssServer` bound as `server_state`."""

    server_state: OssServer
    protocol_version = "HTTP/1.1"
    timeout = 120

    # Per-request state.
    _body_reader: Iterator[bytes] | None
    _request_id: str
    _operation: str
    _fault: Fault | None
    _bytes_read: int

    def log_message(self, format: str, *args: Any) -> None:
        """Keeps the stdlib access log quiet; the request log is in `OssServer.requests`."""

    def setup(self) -> None:
        super().setup()
        with self.server_state._lock:
            self.server_state._connections.add(self.connection)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        with self.server_state._lock:
            self.server_state._connections.discard(self.connection)

    def do_GET(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    # ----------------------------------------------------------------- plumbing

    def _dispatch(self) -> None:
        state = self.server_state
        self._request_id = uuid.uuid4().hex[:24].upper()
        self._fault = None
        self._bytes_read = 0
        self._body_reader = None
        self._entry: dict[str, Any] = {"paced_seconds": 0.0}
        split = urlsplit(self.path)
        raw_path = split.path
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        if raw_path == "/_control" or raw_path.startswith("/_control/"):
            self._control(raw_path)
            return
        segments = raw_path.lstrip("/").split("/", 1)
        bucket = unquote(segments[0])
        key = unquote(segments[1]) if len(segments) > 1 else ""
        headers = {k.lower(): v for k, v in self.headers.items()}
        operation = operation_name(self.command, bucket, key, query, "x-oss-copy-source" in headers)
        self._operation = operation
        entry: dict[str, Any] = {
            "method": self.command,
            "path": raw_path,
            "bucket": bucket,
            "key": key,
            "query": query,
            "headers": headers,
            "operation": operation,
            "status": None,
            "time": time.time(),
            "paced_seconds": 0.0,
        }
        self._entry = entry
        state._record(entry)
        try:
            fault = state._take_fault(operation)
            self._fault = fault
            if fault is not None and fault.kind == "hang":
                state._stop.wait(fault.seconds)
            self._authenticate(bucket, key, query, headers)
            if fault is not None and fault.kind == "error":
                raise OssError(fault.status, fault.code, "Injected fault.")
            if fault is not None and fault.kind == "drop" and not self._has_body():
                raise _DropConnection()
            status, out_headers, body = self._route(bucket, key, query, headers)
            if (
                fault is not None
                and fault.kind == "bad_crc"
                and "x-oss-hash-crc64ecma" in out_headers
            ):
                wrong = int(out_headers["x-oss-hash-crc64ecma"]) ^ 0x1
                out_headers["x-oss-hash-crc64ecma"] = str(wrong)
            entry["status"] = status
            self._respond(status, out_headers, body)
        except _DropConnection:
            entry["status"] = "dropped"
            self._drop()
        except _ClientGone:
            entry["status"] = "client-gone"
            self.close_connection = True
        except OssError as error:
            entry["status"] = error.status
            entry["error"] = error.code
            try:
                self._drain()
            except _DropConnection:
                entry["status"] = "dropped"
                self._drop()
                return
            except _ClientGone:
                self.close_connection = True
                return
            self._respond_error(error)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _has_body(self) -> bool:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return True
        return int(self.headers.get("Content-Length") or 0) > 0

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _control(self, raw_path: str) -> None:
        state = self.server_state
        try:
            body = b"".join(self._body())
            if raw_path == "/_control/requests":
                payload: Any = state.requests
            elif raw_path == "/_control" and self.command == "POST":
                payload = state.control(json.loads(body or b"{}"))
            else:
                payload = state.control({"action": "state"})
            data = json.dumps(payload, default=str).encode()
            self._respond(200, {"content-type": "application/json"}, data)
        except (ValueError, TypeError) as error:
            self._respond(400, {"content-type": "text/plain"}, str(error).encode())

    def _body(self) -> Iterator[bytes]:
        """Yields the request body in pieces, de-chunking, pacing and applying drop faults."""
        if self._body_reader is None:
            self._body_reader = self._read_body()
        return self._body_reader

    def _read_body(self) -> Iterator[bytes]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise _ClientGone()
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers up to the empty line
                        trailer = self.rfile.readline(65537)
                        if trailer in (b"\r\n", b"\n", b""):
                            return
                yield from self._read_exact(size)
                self.rfile.readline(3)
        else:
            yield from self._read_exact(int(self.headers.get("Content-Length") or 0))

    def _read_exact(self, size: int) -> Iterator[bytes]:
        state = self.server_state
        fault = self._fault
        remaining = size
        while remaining > 0:
            want = min(remaining, _READ_CHUNK)
            if fault is not None and fault.kind == "drop":
                left_before_drop = fault.after_bytes - self._bytes_read
                if left_before_drop <= 0:
                    raise _DropConnection()
                want = min(want, left_before_drop)
            self._entry["paced_seconds"] += state.limiter.take(want, state._stop)
            data = self.rfile.read(want)
            if not data:
                raise _ClientGone()
            self._bytes_read += len(data)
            remaining -= len(data)
            yield data

    def _drain(self) -> None:
        for _ in self._body():
            pass

    def _respond(
        self, status: int, headers: dict[str, str], body: bytes | _Segments | None
    ) -> None:
        headers = dict(headers)
        headers.setdefault("x-oss-request-id", self._request_id)
        headers.setdefault("server", "AliyunOSS")
        headers.setdefault("date", _http_date(time.time()))
        byte_range: tuple[int, int] | None = None
        if isinstance(body, tuple):
            byte_range = _parse_range_header(headers.pop("x-internal-range", ""))
            length = byte_range[1] - byte_range[0] + 1 if byte_range else 0
        else:
            body = body or b""
            length = len(body)
        if self.command == "HEAD" and "content-length" in headers:
            length = int(headers.pop("content-length"))
        headers.pop("content-length", None)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        if isinstance(body, tuple) and byte_range is not None:
            self._send_segments(body, byte_range[0], length)
        elif isinstance(body, bytes):
            self.wfile.write(body)

    def _send_segments(self, segments: _Segments, offset: int, length: int) -> None:
        """Writes `length` bytes of the concatenated segments, starting at `offset`."""
        left = length
        for path, size in segments:
            if offset >= size:
                offset -= size
                continue
            with path.open("rb") as source:
                source.seek(offset)
                offset = 0
                while left > 0:
                    data = source.read(min(left, _READ_CHUNK))
                    if not data:
                        break
                    self.wfile.write(data)
                    left -= len(data)
            if left <= 0:
                return

    def _respond_error(self, error: OssError) -> None:
        root = ElementTree.Element("Error")
        _child(root, "Code", error.code)
        _child(root, "Message", error.message)
        _child(root, "RequestId", self._request_id)
        _child(root, "HostId", f"{self.server_state.host}")
        for name, value in error.extra.items():
            _child(root, name, value)
        body = _xml(root)
        headers = {"content-type": "application/xml"}
        if self.command == "HEAD":
            headers["x-oss-err"] = base64.b64encode(body).decode()
            body = b""
        self._respond(error.status, headers, body)

    # ----------------------------------------------------------------- authentication

    def _authenticate(
        self, bucket: str, key: str, query: dict[str, str], headers: dict[str, str]
    ) -> None:
        state = self.server_state
        authorization = headers.get("authorization", "")
        if authorization.startswith("OSS4-HMAC-SHA256 "):
            credential = self._verify_v4(authorization[17:], bucket, key, query, headers)
        elif authorization.startswith("OSS "):
            access_key_id, _, signature = authorization[4:].rpartition(":")
            credential = state._credential(access_key_id)
            expected = _v1_signature(
                credential.access_key_secret, self.command, bucket, key, query, headers
            )
            if not hmac.compare_digest(expected, signature):
                raise OssError(
                    403,
                    "SignatureDoesNotMatch",
                    "The request signature we calculated does not match the signature you "
                    "provided. Check your key and signing method.",
                    OSSAccessKeyId=access_key_id,
                )
        else:
            raise OssError(403, "AccessDenied", "You have no right to access this object.")
        token = credential.security_token
        if token is not None and headers.get("x-oss-security-token") != token:
            raise OssError(403, "InvalidAccessKeyId", "The security token you provided is invalid.")

    def _verify_v4(
        self,
        params_text: str,
        bucket: str,
        key: str,
        query: dict[str, str],
        headers: dict[str, str],
    ) -> Credential:
        state = self.server_state
        params = {}
        for item in params_text.split(","):
            name, _, value = item.strip().partition("=")
            params[name] = value
        scope_parts = params.get("Credential", "").split("/")
        if (
            len(scope_parts) != 5
            or scope_parts[3] != "oss"
            or scope_parts[4] != "aliyun_v4_request"
        ):
            raise OssError(400, "InvalidArgument", "Malformed Credential in Authorization.")
        access_key_id, date, region, product, terminator = scope_parts
        credential = state._credential(access_key_id)
        if state.region is not None and region != state.region:
            raise OssError(
                403, "SignatureDoesNotMatch", f"Invalid region {region!r} in Credential."
            )
        timestamp = headers.get("x-oss-date", "")
        if timestamp[:8] != date:
            raise OssError(
                403, "SignatureDoesNotMatch", "x-oss-date does not match the scope date."
            )
        additional = sorted(h for h in params.get("AdditionalHeaders", "").split(";") if h)
        expected = _v4_signature(
            credential.access_key_secret,
            self.command,
            bucket,
            key,
            query,
            headers,
            additional,
            timestamp,
            "/".join(scope_parts[1:]),
            (date, region, product, terminator),
        )
        if not hmac.compare_digest(expected, params.get("Signature", "")):
            raise OssError(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
                OSSAccessKeyId=access_key_id,
            )
        return credential

    # ----------------------------------------------------------------- routing

    def _route(
        self, bucket_name: str, key: str, query: dict[str, str], headers: dict[str, str]
    ) -> _Answer:
        bucket = self.server_state._bucket(bucket_name)
        handlers = {
            "ListObjectsV2": self._list_objects_v2,
            "ListObjects": self._list_objects_v1,
            "ListMultipartUploads": self._list_uploads,
            "GetBucketLifecycle": self._get_lifecycle,
            "GetBucketStat": self._get_bucket_stat,
            "PutBucketLifecycle": self._put_lifecycle,
            "DeleteBucketLifecycle": self._delete_lifecycle,
            "DeleteMultipleObjects": self._delete_multiple,
            "PutObject": self._put_object,
            "CopyObject": self._copy_object,
            "UploadPart": self._upload_part,
            "InitiateMultipartUpload": self._initiate,
            "CompleteMultipartUpload": self._complete,
            "AbortMultipartUpload": self._abort,
            "GetObject": self._get_object,
            "HeadObject": self._get_object,
            "DeleteObject": self._delete_object,
            "PutObjectTagging": self._put_tagging,
            "GetObjectTagging": self._get_tagging,
            "DeleteObjectTagging": self._delete_tagging,
        }
        handler = handlers.get(self._operation)
        if handler is None:
            raise OssError(400, "NotImplemented", f"{self._operation} is not implemented here.")
        return handler(bucket, key, query, headers)

    def _read_small_body(self, headers: dict[str, str], limit: int = 16 * 1024 * 1024) -> bytes:
        pieces: list[bytes] = []
        total = 0
        for piece in self._body():
            total += len(piece)
            if total > limit:
                raise OssError(400, "EntityTooLarge", "Request body too large.")
            pieces.append(piece)
        body = b"".join(pieces)
        _check_md5(headers, hashlib.md5(body).digest())
        return body

    def _receive_to_file(self, target: Path, headers: dict[str, str]) -> tuple[int, bytes, int]:
        """Streams the body into `target`; returns size, MD5 digest and CRC-64."""
        md5 = hashlib.md5()
        crc = Crc64()
        partial = target.with_name(target.name + ".partial")
        try:
            with partial.open("wb") as out:
                for piece in self._body():
                    out.write(piece)
                    md5.update(piece)
                    crc.update(piece)
            _check_md5(headers, md5.digest())
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(target)
        return crc.length, md5.digest(), crc.value

    # ----------------------------------------------------------------- objects

    def _put_object(
        self, bucket: Bucket, key: str, query: dict[str, str], headers: dict[str, str]
    ) -> _Answer:
        stored_headers = _stored_headers(headers)
        path = bucket.directory / "objects" / uuid.uuid4().hex
        size, md5, crc = self._receive_to_file(path, headers)
        etag = md5.hex().upper()
        obj = StoredObject(key, path, size, etag, crc, time.time(), "Normal", stored_headers)
        obj.tags = _parse_tagging_header(headers.get("x-oss-tagging", ""))
        self._replace_object(bucket, obj)
        return (
            200,
            {
                "etag": f'"{etag}"',
                "x-oss-hash-crc64ecma": str(crc),
                "content-md5": base64.b64encode(md5).decode(),
            },
            None,
        )

    def _replace_object(self, bucket: Bucket, obj: StoredObject) -> None:
        with self.server_state._lock:
            old = bucket.objects.get(obj.key)
            bucket.objects[obj.key] = obj
        if old is not None and old.path != obj.path:
            old.remove_data()

    def _copy_object(
        self, bucket: Bucket, key: str, query: dict[str, str], headers: dict[str, str]
    ) -> _Answer:
        self._drain()
        source = unquote(headers["x-oss-copy-source"])
        source_bucket_name, _, source_key = source.lstrip("/").partition("/")
        source_bucket = self.server_state._bucket(source_bucket_name)
        with self.server_state._lock:
            original = source_bucket.objects.get(source_key)
        if original is None:
            raise OssError(404, "NoSuchKey", "The specified key does not exist.", Key=source_key)
        if headers.get("x-oss-metadata-directive", "COPY").upper() == "REPLACE":
            new_headers = _stored_headers(headers)
        else:
            new_headers = dict(original.headers)
        parts = original.parts
        if source_bucket is bucket and source_key == key:
            path = original.path
        else:
            path = bucket.directory / "objects" / uuid.uuid4().hex
            with path.open("wb") as joined:
                for segment, size in original.segments():
                    with segment.open("rb") as reader:
                        _copy_file(reader.fileno(), joined.fileno(), size)
            parts = ()
        obj = StoredObject(
            key,
            path,
            original.size,
            original.etag,
            original.crc64,
            time.time(),
            original.object_type,
            new_headers,
            dict(original.tags),
            parts,
        )
        self._replace_object(bucket, obj)
        root = ElementTree.Element("CopyObjectResult")
        _child(root, "ETag", f'"{obj.etag}"')
        _child(root, "LastModified", _iso8601(obj.last_modified))
        return (
            200,
            {
                "content-type": "application/xml",
                "etag": f'"{obj.etag}"',
                "x-oss-hash-crc64ecma": str(obj.crc64),
            },
            _xml(root),
        )

    def _find_object(self, bucket: Bucket, key: str) -> StoredObject:
        with self.server_state._lock:
            obj = bucket.objects.get(key)
        if obj is None:
            raise OssError(404, "NoSuchKey", "The specified key does not exist.", Key=key)
        return obj

    def _get_object(
        self, bucket: Bucket, key: str, query: dict[str, str], headers: dict[str, str]
    ) -> _Answer:
        obj = self._find_object(bucket, key)
        out = _object_headers(obj)
        status = 200
        first, last = 0, obj.size - 1
        range_header = headers.get("range", "")
        if range_header and obj.size > 0:
            parsed = _parse_byte_range(range_header, obj.size)
            if parsed is None:
                raise OssError(416, "InvalidRange", "The requested range cannot be satisfied.")
            first, last = parsed
            status = 206
            out["content-range"] = f"bytes {first}-{last}/{obj.size}"
        if self.command == "HEAD":
            out["content-length"] = str(obj.size)
            return 200, out, None
        if obj.size == 0:
            return status, out, b""
        out["x-internal-range"] = f"{first}-{last}"
        return status, out, obj.segments()

    def _delete_object(
        self, bucket: Bucket, key: str, query: dict[str, str], headers: dict[str, str]
    ) -> _Answer:
        self._drain()
        with self.server_state._lock:
            obj = bucket.objects.pop(key, None)
        if obj is not None:
            obj.remove_data()
        return 204, {}, None

    def _delete_multiple(
        self, bucket: Bucket, key: str, query: dict[str, str], headers: dict[str, str]
    ) -> _Answer:
        if "content-md5" not in headers:
            raise OssError(
                400, "MissingArgument", "Content-MD5 is required for DeleteMultipleObjects."
            )
        body = self._read_small_body(headers)
        try:
            request = ElementTree.fromstring(body)
        except ElementTree.ParseError as error:
            raise OssError(
                400, "MalformedXML", "The XML you provided was not well-formed."
            ) from error
        quiet = (request.findtext("Quiet") or "false").lower() == "true"
        url_encoded = query.get("encoding-type") == "url"
        root = ElementTree.Element("DeleteResult")
        if url_encoded:
            _child(root, "EncodingType", "url")
        for node in request.findall("Object"):
            name = node.findtext("Key") or ""
            with self.server_state._lock:
                obj = bucket.objects.pop(name, None)
            if obj is not None:
                obj.remove_data()
            if not quiet:
                deleted = _child(root, "Deleted")
                _child(deleted, "Key", quote(name, safe="") if url_encoded else name)
        return 200, {"content-type": "application/xml"}, _xml(root)

    def _put_tagging(
        self, bucket: Bucket, key: str, query: dict[str, str], headers: dict[str, str]
    ) -> _Answer:
        body = self._read_small_body(headers)
        obj = self._find_object(bucket, key)
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError as error:
            raise OssError(
                400, "MalformedXML", "The XML you provided was not well-formed."
            ) from error
        tags = {t.findtext("Key") or "": t.findtext("Value") or "" for t in root.iter("Tag")}
        if len(tags) > 10:
            raise OssError(400, "BadRequest", "Object tags cannot be greater than 10.")
        with self.server_state._lock:
            obj.tags = tags
        return 200, {}, None

    def _get_tagging(
        self, bucket: Bucket, key: str, query: dict[str, str], headers: dict[str, str]
    ) -> _Answer:
        obj = self._find_object(bucket, key)
        root = ElementTree.Element("Tagging")
        tag_set = _child(root, "TagSet")
        for name, value in obj.tags.items():
            tag = _child(tag_set, "Tag")
            _child(tag, "Key", name)
            _child(tag, "Value", value)
        return 200, {"content-type": "application/xml"}, _xml(root)

    def _delete_tagging(
        self, bucket: Bucket, key: str, query: dict[str, str], headers: dict[str, str]
    ) -> _Answer:
        obj = self._find_object(bucket, key)
        with self.server_state._lock:
            obj.tags = {}
        return 204, {}, None

    # ----------------------------------------------------------------- listing

    def _list_objects_v2(
        self, bucket: Bucket, key: str, query: dict[str, str], headers: dict[str, str]
    ) -> _Answer:
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter", "")
        max_keys = _int_param(query, "max-keys", 100, 1, 1000)
        url_encoded = query.get("encoding-type") == "url"
        after, skip_prefix = query.get("start-after", ""), ""
        token = query.get("continuation-token", "")
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()))
                after, skip_prefix = state["after"], state["skip"]
            except (ValueError, KeyError) as error:
                raise OssError(400, "InvalidArgument", "Invalid continuation-token.") from error
        entries, common, truncated, resume = self._scan(
            bucket, prefix, delimiter, after, skip_prefix, max_keys
        )

        def enc(text: str) -> str:
            return quote(text, safe="") if url_encoded else text

        root = ElementTree.Element("ListBucketResult")
        _child(root, "Name", bucket.name)
        _child(root, "Prefix", enc(prefix))
        if "start-after" in query:
            _child(root, "StartAfter", enc(query["start-after"]))
        if token:
            _child(root, "ContinuationToken", enc(token))
        _child(root, "MaxKeys", str(max_keys))
        _child(root, "Delimiter", enc(delimiter))
        if url_encoded:
            _child(root, "EncodingType", "url")
        _child(root, "IsTruncated", "true" if truncated else "false")
        if truncated and resume is not None:
            next_token = base64.urlsafe_b64encode(
                json.dumps({"after": resume[0], "skip": resume[1]}).encode()
            ).decode()
            _child(root, "NextContinuationToken", enc(next_token))
        _child(root, "KeyCount", str(len(entries) + len(common)))
        for obj in entries:
            self._contents_node(root, obj, enc)
        for common_prefix in common:
            _child(_child(root, "CommonPrefixes"), "Prefix", enc(common_prefix))
        return 200, {"content-type": "application/xml"}, _xml(root)

    def _list_objects_v1(
        self, bucket: Bucket, key: str, query: dict[str, str], headers: dict[str, str]
    ) -> _Answer:
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter", "")
        marker = query.get("marker", "")
        max_keys = _int_param(query, "max-keys", 100, 1, 1000)
        url_encoded = query.get("encoding-type") == "url"
        entries, common, truncated, _ = self._scan(bucket, prefix, delimiter, marker, "", max_keys)

        def enc(text: str) -> str:
            return quote(text, safe="") if url_encoded else text

        root = ElementTree.Element("ListBucketResult")
        _child(root, "Name", bucket.name)
        _child(root, "Prefix", enc(prefix))
        _child(root, "Marker", enc(marker))
        _child(root, "MaxKeys", str(max_keys))
        _child(root, "Delimiter", enc(delimiter))
        if url_encoded:
            _child(root, "EncodingType", "url")
        _child(root, "IsTruncated", "true" if truncated else "false")
        if truncated:
            names = [o.key for o in entries] + common
            _child(root, "NextMarker", enc(max(names)))
        for obj in entries:
            self._contents_node(root, obj, enc)
        for common_prefix in common:
            _child(_child(root, "CommonPrefixes"), "Prefix", enc(common_prefix))
        return 200, {"content-type": "application/xml"}, _xml(root)

    @staticmethod
    def _contents_node(root: ElementTree.Element, obj: StoredObject, enc: Any) -> None:
        node = _child(root, "Contents")
        _child(node, "Key", enc(obj.key))
        _child(node, "LastModified", _iso8601(obj.last_modified))
        _child(node, "ETag", f'"{obj.etag}"')
        _child(node, "Type", obj.object_type)
        _child(node, "Size", str(obj.size))
        _child(node, "StorageClass", obj.headers.get("x-oss-storage-class", "Standard"))

    def _scan(
        self,
        bucket: Bucket,
        prefix: str,
        delimiter: str,
        after: str,
        skip_prefix: str,
        max_keys: int,
    ) -> tuple[list[StoredObject], list[str], bool, tuple[str, str] | None]:
        """Returns one listing page: objects, common prefixes, truncated, resume point."""
        with self.server_state._lock:
            candidates = sorted(
                (
                    obj
                    for name, obj in bucket.objects.items()
                    if name.startswith(prefix) and name > after
                ),
                key=lambda o: o.key,
            )
        entries: list[StoredObject] = []
        common: list[str] = []
        resume: tuple[str, str] | None = None
        for obj in candidates:
            if skip_prefix and obj.key.startswith(skip_prefix):
                continue
            rest = obj.key[len(prefix) :]
            common_prefix = ""
            if delimiter and delimiter in rest:
                common_prefix = prefix + rest[: rest.index(delimiter) + len(delimiter)]
                if common and common[-1] == common_prefix:
                    continue
            if len(entries) + len(common) >= max_keys:
                return entries, common, True, resume
            if common_prefix:
                common.append(common_prefix)
                resume = (obj.key, common_prefix)
            else:
                entries.append(obj)
                resume = (obj.key, "")
        return entries, common, False, resume

    # ----------------------------------------------------------------- multipart

    def _initiate(
        self, bucket: Bucket, key: str, query: dict[str, str], headers: dict[str, str]
    ) -> _Answer:
        self._drain()
        stored = _stored_headers(headers)
        upload_id = uuid.uuid4().hex.upper()
        directory = bucket.directory / "uploads" / upload_id
        directory.mkdir(parents=True)
        upload = Upload(upload_id, key, time.time(), directory, stored)
        with self.server_state._lock:
            bucket.uploads[upload_id] = upload
        root = ElementTree.Element("InitiateMultipartUploadResult")
        _child(root, "Bucket", bucket.name)
        _child(root, "Key", key)
        _child(root, "UploadId", upload_id)
        out = {"content-type": "application/xml"}
        for name in ("x-oss-server-side-encryption", "x-oss-server-side-encryption-key-id"):
            if name in stored:
                out[name] = stored[name]
        return 200, out, _xml(root)

    def _find_upload(self, bucket: Bucket, key: str, query: dict[str, str]) -> Upload:
        with self.server_state._lock:
            upload = bucket.uploads.get(query.get("uploadId", ""))
        if upload is None or upload.key != key:
            raise OssError(
                404,
                "NoSuchUpload",
                "The specified upload does not exist. The upload ID may be invalid, or the "
                "upload may have been aborted or completed.",
                UploadId=query.get("uploadId", ""),
            )
        return upload

    def _upload_part(
        self, bucket: Bucket, key: str, query: dict[str, str], headers: dict[str, str]
    ) -> _Answer:
        if "x-oss-storage-class" in headers:
            raise OssError(
                400, "InvalidArgument", "x-oss-storage-class is not allowed on UploadPart."
            )
        upload = self._find_upload(bucket, key, query)
        number = _int_param(query, "partNumber", 0, 1, MAX_PART_NUMBER, strict=True)
        path = upload.directory / f"{number:05d}.{uuid.uuid4().hex[:8]}"
        size, md5, crc = self._receive_to_file(path, headers)
        part = Part(number, path, size, md5.hex().upper(), md5, crc, time.time())
        with self.server_state._lock:
            if upload.upload_id not in bucket.uploads:
                path.unlink(missing_ok=True)
                raise OssError(404, "NoSuchUpload", "The specified upload does not exist.")
            old = upload.parts.get(number)
            upload.parts[number] = part
        if old is not None:
            old.path.unlink(missing_ok=True)
        return 200, {"etag": f'"{part.etag}"', "x-oss-hash-crc64ecma": str(crc)}, None

    def _complete(
        self, bucket: Bucket, key: str, query: dict[str, str], headers: dict[str, str]
    ) -> _Answer:
        if "x-oss-storage-class" in headers:
            raise OssError(
                400,
                "InvalidArgument",
                "x-oss-storage-class is not allowed on CompleteMultipartUpload.",
            )
        body = self._read_small_body(headers)
        upload = self._find_upload(bucket, key, query)
        try:
            request = ElementTree.fromstring(body)
        except ElementTree.ParseError as error:
            raise OssError(
                400, "MalformedXML", "The XML you provided was not well-formed."
            ) from error
        chosen: list[Part] = []
        previous = 0
        for node in request.findall("Part"):
            number = int(node.findtext("PartNumber") or "0")
            etag = (node.findtext("ETag") or "").strip('"').upper()
            if number <= previous:
                raise OssError(
                    400, "InvalidPartOrder", "The list of parts was not in ascending order."
                )
            previous = number
            part = upload.parts.get(number)
            if part is None or part.etag != etag:
                raise OssError(
                    400,
                    "InvalidPart",
                    f"One or more of the specified parts could not be found: {number}.",
                )
            chosen.append(part)
        if not chosen:
            raise OssError(400, "MalformedXML", "The XML you provided was not well-formed.")
        for part in chosen[:-1]:
            if part.size < self.server_state.min_part_size:
                raise OssError(
                    400,
                    "EntityTooSmall",
                    "Your proposed upload is smaller than the minimum allowed size.",
                    PartNumber=str(part.number),
                )
        # Like OSS, Complete is cheap: the object's CRC-64 is combined from the parts' CRCs
        # (no second pass over the data) and the object is the list of its part files (no copy).
        crc = 0
        size = 0
        md5s = hashlib.md5()
        for part in chosen:
            md5s.update(part.md5)
            crc = crc64_combine(crc, part.crc64, part.size)
            size += part.size
        etag = f"{md5s.hexdigest().upper()}-{len(chosen)}"
        with self.server_state._lock:
            bucket.uploads.pop(upload.upload_id, None)
        keep = {part.path.name for part in chosen}
        for leftover in upload.directory.iterdir():
            if leftover.name not in keep:
                leftover.unlink(missing_ok=True)
        path = bucket.directory / "objects" / uuid.uuid4().hex
        upload.directory.rename(path)
        segments = tuple((path / part.path.name, part.size) for part in chosen)
        obj = StoredObject(
            key,
            path,
            size,
            etag,
            crc,
            time.time(),
            "Multipart",
            dict(upload.headers),
            parts=segments,
        )
        self._replace_object(bucket, obj)
        root = ElementTree.Element("CompleteMultipartUploadResult")
        _child(root, "Location", f"{self.server_state.endpoint}/{bucket.name}/{quote(key)}")
        _child(root, "Bucket", bucket.name)
        _child(root, "Key", key)
        _child(root, "ETag", f'"{etag}"')
        out = {
            "content-type": "application/xml",
            "etag": f'"{etag}"',
            "x-oss-hash-crc64ecma": str(crc),
        }
        return 200, out, _xml(root)

    def _abort(
        self, bucket: Bucket, key: str, query: dict[str, str], headers: dict[str, str]
    ) -> _Answer:
        self._drain()
        upload = self._find_upload(bucket, key, query)
        with self.server_state._lock:
            bucket.uploads.pop(upload.upload_id, None)
        shutil.rmtree(upload.directory, ignore_errors=True)
        return 204, {}, None

    def _list_uploads(
        self, bucket: Bucket, key: str, query: dict[str, str], headers: dict[str, str]
    ) -> _Answer:
        prefix = query.get("prefix", "")
        key_marker = query.get("key-marker", "")
        id_marker = query.get("upload-id-marker", "")
        max_uploads = _int_param(query, "max-uploads", 1000, 1, 1000)
        url_encoded = query.get("encoding-type") == "url"
        if self.server_state.ignore_upload_prefix:
            prefix = ""
        with self.server_state._lock:
            uploads = sorted(
                (u for u in bucket.uploads.values() if u.key.startswith(prefix)),
                key=lambda u: (u.key, u.initiated, u.upload_id),
            )
        if key_marker:
            uploads = [
                u
                for u in uploads
                if u.key > key_marker
                or (u.key == key_marker and id_marker and u.upload_id > id_marker)
            ]
        truncated = len(uploads) > max_uploads
        uploads = uploads[:max_uploads]

        def enc(text: str) -> str:
            return quote(text, safe="") if url_encoded else text

        root = ElementTree.Element("ListMultipartUploadsResult")
        _child(root, "Bucket", bucket.name)
        if url_encoded:
            _child(root, "EncodingType", "url")
        _child(root, "KeyMarker", enc(key_marker))
        _child(root, "UploadIdMarker", id_marker)
        _child(root, "NextKeyMarker", enc(uploads[-1].key if truncated else ""))
        _child(root, "NextUploadIdMarker", uploads[-1].upload_id if truncated else "")
        _child(root, "Delimiter", "")
        _child(root, "Prefix", enc(prefix))
        _child(root, "MaxUploads", str(max_uploads))
        _child(root, "IsTruncated", "true" if truncated else "false")
        for upload in uploads:
            node = _child(root, "Upload")
            _child(node, "Key", enc(upload.key))
            _child(node, "UploadId", upload.upload_id)
            _child(node, "StorageClass", upload.headers.get("x-oss-storage-class", "Standard"))
            _child(node, "Initiated", _iso8601(upload.initiated))
        return 200, {"content-type": "application/xml"}, _xml(root)

    # ----------------------------------------------------------------- bucket stat

    def _get_bucket_stat(
        self, bucket: Bucket, key: str, query: dict[str, str], headers: dict[str, str]
    ) -> _Answer:
        """GetBucketStat: the bucket's stored bytes and counts, as OSS answers (all Standard).

        Real OSS refreshes these numbers about hourly; here they are exact at once. Parts of
        open multipart uploads are not counted in `Storage`, as OSS bills them apart.
        """
        with self.server_state._lock:
            objects = list(bucket.objects.values())
            uploads = list(bucket.uploads.values())
        storage = sum(obj.size for obj in objects)
        newest = max((obj.last_modified for obj in objects), default=0.0)
        root = ElementTree.Element("BucketStat")
        for tag, value in (
            ("Storage", storage),
            ("ObjectCount", len(objects)),
            ("MultipartUploadCount", len(uploads)),
            ("LiveChannelCount", 0),
            ("LastModifiedTime", int(newest)),
            ("StandardStorage", storage),
            ("StandardObjectCount", len(objects)),
            ("InfrequentAccessStorage", 0),
            ("InfrequentAccessRealStorage", 0),
            ("InfrequentAccessObjectCount", 0),
            ("ArchiveStorage", 0),
            ("ArchiveRealStorage", 0),
            ("ArchiveObjectCount", 0),
            ("ColdArchiveStorage", 0),
            ("ColdArchiveRealStorage", 0),
            ("ColdArchiveObjectCount", 0),
        ):
            _child(root, tag, str(value))
        return 200, {"content-type": "application/xml"}, _xml(root)

    # ----------------------------------------------------------------- lifecycle

    def _get_lifecycle(
        self, bucket: Bucket, key: str, query: dict[str, str], headers: dict[str, str]
    ) -> _Answer:
        with self.server_state._lock:
            stored = bucket.lifecycle_xml
        if stored is None:
            raise OssError(
                404, "NoSuchLifecycle", "No Row found in Lifecycle Table.", BucketName=bucket.name
            )
        return 200, {"content-type": "application/xml"}, stored

    def _put_lifecycle(
        self, bucket: Bucket, key: str, query: dict[str, str], headers: dict[str, str]
    ) -> _Answer:
        body = self._read_small_body(headers)
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError as error:
            raise OssError(
                400, "MalformedXML", "The XML you provided was not well-formed."
            ) from error
        if root.tag != "LifecycleConfiguration" or not root.findall("Rule"):
            raise OssError(400, "MalformedXML", "The XML you provided was not well-formed.")
        with self.server_state._lock:
            bucket.lifecycle_xml = body
        return 200, {}, None

    def _delete_lifecycle(
        self, bucket: Bucket, key: str, query: dict[str, str], headers: dict[str, str]
    ) -> _Answer:
        with self.server_state._lock:
            bucket.lifecycle_xml = None
        return 204, {}, None


# --------------------------------------------------------------------------- helpers


def _v1_signature(
    secret: str, method: str, bucket: str, key: str, query: dict[str, str], headers: dict[str, str]
) -> str:
    """Returns the V1 signature (base64 HMAC-SHA1) the client should have sent."""
    oss_headers = sorted((k, v) for k, v in headers.items() if k.startswith("x-oss-"))
    canonical_headers = "".join(f"{k}:{v}\n" for k, v in oss_headers)
    resource = f"/{bucket}/{key}" if bucket else "/"
    sub = sorted((k, v) for k, v in query.items() if k in V1_SUBRESOURCES)
    if sub:
        resource += "?" + "&".join(f"{k}={v}" if v else k for k, v in sub)
    date = headers.get("x-oss-date") or headers.get("date", "")
    to_sign = "\n".join(
        [
            method,
            headers.get("content-md5", ""),
            headers.get("content-type", ""),
            date,
            canonical_headers + resource,
        ]
    )
    digest = hmac.new(secret.encode(), to_sign.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _v4_signature(
    secret: str,
    method: str,
    bucket: str,
    key: str,
    query: dict[str, str],
    headers: dict[str, str],
    additional: list[str],
    timestamp: str,
    scope: str,
    scope_parts: tuple[str, str, str, str],
) -> str:
    """Returns the V4 signature (hex HMAC-SHA256) the client should have sent."""
    uri = _v4_encode(f"/{bucket}/{key}" if bucket else "/", keep_slash=True)
    encoded = sorted((_v4_encode(k, False), _v4_encode(v, False)) for k, v in query.items())
    canonical_query = "&".join(f"{k}={v}" if v else k for k, v in encoded)
    signed = {"content-type", "content-md5", *additional}
    canonical_headers = "".join(
        f"{k}:{v}\n" for k, v in sorted(headers.items()) if k.startswith("x-oss-") or k in signed
    )
    canonical_request = "\n".join(
        [
            method,
            uri,
            canonical_query,
            canonical_headers,
            ";".join(additional),
            headers.get("x-oss-content-sha256", "UNSIGNED-PAYLOAD"),
        ]
    )
    to_sign = "\n".join(
        [
            "OSS4-HMAC-SHA256",
            timestamp,
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    signing_key = ("aliyun_v4" + secret).encode()
    for piece in scope_parts:
        signing_key = hmac.new(signing_key, piece.encode(), hashlib.sha256).digest()
    return hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()


def _check_md5(headers: dict[str, str], digest: bytes) -> None:
    expected = headers.get("content-md5")
    if expected and expected != base64.b64encode(digest).decode():
        raise OssError(400, "InvalidDigest", "The Content-MD5 you specified was invalid.")


def _stored_headers(headers: dict[str, str]) -> dict[str, str]:
    """Returns the object headers to keep from a Put/Initiate/Copy request, validating them."""
    stored = {
        k: v for k, v in headers.items() if k in _STORED_HEADERS or k.startswith("x-oss-meta-")
    }
    storage_class = stored.get("x-oss-storage-class")
    if storage_class is not None and storage_class not in _STORAGE_CLASSES:
        raise OssError(400, "InvalidArgument", f"Invalid storage class {storage_class!r}.")
    sse = stored.get("x-oss-server-side-encryption")
    if sse is not None and sse not in _SSE_VALUES:
        raise OssError(400, "InvalidEncryptionAlgorithmError", f"Invalid SSE algorithm {sse!r}.")
    if "x-oss-server-side-encryption-key-id" in stored and sse != "KMS":
        raise OssError(400, "InvalidArgument", "KMS key id given without KMS encryption.")
    return stored


def _object_headers(obj: StoredObject) -> dict[str, str]:
    out = {k: v for k, v in obj.headers.items()}
    out.setdefault("content-type", "application/octet-stream")
    out.setdefault("x-oss-storage-class", "Standard")
    out.update(
        {
            "etag": f'"{obj.etag}"',
            "last-modified": _http_date(obj.last_modified),
            "x-oss-hash-crc64ecma": str(obj.crc64),
            "x-oss-object-type": obj.object_type,
            "accept-ranges": "bytes",
        }
    )
    if obj.tags:
        out["x-oss-tagging-count"] = str(len(obj.tags))
    return out


def _parse_tagging_header(value: str) -> dict[str, str]:
    return {unquote(k): unquote(v) for k, v in parse_qsl(value, keep_blank_values=True)}


def _parse_byte_range(header: str, size: int) -> tuple[int, int] | None:
    """Returns the inclusive byte range a `Range: bytes=a-b` header asks for, or None."""
    if not header.startswith("bytes=") or "," in header:
        return (0, size - 1)  # OSS ignores ranges it does not understand
    first_text, _, last_text = header[6:].partition("-")
    try:
        if not first_text:
            length = int(last_text)
            return (max(size - length, 0), size - 1) if length > 0 else None
        first = int(first_text)
        last = int(last_text) if last_text else size - 1
    except ValueError:
        return (0, size - 1)
    if first >= size:
        return None
    if last < first:
        return (0, size - 1)
    return first, min(last, size - 1)


def _parse_range_header(value: str) -> tuple[int, int] | None:
    if not value:
        return None
    first, _, last = value.partition("-")
    return int(first), int(last)


def _int_param(
    query: dict[str, str], name: str, default: int, low: int, high: int, strict: bool = False
) -> int:
    text = query.get(name)
    if text is None or text == "":
        if strict:
            raise OssError(400, "InvalidArgument", f"{name} is required.")
        return default
    try:
        value = int(text)
    except ValueError as error:
        raise OssError(400, "InvalidArgument", f"{name} must be an integer.") from error
    if not low <= value <= high:
        if strict:
            raise OssError(400, "InvalidArgument", f"{name} must be between {low} and {high}.")
        return min(max(value, low), high)
    return value


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """Runs the server from a shell until SIGTERM/SIGINT; prints the bound port."""
    parser = argparse.ArgumentParser(
        description="Loopback OSS-protocol server for tests and demos."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--root", required=True)
    parser.add_argument("--bucket", action="append", required=True)
    parser.add_argument("--access-key-id", required=True)
    parser.add_argument("--access-key-secret", required=True)
    parser.add_argument("--security-token")
    parser.add_argument("--region")
    parser.add_argument("--bandwidth", type=int, help="request body rate limit, bytes/s")
    parser.add_argument("--min-part-size", type=int, default=MIN_PART_SIZE)
    parser.add_argument("--port-file", help="write the bound port here once listening")
    args = parser.parse_args(argv)
    server = OssServer(
        args.root,
        args.bucket,
        [Credential(args.access_key_id, args.access_key_secret, args.security_token)],
        host=args.host,
        port=args.port,
        region=args.region,
        min_part_size=args.min_part_size,
        bandwidth=args.bandwidth,
    )
    server.start()

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    print(server.port, flush=True)
    if args.port_file:
        tmp = Path(args.port_file + ".tmp")
        tmp.write_text(f"{server.port}\n")
        tmp.replace(args.port_file)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
