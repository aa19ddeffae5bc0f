#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: add facts to the workshop's run record."""

DOCUMENTATION = r"""
---
module: run_record
short_description: Add a phase's facts to the workshop's run record
description:
  - The run record is one JSON file in the workshop's backup folder; each phase of the
    wrap-up writes its facts into a section of it (the drain's final time and job totals, ...)
    and the later phases and the report read them.
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
  section:
    description: The section of the record to update, usually the phase's name.
    type: str
    required: true
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
"""

RETURN = r"""
record:
  description: The whole run record after this run (in check mode, as it would be).
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
            section=dict(type="str", required=True),
            data=dict(type="dict", default={}),
            keep_existing=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        before = read_record(params["path"])
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
