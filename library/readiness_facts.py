#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: is the workshop ready for the next one? (read-only)"""

DOCUMENTATION = r"""
---
module: readiness_facts
short_description: Check that a ComfyUI workshop host is ready for the next workshop
description:
  - Reads, without changing anything, the checklist's "Next Workshop Preparation" and "Emergency
    Recovery Test" checks, each as one line with a verdict and its evidence or reason
    (RV(lines)); C(readiness_report) writes them to files and the run record.
  - C(backup) - the newest sealed backup in O(backup_dir) exists, its C(MANIFEST.json) parses, and
    every file it lists has the listed size and reads (both ends, and a tar's first header); a
    verification the run record says failed is a failure.
  - C(restore_test) - the run record's C(restore_test) passed and is not older than
    O(restore_test_max_age_days).
  - C(certificate) - the certificate at C(SSL_CERT_PATH) of the C(.env) (relative to O(project_dir)),
    and the one served on O(tls_address) when it answers, is valid past the end of the day of
    O(next_workshop) and names C(DOMAIN) (DNS names of its subjectAltName, a wildcard covering one
    label); a served certificate other than the file is said. Read with C(openssl x509).
  - C(disk) - the filesystems of O(outputs_dir) and O(backup_root) each have O(disk_margin) times
    the last workshop's outputs free (C(backup.outputs.bytes) of the run record, else the outputs
    folder as it is).
  - C(images) - every image of the compose project is on the Docker Engine - O(images), else the
    C(image:) of the compose files (C(COMPOSE_FILE) of the C(.env) and what they include) and the
    images of the project's containers.
  - C(queues) - C(queue:pending) and C(queue:running) in Redis are empty.
  - C(gpu_host) - O(gpu_host):O(gpu_port) accepts a TCP connection from this host; no O(gpu_host)
    is a neutral line (V(null)) - the workers run on the VPS.
  - A part that does not answer (Redis, the Docker Engine, the served certificate) is a line that
    says so, not a failure of the module.
version_added: "0.1.0"
author: comfy-wrapup contributors (@comfy-wrapup)
requirements:
  - redis (Python library)
  - docker (Python library)
  - openssl (command) on the host
extends_documentation_fragment:
  - workshop_attributes.read_only
  - workshop_redis
  - workshop_compose
options:
  project_dir:
    description: The workshop's project directory (C(docker-compose.yml), C(.env)).
    type: path
    required: true
  outputs_dir:
    description: The participants' outputs folder.
    type: path
    required: true
  backup_dir:
    description: The workshop's backups (C(backup-*) folders).
    type: path
    required: true
  backup_root:
    description: The root of every workshop's backups; its filesystem gets the next backups.
    type: path
    required: true
  record:
    description: The workshop's run record (sections C(backup) and C(restore_test) are read).
    type: path
    required: true
  next_workshop:
    description: Date of the next workshop (C(YYYY-MM-DD)); default 7 days from now.
    type: str
  restore_test_max_age_days:
    description: A restore test older than this many days no longer counts.
    type: int
    default: 30
  run_restore_test:
    description: Only the wording - a failed or stale restore-test line says a restore test is run now.
    type: bool
    default: false
  disk_margin:
    description: Free space needed on each filesystem, as a multiple of the last workshop's outputs.
    type: float
    default: 2.0
  cert_path:
    description: The certificate file; default C(SSL_CERT_PATH) of the C(.env). Relative to O(project_dir).
    type: str
  domain:
    description: The workshop's domain; default C(DOMAIN) of the C(.env).
    type: str
  tls_address:
    description: Where the certificate is served (C(host:port)); default the domain's port 443.
    type: str
  tls_timeout:
    description: Seconds the TLS server (and the GPU host) may take to answer.
    type: float
    default: 3.0
  images:
    description: The images the workshop needs; empty - those of the compose files and the project's containers.
    type: list
    elements: str
    default: []
  gpu_host:
    description: The GPU host's address; empty - no separate GPU host (a neutral line).
    type: str
  gpu_port:
    description: A TCP port the GPU host listens on.
    type: int
    default: 22
"""

EXAMPLES = r"""
- name: Check that the next workshop can start
  readiness_facts:
    project_dir: /home/dev/projects/comfyui
    env_file: /home/dev/projects/comfyui/.env
    outputs_dir: /home/dev/projects/comfyui/data/outputs
    backup_dir: /var/backups/comfy-wrapup/berlin
    backup_root: /var/backups/comfy-wrapup
    record: /var/backups/comfy-wrapup/berlin/run-record.json
    next_workshop: "2026-12-14"
  register: readiness

- name: The certificate outlives the next workshop
  ansible.builtin.assert:
    that: (readiness.lines | selectattr('check', 'equalto', 'certificate') | first).ok
"""

