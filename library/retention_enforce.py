#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: the data retention schedule, planned (read-only) or applied."""

DOCUMENTATION = r"""
---
module: retention_enforce
short_description: Plan or apply the workshop data retention schedule on the host and the off-host targets
description:
  - Computes once what the schedule removes (active logs, output files, database snapshots, full backups)
    on the workshop host (every workshop folder under O(backup_root), the project's loose exports, this
    workshop's outputs and share archives) and on each of O(targets) (SSH or S3), with each item's place,
    path or key, age in days and rule. Reports, run records and configuration snapshots are never deleted.
  - Ages count from O(now) (default the clock), and for workshop data from the workshop's end (the drain's
    C(final_time) in its run record), never from the newest item. Backups are dated by their name (the
    seal's UTC time), on the host and on the targets alike.
  - Never deletes the newest verified backup of a workshop, a backup whose verification failed, a host
    backup not verified off-host, the newest copy of a workshop on a target, outputs not held identically
    by a backup verified off-host; each is listed in RV(protected) with the reason.
  - V(planned) only reads. V(applied) deletes exactly the planned list and records it in the run record
    section C(retention) (C({at, schedule, deleted, moved, protected, unreached})), with the workshop's lock
    held (C(.lock) in O(backup_dir), as the workshop_lock module keeps it), taken and given back by this run
    itself; another run holding it (a backup, archive or shutdown) makes the task fail, naming it, with
    nothing deleted.
  - A target that does not answer (no connection, a timeout; a refused host key or login still fails) is left
    where it stopped, named in RV(unreached), in a warning and in the run record (the verification checklist's
    cleanup line asks for a re-run until it answers); the host and the other targets are done all the
    same. Host data goes only on the strength of a target that answered when its copy was checked.
version_added: "0.3.0"
author: comfy-wrapup contributors (@comfy-wrapup)
requirements:
  - boto3 (Python library, for s3 targets)
  - ssh (OpenSSH client, for ssh targets; sh, find and wc on the storage host)
attributes:
  check_mode:
    support: full
    description: Computes the plan and reports it as what would be deleted; changes nothing.
  diff_mode:
    support: full
    description: Every path or key that would be deleted, as the before and after lists.
extends_documentation_fragment:
  - workshop_targets
options:
  state:
    description: V(planned) computes and returns the plan only; V(applied) deletes what it lists and records it.
    type: str
    choices: [planned, applied]
    default: planned
  schedule:
    description:
      - Days each class is kept (C(logs), C(outputs), C(snapshots), C(backups)); missing classes take the
        checklist's table (7, 30, 90, 365). Reports and configuration snapshots are kept forever whatever is set.
    type: dict
    default: {}
  now:
    description: The moment ages count from (ISO-8601 or epoch seconds); empty - the clock.
    type: str
    default: ""
  backup_root:
    description: The host's backup root holding one folder per workshop (and C(logs/), the yearly log archives).
    type: path
    required: true
  backup_dir:
    description: This workshop's folder under O(backup_root).
    type: path
    required: true
  record:
    description: This workshop's run record; V(applied) writes its C(retention) section.
    type: path
  project_dir:
    description: The platform's project directory (loose C(workshop-logs-*) and C(redis-snapshot-*.rdb) exports).
    type: path
  outputs_dir:
    description: This workshop's participant outputs.
    type: path
  share_folder:
    description: The folder share archives were delivered to (share_folder of the share role), when not S3.
    type: path
  share_target:
    description: The share role's S3 target, when it is not one of O(targets) (its share archives only).
    type: dict
    suboptions:
      name:
        description: The target's name (the run record's key).
        type: str
        required: true
      type:
        description: V(s3) or V(ssh).
        type: str
        choices: [s3, ssh]
        required: true
      endpoint_url:
        description: S3 endpoint URL (empty - AWS).
        type: str
      region:
        description: S3 region.
        type: str
        default: us-east-1
      bucket:
        description: S3 bucket.
        type: str
      prefix:
        description: Key prefix in the bucket.
        type: str
        default: ""
      storage_class:
        description: S3 storage class of the objects (a cold tier, e.g. C(GLACIER_IR), C(STANDARD_IA)).
        type: str
      access_key:
        description: S3 access key (from a vault); unset - C(AWS_ACCESS_KEY_ID) of the host's environment.
        type: str
      secret_key:
        description: S3 secret key (from a vault); unset - C(AWS_SECRET_ACCESS_KEY) of the host's environment.
        type: str
      validate_certs:
        description: Check the endpoint's TLS certificate.
        type: bool
        default: true
      host:
        description: SSH storage host.
        type: str
      port:
        description: SSH port.
        type: int
        default: 22
      user:
        description: SSH user.
        type: str
      path:
        description: Folder on the storage host (absolute).
        type: path
      key_file:
        description: Private key on the workshop host for the storage host.
        type: path
"""

