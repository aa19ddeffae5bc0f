#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: keep the readiness lines in readiness.json, readiness.md and the run record."""

DOCUMENTATION = r"""
---
module: readiness_report
short_description: Write the next-workshop readiness to files and the run record
description:
  - Writes what C(readiness_facts) found to C(readiness.json) and a short C(readiness.md) in
    O(dest), each through a temporary name and a rename, and to the C(readiness) section of the
    run record O(record) (V({at, ok, next_workshop, lines})).
  - Nothing is rewritten when the outcome is the one already kept - the verdicts and their texts;
    the time and the figures that drift while nothing changes (free space, days left) do not count,
    so a second run on unchanged data reports C(changed=false) and the kept C(at) says since when
    that outcome holds.
  - The workshop folder O(dest) is created with mode C(0700) when missing.
version_added: "0.1.0"
author: comfy-wrapup contributors (@comfy-wrapup)
attributes:
  check_mode:
    support: full
    description: Reports whether the files and the record would change, and writes nothing.
  diff_mode:
    support: full
    description: C(readiness.md) before and after.
options:
  dest:
    description: The workshop's folder; C(readiness.json) and C(readiness.md) go there.
    type: path
    required: true
  record:
    description: The run record that gets the C(readiness) section.
    type: path
    required: true
  readiness:
    description: What C(readiness_facts) returned (at least C(at), C(ok), C(next_workshop), C(lines)).
    type: dict
    required: true
  workshop_id:
    description: The workshop's name, in the heading of C(readiness.md).
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Check that the next workshop can start
  readiness_facts:
    project_dir: /home/dev/projects/comfyui
    outputs_dir: /home/dev/projects/comfyui/data/outputs
    backup_dir: /var/backups/comfy-wrapup/berlin
    backup_root: /var/backups/comfy-wrapup
    record: /var/backups/comfy-wrapup/berlin/run-record.json
  register: readiness

- name: Keep the readiness with the workshop
  readiness_report:
    dest: /var/backups/comfy-wrapup/berlin
    record: /var/backups/comfy-wrapup/berlin/run-record.json
    readiness: "{{ readiness }}"
    workshop_id: berlin
  register: kept

- name: The files are there
  ansible.builtin.assert:
    that: kept.files | length == 2
"""

RETURN = r"""
files:
  description: The two files (written, or already holding this outcome).
  returned: always
  type: list
  elements: str
  sample: [/var/backups/comfy-wrapup/berlin/readiness.json, /var/backups/comfy-wrapup/berlin/readiness.md]
section:
  description: The run record's C(readiness) section as kept (in check mode, as it would be).
  returned: always
  type: dict
markdown:
  description: The text of C(readiness.md).
  returned: always
  type: str
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import make_workshop_folder, write_atomically
from ansible.module_utils.workshop_readiness import markdown, outcome
from ansible.module_utils.workshop_record import read_record, save_record

JSON_FILE = "readiness.json"
MARKDOWN_FILE = "readiness.md"


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # unreadable: rewritten


def _read_text(path):
    try:
        with open(path, encoding="utf-8") as stream:
            return stream.read()
    except (OSError, ValueError):
        return ""


def keep_readiness(params, check_mode):
    """Write the files and the record's section unless they hold this outcome already."""
    found = params["readiness"]
    missing = [key for key in ("at", "ok", "next_workshop", "lines") if key not in found]
    if missing:
        raise WorkshopError(f"readiness lacks {', '.join(missing)}: give it what readiness_facts returned", missing=missing)
    section = {key: found[key] for key in ("at", "ok", "next_workshop", "lines")}
    dest = params["dest"]
    json_path, md_path = os.path.join(dest, JSON_FILE), os.path.join(dest, MARKDOWN_FILE)
    kept_file = _read_json(json_path)
    record = read_record(params["record"])
    kept_section = record.get("readiness")
    new = outcome(section)
    files_stale = outcome(kept_file) != new or not os.path.isfile(md_path)
    record_stale = outcome(kept_section) != new
    if not files_stale and kept_file:
        section = {key: kept_file[key] for key in section}  # the same outcome: kept as it is, with its time
    elif not record_stale and kept_section:
        section = {key: kept_section[key] for key in section}
    text = markdown(section, params["workshop_id"])
    before = _read_text(md_path)
    if not check_mode:
        if files_stale or record_stale:
            make_workshop_folder(dest)
        if files_stale:
            write_atomically(
                json_path, (json.dumps(section, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode(), 0o640
            )
            write_atomically(md_path, text.encode(), 0o640)
        if record_stale:
            save_record(params["record"], {**record, "readiness": section})
    result = dict(changed=files_stale or record_stale, files=[json_path, md_path], section=section, markdown=text)
    result["diff"] = dict(before=before, after=text if files_stale else before, before_header=md_path, after_header=md_path)
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dest=dict(type="path", required=True),
            record=dict(type="path", required=True),
            readiness=dict(type="dict", required=True),
            workshop_id=dict(type="str", required=True),
        ),
        supports_check_mode=True,
    )
    try:
        result = keep_readiness(module.params, module.check_mode)
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **exc.context)
    if not module._diff:
        result.pop("diff")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
