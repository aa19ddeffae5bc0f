#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: the yearly roll-up of every workshop's metrics.json."""

DOCUMENTATION = r"""
---
module: workshop_rollup
short_description: Collect every workshop's metrics of a year, or write the yearly roll-up (Markdown and HTML)
description:
  - The checklist's "aggregate yearly reports".
  - V(collected) (on a workshop host, read-only) reads C(<backup_root>/*/report/metrics.json) and the run
    record beside each, and returns one entry per workshop of O(year) (participants who attended, jobs,
    completed, failed, success rate, peak queue depth, GPU hours as the sum of the completed jobs' run
    times when known, date). A workshop is dated by its drain's final time (run record, else the
    metrics' drain), else by its first job. Workshops of other years, and unreadable files, are
    returned in RV(left_out) with the reason, as are workshops with a run record but no metrics.json.
  - V(written) writes the roll-up of O(entries) (the entries of every host) into O(dest) as
    C(rollup-<year>.md) and a self-contained C(rollup-<year>.html) with a chart of the jobs per workshop,
    through temporary names, only when their content changes.
version_added: "0.1.0"
author: comfy-wrapup contributors (@comfy-wrapup)
attributes:
  check_mode:
    support: full
    description: V(written) renders the roll-up and says which files would change, writing nothing.
  diff_mode:
    support: none
    description: Returns no diff.
options:
  state:
    description: V(collected) reads the metrics on this host; V(written) writes the roll-up of O(entries).
    type: str
    choices: [collected, written]
    default: collected
  year:
    description: The year of the roll-up.
    type: int
    required: true
  backup_root:
    description: For V(collected), the folder holding one folder per workshop (C(workshop_backup_root)).
    type: path
  host:
    description: For V(collected), the host's name as the roll-up shows it (the inventory name).
    type: str
  entries:
    description: For V(written), the entries V(collected) returned, of every host.
    type: list
    elements: dict
    default: []
  left_out:
    description: For V(written), the workshops V(collected) left out, listed at the end of the roll-up.
    type: list
    elements: dict
    default: []
  dest:
    description: For V(written), the folder the roll-up files go into.
    type: path
"""

EXAMPLES = r"""
- name: Collect the workshops of 2026 on each workshop host
  workshop_rollup:
    state: collected
    backup_root: /var/backups/comfy-wrapup
    year: 2026
  register: collected

- name: Write the roll-up on the control node
  workshop_rollup:
    state: written
    year: 2026
    entries: "{{ collected.entries }}"
    dest: reports/2026
  delegate_to: localhost
  register: rollup

- name: It covers every workshop found
  ansible.builtin.assert:
    that: rollup.rollup.totals.workshops == collected.entries | length
"""

RETURN = r"""
entries:
  description: V(collected) - one entry per workshop of the year (workshop_id, host, date, dated_by, participants,
    registered, jobs, completed, failed, success_rate, peak_queue, gpu_hours), missing figures null.
  returned: always
  type: list
  elements: dict
left_out:
  description:
    - Workshops not in the roll-up, each with C(workshop_id), C(host) and C(reason) (another year,
      unreadable, no metrics.json yet).
  returned: always
  type: list
  elements: dict
rollup:
  description: V(written) - the roll-up (C(year), C(workshops) in date order, C(totals)).
  returned: when state is written
  type: dict
files:
  description: V(written) - the roll-up's files.
  returned: when state is written
  type: list
  elements: str
markdown:
  description: V(written) - the roll-up as Markdown, as written or as it would be.
  returned: when state is written
  type: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import write_if_changed
from ansible.module_utils.workshop_rollup import build_rollup, collect_entries, render_html, render_markdown, rollup_files


def collected(params):
    root = params["backup_root"]
    if not os.path.isdir(root):
        raise WorkshopError(f"No folder {root} on this host: check workshop_backup_root", path=root)
    entries, left_out = collect_entries(root, params["year"], host=params["host"])
    return dict(changed=False, entries=entries, left_out=left_out)


def written(params, check_mode):
    rollup = build_rollup(params["entries"], params["year"])
    texts = (render_markdown(rollup, params["left_out"]), render_html(rollup, params["left_out"]))
    files = rollup_files(params["dest"], params["year"])
    changed = False
    for path, text in zip(files, texts):
        changed = write_if_changed(path, text.encode(), 0o640, check_mode) or changed
    return dict(
        changed=changed, rollup=rollup, files=files, markdown=texts[0], entries=rollup["workshops"], left_out=params["left_out"]
    )


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["collected", "written"], default="collected"),
            year=dict(type="int", required=True),
            backup_root=dict(type="path"),
            host=dict(type="str"),
            entries=dict(type="list", elements="dict", default=[]),
            left_out=dict(type="list", elements="dict", default=[]),
            dest=dict(type="path"),
        ),
        required_if=[("state", "collected", ["backup_root"]), ("state", "written", ["dest"])],
        supports_check_mode=True,
    )
    try:
        state = module.params["state"]
        result = collected(module.params) if state == "collected" else written(module.params, module.check_mode)
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **exc.context)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
