#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: write the participants' messages to an outbox and send them once through SMTP."""

DOCUMENTATION = r"""
---
module: share_messages
short_description: Write each participant's message as an .eml file and send it through SMTP, once
description:
  - Writes every message to the outbox folder as C(<user>.eml) (mode 0600), always.
  - When I(smtp_host) is set, sends each message that has an address and was not sent before with the
    same content; a refresh (a new link) makes a new message. I(resend) sends again anyway.
  - The participant's password is put into the message on the host, in place of C(@@PASSWORD@@),
    only with I(secret_in_message); it never travels through Ansible.
version_added: "0.1.0"
author: comfy-wrapup contributors (@comfy-wrapup)
attributes:
  check_mode:
    support: full
    description: Lists the messages that would be written and sent; writes and sends nothing.
  diff_mode:
    support: none
    description: Returns no diff.
options:
  messages:
    description: Rendered messages, each with C(user), C(to) (may be empty), C(name), C(subject), C(body) and C(date) (ISO time).
    type: list
    elements: dict
    required: true
  share_dir:
    description: The share's folder (what was sent is recorded in it).
    type: path
    required: true
  outbox:
    description: Folder of the .eml files.
    type: path
    required: true
  sender:
    description: The From address.
    type: str
    required: true
  secret_in_message:
    description: Put each participant's archive password into their message (else it says where the password comes from).
    type: bool
    default: false
  credentials_file:
    description: USER_CREDENTIALS.txt, read on the host for I(secret_in_message).
    type: path
  smtp_host:
    description: SMTP server; empty writes the outbox only.
    type: str
    default: ""
  smtp_port:
    description: SMTP port.
    type: int
    default: 587
  smtp_security:
    description: C(starttls) (port 587), C(tls) (implicit TLS, port 465) or C(none) (a local relay only).
    type: str
    choices: [starttls, tls, none]
    default: starttls
  smtp_username:
    description: SMTP login; empty sends without authentication.
    type: str
    default: ""
  smtp_password:
    description: SMTP password (from the vault).
    type: str
    default: ""
  smtp_timeout:
    description: Seconds to wait for the SMTP server.
    type: int
    default: 30
  smtp_ca_file:
    description: CA bundle to verify the SMTP server's certificate; empty uses the system's.
    type: path
  resend:
    description: Send every message again, even those already sent with the same content.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Send the participants their download instructions
  share_messages:
    messages: "{{ messages }}"
    share_dir: /var/backups/comfy-wrapup/berlin/share
    outbox: /var/backups/comfy-wrapup/berlin/share/outbox
    sender: workshop@example.org
    smtp_host: smtp.example.org
    smtp_username: workshop@example.org
    smtp_password: "{{ vault_smtp_password }}"
  register: sent

- name: Nobody was skipped by the SMTP server
  ansible.builtin.assert:
    that: sent.sent | length == messages | selectattr('to') | list | length
"""

RETURN = r"""
outbox:
  description: The outbox folder.
  returned: always
  type: str
written:
  description: Participants whose .eml file was (would be) written or rewritten.
  returned: always
  type: list
  elements: str
sent:
  description: Participants sent a message by this run (in check mode, those who would be).
  returned: always
  type: list
  elements: str
messages:
  description: Per participant, the address, the .eml file and when the message was last sent (null if never).
  returned: always
  type: list
  elements: dict
  sample:
    - user: user001
      to: ada@example.org
      eml: /var/backups/comfy-wrapup/berlin/share/outbox/user001.eml
      sent_at: "2026-11-29T18:00:00+00:00"
no_email:
  description: Participants whose message has no address (outbox only).
  returned: always
  type: list
  elements: str
record:
  description: What the run record keeps per participant (to, sent_at).
  returned: always
  type: dict
smtp:
  description: Whether SMTP was configured.
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_share_messages import send_messages


def main():
    module = AnsibleModule(
        argument_spec=dict(
            messages=dict(type="list", elements="dict", required=True),
            share_dir=dict(type="path", required=True),
            outbox=dict(type="path", required=True),
            sender=dict(type="str", required=True),
            secret_in_message=dict(type="bool", default=False),
            credentials_file=dict(type="path"),
            smtp_host=dict(type="str", default=""),
            smtp_port=dict(type="int", default=587),
            smtp_security=dict(type="str", choices=["starttls", "tls", "none"], default="starttls"),
            smtp_username=dict(type="str", default=""),
            smtp_password=dict(type="str", default="", no_log=True),
            smtp_timeout=dict(type="int", default=30),
            smtp_ca_file=dict(type="path"),
            resend=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    for number, message in enumerate(p["messages"]):
        missing = [key for key in ("user", "subject", "body") if not message.get(key)]
        if missing:
            module.fail_json(
                msg=f"Message {number} ({message.get('user', '?')}) has no {', '.join(missing)}: check the templates"
            )
    smtp = None
    if p["smtp_host"]:
        smtp = {
            "host": p["smtp_host"],
            "port": p["smtp_port"],
            "security": p["smtp_security"],
            "username": p["smtp_username"],
            "password": p["smtp_password"],
            "timeout": p["smtp_timeout"],
            "ca_file": p["smtp_ca_file"],
        }
    params = dict(p, smtp=smtp)
    try:
        result = send_messages(params, module.check_mode)
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **exc.context)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
