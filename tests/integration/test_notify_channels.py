"""Each channel's request against a real loopback receiver, and SMTP against a real server.

Feishu's and DingTalk's signatures are checked the way their servers check them (recomputed
from the received timestamp with the bot's secret); a wrong secret is refused as they refuse it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from db_backup.config import SecretRef
from db_backup.observe import events
from db_backup.observe.alerts import Notifier
from db_backup.observe.alerts.settings import ChannelSettings, NotifySettings
from tests.support.pgcluster import free_port
from tests.support.receivers import Receiver, dingtalk_check, feishu_check

REPORT_PATH = Path("/var/lib/db-backup/reports/shop_20261124T020000Z_db1.json")
# aiosmtpd warns about AUTH without TLS; the plain-login test wants exactly that.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

ERROR = "pg_dump: error: connection to server on socket failed: No such file or directory"


def _event(ok: bool = False) -> events.Event:
    report = {
        "status": "SUCCESS" if ok else "FAILED",
        "errorMessage": "" if ok else ERROR,
        "database": "shop",
        "job": "nightly",
        "hostname": "db1.example.com",
        "host": "/var/run/postgresql",
        "port": "5432",
    }
    return events.Event(
        kind=events.BACKUP,
        job="nightly",
        database="shop",
        ok=ok,
        message="" if ok else ERROR,
        report=report,
        report_path=REPORT_PATH,
    )


def _notifier(state: Path, *channels: ChannelSettings, **settings: Any) -> Notifier:
    values: dict[str, Any] = {"backoff_seconds": 0.05, "timeout_seconds": 5, **settings}
    return Notifier(NotifySettings(channels=channels, **values), state)


def _send(notifier: Notifier, event: events.Event | None = None) -> float:
    """Hands one event to the notifier, waits for it to finish; returns how long handle took."""
    started = time.monotonic()
    notifier.handle(event or _event())
    took = time.monotonic() - started
    notifier.close(30)
    return took


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as started:
        yield started


def _failures(state: Path) -> dict[str, int]:
    return events.failure_counts(state)


def _assert_names_everything(text: str) -> None:
    for part in ("db1.example.com", "nightly", "shop", ERROR, str(REPORT_PATH)):
        assert part in text, part


# --- chat bots and webhooks ---------------------------------------------------------------


def test_feishu_sends_text_signed_as_feishu_checks_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEISHU_URL", "")  # set below, once the port is known
    monkeypatch.setenv("FEISHU_SECRET", "feishu-signing-secret-1")
    with Receiver(default_body={"code": 0, "msg": "success"}) as feishu:
        feishu.check = feishu_check("feishu-signing-secret-1")
        monkeypatch.setenv("FEISHU_URL", feishu.url("/open-apis/bot/v2/hook/tok-123"))
        channel = ChannelSettings(
            name="ops-feishu",
            type="feishu",
            url=SecretRef("env", "FEISHU_URL"),
            secret=SecretRef("env", "FEISHU_SECRET"),
        )
        _send(_notifier(tmp_path, channel))
        [request] = feishu.wait_for(1)
    body = request.json()
    assert request.path == "/open-apis/bot/v2/hook/tok-123"
    assert body["msg_type"] == "text" and set(body) == {"msg_type", "content", "timestamp", "sign"}
    assert isinstance(body["timestamp"], str) and body["timestamp"].isdigit()
    _assert_names_everything(body["content"]["text"])
    assert _failures(tmp_path) == {}


def test_feishu_with_a_wrong_secret_is_refused_counted_and_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEISHU_SECRET", "not-the-bots-secret")
    with Receiver(default_body={"code": 0}) as feishu:
        feishu.check = feishu_check("feishu-signing-secret-1")
        monkeypatch.setenv("FEISHU_URL", feishu.url("/open-apis/bot/v2/hook/tok-123"))
        channel = ChannelSettings(
            name="ops-feishu",
            type="feishu",
            url=SecretRef("env", "FEISHU_URL"),
            secret=SecretRef("env", "FEISHU_SECRET"),
        )
        with structlog.testing.capture_logs() as logged:
            _send(_notifier(tmp_path, channel))
        assert len(feishu.requests) == 1
    [error] = [e for e in logged if e["event"] == "alert not delivered"]
    assert "19021" in error["error"] and error["channel"] == "ops-feishu"
    assert _failures(tmp_path) == {"notify:ops-feishu": 1}


def test_dingtalk_sends_markdown_signed_on_the_url_as_dingtalk_checks_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "SEC0123456789abcdef+/=="  # characters that need URL-encoding in the sign, too
    monkeypatch.setenv("DT_SECRET", secret)
    with Receiver(default_body={"errcode": 0, "errmsg": "ok"}) as dingtalk:
        dingtalk.check = dingtalk_check(secret)
        monkeypatch.setenv("DT_URL", dingtalk.url("/robot/send?access_token=abc123"))
        channel = ChannelSettings(
            name="dt",
            type="dingtalk",
            url=SecretRef("env", "DT_URL"),
            secret=SecretRef("env", "DT_SECRET"),
        )
        _send(_notifier(tmp_path, channel, language="zh"))
        [request] = dingtalk.wait_for(1)
        assert request.answered == 200
    assert request.path == "/robot/send" and request.query["access_token"] == "abc123"
    assert set(request.query) == {"access_token", "timestamp", "sign"}
    assert len(request.query["timestamp"]) == 13  # milliseconds
    body = request.json()
    assert body["msgtype"] == "markdown"
    assert body["markdown"]["title"].startswith("[db-backup] 备份失败")
    _assert_names_everything(body["markdown"]["text"])
    assert "错误" in body["markdown"]["text"]
    assert _failures(tmp_path) == {}

    # The same robot refuses a message signed with another secret.
    monkeypatch.setenv("DT_SECRET", "SECwrong")
    with Receiver(default_body={"errcode": 0}) as dingtalk:
        dingtalk.check = dingtalk_check(secret)
        monkeypatch.setenv("DT_URL", dingtalk.url("/robot/send?access_token=abc123"))
        _send(_notifier(tmp_path / "second", channel))
        [refused] = dingtalk.wait_for(1)
    assert _failures(tmp_path / "second") == {"notify:dt": 1}
    assert refused.query["sign"]


def test_wecom_sends_markdown_to_the_key_url(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.default_body = {"errcode": 0, "errmsg": "ok"}
    monkeypatch.setenv("WECOM_URL", receiver.url("/cgi-bin/webhook/send?key=k-693a"))
    channel = ChannelSettings(name="wx", type="wecom", url=SecretRef("env", "WECOM_URL"))
    _send(_notifier(tmp_path, channel))
    [request] = receiver.wait_for(1)
    assert request.path == "/cgi-bin/webhook/send" and request.query == {"key": "k-693a"}
    body = request.json()
    assert body["msgtype"] == "markdown" and set(body["markdown"]) == {"content"}
    _assert_names_everything(body["markdown"]["content"])


def test_wecom_answering_an_error_code_counts_as_not_delivered(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.default_body = {"errcode": 93000, "errmsg": "invalid webhook url"}
    monkeypatch.setenv("WECOM_URL", receiver.url("/cgi-bin/webhook/send?key=bad"))
    channel = ChannelSettings(
        name="wx", type="wecom", url=SecretRef("env", "WECOM_URL"), format="text"
    )
    _send(_notifier(tmp_path, channel))
    assert receiver.requests[0].json()["msgtype"] == "text"
    assert _failures(tmp_path) == {"notify:wx": 1}


def test_a_token_that_the_server_quotes_back_is_masked_in_the_log(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "693axxx6-7aoc-4bc4-97a0-0ec2sifa5aaa"
    receiver.reply(400, f"invalid webhook url, key {key} not found")
    monkeypatch.setenv("WECOM_URL", receiver.url(f"/cgi-bin/webhook/send?key={key}"))
    channel = ChannelSettings(name="wx", type="wecom", url=SecretRef("env", "WECOM_URL"))
    with structlog.testing.capture_logs() as logged:
        _send(_notifier(tmp_path, channel))
    [error] = [e for e in logged if e["event"] == "alert not delivered"]
    assert error["error"] == "HTTP 400 Bad Request: invalid webhook url, key *** not found"
    assert key not in repr(logged)


def test_slack_sends_text(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_URL", receiver.url("/services/T0/B0/xyz"))
    channel = ChannelSettings(name="slack", type="slack", url=SecretRef("env", "SLACK_URL"))
    _send(_notifier(tmp_path, channel))
    [request] = receiver.wait_for(1)
    body = request.json()
    assert set(body) == {"text"} and request.path == "/services/T0/B0/xyz"
    _assert_names_everything(body["text"])


def test_webhook_posts_the_event_as_json_with_the_report(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_URL", receiver.url("/alerts"))
    monkeypatch.setenv("HOOK_AUTH", "Bearer hook-token-77")
    channel = ChannelSettings(
        name="hook",
        type="webhook",
        url=SecretRef("env", "HOOK_URL"),
        authorization=SecretRef("env", "HOOK_AUTH"),
    )
    _send(_notifier(tmp_path, channel))
    [request] = receiver.wait_for(1)
    assert request.headers["authorization"] == "Bearer hook-token-77"
    assert request.headers["content-type"].startswith("application/json")
    body = request.json()
    assert body["kind"] == "backup" and body["event"] == "backup_failed" and body["ok"] is False
    assert body["host"] == "db1.example.com" and body["job"] == "nightly"
    assert body["database"] == "shop" and body["message"] == ERROR
    assert body["report_path"] == str(REPORT_PATH) and body["report"]["status"] == "FAILED"
    assert body["state"] == "failed" and body["failures"] == 1


def test_a_500_is_retried_with_backoff_and_then_delivered(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.reply(500, "try later")
    receiver.reply(503, "try later")
    monkeypatch.setenv("HOOK_URL", receiver.url("/alerts"))
    channel = ChannelSettings(name="hook", type="webhook", url=SecretRef("env", "HOOK_URL"))
    _send(_notifier(tmp_path, channel, attempts=3, backoff_seconds=0.2))
    answered = [r.answered for r in receiver.wait_for(3)]
    assert answered == [500, 503, 200]
    assert _failures(tmp_path) == {}


def test_a_4xx_is_not_retried(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.default_status = 404
    monkeypatch.setenv("HOOK_URL", receiver.url("/gone"))
    channel = ChannelSettings(name="hook", type="webhook", url=SecretRef("env", "HOOK_URL"))
    _send(_notifier(tmp_path, channel, attempts=5))
    assert len(receiver.requests) == 1
    assert _failures(tmp_path) == {"notify:hook": 1}


def test_a_receiver_that_is_down_is_logged_masked_counted_and_never_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "secret-token-in-the-url-4711"
    monkeypatch.setenv("HOOK_URL", f"http://127.0.0.1:{free_port()}/hook/{token}")
    channel = ChannelSettings(name="hook", type="webhook", url=SecretRef("env", "HOOK_URL"))
    notifier = _notifier(tmp_path, channel, attempts=3, backoff_seconds=0.1)
    with structlog.testing.capture_logs() as logged:
        started = time.monotonic()
        took = _send(notifier)
        elapsed = time.monotonic() - started
    assert took < 0.5 and elapsed < 10
    [error] = [e for e in logged if e["event"] == "alert not delivered"]
    assert error["attempts"] == 3 and "cannot reach the server" in error["error"]
    assert token not in repr(logged)
    assert _failures(tmp_path) == {"notify:hook": 1}


def test_a_slow_receiver_times_out_and_close_is_bounded(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.reply(200, {}, delay=3)
    receiver.reply(200, {}, delay=3)
    monkeypatch.setenv("HOOK_URL", receiver.url("/slow"))
    channel = ChannelSettings(name="hook", type="webhook", url=SecretRef("env", "HOOK_URL"))
    notifier = _notifier(tmp_path, channel, attempts=2, timeout_seconds=0.5, backoff_seconds=0)
    started = time.monotonic()
    took = _send(notifier)
    assert took < 0.5 and time.monotonic() - started < 5
    assert _failures(tmp_path) == {"notify:hook": 1}
    receiver.wait_for(2)


def test_close_gives_up_retrying_at_its_deadline(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.default_status = 503
    monkeypatch.setenv("HOOK_URL", receiver.url("/down"))
    channel = ChannelSettings(name="hook", type="webhook", url=SecretRef("env", "HOOK_URL"))
    notifier = _notifier(tmp_path, channel, attempts=10, backoff_seconds=30)
    notifier.handle(_event())
    receiver.wait_for(1)
    started = time.monotonic()
    notifier.close(1.0)
    assert time.monotonic() - started < 3
    assert len(receiver.requests) == 1
    assert _failures(tmp_path) == {"notify:hook": 1}


def test_one_channel_down_does_not_stop_the_others_and_recovery_follows(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOWN_URL", f"http://127.0.0.1:{free_port()}/x")
    monkeypatch.setenv("HOOK_URL", receiver.url("/alerts"))
    down = ChannelSettings(name="down", type="slack", url=SecretRef("env", "DOWN_URL"))
    hook = ChannelSettings(name="hook", type="webhook", url=SecretRef("env", "HOOK_URL"))
    notifier = _notifier(tmp_path, down, hook, attempts=1)
    notifier.handle(_event())
    notifier.handle(_event())  # the second failure of the streak: silent
    notifier.handle(_event(ok=True))
    notifier.close(30)
    states = [r.json()["state"] for r in receiver.wait_for(2)]
    assert states == ["failed", "recovered"] and len(receiver.requests) == 2
    assert receiver.requests[1].json()["failures"] == 2
    assert _failures(tmp_path) == {"notify:down": 2}


# --- email -----------------------------------------------------------------------------------


@dataclass
class Mailbox:
    """What a real local SMTP server (aiosmtpd) received, and who logged in."""

    messages: list[Envelope] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Envelope) -> str:
        self.messages.append(envelope)
        return "250 OK"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.logins.append((login, password))
        # handled=False: aiosmtpd answers a refusal with 535 itself.
        return AuthResult(success=(login, password) == ("alerts", "smtp-pass-0815"), handled=False)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (cert, key) PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


@pytest.fixture
def smtp_password(monkeypatch: pytest.MonkeyPatch) -> SecretRef:
    monkeypatch.setenv("SMTP_PASSWORD", "smtp-pass-0815")
    return SecretRef("env", "SMTP_PASSWORD")


def _mail_channel(port: int, security: str, password: SecretRef, **more: Any) -> ChannelSettings:
    values: dict[str, Any] = {
        "name": "dba-mail",
        "type": "email",
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "security": security,
        "username": "alerts",
        "password": password,
        "sender": "db-backup@example.com",
        "to": ("dba@example.com", "ops@example.com"),
        **more,
    }
    return ChannelSettings(**values)


@pytest.mark.parametrize("security", ["none", "starttls", "ssl"])
def test_email_is_delivered_with_login(
    tmp_path: Path,
    security: str,
    certificate: tuple[Path, Path],
    smtp_password: SecretRef,
) -> None:
    mailbox = Mailbox()
    port = free_port()
    tls: dict[str, Any] = {}
    if security == "starttls":
        tls = {"tls_context": _server_context(certificate), "require_starttls": True}
    elif security == "ssl":
        tls = {"ssl_context": _server_context(certificate)}
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=mailbox.authenticate,
        auth_required=True,
        # With implicit TLS aiosmtpd does not know the session is encrypted and would hide AUTH.
        auth_require_tls=security == "starttls",
        **tls,
    )
    controller.start()
    try:
        channel = _mail_channel(port, security, smtp_password, ca_file=str(certificate[0]))
        _send(_notifier(tmp_path, channel, language="zh"))
    finally:
        controller.stop()
    assert _failures(tmp_path) == {}
    assert mailbox.logins == [("alerts", "smtp-pass-0815")]
    [envelope] = mailbox.messages
    assert envelope.mail_from == "db-backup@example.com"
    assert envelope.rcpt_tos == ["dba@example.com", "ops@example.com"]
    import email
    import email.policy

    content = envelope.original_content or b""
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert str(message["Subject"]).startswith("[db-backup] 备份失败 nightly/shop")
    body = message.get_body(("plain",))
    assert body is not None
    _assert_names_everything(body.get_content())


def test_email_to_a_server_with_an_untrusted_certificate_is_refused_and_counted(
    tmp_path: Path, certificate: tuple[Path, Path], smtp_password: SecretRef
) -> None:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(
        mailbox, hostname="127.0.0.1", port=port, tls_context=_server_context(certificate)
    )
    controller.start()
    try:
        with structlog.testing.capture_logs() as logged:
            _send(_notifier(tmp_path, _mail_channel(port, "starttls", smtp_password)))
    finally:
        controller.stop()
    assert mailbox.messages == []
    [error] = [e for e in logged if e["event"] == "alert not delivered"]
    assert "not trusted" in error["error"] and error["attempts"] == 1
    assert _failures(tmp_path) == {"notify:dba-mail": 1}


def test_email_with_a_wrong_password_is_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=mailbox.authenticate,
        auth_required=True,
        auth_require_tls=False,
    )
    controller.start()
    monkeypatch.setenv("SMTP_PASSWORD", "wrong-password-99")
    try:
        with structlog.testing.capture_logs() as logged:
            _send(
                _notifier(tmp_path, _mail_channel(port, "none", SecretRef("env", "SMTP_PASSWORD")))
            )
    finally:
        controller.stop()
    # smtplib tries each mechanism the server offers (PLAIN, LOGIN) within one attempt.
    assert set(mailbox.logins) == {("alerts", "wrong-password-99")}
    [error] = [e for e in logged if e["event"] == "alert not delivered"]
    assert error["attempts"] == 1 and "SMTP login refused: 535" in error["error"]
    assert "wrong-password-99" not in repr(logged)
    assert _failures(tmp_path) == {"notify:dba-mail": 1}


def test_email_to_a_server_that_is_down_is_counted_in_bounded_time(
    tmp_path: Path, smtp_password: SecretRef
) -> None:
    channel = _mail_channel(free_port(), "starttls", smtp_password)
    notifier = _notifier(tmp_path, channel, attempts=2, backoff_seconds=0.1)
    started = time.monotonic()
    with structlog.testing.capture_logs() as logged:
        took = _send(notifier)
    assert took < 0.5 and time.monotonic() - started < 10
    [error] = [e for e in logged if e["event"] == "alert not delivered"]
    assert "ConnectionRefusedError" in error["error"] and error["attempts"] == 2
    assert _failures(tmp_path) == {"notify:dba-mail": 1}