RETURN = r"""
lines:
  description:
    - One entry per check, in this order - backup, restore_test, certificate, disk, images, queues, gpu_host.
    - C(ok) is V(true), V(false), or V(null) for a neutral line; C(evidence) (or C(reason) when C(ok)
      is V(false)) says why; C(figures) holds the measures that drift (free space, days left).
  returned: always
  type: list
  elements: dict
  sample:
    - {check: certificate, item: TLS certificate valid, ok: false, figures: 2 days left,
       reason: "the certificate at /srv/comfyui/ssl/fullchain.pem expires 2026-12-02 21:34 UTC, before the end of
       the next workshop on 2026-12-06; not reachable on ws.example.org:443 (...): the file alone was checked"}
ok:
  description: No line is V(false).
  returned: always
  type: bool
at:
  description: When the checks ran (ISO-8601 UTC).
  returned: always
  type: str
next_workshop:
  description: The next workshop's date the certificate was checked against.
  returned: always
  type: str
  sample: "2026-12-06"
table:
  description: The lines as screen rows, a heading first.
  returned: always
  type: list
  elements: str
backup:
  description: The newest sealed backup's name; null when there is none.
  returned: always
  type: str
certificate:
  description: What the certificate line read - path, domain, file and served certificates (names, not_after, sha256, days_left).
  returned: always
  type: dict
disk:
  description: The disk line's numbers - outputs_bytes, margin, needed_bytes, free_bytes per path, source.
  returned: always
  type: dict
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_compose import ComposeProject
from ansible.module_utils.workshop_connection import CONNECTION_MUTUALLY_EXCLUSIVE, connection_argument_spec, require_libraries
from ansible.module_utils.workshop_dotenv import read_dotenv
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_readiness import (
    check_backup,
    check_certificate,
    check_disk,
    check_gpu_host,
    check_images,
    check_queues,
    check_restore_test,
    line,
    next_workshop_date,
    overall_ok,
    table,
)
from ansible.module_utils.workshop_record import read_record
from ansible.module_utils.workshop_redis import WorkshopRedis
from ansible.module_utils.workshop_time import parse_time, utc_iso


def _guarded(check, read):
    """read() -> line; a part that does not answer (or answers wrongly) is that check's failed line."""
    try:
        return read()
    except WorkshopError as exc:
        return line(check, False, exc.msg)


def _images(params, env):
    import docker.errors

    project = ComposeProject.from_params(params)
    return check_images(project, params["images"], params["project_dir"], env, docker.errors)


def _queues(params):
    client = WorkshopRedis.from_params(params)
    return check_queues(client.queue_counts(), client.address)


def readiness(params, run, now):
    """Every readiness line; a misconfiguration (no .env, a bad date) raises WorkshopError."""
    env_file = params.get("env_file") or f"{params['project_dir']}/.env"
    env = read_dotenv(env_file)
    next_day = next_workshop_date(params.get("next_workshop"), now)
    record = read_record(params["record"])
    backup_line, newest = check_backup(params["backup_dir"], record)
    cert_line, cert_facts = check_certificate(
        params["project_dir"],
        env,
        env_file,
        next_day,
        now,
        run,
        cert_path=params.get("cert_path"),
        domain=params.get("domain"),
        address=params.get("tls_address"),
        timeout=params["tls_timeout"],
    )
    disk_line, disk_facts = check_disk(
        params["outputs_dir"], params["backup_root"], record, params["record"], params["disk_margin"]
    )
    lines = [
        backup_line,
        check_restore_test(
            record,
            params["record"],
            params["restore_test_max_age_days"],
            now,
            newest=newest if backup_line["ok"] else None,
            will_run=params["run_restore_test"],
        ),
        cert_line,
        disk_line,
        _guarded("images", lambda: _images(params, env)),
        _guarded("queues", lambda: _queues(params)),
        check_gpu_host(params.get("gpu_host"), params["gpu_port"], params["tls_timeout"]),
    ]
    result = dict(
        lines=lines,
        ok=overall_ok(lines),
        at=utc_iso(now.timestamp()),
        next_workshop=next_day.isoformat(),
        backup=newest,
        certificate=cert_facts,
        disk=disk_facts,
    )
    result["table"] = table(result)
    return result


def main():
    module = AnsibleModule(
        argument_spec=connection_argument_spec(
            outputs_dir=dict(type="path", required=True),
            backup_dir=dict(type="path", required=True),
            backup_root=dict(type="path", required=True),
            record=dict(type="path", required=True),
            next_workshop=dict(type="str"),
            restore_test_max_age_days=dict(type="int", default=30),
            run_restore_test=dict(type="bool", default=False),
            disk_margin=dict(type="float", default=2.0),
            cert_path=dict(type="str"),
            domain=dict(type="str"),
            tls_address=dict(type="str"),
            tls_timeout=dict(type="float", default=3.0),
            images=dict(type="list", elements="str", default=[]),
            gpu_host=dict(type="str"),
            gpu_port=dict(type="int", default=22),
        ),
        mutually_exclusive=CONNECTION_MUTUALLY_EXCLUSIVE,
        supports_check_mode=True,
    )
    require_libraries(module, "redis", "docker")
    openssl = module.get_bin_path("openssl", required=True)

    def run(args, data):
        return module.run_command([openssl, *args[1:]], data=data, binary_data=True, environ_update={"LC_ALL": "C"})

    try:
        result = readiness(module.params, run, parse_time(time.time()))
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **exc.context)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
