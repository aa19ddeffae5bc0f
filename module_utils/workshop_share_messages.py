# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The participants' messages: an .eml outbox always, SMTP when configured, each message sent once.

Messages arrive rendered (the role's templates); a participant's password is put in on the host,
only when the admin chose so, in place of PASSWORD_PLACEHOLDER, so it never travels through
Ansible. A message already sent with the same content (same link, same expiry) is not sent again.
"""

import contextlib
import email.policy
import email.utils
import hashlib
import os
import smtplib
import ssl
import time
from email.message import EmailMessage

from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import write_if_changed
from ansible.module_utils.workshop_share import (
    PASSWORDS_NAME,
    ensure_folder,
    read_credentials,
    read_json,
    write_json,
)
from ansible.module_utils.workshop_time import epoch_of, utc_iso

PASSWORD_PLACEHOLDER = "@@PASSWORD@@"
SENT_NAME = "share-sent.json"
WITHHELD = "(not in this message: it is your workshop login password, or ask the organisers)"


def participant_password(user, credentials, generated):
    return credentials.get(user) or generated.get(user) or ""


def compose(message, sender, password):
    """The EmailMessage of one rendered message; Date and Message-ID derive from its content, so it is stable."""
    body = message["body"].replace(PASSWORD_PLACEHOLDER, password if password else WITHHELD)
    mail = EmailMessage(policy=email.policy.SMTP)
    mail["From"] = sender
    if message.get("to"):
        mail["To"] = email.utils.formataddr((message.get("name") or "", message["to"]))
    mail["Subject"] = message["subject"]
    mail["Date"] = email.utils.formatdate(epoch_of(message.get("date")) or 0, usegmt=True)
    digest = content_digest(message, sender)
    mail["Message-ID"] = f"<{digest[:32]}@{sender.rpartition('@')[2] or 'comfy-wrapup'}>"
    mail.set_content(body)
    return mail


def content_digest(message, sender):
    """What makes a message new: sender, recipient, subject and body (before any password is put in)."""
    parts = [sender, message.get("to") or "", message["subject"], message["body"]]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _smtp(smtp):
    host, port, security = smtp["host"], smtp["port"], smtp["security"]
    try:
        if security == "tls":
            context = ssl.create_default_context(cafile=smtp.get("ca_file") or None)
            server = smtplib.SMTP_SSL(host, port, timeout=smtp["timeout"], context=context)
        else:
            server = smtplib.SMTP(host, port, timeout=smtp["timeout"])
            if security == "starttls":
                server.starttls(context=ssl.create_default_context(cafile=smtp.get("ca_file") or None))
        if smtp.get("username"):
            server.login(smtp["username"], smtp.get("password") or "")
        return server
    except smtplib.SMTPAuthenticationError as exc:
        raise WorkshopError(
            f"The SMTP server {host}:{port} ({security}) refused the login of {smtp['username']}: {exc.smtp_code} "
            f"{exc.smtp_error.decode(errors='replace')}; check share_smtp's username and the password in the vault",
            host=host,
            port=port,
        ) from None
    except (OSError, smtplib.SMTPException) as exc:
        raise WorkshopError(
            f"Cannot reach the SMTP server {host}:{port} ({security}): {exc}; check share_smtp (host, port, security, "
            "username, and the password in the vault)",
            host=host,
            port=port,
        ) from None


def send_messages(params, check_mode, now=None):
    """Write every message to the outbox; send those with an address not yet sent. Returns the phase's result.

    params: messages [{user, to, name, subject, body, date}], share_dir, outbox, sender,
    secret_in_message, credentials_file, smtp (dict or None: host, port, security, username,
    password, timeout, ca_file), resend.
    """
    now = time.time() if now is None else now
    share_dir = params["share_dir"]
    outbox = params["outbox"]
    sent_path = os.path.join(share_dir, SENT_NAME)
    sent = read_json(sent_path)
    if params["secret_in_message"]:
        credentials = read_credentials(params.get("credentials_file"))
        generated = read_json(os.path.join(share_dir, PASSWORDS_NAME))
    else:
        credentials = generated = {}
    if not check_mode:
        ensure_folder(outbox)
    written, to_send, summary = [], [], []
    for message in params["messages"]:
        user = message["user"]
        password = participant_password(user, credentials, generated) if params["secret_in_message"] else ""
        mail = compose(message, params["sender"], password)
        path = os.path.join(outbox, f"{user}.eml")
        if write_if_changed(path, mail.as_bytes(), mode=0o600, check_mode=check_mode):
            written.append(user)
        digest = content_digest(message, params["sender"])
        previous = sent.get(user) or {}
        item = {"user": user, "to": message.get("to") or "", "eml": path, "sent_at": previous.get("sent_at")}
        if params.get("smtp") and message.get("to") and (previous.get("digest") != digest or params["resend"]):
            to_send.append((user, message["to"], mail, digest, item))
        summary.append(item)
    sent_now = []
    if to_send and not check_mode:
        server = _smtp(params["smtp"])
        try:
            for user, address, mail, digest, item in to_send:
                try:
                    server.send_message(mail, from_addr=params["sender"], to_addrs=[address])
                except smtplib.SMTPException as exc:
                    write_json(sent_path, sent)
                    raise WorkshopError(
                        f"The SMTP server refused the message to {user} <{address}>: {exc}; the messages sent so "
                        "far are recorded and will not be sent again",
                        user=user,
                    ) from None
                item["sent_at"] = utc_iso(now)
                sent[user] = {"digest": digest, "sent_at": item["sent_at"], "to": address}
                sent_now.append(user)
        finally:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                server.quit()
        write_json(sent_path, sent)
    would_send = [entry[0] for entry in to_send]
    return {
        "changed": bool(written or would_send),
        "outbox": outbox,
        "written": written,
        "sent": sent_now if not check_mode else would_send,
        "messages": summary,
        "record": {item["user"]: {"to": item["to"], "sent_at": item["sent_at"]} for item in summary},
        "no_email": [m["user"] for m in params["messages"] if not m.get("to")],
        "smtp": bool(params.get("smtp")),
    }
