#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: the workshop's metrics, from every job record, written to metrics.json."""

DOCUMENTATION = r"""
---
module: workshop_metrics
short_description: Compute a ComfyUI workshop's metrics from its job records and logs
description:
  - Reads every job record from the live Redis (SCAN and pipelined MGET, never one round trip per
    job; from 20,000 records on, two to four processes side by side, one per usable CPU, each
    reading and tallying its share of the keys) or, with O(source=rdb), from an RDB snapshot when
    the live Redis is gone, and computes the
    report's figures - jobs submitted, completed, failed, cancelled, still open, success rate; job
    duration mean, median, p95 and longest; wait times; queue depth over time and its peak; time to
    clear the queue after the cut-off (from the drain phase's run record); jobs per participant,
    attendance and dropouts; failures by error; models, resolutions and batch sizes.
  - Ranked figures (jobs per participant, failures by error, models, resolutions, batch sizes) are
    lists of C({name, count}) in rank order (most first, ties by name), so their order survives
    C(metrics.json). Records that cannot be counted (not a JSON object, no C(user_id) or C(status))
    are left out of every figure and counted, with their keys, in C(records).
  - With O(logs_dir), also counts errors, warnings, SSL, connection, thermal, restart, crash and
    requeue lines in the exported logs, exactly, with samples.
  - Writes C(metrics.json) through a temporary name; an unchanged result leaves the file alone.
version_added: "0.1.0"
author: comfy-wrapup contributors (@comfy-wrapup)
requirements:
  - redis (Python library, for O(source=redis))
attributes:
  check_mode:
    support: full
    description: Computes everything and reports whether metrics.json would change, without writing it.
  diff_mode:
    support: none
    description: Returns no diff.
extends_documentation_fragment:
  - workshop_redis
  - workshop_compose
options:
  dest:
    description: The metrics file to write (C(metrics.json)).
    type: path
    required: true
  source:
    description: Read the jobs from the live Redis or from an RDB snapshot.
    type: str
    choices: [redis, rdb]
    default: redis
  rdb_path:
    description: The RDB snapshot, for O(source=rdb).
    type: path
  registered_users:
    description:
      - The participants registered. Default C(user001) to C(userNNN) with C(NUM_USERS) of O(env_file).
      - With O(source=rdb), a missing O(env_file) leaves them unknown (with a warning) rather than failing.
    type: list
    elements: str
  run_record:
    description: The workshop's run record; the drain's start and final time give the time to clear the queue.
    type: path
  logs_dir:
    description: Folder of the exported logs (C(<service>.log.gz)) to analyse.
    type: path
"""

EXAMPLES = r"""
- name: Collect metrics and statistics
  workshop_metrics:
    env_file: /home/dev/projects/comfyui/.env
    run_record: /var/backups/comfy-wrapup/berlin/run-record.json
    logs_dir: /var/backups/comfy-wrapup/berlin/backup-20261129T170211Z/logs
    dest: /var/backups/comfy-wrapup/berlin/report/metrics.json
  register: metrics

- name: Every job is accounted for
  ansible.builtin.assert:
    that: metrics.metrics.jobs.submitted >= metrics.metrics.jobs.completed + metrics.metrics.jobs.failed
"""

RETURN = r"""
metrics:
  description: Every figure (the content of metrics.json).
  returned: always
  type: dict
path:
  description: The metrics file.
  returned: always
  type: str
invalid_records:
  description:
    - Keys C(job:*) whose value is not a JSON object, or whose record has no C(user_id) or C(status)
      (skipped, and counted in the C(records) figure).
  returned: always
  type: list
  elements: str
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_connection import CONNECTION_MUTUALLY_EXCLUSIVE, connection_argument_spec, require_libraries
from ansible.module_utils.workshop_dotenv import read_dotenv
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import write_if_changed
from ansible.module_utils.workshop_loganalysis import analyze_log_dir
from ansible.module_utils.workshop_metrics import compute_metrics, jobs_from_rdb, redis_metrics
from ansible.module_utils.workshop_record import read_record
from ansible.module_utils.workshop_redis import WorkshopRedis


def registered(params, warn=None):
    if params["registered_users"] is not None:
        return params["registered_users"]
    if not params["env_file"]:
        return []
    if params["source"] == "rdb" and not os.path.exists(params["env_file"]):
        # Reading from the snapshot is for a workshop that is gone, .env and all: the jobs still count.
        if warn:
            warn(f"No .env at {params['env_file']}: registered participants unknown; set registered_users")
        return []
    count = read_dotenv(params["env_file"]).get("NUM_USERS", "0")
    if not count.isdigit():
        raise WorkshopError(f"NUM_USERS in {params['env_file']} is '{count}', not a number", path=params["env_file"])
    return [f"user{number:03d}" for number in range(1, int(count) + 1)]


def collect(params, warn=None):
    drain = read_record(params["run_record"]).get("drain", {}) if params["run_record"] else {}
    figures_args = (registered(params, warn), drain.get("started_at"), drain.get("final_time"))
    if params["source"] == "rdb":
        records = jobs_from_rdb(params["rdb_path"])
        metrics, invalid = compute_metrics(records, *figures_args), records.invalid
    else:
        metrics, invalid = redis_metrics(WorkshopRedis.from_params(params), *figures_args)
    metrics["logs"] = analyze_log_dir(params["logs_dir"]) if params["logs_dir"] else None
    return metrics, invalid


def main():
    argument_spec = connection_argument_spec(
        project_dir_required=False,
        dest=dict(type="path", required=True),
        source=dict(type="str", choices=["redis", "rdb"], default="redis"),
        rdb_path=dict(type="path"),
        registered_users=dict(type="list", elements="str"),
        run_record=dict(type="path"),
        logs_dir=dict(type="path"),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=CONNECTION_MUTUALLY_EXCLUSIVE,
        required_if=[("source", "rdb", ["rdb_path"])],
        supports_check_mode=True,
    )
    require_libraries(module, *(["redis"] if module.params["source"] == "redis" else []))
    dest = module.params["dest"]
    try:
        metrics, invalid = collect(module.params, module.warn)
        content = (json.dumps(metrics, indent=1, sort_keys=True, default=str) + "\n").encode()
        changed = write_if_changed(dest, content, 0o640, module.check_mode)
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **exc.context)
    module.exit_json(changed=changed, metrics=json.loads(content), path=dest, invalid_records=invalid)


if __name__ == "__main__":
    main()
