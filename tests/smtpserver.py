"""A real SMTP server on loopback for the tests (aiosmtpd) that keeps every message it receives."""

import email
import email.policy
import socket
import time

from aiosmtpd.controller import Controller


class Mailbox:
    """What the server received: (envelope sender, recipients, parsed message) in arrival order."""

    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        parsed = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), parsed))
        return "250 Message accepted for delivery"


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def smtp_server():
    """Start aiosmtpd on a free loopback port; yields (port, mailbox); stops it afterwards."""
    mailbox = Mailbox()
    port = _free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    yield port, mailbox
    controller.stop()
