#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: one encrypted zip of their own outputs per participant, delivered with a link."""

DOCUMENTATION = r"""
---
module: share_archives
short_description: Build each participant's encrypted outputs archive and deliver it with a download link
description:
  - Lists the participants (USER_CREDENTIALS.txt, the output folders, an optional CSV roster);
    those without outputs are listed as absent and get no archive.
  - Builds one zip per participant with only their own outputs (and, as an option, their saved
    workflows), AES-256 encrypted (WinZip AES) with their workshop password (read on the host from
    USER_CREDENTIALS.txt, never passed to or returned by Ansible) or a generated one kept on the host.
    PNG, MP4 and other compressed media are stored, not deflated. Built streaming (flat memory),
    several participants in parallel.
  - Delivers each archive under a name holding 128 random bits, to an S3-compatible target with a
    presigned link (at most 7 days, the SigV4 limit, and never past the share period), or to a folder the admin serves.
  - A second run on unchanged outputs changes nothing. With I(refresh), new links are issued for the
    rest of the share period.
version_added: "0.1.0"
author: comfy-wrapup contributors (@comfy-wrapup)
attributes:
  check_mode:
    support: full
    description: Lists what would be built, uploaded and linked; writes and uploads nothing.
  diff_mode:
    support: none
    description: Returns no diff.
options:
  outputs_dir:
    description: The participants' outputs, one folder each (data/outputs).
    type: path
    required: true
  user_data_dir:
    description: The participants' saved workflows and settings (data/user_data); when set, put in each archive under workflows/.
    type: path
  credentials_file:
    description: The platform's USER_CREDENTIALS.txt (username:password lines), read on the host.
    type: path
  roster_csv:
    description: An optional roster as CSV text (user id, name, email), with or without a header row.
    type: str
    default: ""
  participant_pattern:
    description: Output folders whose names match this pattern are participants.
    type: str
    default: '^user\d+$'
  share_dir:
    description: The share's folder in the workshop folder (archives, state, generated passwords; mode 0700).
    type: path
    required: true
  workshop_id:
    description: The workshop's name, in the archive names and the S3 keys.
    type: str
    required: true
  encryption:
    description:
      - C(workshop) encrypts with the participant's workshop password (a generated one for a participant
        not in USER_CREDENTIALS.txt), C(generated) with a generated password, C(none) not at all.
    type: str
    choices: [workshop, generated, none]
    default: workshop
  record:
    description:
      - The workshop's run record. When it says the queue was drained, output files written more than ten minutes
        after that end (C(drain.final_time)) belong to a later workshop on the host, so the run fails, naming them,
        and builds nothing.
    type: path
  days:
    description: The share period in days, from the first delivery; links never outlive it.
    type: int
    default: 30
  link_lifetime:
    description: Seconds a presigned link is valid, at most 604800 (7 days, the SigV4 limit).
    type: int
    default: 604800
  target:
    description: The S3-compatible target, an entry in the archive_targets format (type s3).
    type: dict
    suboptions:
      name: {description: "The target's name, in messages.", type: str, required: true}
      type: {description: Only s3 is used here., type: str, choices: [s3, ssh], required: true}
      endpoint_url: {description: Endpoint URL; empty for AWS., type: str}
      region: {description: Region., type: str, default: us-east-1}
      bucket: {description: Bucket., type: str}
      prefix: {description: Key prefix., type: str, default: ""}
      storage_class: {description: Storage class of the objects., type: str}
      access_key:
        description: Access key id (not secret, every presigned link shows it); empty reads AWS_ACCESS_KEY_ID on the host.
        type: str
      secret_key: {description: Secret key; empty reads AWS_SECRET_ACCESS_KEY on the host., type: str}
      validate_certs: {description: Verify the endpoint's TLS certificate., type: bool, default: true}
      host: {description: Unused here (ssh targets)., type: str}
      port: {description: Unused here (ssh targets)., type: int, default: 22}
      user: {description: Unused here (ssh targets)., type: str}
      path: {description: Unused here (ssh targets)., type: path}
      key_file: {description: Unused here (ssh targets)., type: path}
  folder:
    description: Without a target, the folder the admin serves; each archive goes to <folder>/<random>/<name>.
    type: path
  base_url:
    description: The URL under which I(folder) is served, for the links.
    type: str
    default: ""
  refresh:
    description: Issue new links for the rest of the share period even where the current ones are still valid.
    type: bool
    default: false
  jobs:
    description: Archives built in parallel.
    type: int
    default: 4
  compress_level:
    description: Deflate level of the files that are not stored.
    type: int
    default: 6
"""

