#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: export the logs of every service of a compose project."""

DOCUMENTATION = r"""
---
module: compose_logs
short_description: Export the logs of every service of the workshop's compose project
description:
  - Writes one gzip file per service (C(<service>.log.gz)) with every line of stdout and stderr
    and its timestamp, plus the combined file the checklist makes with C(docker-compose logs >),
    merged in time order with each line prefixed C(<service> |).
  - Containers are found by their compose labels through the Docker API, so v1 and v2 projects
    alike are exported, running or stopped, and no compose CLI is needed.
  - Logs are streamed from Docker to disk; memory stays flat whatever their size. Each file is
    written through a temporary name and renamed; a file whose content is unchanged is left alone.
version_added: "0.1.0"
author: comfy-wrapup contributors (@comfy-wrapup)
requirements:
  - docker (Python library)
attributes:
  check_mode:
    support: full
    description:
      - Exports into a scratch folder outside O(dest), compares each file's content with the one in O(dest)
        as a real run does, and removes the scratch folder; writes nothing in O(dest).
  diff_mode:
    support: none
    description: Returns no diff.
extends_documentation_fragment:
  - workshop_compose
  - workshop_redis
options:
  project_dir:
    description: The workshop's project directory (docker-compose.yml, .env).
    type: path
    required: true
  dest:
    description: Folder to write the log files into; created if missing.
    type: path
    required: true
  combined_name:
    description: File name of the combined log.
    type: str
    default: workshop-logs.txt.gz
  services:
    description: Only these services. Default every service of the project.
    type: list
    elements: str
  since:
    description: Only lines from this time on (epoch seconds, or ISO-8601).
    type: str
  until:
    description:
      - Only lines before this time (epoch seconds, or ISO-8601).
      - Unset - the module's start; a stopped container's lines of the current second too.
    type: str
"""

EXAMPLES = r"""
- name: Export complete system logs
  compose_logs:
    project_dir: /home/dev/projects/comfyui
    dest: /var/backups/comfy-wrapup/berlin/logs
  register: logs

- name: Every service's log was exported
  ansible.builtin.assert:
    that: logs.services | selectattr('lines', 'eq', 0) | list | length < logs.services | length
"""

RETURN = r"""
services:
  description:
    - One entry per container, with its lines, bytes (uncompressed) and restart count.
    - C(until) is where its export ended (UTC); a running container's later lines are for the next export.
  returned: always
  type: list
  elements: dict
  sample:
    - service: worker-1
      container: comfy-worker-1
      file: worker-1.log.gz
      lines: 5120
      bytes: 612000
      restart_count: 0
      until: "2026-11-28T18:42:07+00:00"
combined:
  description: The combined file, its lines and bytes (uncompressed).
  returned: always
  type: dict
  sample: {file: workshop-logs.txt.gz, lines: 20480, bytes: 2400000}
project:
  description: The compose project name used.
  returned: always
  type: str
  sample: comfyui
"""

import math
import os
import shutil
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_compose import (
    SERVICE_LABEL,
    ComposeProject,
)
from ansible.module_utils.workshop_connection import CONNECTION_MUTUALLY_EXCLUSIVE, connection_argument_spec, require_libraries
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_logs import export_container, log_file_name, same_content, write_combined
from ansible.module_utils.workshop_time import iso, parse_time


def docker_time(value):
    """since/until as Docker takes them: a datetime or epoch seconds."""
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        pass
    parsed = parse_time(value)
    if parsed is None:
        raise WorkshopError(f"'{value}' is neither epoch seconds nor an ISO-8601 time: fix since/until")
    return parsed


def export_end(container, now):
    """Where an export without `until` ends, in whole seconds (docker-py before 6.0 takes no fraction): for a
    running container the current second, a fixed end that lines it writes meanwhile cannot move (the
    completeness check reads the window again); for a stopped one the next second, so lines written
    within the current second, its last ones, are in."""
    return int(now) if container.status in ("running", "restarting") else math.ceil(now)


def export(params, check_mode):
    project = ComposeProject.from_params(params)
    containers = project.containers()
    if params["services"]:
        containers = project.select(names=params["services"])
    services_seen = {}
    for container in containers:
        service = container.labels.get(SERVICE_LABEL, container.name)
        services_seen[service] = services_seen.get(service, 0) + 1
    since, until = docker_time(params["since"]), docker_time(params["until"])
    now = time.time()
    # A dry run writes the same files into a scratch folder and compares them with dest's.
    work = tempfile.mkdtemp(prefix="compose-logs-check-") if check_mode else params["dest"]
    entries, parts, changed = [], [], False
    try:
        os.makedirs(work, exist_ok=True)
        for container in sorted(containers, key=lambda c: (c.labels.get(SERVICE_LABEL, ""), c.name)):
            service = container.labels.get(SERVICE_LABEL, container.name)
            name = log_file_name(container, services_seen)
            path = os.path.join(work, name)
            entry = dict(
                service=service, container=container.name, file=name, restart_count=container.attrs.get("RestartCount", 0)
            )
            end = until if until is not None else export_end(container, now)
            entry["lines"], entry["bytes"], written = export_container(container, path, since, end, project.engine)
            entry["until"] = iso(parse_time(end))
            changed = changed or (not same_content(os.path.join(params["dest"], name), path) if check_mode else written)
            parts.append((service if services_seen[service] == 1 else container.name, path))
            entries.append(entry)
        combined = dict(file=params["combined_name"])
        combined_path = os.path.join(work, params["combined_name"])
        combined["lines"], combined["bytes"], written = write_combined(combined_path, parts)
        if check_mode:
            written = not same_content(os.path.join(params["dest"], params["combined_name"]), combined_path)
        changed = changed or written
    finally:
        if check_mode:
            shutil.rmtree(work, ignore_errors=True)
    return dict(changed=changed, services=entries, combined=combined, project=project.name)


def main():
    argument_spec = connection_argument_spec(
        dest=dict(type="path", required=True),
        combined_name=dict(type="str", default="workshop-logs.txt.gz"),
        services=dict(type="list", elements="str"),
        since=dict(type="str"),
        until=dict(type="str"),
    )
    module = AnsibleModule(
        argument_spec=argument_spec, mutually_exclusive=CONNECTION_MUTUALLY_EXCLUSIVE, supports_check_mode=True
    )
    require_libraries(module, "docker")
    try:
        result = export(module.params, module.check_mode)
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **exc.context)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
