#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: what a compose project has on the Docker Engine (read only)."""

DOCUMENTATION = r"""
---
module: compose_project_info
short_description: List the containers, networks and volumes of the workshop's compose project
description:
  - Reads, and changes nothing, what the compose project has on the Docker Engine - its containers
    (with state, exit code, finish time and mounted volumes), its networks and its named volumes -
    found by the compose labels of the one project name resolved (O(project_name), else the C(.env),
    else the directory), through the Docker API.
  - A project with nothing on the engine (already down, or another name) returns empty lists.
version_added: "0.1.0"
author: comfy-wrapup contributors (@comfy-wrapup)
requirements:
  - docker (Python library)
extends_documentation_fragment:
  - workshop_attributes.read_only
  - workshop_compose
  - workshop_redis
options:
  project_dir:
    description: The workshop's project directory (docker-compose.yml, .env).
    type: path
    required: true
"""

EXAMPLES = r"""
- name: Which containers, networks and volumes does the project have?
  compose_project_info:
    project_dir: /home/dev/projects/comfyui
    project_name: wsberlin
  register: project

- name: Its Redis data volume is there
  ansible.builtin.assert:
    that: "'wsberlin_redis-data' in project.volumes"
"""

RETURN = r"""
project:
  description: The compose project name used.
  returned: always
  type: str
  sample: comfyui
services:
  description: Every container of the project with its state, exit code, finish time and mounted volumes.
  returned: always
  type: list
  elements: dict
  sample:
    - {service: redis, container: comfy-redis, state: running, exit_code: 0, finished_at: null,
       volumes: [{name: comfyui_redis-data, destination: /data}]}
networks:
  description: The project's networks.
  returned: always
  type: list
  elements: str
  sample: [comfyui_default]
volumes:
  description: The project's named volumes.
  returned: always
  type: list
  elements: str
  sample: [comfyui_redis-data]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_compose import ComposeProject
from ansible.module_utils.workshop_connection import CONNECTION_MUTUALLY_EXCLUSIVE, connection_argument_spec, require_libraries
from ansible.module_utils.workshop_errors import WorkshopError


def main():
    module = AnsibleModule(
        argument_spec=connection_argument_spec(), mutually_exclusive=CONNECTION_MUTUALLY_EXCLUSIVE, supports_check_mode=True
    )
    require_libraries(module, "docker")
    try:
        inventory = ComposeProject.from_params(module.params).inventory()
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **exc.context)
    module.exit_json(changed=False, **inventory)


if __name__ == "__main__":
    main()
