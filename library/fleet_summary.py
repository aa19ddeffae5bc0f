#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: one workshop's line of the fleet summary, from its run record and report."""

DOCUMENTATION = r"""
---
module: fleet_summary
short_description: Read one workshop's line of the fleet summary from its run record
description:
  - Reads the workshop's run record and its report folder on the workshop host and returns what
    the fleet summary shows for it - when the queue was drained, the jobs, the newest backup and
    whether its verification passed, the off-host copies that hold it verified, the share, the report.
  - Read only; the fleet summary itself (one line per workshop, on screen and in a file on the
    control node) is written by the C(fleet_summary) callback at the end of the run.
version_added: "0.1.0"
author: comfy-wrapup contributors (@comfy-wrapup)
attributes:
  check_mode:
    support: full
    description: Reads only; the same result in check mode.
  diff_mode:
    support: none
    description: Nothing is changed, so there is nothing to compare.
options:
  run_record:
    description: The workshop's run record (JSON); none yet is an empty record.
    type: path
    required: true
  report_dir:
    description: The folder the report phase writes C(report.md) into.
    type: path
    required: true
"""

EXAMPLES = r"""
- name: Read what each phase recorded for the fleet summary
  fleet_summary:
    run_record: /var/backups/comfy-wrapup/berlin-2026-11/run-record.json
    report_dir: /var/backups/comfy-wrapup/berlin-2026-11/report
  register: line

- name: The backup of this workshop was verified
  ansible.builtin.assert:
    that: line.entry.backup_verified
"""

RETURN = r"""
entry:
  description: One workshop's line of the fleet summary; null where the phase recorded nothing.
  returned: always
  type: dict
  contains:
    drained:
      description: Whether the drain ended with an empty queue.
      type: bool
    drained_at:
      description: The drain's final time (FINAL_TIME).
      type: str
    jobs_completed:
      description: Jobs completed when the drain ended (TOTAL_JOBS).
      type: int
    jobs_failed:
      description: Jobs failed when the drain ended.
      type: int
    backup:
      description: The newest backup's folder name.
      type: str
    backup_verified:
      description: Whether the newest backup's recorded verification passed; null when none is recorded.
      type: bool
    archived:
      description: The archive targets holding a verified copy of the newest backup.
      type: list
      elements: str
    shared:
      description: The share (delivery, number of participants, end of the share period).
      type: dict
    report:
      description: The report's Markdown file, when it exists.
      type: str
    retention_unreached:
      description: The storage targets the last retention run did not finish on, which did not answer (empty when none).
      type: list
      elements: str
  sample:
    drained: true
    drained_at: "2026-11-29T17:02:11.000000+00:00"
    jobs_completed: 242
    jobs_failed: 3
    backup: backup-20261129T170400Z
    backup_verified: true
    archived: [r2]
    shared: {delivery: s3, participants: 18, until: "2026-12-06T17:30:00+00:00"}
    report: /var/backups/comfy-wrapup/berlin-2026-11/report/report.md
    retention_unreached: []
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_fleet import fleet_entry


def main():
    module = AnsibleModule(
        argument_spec=dict(
            run_record=dict(type="path", required=True),
            report_dir=dict(type="path", required=True),
        ),
        supports_check_mode=True,
    )
    try:
        entry = fleet_entry(module.params["run_record"], module.params["report_dir"])
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **exc.context)
    module.exit_json(changed=False, entry=entry)


if __name__ == "__main__":
    main()
