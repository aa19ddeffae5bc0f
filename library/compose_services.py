#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: start or stop chosen services of a compose project."""

DOCUMENTATION = r"""
---
module: compose_services
short_description: Start, stop or take down the services of the workshop's compose project
description:
  - Stops or starts the containers of the services that match O(pattern) or are named in
    O(services) (neither - every service of the project), leaving every other service as it is.
    The drain phase closes submissions this way (stopping the participant frontends while Redis,
    the queue manager and the workers run on).
  - V(down) stops every container of the project (the services in O(stop_last) after all others),
    removes the containers and the project's networks, and then exactly the volumes named in
    O(volumes), each of which must carry the project's label; it confirms they are gone.
    A project already down is no change.
  - Everything is found by the compose labels of the one project name resolved (O(project_name),
    else the C(.env), else the directory), through the Docker API, so this works the same for
    projects deployed by docker compose v2 and docker-compose v1, and needs neither CLI.
version_added: "0.1.0"
author: comfy-wrapup contributors (@comfy-wrapup)
requirements:
  - docker (Python library)
attributes:
  check_mode:
    support: full
    description: Reports exactly which services, containers, networks and volumes would change, and changes none.
  diff_mode:
    support: full
    description: The state of each chosen service before and after; for V(down) the containers, networks and volumes.
extends_documentation_fragment:
  - workshop_compose
  - workshop_redis
options:
  project_dir:
    description: The workshop's project directory (docker-compose.yml, .env).
    type: path
    required: true
  pattern:
    description: Regular expression; the services whose names it matches are chosen.
    type: str
  services:
    description: Names of the services to choose.
    type: list
    elements: str
  state:
    description: What the chosen services should be.
    type: str
    choices: [started, stopped, down]
    required: true
  volumes:
    description: For V(down), the project's volumes to remove with it (none by default).
    type: list
    elements: str
    default: []
  stop_last:
    description: Services stopped after every other one (Redis, so that nothing writes to it once it stops).
    type: list
    elements: str
    default: []
  stop_timeout:
    description: Seconds a container gets to stop before it is killed.
    type: int
    default: 10
notes:
  - At most one of O(pattern) and O(services); V(down) takes neither.
  - C(compose_project_info) lists what the project has, without changing anything.
"""

EXAMPLES = r"""
- name: Close submissions by stopping the participant frontends
  compose_services:
    project_dir: /home/dev/projects/comfyui
    pattern: '^user\d+$'
    state: stopped
  register: closed

- name: The frontends are down, the rest is untouched
  ansible.builtin.assert:
    that: closed.services | selectattr('state', 'ne', 'stopped') | list | length == 0

- name: Which containers, networks and volumes does the project have?
  compose_project_info:
    project_dir: /home/dev/projects/comfyui
    project_name: wsberlin
  register: project

- name: Take the project down with its Redis volume
  compose_services:
    project_dir: /home/dev/projects/comfyui
    project_name: "{{ project.project }}"
    state: down
    volumes: "{{ project.volumes }}"
    stop_last: [redis]
  register: down

- name: Exactly the listed volumes are gone
  ansible.builtin.assert:
    that: down.removed.volumes == project.volumes
"""

RETURN = r"""
changed_services:
  description: Services that were started or stopped (in check mode, that would be).
  returned: always
  type: list
  elements: str
  sample: [user001, user002]
services:
  description:
    - Every chosen service with its state after this run (in check mode, its state now).
    - For V(down), every container of the project as it was, with its exit code, finish time and mounted volumes.
  returned: always
  type: list
  elements: dict
  sample: [{service: user001, container: comfy-user001, state: exited}]
removed:
  description: V(down) - the containers, networks and volumes removed (in check mode, that would be).
  returned: state=down
  type: dict
  sample: {containers: [comfy-redis], networks: [comfyui_default], volumes: [comfyui_redis-data]}
stopped_at:
  description: When this run asked the first container to stop (ISO-8601 UTC); null when it stopped none.
  returned: state in (stopped, down)
  type: str
project:
  description: The compose project name used.
  returned: always
  type: str
  sample: comfyui
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_compose import (
    SERVICE_LABEL,
    ComposeProject,
)
from ansible.module_utils.workshop_connection import CONNECTION_MUTUALLY_EXCLUSIVE, connection_argument_spec, require_libraries
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_time import utc_iso


def set_state(project, params, check_mode):
    """started / stopped: the chosen services (every one when neither pattern nor services is given)."""
    if params["pattern"] or params["services"]:
        containers = project.select(pattern=params["pattern"], names=params["services"])
    else:
        containers = sorted(project.containers(), key=lambda c: c.labels.get(SERVICE_LABEL, ""))
    before = {c.labels.get(SERVICE_LABEL): c.status for c in containers}
    requested = time.time()
    if params["state"] == "stopped":
        changed = project.stop_in_order(containers, params["stop_last"], params["stop_timeout"], check_mode)
    else:
        changed = project.set_state(containers, "started", params["stop_timeout"], check_mode)
    if not check_mode:
        for container in containers:
            container.reload()
    services = [dict(service=c.labels.get(SERVICE_LABEL), container=c.name, state=c.status) for c in containers]
    after_state = "running" if params["state"] == "started" else "exited"
    after = {name: (after_state if name in changed else state) for name, state in before.items()}
    result = dict(changed=bool(changed), changed_services=changed, services=services, project=project.name)
    if params["state"] == "stopped":
        result["stopped_at"] = utc_iso(requested) if changed and not check_mode else None
    return result, dict(before=before, after=after)


def take_down(project, params, check_mode):
    current = project.inventory()
    requested = time.time()
    removed = project.down(params["volumes"], params["stop_timeout"], check_mode, last=params["stop_last"])
    running = [s["service"] for s in current["services"] if s["state"] in ("running", "restarting")]
    changed = any(removed.values())
    containers = [entry["container"] for entry in current["services"]]
    before = dict(containers=containers, networks=current["networks"], volumes=current["volumes"])
    after = {key: [name for name in names if name not in removed[key]] for key, names in before.items()}
    result = dict(
        changed=changed,
        changed_services=sorted(s["service"] for s in current["services"]),
        services=current["services"],
        removed=removed,
        stopped_at=utc_iso(requested) if running and not check_mode else None,
        project=project.name,
    )
    return result, dict(before=before, after=after)


def main():
    argument_spec = connection_argument_spec(
        pattern=dict(type="str"),
        services=dict(type="list", elements="str"),
        state=dict(type="str", choices=["started", "stopped", "down"], required=True),
        volumes=dict(type="list", elements="str", default=[]),
        stop_last=dict(type="list", elements="str", default=[]),
        stop_timeout=dict(type="int", default=10),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=[("pattern", "services"), *CONNECTION_MUTUALLY_EXCLUSIVE],
        supports_check_mode=True,
    )
    require_libraries(module, "docker")
    params = module.params
    try:
        if params["state"] == "down" and (params["pattern"] or params["services"]):
            raise WorkshopError(f"state={params['state']} works on the whole project: give neither pattern nor services")
        if params["volumes"] and params["state"] != "down":
            raise WorkshopError("volumes is only for state=down")
        project = ComposeProject.from_params(params)
        if params["state"] == "down":
            result, diff = take_down(project, params, module.check_mode)
            if not any(diff["before"].values()):
                module.warn(
                    f"Compose project '{project.name}' has no containers, networks or volumes on {project.engine}: "
                    "down already, or another project name (workshop_compose_project)"
                )
        else:
            result, diff = set_state(project, params, module.check_mode)
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **exc.context)
    if module._diff:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
