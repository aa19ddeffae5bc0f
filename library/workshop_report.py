#!/usr/bin/python
"""Ansible module: write the workshop report, Markdown and HTML, from the collected facts."""

DOCUMENTATION = r"""
---
module: workshop_report
short_description: Write the workshop report (Markdown and self-contained HTML) from its metrics
description:
  - Fills the checklist's report template section by section from C(metrics.json), the run record,
    the GPU facts and the network probe. A figure without a measurement reads
    C(not measured - <reason>); what only a person can know is left as a marked prompt.
  - Writes C(report.md) and C(report.html) (inline SVG charts of the queue depth over time, jobs per
    participant and job durations; nothing fetched, readable offline) through temporary names; an
    unchanged report leaves the files alone.
version_added: "0.1.0"
author: comfy-wrapup
attributes:
  check_mode:
    support: full
    description: Renders the report and tells whether the files would change, without writing them.
  diff_mode:
    support: none
options:
  dest:
    description: Folder to write report.md and report.html into.
    type: path
    required: true
  metrics_file:
    description: The metrics.json written by the workshop_metrics module.
    type: path
    required: true
  run_record:
    description: The workshop's run record (drain, backup, verify).
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
    description: C(workshop_id), C(host), C(domain), C(generated_at), C(restarts) (per service).
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: Create the workshop report
  workshop_report:
    dest: /var/backups/comfy-wrapup/berlin/report
    metrics_file: /var/backups/comfy-wrapup/berlin/report/metrics.json
    run_record: /var/backups/comfy-wrapup/berlin/run-record.json
    context:
      workshop_id: berlin
  register: report

- name: Both files are there
  ansible.builtin.assert:
    that: report.files | length == 2
"""

RETURN = r"""
files:
  description: The report files.
  returned: always
  type: list
  elements: str
  sample: [/var/backups/comfy-wrapup/berlin/report/report.md, /var/backups/comfy-wrapup/berlin/report/report.html]
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import write_if_changed
from ansible.module_utils.workshop_record import read_record
from ansible.module_utils.workshop_report import render_html, render_markdown


def render(params):
    try:
        with open(params["metrics_file"], encoding="utf-8") as source:
            metrics = json.load(source)
    except (OSError, ValueError) as exc:
        raise WorkshopError(
            f"Cannot read the metrics {params['metrics_file']} ({exc}): run the metrics step first", path=params["metrics_file"]
        ) from None
    gpu = params["gpu"] if params["gpu"] and params["gpu"].get("measured") else None
    gpu_reason = params["gpu"].get("reason") if params["gpu"] and not gpu else params["gpu_reason"]
    inputs = dict(
        metrics=metrics,
        logs=metrics.get("logs"),
        gpu=gpu,
        gpu_reason=gpu_reason,
        network=params["network"],
        network_reason=params["network_reason"],
        record=read_record(params["run_record"]) if params["run_record"] else {},
        context=params["context"],
        durations=metrics.get("duration_seconds"),
    )
    return render_markdown(**inputs), render_html(**inputs)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dest=dict(type="path", required=True),
            metrics_file=dict(type="path", required=True),
            run_record=dict(type="path"),
            gpu=dict(type="dict"),
            gpu_reason=dict(type="str", default="no host in the inventory group gpu"),
            network=dict(type="dict"),
            network_reason=dict(type="str", default="no GPU host to measure the latency to"),
            context=dict(type="dict", default={}),
        ),
        supports_check_mode=True,
    )
    dest = module.params["dest"]
    files = [os.path.join(dest, "report.md"), os.path.join(dest, "report.html")]
    try:
        markdown, page = render(module.params)
        changed = [write_if_changed(path, text.encode(), 0o640, module.check_mode) for path, text in zip(files, (markdown, page))]
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **exc.context)
    module.exit_json(changed=any(changed), files=files)


if __name__ == "__main__":
    main()
