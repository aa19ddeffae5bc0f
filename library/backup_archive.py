#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
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
  - Symbolic links are never dropped. A link to a file or folder inside the same source folder is
    archived as a link (its target's files are archived where they are); a link to outside it (a
    participant folder moved to another disk) is followed and its files archived under the link's
    name, their member entries naming the link's target (C(via)). A dangling link or a loop fails,
    naming it. The files counted are the ones the state phase counts (one walk for both).
  - A file that changes while it is read (its size or time moves, or it shrinks) is read again, up to
    three times, then the archive fails naming it; it is never recorded truncated. A file removed after
    it was listed is left out, with a warning naming it (RV(vanished)).
version_added: "0.1.0"
author: comfy-wrapup contributors (@comfy-wrapup)
attributes:
  check_mode:
    support: full
    description: Counts the files and bytes it would archive, and writes nothing.
  diff_mode:
    support: none
    description: Returns no diff.
options:
  dest:
    description: The archive to write (a file that must not exist yet).
    type: path
    required: true
  sources:
    description: Folders to archive, as C(name in the archive) to C(folder); a missing folder fails, naming it.
    type: dict
    required: true
  min_files:
    description: Refuse the archive when it would hold fewer files than this (the count the state phase saw, less a margin).
    type: int
    default: 0
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
  description: The member list (path, size, sha256 of every file; path and link target of every link).
  returned: always
  type: str
links:
  description: Links archived as links.
  returned: always
  type: int
vanished:
  description: Files listed, then gone before they could be read (left out).
  returned: always
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_backup import members_file, write_archive, write_members
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import walk_tree
from ansible.module_utils.workshop_lock import Busy


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dest=dict(type="path", required=True),
            sources=dict(type="dict", required=True),
            min_files=dict(type="int", default=0),
        ),
        supports_check_mode=True,
    )
    dest, sources = module.params["dest"], module.params["sources"]
    result = dict(changed=True, dest=dest, members_file=members_file(dest))
    try:
        if os.path.exists(dest):
            raise WorkshopError(f"{dest} exists already: an archive is never overwritten", path=dest)
        for name, folder in sorted(sources.items()):
            if not os.path.isdir(folder):
                raise WorkshopError(f"The source folder {name} ({folder}) does not exist: fix its path", path=folder)
        if module.check_mode:
            listing = [entry for root in sources.values() for entry in walk_tree(root)]
            files = [entry for entry in listing if entry.kind == "file"]
            module.exit_json(
                files=len(files), bytes=sum(e.size for e in files), links=len(listing) - len(files), vanished=[], **result
            )
        with Busy(os.path.dirname(dest)):
            members, vanished = write_archive(dest, sources, module.params["min_files"])
            write_members(dest, members)
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **exc.context)
    for path in vanished:
        module.warn(f"{path} was removed while the backup ran (listed, then gone): it is not in {dest}")
    files = [m for m in members if "sha256" in m]
    module.exit_json(
        files=len(files), bytes=sum(m["size"] for m in files), links=len(members) - len(files), vanished=vanished, **result
    )


if __name__ == "__main__":
    main()
