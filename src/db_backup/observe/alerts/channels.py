"""One sender per channel type: builds the request its server expects and checks the answer.

Every URL, token, signing secret and password is resolved from its reference at send time (so
it is registered for masking before anything could log it). A `send` raises `Retryable` for
what may pass (network errors, timeouts, HTTP 5xx/429, SMTP temporary errors) and
`DeliveryError` for what will not (a rejected signature, a bad address, HTTP 4xx).

Each attempt is bounded as a whole, not only each read: a `Deadline` of `timeout` seconds
shuts the connection down when it passes (see `deadline`), so a server that never answers, or
trickles its answer, costs one attempt `timeout` seconds and no more.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import smtplib
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from db_backup.observe.alerts import messages
from db_backup.observe.alerts.deadline import Deadline
from db_backup.observe.alerts.messages import Alert
from db_backup.observe.alerts.settings import ChannelSettings
from db_backup.util.secrets import SecretError, register, resolve

USER_AGENT = "db-backup-notify"


class DeliveryError(Exception):
    """A message was not delivered and trying again will not help; the text names the cause."""


class Retryable(DeliveryError):
    """A message was not delivered, and trying again may help."""


def feishu_sign(secret: str, timestamp: int) -> str:
    """Returns Feishu's signature: HMAC-SHA256 keyed by `timestamp\\nsecret` over b"", base64."""
    key = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """Returns DingTalk's signature: HMAC-SHA256 keyed by the secret over `timestamp\\nsecret`,
    base64 (URL-encode it for the query string)."""
    message = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def post_json(
    url: str,
    body: Mapping[str, Any],
    timeout: float,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, bytes]:
    """POSTs `body` as JSON; returns (status, answer) for 2xx, raises Retryable/DeliveryError.

    The whole exchange takes at most `timeout` seconds (proxies from the environment still
    apply, as with any urllib request).
    """
    data = json.dumps(body, ensure_ascii=False, default=str).encode("utf-8")
    request = urllib.request.Request(
        url,
        data=data,
        method="POST",
        headers={
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
            **(headers or {}),
        },
    )
    with Deadline(timeout) as deadline:
        try:
            with _opener(deadline).open(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            answer = _read_error(exc)
            text = f"HTTP {exc.code} {exc.reason}: {answer}".strip().rstrip(":")
            if exc.code >= 500 or exc.code in {408, 429}:
                raise Retryable(text) from None
            raise DeliveryError(text) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            if deadline.expired:
                raise Retryable(f"no answer within {timeout:g} s") from None
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise Retryable(f"cannot reach the server: {reason}") from None


def _read_error(exc: urllib.error.HTTPError) -> str:
    """Returns the start of an error answer's body ("" when it cannot be read in time)."""
    try:
        return exc.read()[:300].decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return ""


def _opener(deadline: Deadline) -> urllib.request.OpenerDirector:
    """Returns a urllib opener whose connections are shut down when `deadline` passes."""

    class Watched(http.client.HTTPConnection):
        def connect(self) -> None:
            """Connects, then puts the socket under the deadline."""
            super().connect()
            deadline.watch(self.sock)

    class WatchedTLS(http.client.HTTPSConnection):
        def connect(self) -> None:
            """Connects (TLS handshake included), then puts the socket under the deadline."""
            super().connect()
            deadline.watch(self.sock)

    class Plain(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            """Opens `req` over a watched connection."""
            return self.do_open(Watched, req)

    class Secure(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            """Opens `req` over a watched TLS connection."""
            return self.do_open(WatchedTLS, req, context=ssl.create_default_context())

    return urllib.request.build_opener(Plain(), Secure())


def _answer(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        raise DeliveryError(f"answer is not JSON: {raw[:200]!r}") from None
    return data if isinstance(data, dict) else {}


class Channel:
    """Sends alerts to one configured channel."""

    def __init__(self, settings: ChannelSettings, language: str, timeout: float) -> None:
        self.settings = settings
        self.name = settings.name
        self.language = settings.language or language
        self.timeout = timeout
        self.now: Callable[[], float] = time.time  # for signatures; tests may fix it

    def wants(self, event_name: str) -> bool:
        """Returns whether this channel takes messages about `event_name`."""
        return self.settings.wants(event_name)

    def send(self, alert: Alert, timeout: float | None = None) -> None:
        """Delivers `alert`; raises Retryable or DeliveryError."""
        raise NotImplementedError

    def _secret(self, ref: Any, what: str) -> str:
        try:
            return resolve(ref, f"notifications channel {self.name!r}: {what}")
        except SecretError as exc:
            raise DeliveryError(str(exc)) from None

    def _url(self) -> str:
        url = self._secret(self.settings.url, "url")
        _register_url_tokens(url)
        return url

    def _text(self, alert: Alert) -> str:
        return messages.plain_text(alert, self.language)


class Feishu(Channel):
    """Feishu / Lark custom bot: text message, signed with `timestamp` and `sign` in the body."""

    def send(self, alert: Alert, timeout: float | None = None) -> None:
        body: dict[str, Any] = {"msg_type": "text", "content": {"text": self._text(alert)}}
        if self.settings.secret is not None:
            timestamp = int(self.now())
            body["timestamp"] = str(timestamp)
            body["sign"] = feishu_sign(self._secret(self.settings.secret, "secret"), timestamp)
        _, raw = post_json(self._url(), body, timeout or self.timeout)
        answer = _answer(raw)
        code = answer.get("code", answer.get("StatusCode", 0))
        if code not in (0, None):
            raise DeliveryError(f"Feishu answered code {code}: {answer.get('msg', '')}")


class DingTalk(Channel):
    """DingTalk custom robot: markdown or text; signed with `timestamp` and `sign` on the URL."""

    def send(self, alert: Alert, timeout: float | None = None) -> None:
        url = self._url()
        if self.settings.secret is not None:
            timestamp = int(self.now() * 1000)
            sign = dingtalk_sign(self._secret(self.settings.secret, "secret"), timestamp)
            query = urllib.parse.urlencode({"timestamp": timestamp, "sign": sign})
            url += ("&" if "?" in url else "?") + query
        if self.settings.format == "markdown":
            body: dict[str, Any] = {
                "msgtype": "markdown",
                "markdown": {
                    "title": messages.title(alert, self.language),
                    "text": messages.markdown(alert, self.language),
                },
            }
        else:
            body = {"msgtype": "text", "text": {"content": self._text(alert)}}
        _, raw = post_json(url, body, timeout or self.timeout)
        _check_errcode("DingTalk", _answer(raw))


class WeCom(Channel):
    """WeCom (企业微信) group robot: markdown or text; the key in the URL is the secret."""

    def send(self, alert: Alert, timeout: float | None = None) -> None:
        if self.settings.format == "markdown":
            body: dict[str, Any] = {
                "msgtype": "markdown",
                "markdown": {"content": messages.markdown(alert, self.language)[:4000]},
            }
        else:
            body = {"msgtype": "text", "text": {"content": self._text(alert)[:2000]}}
        _, raw = post_json(self._url(), body, timeout or self.timeout)
        _check_errcode("WeCom", _answer(raw))


class Slack(Channel):
    """Slack incoming webhook: `{"text": ...}`; it answers `ok`."""

    def send(self, alert: Alert, timeout: float | None = None) -> None:
        post_json(self._url(), {"text": self._text(alert)}, timeout or self.timeout)


class Webhook(Channel):
    """Any HTTP endpoint: the event as JSON (kind, ok, host, job, database, message, report)."""

    def send(self, alert: Alert, timeout: float | None = None) -> None:
        headers = {}
        if self.settings.authorization is not None:
            headers["Authorization"] = self._secret(self.settings.authorization, "authorization")
        body = messages.document(alert, self.language)
        post_json(self._url(), body, timeout or self.timeout, headers)


class Email(Channel):
    """Email over SMTP: STARTTLS, implicit TLS (ssl) or plain, with an optional login."""

    def send(self, alert: Alert, timeout: float | None = None) -> None:
        settings = self.settings
        assert settings.smtp_host and settings.sender  # the schema requires them
        message = EmailMessage()
        message["Subject"] = messages.title(alert, self.language)
        message["From"] = settings.sender
        message["To"] = ", ".join(settings.to)
        message["Date"] = formatdate(localtime=False, usegmt=True)
        message["Message-ID"] = make_msgid(domain=settings.sender.rpartition("@")[2] or None)
        message.set_content(messages.plain_text(alert, self.language))
        password = (
            self._secret(settings.password, "password") if settings.password is not None else None
        )
        limit = timeout or self.timeout
        try:
            context = ssl.create_default_context(cafile=settings.ca_file)
        except OSError as exc:
            raise DeliveryError(f"cannot read ca_file {settings.ca_file}: {exc.strerror}") from None
        with Deadline(limit) as deadline:
            try:
                self._deliver_mail(message, password, limit, context, deadline)
            except (smtplib.SMTPException, OSError) as exc:
                if deadline.expired:
                    where = f"{settings.smtp_host}:{settings.port}"
                    raise Retryable(f"SMTP {where}: no answer within {limit:g} s") from None
                raise _smtp_error(exc, settings) from None

    def _deliver_mail(
        self,
        message: EmailMessage,
        password: str | None,
        limit: float,
        context: ssl.SSLContext,
        deadline: Deadline,
    ) -> None:
        """Connects, logs in when configured, and sends `message`; raises smtplib's errors."""
        settings = self.settings
        host, port = settings.smtp_host or "", settings.port
        smtp: smtplib.SMTP
        if settings.security == "ssl":
            smtp = _WatchedSMTPSSL(deadline, host, port, timeout=limit, context=context)
        else:
            smtp = _WatchedSMTP(deadline, host, port, timeout=limit)
        with smtp:
            if settings.security == "starttls":
                smtp.starttls(context=context)
            if settings.username:
                smtp.login(settings.username, password or "")
            smtp.send_message(message)


class _WatchedSMTP(smtplib.SMTP):
    """smtplib.SMTP whose sockets (the plain one, then the STARTTLS one) `deadline` watches."""

    def __init__(self, deadline: Deadline, host: str, port: int, timeout: float) -> None:
        self.deadline = deadline  # before connecting: __init__ connects
        super().__init__(host, port, timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        # smtplib's one hook between making the socket and reading the greeting (typeshed
        # does not list it): the greeting is already under the deadline.
        sock: socket.socket = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        self.deadline.watch(sock)
        return sock

    def starttls(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        """Starts TLS, then puts the new (TLS) socket under the deadline too."""
        answer = super().starttls(*args, **kwargs)
        if self.sock is not None:
            self.deadline.watch(self.sock)
        return answer


class _WatchedSMTPSSL(smtplib.SMTP_SSL):
    """smtplib.SMTP_SSL whose TLS socket `deadline` watches."""

    def __init__(
        self, deadline: Deadline, host: str, port: int, timeout: float, context: ssl.SSLContext
    ) -> None:
        self.deadline = deadline
        super().__init__(host, port, timeout=timeout, context=context)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        # smtplib's one hook between making the socket and reading the greeting (typeshed
        # does not list it): the greeting is already under the deadline.
        sock: socket.socket = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        self.deadline.watch(sock)
        return sock


def _smtp_error(exc: Exception, settings: ChannelSettings) -> DeliveryError:
    """Returns the Retryable or DeliveryError that says what smtplib's `exc` means."""
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return DeliveryError(f"SMTP login refused: {exc.smtp_code} {_smtp_text(exc)}")
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return DeliveryError(f"SMTP server does not support it: {exc}")
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        refused = ", ".join(f"{who} ({code})" for who, (code, _) in exc.recipients.items())
        return DeliveryError(f"SMTP server refused the recipients: {refused}")
    if isinstance(exc, smtplib.SMTPResponseException):
        text = f"SMTP {exc.smtp_code} {_smtp_text(exc)}"
        if 400 <= exc.smtp_code < 500:
            return Retryable(text)
        return DeliveryError(text)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return DeliveryError(
            f"TLS certificate of {settings.smtp_host} not trusted: {exc.verify_message} "
            "(set ca_file)"
        )
    where = f"{settings.smtp_host}:{settings.port}"
    return Retryable(f"SMTP {where}: {type(exc).__name__}: {exc}")


def _register_url_tokens(url: str) -> None:
    """Registers the tokens inside a webhook URL for masking, not only the whole URL: a
    server's error answer may quote one (`access_token`, `key`, the hook's path token)."""
    parts = urllib.parse.urlsplit(url)
    for _, value in urllib.parse.parse_qsl(parts.query):
        if len(value) >= 8:
            register(value)
    for segment in parts.path.split("/"):
        if len(segment) >= 16:
            register(segment)


def _smtp_text(exc: smtplib.SMTPResponseException) -> str:
    error = exc.smtp_error
    return error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)


def _check_errcode(service: str, answer: dict[str, Any]) -> None:
    code = answer.get("errcode", 0)
    if code != 0:
        raise DeliveryError(f"{service} answered errcode {code}: {answer.get('errmsg', '')}")


TYPES: dict[str, type[Channel]] = {
    "feishu": Feishu,
    "dingtalk": DingTalk,
    "wecom": WeCom,
    "slack": Slack,
    "webhook": Webhook,
    "email": Email,
}


def build(settings: ChannelSettings, language: str, timeout: float) -> Channel:
    """Returns the sender for one configured channel."""
    return TYPES[settings.type](settings, language, timeout)
