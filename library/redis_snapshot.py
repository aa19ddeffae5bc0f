#!/usr/bin/python
"""Ansible module: a verified snapshot of the workshop's Redis, copied into the backup."""

DOCUMENTATION = r"""
---
module: redis_snapshot
short_description: Take a consistent, verified snapshot of the workshop's Redis
description:
  - Has the live Redis write its RDB snapshot without blocking it (C(BGSAVE); C(SAVE) only by
    O(method)), waits until C(LASTSAVE) advances and the save reports ok, and copies the file to
    O(dest) from inside the Redis container (the platform keeps it in a named volume) or from the host.
  - The copy goes to a temporary name, is verified (RDB header, every entry, CRC-64 trailer) and
    only then renamed. An existing O(dest) is never overwritten.
  - Returns the key count and the size of each queue as they are in the file itself, which the
    restore test compares against.
version_added: "0.1.0"
author: comfy-wrapup
requirements:
  - redis (Python library)
  - docker (Python library, for O(source=container))
attributes:
  check_mode:
    support: full
    description: Reports where it would read the snapshot from and write it to, and asks Redis for nothing.
  diff_mode:
    support: none
extends_documentation_fragment:
  - workshop_redis
  - workshop_compose
options:
  dest:
    description: Where to write the snapshot (a file that must not exist yet).
    type: path
    required: true
  method:
    description: C(bgsave) saves in the background, Redis keeps serving; C(save) blocks Redis while it saves.
    type: str
    choices: [bgsave, save]
    default: bgsave
  source:
    description:
      - Where the RDB file is read. V(container) copies it out of the Redis container through the
        Docker API; V(host) reads O(rdb_path) on the host.
    type: str
    choices: [container, host]
    default: container
  rdb_path:
    description:
      - Path of the RDB file, inside the container for O(source=container), on the host for O(source=host).
        Default what Redis reports (C(CONFIG GET dir), C(dbfilename)), else C(/data/dump.rdb).
    type: str
  service:
    description: Compose service of Redis, for O(source=container).
    type: str
    default: redis
  save_timeout:
    description: Seconds to wait for Redis to finish its snapshot.
    type: int
    default: 300
  project_dir:
    description: The workshop's project directory, to find the Redis container (O(source=container)).
    type: path
"""

EXAMPLES = r"""
- name: Export the database snapshot
  redis_snapshot:
    project_dir: /home/dev/projects/comfyui
    env_file: /home/dev/projects/comfyui/.env
    dest: /var/backups/comfy-wrapup/berlin/redis/dump.rdb
  register: snapshot

- name: The snapshot holds every job
  ansible.builtin.assert:
    that: snapshot.queues['queue:completed'] > 0
"""

RETURN = r"""
path:
  description: The snapshot written.
  returned: always
  type: str
size:
  description: Bytes of the snapshot.
  returned: success and not check mode
  type: int
sha256:
  description: sha256 of the snapshot.
  returned: success and not check mode
  type: str
keys:
  description: Keys in the snapshot (all databases).
  returned: success and not check mode
  type: int
queues:
  description: Size of each queue in the snapshot.
  returned: success and not check mode
  type: dict
  sample: {"queue:pending": 0, "queue:running": 0, "queue:completed": 242, "queue:failed": 10}
job_records:
  description: C(job:*) records in the snapshot.
  returned: success and not check mode
  type: int
rdb_version:
  description: RDB format version.
  returned: success and not check mode
  type: int
checksum:
  description: C(ok), or C(disabled) when Redis runs with C(rdbchecksum no).
  returned: success and not check mode
  type: str
lastsave:
  description: LASTSAVE of Redis after the snapshot (epoch seconds).
  returned: success and not check mode
  type: int
source:
  description: Where the file was read, C(<container>:<path>) or the host path.
  returned: always
  type: str
"""

import os

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.workshop_backup import sha256_file
from ansible.module_utils.workshop_compose import DOCKER_IMPORT_ERROR, HAS_DOCKER, ComposeProject, compose_argument_spec
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_rdb import rdb_summary
from ansible.module_utils.workshop_redis import (
    HAS_REDIS,
    QUEUES,
    REDIS_IMPORT_ERROR,
    REDIS_MUTUALLY_EXCLUSIVE,
    WorkshopRedis,
    queue_key,
    redis_argument_spec,
)

DEFAULT_RDB_PATH = "/data/dump.rdb"


def take_snapshot(params, check_mode):
    dest = params["dest"]
    if os.path.exists(dest):
        raise WorkshopError(f"{dest} exists already: a snapshot is never overwritten; choose a new dest", path=dest)
    conn = WorkshopRedis.from_params(params)
    rdb_path = params["rdb_path"] or conn.rdb_location() or DEFAULT_RDB_PATH
    project = container = None
    if params["source"] == "container":
        project = ComposeProject.from_params(params)
        container = project.select(names=[params["service"]])[0]
        source = f"{container.name}:{rdb_path}"
    else:
        source = rdb_path
    if check_mode:
        return dict(changed=True, path=dest, source=source)
    lastsave = conn.snapshot(params["method"], params["save_timeout"])
    tmp = f"{dest}.partial"
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    try:
        if container is not None:
            project.copy_out(container, rdb_path, tmp)
        else:
            _copy_host_file(rdb_path, tmp)
        os.chmod(tmp, 0o600)  # job records hold participants' prompts
        summary = rdb_summary(tmp, zsets=[queue_key(queue) for queue in QUEUES])
        digest = sha256_file(tmp)
        os.rename(tmp, dest)
    except OSError as exc:
        raise WorkshopError(f"Cannot write the snapshot to {dest}: {exc.strerror}", path=dest) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dict(
        changed=True,
        path=dest,
        source=source,
        size=summary["size_bytes"],
        sha256=digest,
        keys=summary["keys"],
        queues=summary["zset_sizes"],
        job_records=summary["job_records"],
        rdb_version=summary["version"],
        checksum=summary["checksum"],
        lastsave=int(lastsave.timestamp()) if hasattr(lastsave, "timestamp") else lastsave,
    )


def _copy_host_file(path, dest):
    with open(path, "rb") as src, open(dest, "wb") as out:
        for block in iter(lambda: src.read(1 << 20), b""):
            out.write(block)
        out.flush()
        os.fsync(out.fileno())


def main():
    argument_spec = redis_argument_spec()
    argument_spec.update(
        dest=dict(type="path", required=True),
        method=dict(type="str", choices=["bgsave", "save"], default="bgsave"),
        source=dict(type="str", choices=["container", "host"], default="container"),
        rdb_path=dict(type="str"),
        service=dict(type="str", default="redis"),
        save_timeout=dict(type="int", default=300),
    )
    argument_spec.update(compose_argument_spec(project_dir_required=False))
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=REDIS_MUTUALLY_EXCLUSIVE,
        required_if=[("source", "container", ["project_dir"])],
        supports_check_mode=True,
    )
    if not HAS_REDIS:
        module.fail_json(msg=missing_required_lib("redis"), exception=REDIS_IMPORT_ERROR)
    if module.params["source"] == "container" and not HAS_DOCKER:
        module.fail_json(msg=missing_required_lib("docker"), exception=DOCKER_IMPORT_ERROR)
    try:
        result = take_snapshot(module.params, module.check_mode)
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **exc.context)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
