#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: the state of a ComfyUI workshop (queue, services, outputs, disk)."""

DOCUMENTATION = r"""
---
module: workshop_state
short_description: Read the state of a ComfyUI multi-user workshop
description:
  - Reads, without changing anything, what an admin looks at before wrapping a workshop up
    the size of each job queue in Redis, the compose project's services with their state and
    restart counts, how much the participants' outputs take, and the free disk space.
  - The Redis password is read from the workshop's C(.env) on the host.
  - A part that does not answer (Redis not reachable, no Docker Engine, no containers of the project,
    as after a shutdown) is returned as V(null) with the reason in RV(unread), so phases that can work
    without it (a report from the backup's snapshot) still run. A misconfiguration (no C(.env), a
    wrong password) fails.
version_added: "0.1.0"
author: comfy-wrapup contributors (@comfy-wrapup)
requirements:
  - redis (Python library)
  - docker (Python library)
extends_documentation_fragment:
  - workshop_attributes.read_only
  - workshop_redis
  - workshop_compose
options:
  project_dir:
    description: The workshop's project directory (docker-compose.yml, .env).
    type: path
    required: true
  outputs_dir:
    description: The participants' outputs (C(data/outputs)), one folder per participant.
    type: path
    required: true
  frontend_pattern:
    description: Regular expression matching the compose services that are participant frontends.
    type: str
    default: '^user\d+$'
"""

EXAMPLES = r"""
- name: Read the workshop's state
  workshop_state:
    project_dir: /home/dev/projects/comfyui
    env_file: /home/dev/projects/comfyui/.env
    outputs_dir: /home/dev/projects/comfyui/data/outputs
  register: state

- name: Nothing may still be running before the backup
  ansible.builtin.assert:
    that:
      - state.queue.pending == 0
      - state.queue.running == 0
"""

RETURN = r"""
queue:
  description: Size of each queue (sorted sets C(queue:pending), C(queue:running), C(queue:completed), C(queue:failed)).
  returned: always
  type: dict
  sample: {pending: 3, running: 1, completed: 120, failed: 7, depth: 3}
services:
  description: The compose project's containers, sorted by service; V(null) when they cannot be listed (see RV(unread)).
  returned: always
  type: list
  elements: dict
  sample:
    - {service: redis, container: comfy-redis, state: running, restart_count: 0, started_at: "2026-11-29T09:00:01Z"}
frontends:
  description: How many participant frontends there are and how many run; V(null) with RV(services).
  returned: always
  type: dict
  sample: {total: 20, running: 20}
project:
  description: The compose project name used.
  returned: always
  type: str
  sample: comfyui
outputs:
  description:
    - Bytes and files under O(outputs_dir), in total and per participant folder, counted as the backup
      archives them (files reached through a link to outside the folder included).
    - C(links) counts the links kept as links (pointing inside the folder).
  returned: always
  type: dict
  sample:
    path: /home/dev/projects/comfyui/data/outputs
    bytes: 1048576
    files: 4
    links: 0
    folders: {user001: {bytes: 1048576, files: 4}}
disk:
  description: Total, used and free bytes of the filesystem holding O(project_dir).
  returned: always
  type: dict
  sample: {path: /home/dev/projects/comfyui, total: 107374182400, used: 53687091200, free: 53687091200}
unread:
  description: The parts that could not be read (C(queue), C(services)), each with the reason.
  returned: always
  type: dict
  sample: {queue: "Cannot reach Redis at 127.0.0.1:6379 (Connection refused): is the workshop's redis service running?"}
"""

import re

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_compose import ComposeProject, resolve_project_name
from ansible.module_utils.workshop_connection import CONNECTION_MUTUALLY_EXCLUSIVE, connection_argument_spec, require_libraries
from ansible.module_utils.workshop_errors import WorkshopError, WorkshopUnreachable
from ansible.module_utils.workshop_files import filesystem_usage, tree_usage
from ansible.module_utils.workshop_redis import WorkshopRedis


def _read(part, unread, read):
    """read(), or None with the reason in `unread` when that part of the workshop does not answer."""
    try:
        return read()
    except WorkshopUnreachable as exc:
        unread[part] = exc.msg
        return None


def _queue(params):
    queue = WorkshopRedis.from_params(params).queue_counts()
    queue["depth"] = queue["pending"]
    return queue


def _services(params):
    project = ComposeProject.from_params(params)
    return project.name, project.services()


def workshop_state(params):
    """Gather the state; a misconfiguration raises WorkshopError, a part that does not answer is `unread`."""
    unread = {}
    queue = _read("queue", unread, lambda: _queue(params))
    project, services = _read("services", unread, lambda: _services(params)) or (
        resolve_project_name(params["project_dir"], params.get("project_name"), params.get("env_file")),
        None,
    )
    frontend = re.compile(params["frontend_pattern"])
    frontends = [entry for entry in services or () if frontend.search(entry["service"])]
    return dict(
        project=project,
        queue=queue,
        services=services,
        frontends=dict(total=len(frontends), running=sum(entry["state"] == "running" for entry in frontends))
        if services is not None
        else None,
        outputs=tree_usage(params["outputs_dir"]),
        disk=filesystem_usage(params["project_dir"]),
        unread=unread,
    )


def main():
    module = AnsibleModule(
        argument_spec=connection_argument_spec(
            outputs_dir=dict(type="path", required=True),
            frontend_pattern=dict(type="str", default=r"^user\d+$"),
        ),
        mutually_exclusive=CONNECTION_MUTUALLY_EXCLUSIVE,
        supports_check_mode=True,
    )
    require_libraries(module, "redis", "docker")
    try:
        result = workshop_state(module.params)
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **exc.context)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
