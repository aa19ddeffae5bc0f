#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: the checklist's Verification Checklist, from the run record, as a table and checklist.json."""

DOCUMENTATION = r"""
---
module: workshop_checklist
short_description: Tick the checklist's Verification Checklist from the run record, and keep it with the report
description:
  - >-
    Reads the workshop's run record and the newest backup's C(MANIFEST.json) and gives the checklist's
    ten lines (outputs backed up, logs exported and compressed, database snapshot, configuration,
    report, restore test, participants notified, feedback, cleanup, next use), each ✓ with the
    evidence that proves it (files, bytes, when, how many) or ✗ with the reason and what to do,
    and the status C(READY FOR STORAGE) when all ten hold, else C(NEEDS FOLLOW-UP) with the failing lines.
  - >-
    With O(write), when the report folder O(report_dir) exists, writes C(checklist.json) there and puts
    the checklist's table and status into the report already written (C(report.md) and C(report.html),
    only their checklist parts change). Without a report folder nothing is written (the report phase
    writes all three).
  - >-
    Files are written through a temporary name and renamed, only when their content changes, so an
    unchanged record rewrites nothing.
version_added: "0.1.0"
author: comfy-wrapup contributors (@comfy-wrapup)
attributes:
  check_mode:
    support: full
    description: Gives the checklist and the files that would change, writing nothing.
  diff_mode:
    support: none
    description: Returns no diff.
options:
  run_record:
    description: The workshop's run record (an absent record gives every line ✗).
    type: path
    required: true
  report_dir:
    description: The workshop's report folder (C(report.md), C(report.html), C(checklist.json)).
    type: path
    required: true
  write:
    description: Write C(checklist.json) and update the report's checklist; V(false) only reads and gives the checklist.
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: Tick the verification checklist
  workshop_checklist:
    run_record: /var/backups/comfy-wrapup/berlin/run-record.json
    report_dir: /var/backups/comfy-wrapup/berlin/report
  register: checklist

- name: Show it
  ansible.builtin.debug:
    msg: "{{ checklist.table }}"

- name: Everything is ready for storage
  ansible.builtin.assert:
    that: checklist.checklist.ok
"""

RETURN = r"""
checklist:
  description: The checklist, as in checklist.json.
  returned: always
  type: dict
  contains:
    status:
      description: C(READY FOR STORAGE) or C(NEEDS FOLLOW-UP).
      type: str
    ok:
      description: Whether all ten lines hold.
      type: bool
    lines:
      description: The ten lines in the checklist's order, each C(key), C(item), C(ok), and C(evidence) or C(reason).
      type: list
      elements: dict
    failing:
      description: The items of the lines that do not hold.
      type: list
      elements: str
table:
  description: The checklist as text lines (✓/✗ item, evidence or reason), then the status line.
  returned: always
  type: list
  elements: str
  sample: ["✓ Report generated: /var/backups/comfy-wrapup/berlin/report/report.md, ...", "Status: READY FOR STORAGE"]
written:
  description: The files written (in check mode, that would be).
  returned: always
  type: list
  elements: str
not_written:
  description: Why nothing, or not every file, was written (no report folder, a report without a checklist part).
  returned: always
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_checklist import (
    CHECKLIST_FILE,
    build_checklist,
    checklist_json,
    checklist_table,
    gather_facts,
)
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import write_if_changed
from ansible.module_utils.workshop_record import read_record
from ansible.module_utils.workshop_report import update_checklist


def tick(params, check_mode):
    record = read_record(params["run_record"])
    report_dir = params["report_dir"]
    checklist = build_checklist(record, gather_facts(record, report_dir))
    written, not_written = [], []
    if params["write"]:
        if os.path.isdir(report_dir):
            path = os.path.join(report_dir, CHECKLIST_FILE)
            if write_if_changed(path, checklist_json(checklist), 0o640, check_mode):
                written.append(path)
            _changed, updated, skipped = update_checklist(report_dir, checklist, check_mode)
            written += updated
            not_written += [f"{path}: missing, or written before reports had a checklist (run --tags report)" for path in skipped]
        else:
            not_written.append(
                f"{report_dir} does not exist yet: the report phase (--tags report) writes the checklist with the report"
            )
    return dict(
        changed=bool(written), checklist=checklist, table=checklist_table(checklist), written=written, not_written=not_written
    )


def main():
    module = AnsibleModule(
        argument_spec=dict(
            run_record=dict(type="path", required=True),
            report_dir=dict(type="path", required=True),
            write=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    try:
        result = tick(module.params, module.check_mode)
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **exc.context)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
