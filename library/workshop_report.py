#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: write the workshop report, Markdown and HTML, from the collected facts."""

DOCUMENTATION = r"""
---
module: workshop_report
short_description: Write the workshop report (Markdown and self-contained HTML) from its metrics
description:
  - Fills the checklist's report template section by section from the metrics (the result of the
    workshop_metrics module, passed in, not read back from disk), the run record, the GPU facts and
    the network probe. A figure without a measurement reads C(not measured - <reason>); what only a
    person can know is left as a marked prompt.
  - Ranked figures are shown in the order the metrics give them (most first).
  - Writes C(report.md), C(report.html) (inline SVG charts of the queue depth over time, jobs per
    participant and job durations; nothing fetched, readable offline) through temporary names.
  - The report is stamped with the time it is written. A report unchanged but for that time is left
    alone, so a second run on the same data changes nothing.
  - Its Verification Checklist (the checklist's ten lines, ✓ with the evidence or ✗ with the reason,
    from the run record and the newest backup's C(MANIFEST.json)) comes before the footer, whose
    C(Status) follows from it; the same checklist is written to C(checklist.json) beside the report.
version_added: "0.1.0"
author: comfy-wrapup contributors (@comfy-wrapup)
attributes:
  check_mode:
    support: full
    description: Renders the report and returns it (RV(markdown)) with whether the files would change, writing nothing.
  diff_mode:
    support: none
    description: Returns no diff.
options:
  dest:
    description: Folder to write report.md and report.html into.
    type: path
    required: true
  metrics:
    description: The workshop's figures, as the workshop_metrics module returns them (its C(metrics)).
    type: dict
    required: true
  record:
    description:
      - The workshop's run record (announcement, drain, backup and its verification) as the run_record
        module returns it (its C(record)), kept in memory by the play.
    type: dict
  run_record:
    description: The run record's file, read when O(record) is not given.
    type: path
  gpu:
    description: The result of the gpu_facts module on the GPU host; omit when there is none.
    type: dict
  gpu_reason:
    description: Why there are no GPU facts.
    type: str
    default: no host in the inventory group gpu
  network:
    description: The network probe, C(latency_ms) and C(timeouts); omit when none was run.
    type: dict
  network_reason:
    description: Why there is no network probe.
    type: str
    default: no GPU host to measure the latency to
  context:
    description:
      - C(workshop_id), C(host), C(domain), C(date) (the workshop's day, for the title), C(restarts)
        (per service; omit when not collected), C(timezone) (the zone the announced cut-off was
        given in, default UTC), C(generated_at) (default the time of writing).
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: Read what the earlier phases recorded
  run_record:
    path: /var/backups/comfy-wrapup/berlin/run-record.json
    state: read
  register: recorded

- name: Collect metrics and statistics
  workshop_metrics:
    dest: /var/backups/comfy-wrapup/berlin/report/metrics.json
  register: metrics

- name: Create the workshop report
  workshop_report:
    dest: /var/backups/comfy-wrapup/berlin/report
    metrics: "{{ metrics.metrics }}"
    record: "{{ recorded.record }}"
    context:
      workshop_id: berlin
      timezone: Europe/Berlin
  register: report

- name: Both files are there
  ansible.builtin.assert:
    that: report.files | length == 3
"""

RETURN = r"""
files:
  description: The report files.
  returned: always
  type: list
  elements: str
  sample:
    - /var/backups/comfy-wrapup/berlin/report/report.md
    - /var/backups/comfy-wrapup/berlin/report/report.html
    - /var/backups/comfy-wrapup/berlin/report/checklist.json
markdown:
  description: The report as Markdown, as written (in check mode, as it would be written).
  returned: always
  type: str
checklist:
  description: The verification checklist as written to checklist.json (C(status), C(ok), C(lines), C(failing)).
  returned: always
  type: dict
generated_at:
  description: The generation time the report shows (kept from the files when nothing else changed).
  returned: always
  type: str
  sample: 2026-11-29 17:05 UTC
"""

import os
from datetime import datetime, timezone

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_checklist import CHECKLIST_FILE, build_checklist, checklist_json, gather_facts
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import write_if_changed
from ansible.module_utils.workshop_record import read_record
from ansible.module_utils.workshop_report import REPORT_FILES, write_report


def record_of(params):
    """The run record: given in memory, else read from its file, else none."""
    if params["record"] is not None:
        return params["record"]
    return read_record(params["run_record"]) if params["run_record"] else {}


def inputs_of(params, check_mode=False):
    """render_markdown's inputs from the module's parameters."""
    metrics = params["metrics"]
    record = record_of(params)
    dest = params["dest"]
    # The report's own line: the files being written (metrics.json when the metrics phase wrote it). A
    # preview (check mode) writes none: those already there, as the checklist play of the same run says.
    written = [*REPORT_FILES, *(["metrics.json"] if os.path.isfile(os.path.join(dest, "metrics.json")) else [])]
    if check_mode:
        written = [name for name in written if os.path.isfile(os.path.join(dest, name))]
    checklist = build_checklist(record, gather_facts(record, dest, report_files=written))
    gpu = params["gpu"] if params["gpu"] and params["gpu"].get("measured") else None
    gpu_reason = params["gpu"].get("reason") if params["gpu"] and not gpu else params["gpu_reason"]
    return dict(
        metrics=metrics,
        logs=metrics.get("logs"),
        gpu=gpu,
        gpu_reason=gpu_reason,
        network=params["network"],
        network_reason=params["network_reason"],
        record=record,
        context=params["context"],
        durations=metrics.get("duration_seconds"),
        checklist=checklist,
    )


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dest=dict(type="path", required=True),
            metrics=dict(type="dict", required=True),
            record=dict(type="dict"),
            run_record=dict(type="path"),
            gpu=dict(type="dict"),
            gpu_reason=dict(type="str", default="no host in the inventory group gpu"),
            network=dict(type="dict"),
            network_reason=dict(type="str", default="no GPU host to measure the latency to"),
            context=dict(type="dict", default={}),
        ),
        mutually_exclusive=[("record", "run_record")],
        supports_check_mode=True,
    )
    dest = module.params["dest"]
    try:
        now = datetime.now(timezone.utc)
        inputs = inputs_of(module.params, module.check_mode)
        changed, texts, stamp = write_report(dest, inputs, now, module.check_mode)
        checklist_path = os.path.join(dest, CHECKLIST_FILE)
        changed = write_if_changed(checklist_path, checklist_json(inputs["checklist"]), 0o640, module.check_mode) or changed
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **exc.context)
    files = [os.path.join(dest, name) for name in (*REPORT_FILES, CHECKLIST_FILE)]
    module.exit_json(changed=changed, files=files, markdown=texts["report.md"], generated_at=stamp, checklist=inputs["checklist"])


if __name__ == "__main__":
    main()