EXAMPLES = r"""
- name: Build and deliver the participants' archives
  share_archives:
    outputs_dir: /home/dev/projects/comfyui/data/outputs
    credentials_file: /home/dev/projects/comfyui/USER_CREDENTIALS.txt
    share_dir: /var/backups/comfy-wrapup/berlin/share
    workshop_id: berlin
    target: "{{ share_target }}"
  register: share

- name: Every attending participant has a link
  ansible.builtin.assert:
    that: share.participants | rejectattr('link') | list | length == 0
"""

RETURN = r"""
participants:
  description: One entry per participant with an archive (no password, ever).
  returned: always
  type: list
  elements: dict
  sample:
    - user: user001
      name: Ada
      email: ada@example.org
      archive: berlin-user001-outputs.zip
      bytes: 1048576
      sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
      files: 12
      file_list: [outputs/img_001.png]
      location: s3://bucket/share/berlin/3f2a.../berlin-user001-outputs.zip
      link: "https://s3.example.org/bucket/share/berlin/3f2a.../berlin-user001-outputs.zip?X-Amz-Expires=604800&..."
      link_expires: "2026-12-06T18:00:00+00:00"
      link_expires_text: 6 December 2026, 18:00 UTC
      link_issued: "2026-11-29T18:00:00+00:00"
      password: workshop
absent:
  description: Participants without outputs (never attended, or made nothing), listed; they get no archive.
  returned: always
  type: list
  elements: str
no_email:
  description: Participants with an archive but no email address in the roster.
  returned: always
  type: list
  elements: str
roster:
  description: Every participant found, with name, email and number of files.
  returned: always
  type: list
  elements: dict
built:
  description: Participants whose archive was (or in check mode would be) built.
  returned: always
  type: list
  elements: str
uploaded:
  description: Participants whose archive was (would be) copied to the target or folder.
  returned: always
  type: list
  elements: str
linked:
  description: Participants given a new presigned link.
  returned: always
  type: list
  elements: str
delivery:
  description: C(s3) or C(folder).
  returned: always
  type: str
period_started:
  description: Start of the share period (the first delivery), ISO-8601 UTC.
  returned: always
  type: str
period_ends:
  description: End of the share period, after which the retention phase removes the archives.
  returned: always
  type: str
period_ends_text:
  description: The end of the share period for people (with its time zone), as messages state it.
  returned: always
  type: str
  sample: 29 December 2026, 18:00 UTC
record:
  description: What the run record keeps per participant (archive, bytes, sha256, files, file_list, location, link_expires).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.workshop_connection import require_libraries
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_s3 import target_argument_spec
from ansible.module_utils.workshop_share import HAS_PYZIPPER, MAX_LINK_SECONDS, PYZIPPER_IMPORT_ERROR, share, workshop_end


def share_target_spec():
    """The target option; its access key id is not hidden: every presigned link carries it (as
    X-Amz-Credential), and Ansible would mask it inside the links, breaking them. The secret key stays no_log."""
    spec = target_argument_spec(required=False)
    spec["options"] = dict(spec["options"], access_key=dict(type="str", no_log=False))
    return spec


def main():
    module = AnsibleModule(
        argument_spec=dict(
            outputs_dir=dict(type="path", required=True),
            user_data_dir=dict(type="path"),
            credentials_file=dict(type="path"),
            roster_csv=dict(type="str", default=""),
            participant_pattern=dict(type="str", default=r"^user\d+$"),
            share_dir=dict(type="path", required=True),
            workshop_id=dict(type="str", required=True),
            encryption=dict(type="str", choices=["workshop", "generated", "none"], default="workshop"),
            record=dict(type="path"),
            days=dict(type="int", default=30),
            link_lifetime=dict(type="int", default=MAX_LINK_SECONDS),
            target=share_target_spec(),
            folder=dict(type="path"),
            base_url=dict(type="str", default=""),
            refresh=dict(type="bool", default=False),
            jobs=dict(type="int", default=4),
            compress_level=dict(type="int", default=6),
        ),
        required_one_of=[["target", "folder"]],
        mutually_exclusive=[["target", "folder"]],
        supports_check_mode=True,
    )
    params = dict(module.params, pattern=module.params["participant_pattern"])
    if not HAS_PYZIPPER:
        module.fail_json(msg=missing_required_lib("pyzipper"), exception=PYZIPPER_IMPORT_ERROR)
    if params["target"] and params["target"]["type"] != "s3":
        module.fail_json(
            msg=f"share_target '{params['target']['name']}' is of type {params['target']['type']}: only s3 targets serve links"
        )
    if params["target"]:
        require_libraries(module, "boto3")
    if not 1 <= params["link_lifetime"] <= MAX_LINK_SECONDS:
        module.fail_json(msg=f"link_lifetime must be 1..{MAX_LINK_SECONDS} seconds (SigV4 allows 7 days at most)")
    try:
        params["ended"] = workshop_end(params["record"])
        result = share(params, module.check_mode)
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **exc.context)
    for warning in result.pop("warnings"):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
