#!/usr/bin/python
"""Ansible module: start or stop chosen services of a compose project."""

DOCUMENTATION = r"""
---
module: compose_services
short_description: Start or stop chosen services of the workshop's compose project
description:
  - Stops or starts the containers of the services that match O(pattern) or are named in
    O(services), leaving every other service as it is. The drain phase closes submissions this
    way (stopping the participant frontends while Redis, the queue manager and the workers run on).
  - Containers are found by their compose labels through the Docker API, so this works the same
    for projects deployed by docker compose v2 and docker-compose v1, and needs neither CLI.
  - Containers stay in place, with their volumes, and V(started) brings the same containers back.
version_added: "0.1.0"
author: comfy-wrapup
requirements:
  - docker (Python library)
attributes:
  check_mode:
    support: full
    description: Reports which services would be started or stopped, and changes none.
  diff_mode:
    support: full
    description: The state of each chosen service before and after.
extends_documentation_fragment:
  - workshop_compose
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
    choices: [started, stopped]
    required: true
  stop_timeout:
    description: Seconds a container gets to stop before it is killed.
    type: int
    default: 10
notes:
  - Exactly one of O(pattern) and O(services).
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

- name: Reopen submissions
  compose_services:
    project_dir: /home/dev/projects/comfyui
    pattern: '^user\d+$'
    state: started
"""

RETURN = r"""
changed_services:
  description: Services that were started or stopped (in check mode, that would be).
  returned: always
  type: list
  elements: str
  sample: [user001, user002]
services:
  description: Every chosen service with its state after this run (in check mode, its state now).
  returned: always
  type: list
  elements: dict
  sample: [{service: user001, container: comfy-user001, state: exited}]
project:
  description: The compose project name used.
  returned: always
  type: str
  sample: comfyui
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.workshop_compose import (
    DOCKER_IMPORT_ERROR,
    HAS_DOCKER,
    SERVICE_LABEL,
    ComposeProject,
    compose_argument_spec,
)
from ansible.module_utils.workshop_errors import WorkshopError


def main():
    argument_spec = compose_argument_spec()
    argument_spec.update(
        pattern=dict(type="str"),
        services=dict(type="list", elements="str"),
        state=dict(type="str", choices=["started", "stopped"], required=True),
        stop_timeout=dict(type="int", default=10),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=[("pattern", "services")],
        required_one_of=[("pattern", "services")],
        supports_check_mode=True,
    )
    if not HAS_DOCKER:
        module.fail_json(msg=missing_required_lib("docker"), exception=DOCKER_IMPORT_ERROR)
    params = module.params
    try:
        project = ComposeProject.from_params(params)
        containers = project.select(pattern=params["pattern"], names=params["services"])
        before = {c.labels.get(SERVICE_LABEL): c.status for c in containers}
        changed = project.set_state(containers, params["state"], params["stop_timeout"], module.check_mode)
        if not module.check_mode:
            for container in containers:
                container.reload()
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **exc.context)
    services = [dict(service=c.labels.get(SERVICE_LABEL), container=c.name, state=c.status) for c in containers]
    after_state = "running" if params["state"] == "started" else "exited"
    after = {name: (after_state if name in changed else state) for name, state in before.items()}
    result = dict(changed=bool(changed), changed_services=changed, services=services, project=project.name)
    if module._diff:
        result["diff"] = dict(before=before, after=after)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
