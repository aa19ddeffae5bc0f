#!/usr/bin/python
"""Ansible module: archive folders of the workshop, with a manifest of every file."""

DOCUMENTATION = r"""
---
module: backup_archive
short_description: Archive folders of the workshop into a verified tar with a member manifest
description:
  - Writes one tar of the given folders, reading each file once and hashing it as it goes, and a
    member list (C(<dest>.members.json)) with every file's path, size and sha256.
  - The archive is stored, not compressed; participants' outputs are PNG, MP4 and WebP, which do
    not compress, so gzip would spend minutes of CPU for nothing and slow every restore.
  - The tar is written to a temporary name, read back and compared with the member list, and only
    then renamed. A full disk leaves no partial file. An existing O(dest) is never overwritten.
version_added: "0.1.0"
author: comfy-wrapup
attributes:
  check_mode:
    support: full
    description: Counts the files and bytes it would archive, and writes nothing.
  diff_mode:
    support: none
options:
  dest:
    description: The archive to write (a file that must not exist yet).
    type: path
    required: true
  sources:
    description: Folders to archive, as C(name in the archive) to C(folder); a missing folder is archived empty.
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Export user outputs for participants
  backup_archive:
    dest: /var/backups/comfy-wrapup/berlin/.partial-backup-20261129T170000Z/outputs.tar
    sources:
      outputs: /home/dev/projects/comfyui/data/outputs
  register: outputs_archive

- name: Every output file is in the archive
  ansible.builtin.assert:
    that: outputs_archive.files > 0
"""

RETURN = r"""
dest:
  description: The archive written.
  returned: always
  type: str
files:
  description: Files archived.
  returned: always
  type: int
bytes:
  description: Bytes of the files archived.
  returned: always
  type: int
members_file:
  description: The member list (path, size, sha256 of every file).
  returned: always
  type: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_backup import list_tree, members_file, write_archive, write_members
from ansible.module_utils.workshop_errors import WorkshopError


def main():
    module = AnsibleModule(
        argument_spec=dict(dest=dict(type="path", required=True), sources=dict(type="dict", required=True)),
        supports_check_mode=True,
    )
    dest, sources = module.params["dest"], module.params["sources"]
    result = dict(changed=True, dest=dest, members_file=members_file(dest))
    try:
        if os.path.exists(dest):
            raise WorkshopError(f"{dest} exists already: an archive is never overwritten", path=dest)
        if module.check_mode:
            listing = [entry for root in sources.values() for entry in list_tree(root)]
            module.exit_json(files=len(listing), bytes=sum(size for _, size, _ in listing), **result)
        members = write_archive(dest, sources)
        write_members(dest, members)
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **exc.context)
    module.exit_json(files=len(members), bytes=sum(m["size"] for m in members), **result)


if __name__ == "__main__":
    main()