EXAMPLES = r"""
- name: What the schedule would delete, with ages and rules
  retention_enforce:
    state: planned
    backup_root: /var/backups/comfy-wrapup
    backup_dir: /var/backups/comfy-wrapup/berlin
    outputs_dir: /home/dev/projects/comfyui/data/outputs
    schedule: {logs: 7, outputs: 30, snapshots: 90, backups: 365}
  register: plan
- name: Nothing protected is in the plan
  ansible.builtin.assert:
    that: plan.deleted | map(attribute='path') | select('search', '/report/') | list | length == 0
- name: Apply it, recorded in the run record
  retention_enforce:
    state: applied
    backup_root: /var/backups/comfy-wrapup
    backup_dir: /var/backups/comfy-wrapup/berlin
    record: /var/backups/comfy-wrapup/berlin/run-record.json
    targets:
      - {name: nas, type: ssh, host: nas.example.org, user: backup, path: /srv/workshops, key_file: /root/.ssh/nas}
  register: applied
"""

RETURN = r"""
deleted:
  description: What is (V(applied)) or would be (V(planned), check mode) deleted, in order.
  returned: always
  type: list
  elements: dict
  sample: [{where: host, path: /var/backups/comfy-wrapup/berlin/backup-20251101T170211Z/outputs.tar, age_days: 392.1,
            rule: "full backups: 365 days", bytes: 1048576}]
moved:
  description: Objects moved to a colder storage class (none today; see the role's README).
  returned: always
  type: list
  elements: dict
protected:
  description: What the schedule would have removed but a protection keeps, and why.
  returned: always
  type: list
  elements: dict
  sample:
    - {where: host, path: /var/backups/comfy-wrapup/berlin/backup-20251101T170211Z/,
       why: the newest verified backup of the workshop}
unreached:
  description:
    - The targets that did not answer, each with the error; a warning names each. One that did not answer
      when listed is unchanged; one that stopped answering while its deletions ran kept the rest.
  returned: always
  type: list
  elements: dict
  sample:
    - {target: nas, error: "Archive target 'nas' (backup@nas.example.org): listing /srv/workshops failed (exit 255):
        ssh: connect to host nas.example.org port 22: Connection refused. Check host, port, user, key_file and
        that the storage host has sh and sha256sum"}
schedule:
  description: The schedule applied, in days (reports and configuration - forever).
  returned: always
  type: dict
bytes:
  description: Bytes of everything in RV(deleted).
  returned: always
  type: int
"""

import contextlib
import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_archive import opened_targets
from ansible.module_utils.workshop_backup import FUTURE_SLACK
from ansible.module_utils.workshop_connection import require_libraries
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_lock import held_while_running
from ansible.module_utils.workshop_record import read_record, save_record
from ansible.module_utils.workshop_retention import (
    apply_plan,
    check_schedule,
    make_plan,
    retention_section,
    section_changed,
)
from ansible.module_utils.workshop_s3 import target_argument_spec
from ansible.module_utils.workshop_time import epoch_of, utc_iso


def parse_now(value):
    if not value:
        return time.time()
    try:
        return float(value)
    except ValueError:
        pass
    moment = epoch_of(value)
    if moment is None:
        raise WorkshopError(f"now={value!r} is neither ISO-8601 nor epoch seconds")
    return moment


