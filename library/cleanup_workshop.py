#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: the checklist's clean-up (temporary files, the yearly log archive, outputs after the share)."""

DOCUMENTATION = r"""
---
module: cleanup_workshop
short_description: Remove a workshop's temporary files, roll its logs into the yearly archive, remove shared outputs
description:
  - Removes the temporary files the phases made in the workshop's folder (C(.partial-backup-*) folders no
    process holds, C(.partial-fetch-*) and C(.restore-test-*) scratch folders, C(*.partial) files) and the
    checklist's log extracts in the project directory (C(errors-found.txt), C(warnings-found.txt),
    C(ssl-issues.txt), C(connection-issues.txt)).
  - Rolls the workshop's merged log (from its newest verified backup, which keeps its own copy) and the
    loose C(workshop-logs-*.txt[.gz]) exports of the project directory into
    C(<backup_root>/logs/workshop-logs-YYYY.tar.gz), one archive per year; the new archive is written to a
    temporary name, re-read (sha256 of every member) and only then renamed; then the loose exports go.
  - With O(remove_outputs) and O(confirm) equal to O(workshop_id), removes the participants' outputs once the
    share period has ended (run record C(share.period_ends)), each file only when a backup verified off-host
    holds it with the same size and sha256, and one of O(targets) still holds that backup whole now (every
    file there with its size and content, hashed on an SSH storage host; on S3 the server's checksum, the
    sha256 kept with the object, or its ETag against the local file), since the run record says what was
    true when it was copied.
  - Writes the run record section C(cleanup) = C({at, done, removed, logs_rolled, outputs_removed}).
  - Works with the workshop's lock held (C(.lock) in O(backup_dir), as the workshop_lock module keeps it),
    taken and given back by this run itself; another run holding it (a backup, archive or shutdown) makes the
    task fail, naming it, with nothing removed.
version_added: "0.3.0"
author: comfy-wrapup contributors (@comfy-wrapup)
requirements:
  - boto3 (Python library, for s3 targets, with O(remove_outputs))
  - ssh (OpenSSH client, for ssh targets, with O(remove_outputs); sh and wc on the storage host)
attributes:
  check_mode:
    support: full
    description: Lists every file that would be removed and every member that would be rolled; changes nothing.
  diff_mode:
    support: full
    description: The paths that would be removed, as the before list.
extends_documentation_fragment:
  - workshop_targets
options:
  workshop_id:
    description: The workshop's id (the yearly archive's member folder).
    type: str
    required: true
  backup_dir:
    description: The workshop's folder (its run record and backups).
    type: path
    required: true
  backup_root:
    description: The host's backup root (the yearly archives go to its C(logs/)).
    type: path
    required: true
  record:
    description: The run record the C(cleanup) section is written to.
    type: path
  project_dir:
    description: The platform's project directory (loose log exports and the checklist's extracts).
    type: path
  outputs_dir:
    description: The participants' outputs.
    type: path
  remove_outputs:
    description: Remove the participants' outputs after the share period (each file held by a backup verified off-host).
    type: bool
    default: false
  confirm:
    description: Must be O(workshop_id) for O(remove_outputs).
    type: str
    default: ""
  now:
    description: The moment the share period is compared with (ISO-8601 or epoch seconds); empty - the clock.
    type: str
    default: ""
"""

EXAMPLES = r"""
- name: Clean up after the workshop, rolling the logs into the yearly archive
  cleanup_workshop:
    workshop_id: berlin
    backup_dir: /var/backups/comfy-wrapup/berlin
    backup_root: /var/backups/comfy-wrapup
    record: /var/backups/comfy-wrapup/berlin/run-record.json
    project_dir: /home/dev/projects/comfyui
  register: cleaned
- name: The year's archive holds the workshop's log
  ansible.builtin.assert:
    that: cleaned.logs_rolled | map(attribute='verified') | min
"""

