"""A real SMTP server on loopback for the tests (aiosmtpd) that keeps every message it receives.

Plain, STARTTLS (required) or implicit TLS, with a certificate made for 127.0.0.1, and optionally
a login the server checks.
"""

import email
import email.policy
import socket
import ssl
import subprocess
import time

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


class Mailbox:
    """What the server received: (envelope sender, recipients, parsed message) in arrival order; and the logins."""

    def __init__(self, login=None):
        self.messages, self.logins, self.login = [], [], login

    async def handle_DATA(self, server, session, envelope):
        parsed = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), parsed))
        return "250 Message accepted for delivery"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        login = (auth_data.login.decode(), auth_data.password.decode())
        self.logins.append(login[0])
        # handled=False: aiosmtpd itself answers (235, or 535 on a wrong login).
        return AuthResult(success=login == self.login, handled=False)


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def certificate(folder):
    """A self-signed certificate for 127.0.0.1 (its own CA): (cert path, key path)."""
    cert, key = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def smtp_server(security="none", folder=None, login=None):
    """Start aiosmtpd on a free loopback port; yields (port, mailbox, cert path or None); stops it afterwards.

    security: none, starttls (required before MAIL) or tls (implicit); login: (user, password) the server requires.
    """
    mailbox = Mailbox(login)
    port = _free_port()
    cert = None
    kwargs = {}
    if security != "none":
        cert, key = certificate(folder)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert), str(key))
        if security == "tls":
            kwargs["ssl_context"] = context
        else:
            kwargs.update(tls_context=context, require_starttls=True)
    if login:
        # aiosmtpd counts only STARTTLS as TLS, not an implicitly TLS connection: require it for STARTTLS alone.
        kwargs.update(authenticator=mailbox.authenticate, auth_required=True, auth_require_tls=security == "starttls")
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    yield port, mailbox, cert
    controller.stop()


@pytest.fixture
def smtp():
    """A plain SMTP server for one test: (port, mailbox, certificate)."""
    yield from smtp_server()
