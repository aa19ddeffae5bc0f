#!/usr/bin/python
# Copyright: comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write the staging workshop's project tree (folders and files) in one module call."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: staging_project_files
short_description: Write the staging workshop's project folders and files in one call
description:
  - Creates every folder and writes every file of the staging workshop's project directory in
    one module run, instead of one run per file (a loop of M(ansible.builtin.copy) costs a
    Python start per item, and the staging workshop is brought up many times by the tests).
  - A file is written only when its content or mode differs, through a temporary name and a
    rename; folders are created with O(directory_mode) and an existing folder's mode is set.
  - Test infrastructure of the role C(staging_workshop), not a module of the wrap-up.
version_added: "1.0.0"
author: comfy-wrapup contributors (@comfy-wrapup)
options:
  root:
    description: The project directory; every path below is relative to it.
    type: path
    required: true
  directories:
    description: Folders to create (relative paths; V("") is O(root) itself).
    type: list
    elements: str
    default: []
  directory_mode:
    description: Mode of the folders, octal.
    type: str
    default: "0755"
  files:
    description: Files to write, relative path to content (text, written as UTF-8).
    type: dict
    default: {}
  file_mode:
    description: Mode of the files, octal.
    type: str
    default: "0644"
attributes:
  check_mode:
    support: full
    description: Reports which paths would be written and writes nothing.
  diff_mode:
    support: partial
    description: The diff lists the folders and files that are (or would be) created or rewritten, not their content.
"""

EXAMPLES = r"""
- name: Write the project tree
  staging_project_files:
    root: /var/lib/comfy-wrapup/staging/comfyui
    directories: ["", config, data/outputs]
    files:
      staging/services/worker.py: "{{ lookup('ansible.builtin.file', 'services/worker.py', rstrip=false) }}"
"""

RETURN = r"""
changed_paths:
  description: The folders and files created or rewritten (or that would be, in check mode).
  returned: always
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import write_if_changed


def ensure_directory(path, mode, check_mode):
    """Create `path` (and parents) or set its mode; returns whether anything changed."""
    if os.path.isdir(path):
        if os.stat(path).st_mode & 0o7777 == mode:
            return False
        if not check_mode:
            os.chmod(path, mode)
        return True
    if not check_mode:
        os.makedirs(path, exist_ok=True)
        os.chmod(path, mode)
    return True


def ensure_file(path, content, mode, check_mode):
    """Write `content` unless the file holds it already, and give it `mode`; returns whether it changed."""
    changed = write_if_changed(path, content, mode, check_mode)
    if not changed and os.stat(path).st_mode & 0o7777 != mode:
        if not check_mode:
            os.chmod(path, mode)
        changed = True
    return changed


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="path", required=True),
            directories=dict(type="list", elements="str", default=[]),
            directory_mode=dict(type="str", default="0755"),
            files=dict(type="dict", default={}),
            file_mode=dict(type="str", default="0644"),
        ),
        supports_check_mode=True,
    )
    root = module.params["root"]
    changed_paths = []
    try:
        for folder in module.params["directories"]:
            path = os.path.join(root, folder)
            if ensure_directory(path, int(module.params["directory_mode"], 8), module.check_mode):
                changed_paths.append(path)
        file_mode = int(module.params["file_mode"], 8)
        for name, content in sorted(module.params["files"].items()):
            path = os.path.join(root, name)
            if ensure_file(path, str(content).encode(), file_mode, module.check_mode):
                changed_paths.append(path)
    except (OSError, ValueError, WorkshopError) as exc:
        module.fail_json(msg=f"Cannot write the staging project under {root}: {exc}", changed_paths=changed_paths)
    result = dict(changed=bool(changed_paths), changed_paths=changed_paths)
    if module._diff and changed_paths:
        result["diff"] = dict(before="", after="".join(f"{path}\n" for path in changed_paths), after_header="written")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