RETURN = r"""
removed:
  description: Files and folders removed (in check mode - that would be), with bytes and why.
  returned: always
  type: list
  elements: dict
  sample:
    - {path: /var/backups/comfy-wrapup/berlin/.partial-backup-20261129T170211Z/, bytes: 4096,
       why: a phase's unfinished temporary folder}
logs_rolled:
  description: Per yearly archive, its members for this workshop, the members added now, and whether it read back verified.
  returned: always
  type: list
  elements: dict
outputs_removed:
  description: Outputs removed (files, bytes), null when none.
  returned: always
  type: dict
outputs_kept:
  description: Outputs kept, and why (share period not over, not in a backup a target holds now).
  returned: always
  type: list
  elements: dict
done:
  description: Everything the cleanup was asked to do is done (logs verified, no output kept back).
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_archive import opened_targets
from ansible.module_utils.workshop_cleanup import cleanup
from ansible.module_utils.workshop_connection import require_libraries
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_lock import held_while_running
from ansible.module_utils.workshop_record import read_record, save_record
from ansible.module_utils.workshop_s3 import target_argument_spec
from ansible.module_utils.workshop_time import epoch_of, utc_iso


def run(module):
    params = module.params
    now = None
    if params["now"]:
        try:
            now = float(params["now"])
        except ValueError:
            now = epoch_of(params["now"])
            if now is None:
                raise WorkshopError(f"now={params['now']!r} is neither ISO-8601 nor epoch seconds") from None
    # The targets are reached only to remove outputs (their copies must still be there).
    targets = params["targets"] if params["remove_outputs"] else []
    with opened_targets(targets, params["known_hosts"], check_mode=module.check_mode) as stores:
        result = cleanup(
            dict(
                workshop_id=params["workshop_id"],
                backup_dir=params["backup_dir"],
                backup_root=params["backup_root"],
                project_dir=params["project_dir"],
                outputs_dir=params["outputs_dir"],
                remove_outputs=params["remove_outputs"],
                confirm=params["confirm"],
                stores=stores,
            ),
            module.check_mode,
            now=now,
        )
    if params["record"]:
        import time

        section = {
            "at": utc_iso(now if now is not None else time.time()),
            "done": result["done"],
            "removed": result["removed"],
            "logs_rolled": [
                {"archive": r["archive"], "members": r["members"], "verified": r["verified"]} for r in result["logs_rolled"]
            ],
            "outputs_removed": result["outputs_removed"],
        }
        before = read_record(params["record"]).get("cleanup")
        # A run that removed nothing and rolled nothing new leaves the record of the last one that did.
        same = before and not section["removed"] and all(before.get(k) == section[k] for k in ("done", "logs_rolled"))
        if not same:
            result["changed"] = True
            if not module.check_mode:
                save_record(params["record"], dict(read_record(params["record"]), cleanup=section))
    if module._diff:
        result["diff"] = dict(before="".join(f"{e['path']}\n" for e in result["removed"]), after="")
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            workshop_id=dict(type="str", required=True),
            backup_dir=dict(type="path", required=True),
            backup_root=dict(type="path", required=True),
            record=dict(type="path"),
            project_dir=dict(type="path"),
            outputs_dir=dict(type="path"),
            remove_outputs=dict(type="bool", default=False),
            confirm=dict(type="str", default=""),
            now=dict(type="str", default=""),
            targets=dict(type="list", elements="dict", default=[], options=target_argument_spec()["options"]),
            known_hosts=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    if module.params["remove_outputs"] and any(target["type"] == "s3" for target in module.params["targets"]):
        require_libraries(module, "boto3")
    try:
        purpose = f"cleanup of {module.params['workshop_id']}"
        with held_while_running(module.params["backup_dir"], purpose, module.check_mode) as warning:
            result = run(module)
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **dict({"backup_dir": module.params["backup_dir"]}, **exc.context))
    if warning:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
