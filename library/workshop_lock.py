#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: the lock that lets one run at a time work on a workshop's backups."""

DOCUMENTATION = r"""
---
module: workshop_lock
short_description: Hold the per-workshop lock so that runs cannot collide
description:
  - The lock is the file C(.lock) in the workshop's folder, created atomically, holding its owner
    (run id, host, pid, since, purpose). It is held across tasks, for the whole backup or
    shutdown, and released at the end (in an C(always:) section).
  - A lock whose owner is gone is taken over, with a warning. Gone means the owner's process is
    not running when the owner is on this same host, or the lock is older than O(stale_after).
    A live owner makes the task fail, naming it.
  - Acquiring and releasing leave the workshop as it was, so they report C(changed=false).
version_added: "0.2.0"
author: comfy-wrapup contributors (@comfy-wrapup)
attributes:
  check_mode:
    support: full
    description: Reports whether the lock could be taken (failing on a live owner as a real run would), and writes nothing.
  diff_mode:
    support: none
    description: Returns no diff.
options:
  path:
    description: The workshop's folder (absolute); created with mode 0700 when missing.
    type: path
    required: true
  state:
    description: V(acquired) takes the lock, V(released) gives it back (only when O(run_id) holds it).
    type: str
    choices: [acquired, released]
    default: acquired
  run_id:
    description: The run's id; the same id holds the lock again without waiting.
    type: str
    required: true
  owner_host:
    description: Host of the owner process (the controller's name); default this host.
    type: str
  owner_pid:
    description: Pid of the owner process on O(owner_host) (the ansible-playbook process); default this module's parent.
    type: int
  purpose:
    description: What the run does, shown to a run that finds the lock taken.
    type: str
    default: ""
  stale_after:
    description: Seconds after which a lock is taken over even when its owner cannot be checked.
    type: int
    default: 21600
"""

EXAMPLES = r"""
- name: Take the workshop's lock for the whole backup
  workshop_lock:
    path: /var/backups/comfy-wrapup/berlin
    run_id: "20261129T170000-12345"
    purpose: backup
  register: lock

- name: It is ours
  ansible.builtin.assert:
    that: lock.owner.run_id == "20261129T170000-12345"

- name: Release it
  workshop_lock:
    path: /var/backups/comfy-wrapup/berlin
    state: released
    run_id: "20261129T170000-12345"
"""

RETURN = r"""
lock_file:
  description: The lock file (not C(path), whose file facts Ansible would write over RV(owner)).
  returned: always
  type: str
owner:
  description: The owner record of the lock (ours after acquiring).
  returned: always
  type: dict
  sample: {run_id: "20261129T170000-12345", host: vps1, pid: 4242, since: "2026-11-29T17:00:00+00:00", purpose: backup}
taken_over:
  description: V(acquired) - whether a lock of a gone owner was taken over.
  returned: state=acquired
  type: bool
previous:
  description: V(acquired) - the owner record of the lock taken over.
  returned: state=acquired
  type: dict
released:
  description: V(released) - whether the lock was released.
  returned: state=released
  type: bool
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import make_workshop_folder
from ansible.module_utils.workshop_lock import acquire, new_owner, release, require_absolute


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            state=dict(type="str", choices=["acquired", "released"], default="acquired"),
            run_id=dict(type="str", required=True),
            owner_host=dict(type="str"),
            owner_pid=dict(type="int"),
            purpose=dict(type="str", default=""),
            stale_after=dict(type="int", default=21600),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        folder = require_absolute(params["path"], "path")
        if params["state"] == "released":
            result = release(folder, params["run_id"], module.check_mode)
        else:
            if not module.check_mode:
                make_workshop_folder(folder)
            owner = new_owner(
                params["run_id"],
                host=params["owner_host"],
                pid=params["owner_pid"] if params["owner_pid"] is not None else os.getppid(),
                purpose=params["purpose"],
            )
            result = acquire(folder, owner, params["stale_after"], module.check_mode)
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **exc.context)
    if result.get("warning"):
        module.warn(result["warning"])
    module.exit_json(changed=False, **{key: value for key, value in result.items() if key != "warning"})


if __name__ == "__main__":
    main()
