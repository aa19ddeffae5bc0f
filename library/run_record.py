#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: add facts to the workshop's run record, or read it."""

DOCUMENTATION = r"""
---
module: run_record
short_description: Add a phase's facts to the workshop's run record, or read it
description:
  - The run record is one JSON file in the workshop's backup folder; each phase of the
    wrap-up writes its facts into a section of it (the drain's final time and job totals, ...)
    and the later phases and the report read them.
  - Either way the module returns the whole record (RV(record)), so a play keeps it in memory
    instead of reading the file back; O(state=read) only reads it (an empty record when there is none yet).
  - The file is written through a temporary name and renamed, so it is never left half-written.
    Nothing is written when the facts are already there.
version_added: "0.1.0"
author: comfy-wrapup contributors (@comfy-wrapup)
attributes:
  check_mode:
    support: full
    description: Reports whether the record would change, and writes nothing.
  diff_mode:
    support: full
    description: The section before and after.
options:
  path:
    description: The run record (JSON).
    type: path
    required: true
  state:
    description:
      - V(present) merges O(data) into O(section); V(read) changes nothing and returns the record.
    type: str
    choices: [present, read]
    default: present
  section:
    description: The section of the record to update, usually the phase's name. Required with O(state=present).
    type: str
  data:
    description: Facts to merge into the section.
    type: dict
    default: {}
  keep_existing:
    description: Keep the values of keys the section already has (a first drain's final time stays the final time).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Record the final time and the total of jobs
  run_record:
    path: /var/backups/comfy-wrapup/berlin/run-record.json
    section: drain
    data:
      final_time: "{{ drain.drained_at }}"
      total_jobs: "{{ drain.counts.completed }}"
    keep_existing: true
  register: record

- name: The report can rely on it
  ansible.builtin.assert:
    that: record.record.drain.total_jobs is defined

- name: Read what the earlier phases recorded (read only, in check mode too)
  run_record:
    path: /var/backups/comfy-wrapup/berlin/run-record.json
    state: read
  register: recorded

- name: The cut-off already announced
  ansible.builtin.debug:
    msg: "{{ recorded.record.announcement.cutoff | default('none yet') }}"
"""

RETURN = r"""
record:
  description:
    - The whole run record after this run (in check mode, as it would be).
    - With O(state=read), the record as it is (V({}) when there is none yet).
  returned: always
  type: dict
  sample: {drain: {final_time: "2026-11-29T17:02:11.000000+00:00", total_jobs: 242}}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_record import read_record, save_record, updated_record


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            state=dict(type="str", choices=["present", "read"], default="present"),
            section=dict(type="str"),
            data=dict(type="dict", default={}),
            keep_existing=dict(type="bool", default=False),
        ),
        required_if=[("state", "present", ["section"])],
        supports_check_mode=True,
    )
    params = module.params
    try:
        before = read_record(params["path"])
        if params["state"] == "read":
            module.exit_json(changed=False, record=before)
        after = updated_record(before, params["section"], params["data"], params["keep_existing"])
        changed = after != before
        if changed and not module.check_mode:
            save_record(params["path"], after)
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **exc.context)
    result = dict(changed=changed, record=after)
    if module._diff:
        result["diff"] = dict(before=before.get(params["section"], {}), after=after[params["section"]])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