def record_retention(record, schedule, plan, deleted, now, check_mode):
    """Write the run record's retention section when it changed (section_changed); whether it did, or in
    check mode would."""
    current = read_record(record)
    section = retention_section(schedule, plan, deleted, utc_iso(now))
    if not section_changed(current.get("retention"), section):
        return False
    if not check_mode:
        save_record(record, dict(current, retention=section))
    return True


def run(module):
    params = module.params
    schedule = check_schedule(params["schedule"])
    now = parse_now(params["now"])
    if params["now"] and now > time.time() + FUTURE_SLACK:
        # A what-if belongs in a plan; applied, a mistyped year deletes what is due only then.
        module.warn(
            f"Ages count from now={params['now']}, after this host's clock ({utc_iso(time.time())}): what the schedule "
            f"makes due only then is {'deleted now' if params['state'] == 'applied' and not module.check_mode else 'listed'}"
        )
    share_targets = [params["share_target"]] if params["share_target"] else []
    targets = opened_targets(params["targets"], params["known_hosts"], check_mode=module.check_mode)
    opened_shares = opened_targets(share_targets, params["known_hosts"], use="share", check_mode=module.check_mode)
    with targets as stores, opened_shares as shares:
        plan = make_plan(
            dict(
                schedule=schedule,
                backup_root=params["backup_root"],
                backup_dir=params["backup_dir"],
                project_dir=params["project_dir"],
                outputs_dir=params["outputs_dir"],
                share_folder=params["share_folder"],
            ),
            now,
            stores,
            shares[0] if shares else None,
        )
        applying = params["state"] == "applied" and not module.check_mode
        if not applying:
            deleted = list(plan.delete)
        else:
            deleted = []
            try:
                apply_plan(plan, deleted)
            except WorkshopError:
                # What went before the failure is gone all the same: the record says so.
                if params["record"]:
                    record_retention(params["record"], schedule, plan, deleted, now, check_mode=False)
                raise
    result = dict(
        deleted=deleted,
        moved=list(plan.move),
        protected=plan.protected,
        unreached=plan.unreached,
        schedule=retention_section(schedule, plan, deleted, "")["schedule"],
        bytes=sum(entry["bytes"] for entry in deleted),
    )
    changed = bool(deleted) or bool(plan.move)
    if params["state"] == "applied" and params["record"]:
        changed = record_retention(params["record"], schedule, plan, deleted, now, module.check_mode) or changed
    if params["state"] == "planned":
        changed = False
    if module._diff:
        result["diff"] = dict(
            before="".join(f"{e['where']}: {e['path']}\n" for e in deleted),
            after="",
            before_header="retention: deleted",
            after_header="retention: kept",
        )
    for entry in plan.unreached:
        module.warn(
            f"Retention did not finish on target '{entry['target']}', which does not answer (the host and the other "
            f"targets were done): "
            f"{entry['error'].rstrip('.')}. Run the retention phase again once it answers."
        )
    result["changed"] = changed
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["planned", "applied"], default="planned"),
            schedule=dict(type="dict", default={}),
            now=dict(type="str", default=""),
            backup_root=dict(type="path", required=True),
            backup_dir=dict(type="path", required=True),
            record=dict(type="path"),
            project_dir=dict(type="path"),
            outputs_dir=dict(type="path"),
            share_folder=dict(type="path"),
            targets=dict(type="list", elements="dict", default=[], options=target_argument_spec()["options"]),
            share_target=target_argument_spec(required=False),
            known_hosts=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    wants_s3 = any(t["type"] == "s3" for t in module.params["targets"]) or bool(module.params["share_target"])
    if wants_s3:
        require_libraries(module, "boto3")
    # Applying deletes: with the workshop's lock held (no backup, archive or shutdown meanwhile). A plan only reads.
    folder = module.params["backup_dir"]
    lock = (
        held_while_running(folder, f"retention of {os.path.basename(folder)}", module.check_mode)
        if module.params["state"] == "applied"
        else contextlib.nullcontext("")
    )
    try:
        with lock as warning:
            result = run(module)
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **dict({"backup_dir": module.params["backup_dir"]}, **exc.context))
    if warning:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
