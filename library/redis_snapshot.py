#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: a verified snapshot of the workshop's Redis, copied into the backup."""

DOCUMENTATION = r"""
---
module: redis_snapshot
short_description: Take a consistent, verified snapshot of the workshop's Redis
description:
  - Has the live Redis write its RDB snapshot without blocking it (C(BGSAVE SCHEDULE); C(SAVE) only by
    O(method)), waits until Redis's own persistence counters (C(INFO persistence) - C(rdb_saves),
    C(rdb_bgsave_in_progress), C(rdb_last_bgsave_status)) show the save done and ok (not C(LASTSAVE),
    whose one-second resolution misses a save in the same second), and copies the file to O(dest)
    from inside the Redis container (the platform keeps it in a named volume) or from the host.
  - Before any save, it checks O(rdb_path) against where Redis says it writes (C(CONFIG GET)) and that
    its folder exists, failing with the path at fault. A Docker stream cut during the copy fails
    saying so; nothing partial is kept.
  - The copy goes to a temporary name, is verified (RDB header, every entry, CRC-64 trailer) and
    only then renamed. An existing O(dest) is never overwritten.
  - Returns the key count and the size of each queue as they are in the file itself, which the
    restore test compares against. Keys with a time to live (the workers' heartbeats) are counted
    apart (RV(volatile_keys)), since they expire and a restore check would not find them.
version_added: "0.1.0"
author: comfy-wrapup contributors (@comfy-wrapup)
requirements:
  - redis (Python library)
  - docker (Python library, for O(source=container))
attributes:
  check_mode:
    support: full
    description: Reports where it would read the snapshot from and write it to; asks Redis nothing and calls no Docker.
  diff_mode:
    support: none
    description: Returns no diff.
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
  description: Keys without a time to live in the snapshot (all databases).
  returned: success and not check mode
  type: int
volatile_keys:
  description: Keys with a time to live in the snapshot (the workers' heartbeats), not in RV(keys).
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
  description: rdb_last_save_time of Redis after the snapshot (epoch seconds).
  returned: success and not check mode
  type: int
rdb_saves:
  description: rdb_saves of Redis after the snapshot (Redis 7 and later; null before).
  returned: success and not check mode
  type: int
source:
  description: Where the file was read, C(<container>:<path>) or the host path.
  returned: always
  type: str
image:
  description:
    - The image the Redis container runs, as its compose file names it (null for O(source=host)).
    - A restore test or restore of a workshop already taken down runs a throwaway Redis of it.
  returned: success and not check mode
  type: str
  sample: redis:7-alpine
"""

import os
import tarfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_compose import ComposeProject
from ansible.module_utils.workshop_connection import CONNECTION_MUTUALLY_EXCLUSIVE, connection_argument_spec, require_libraries
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import atomic_file, sha256_file
from ansible.module_utils.workshop_lock import Busy
from ansible.module_utils.workshop_rdb import iter_rdb, rdb_summary
from ansible.module_utils.workshop_redis import QUEUES, WorkshopRedis, queue_key

try:
    import docker.errors
    import urllib3.exceptions
except ImportError:
    pass  # main() fails through require_libraries when the container is the source

DEFAULT_RDB_PATH = "/data/dump.rdb"


def _where(params):
    """Where the snapshot is read, as said without asking Redis or Docker."""
    path = params["rdb_path"] or "the RDB path Redis reports"
    if params["source"] == "container":
        return f"service {params['service']}:{path}"
    return path


def _resolve_rdb_path(params, conn):
    """The RDB path to read, checked against where Redis says it writes, before any save."""
    reported = conn.rdb_location()
    if params["rdb_path"] and reported and os.path.normpath(params["rdb_path"]) != os.path.normpath(reported):
        raise WorkshopError(
            f"rdb_path is {params['rdb_path']}, but Redis at {conn.address} writes its snapshot to {reported} "
            "(CONFIG GET dir, dbfilename): fix backup_redis_rdb_path or leave it empty; no snapshot was taken",
            path=params["rdb_path"],
            redis_reports=reported,
        )
    return params["rdb_path"] or reported or DEFAULT_RDB_PATH


def _check_folder_in_container(project, container, rdb_path):
    folder = os.path.dirname(rdb_path) or "/"
    try:
        stream, _dummy = project.client.api.get_archive(container.id, folder)
        stream.close()
    except docker.errors.DockerException as exc:  # NotFound and any API error: name the path either way
        raise WorkshopError(
            f"No folder {folder} in {container.name} for rdb_path {rdb_path} ({exc}): fix backup_redis_rdb_path; "
            "no snapshot was taken",
            path=rdb_path,
            container=container.name,
        ) from None


def take_snapshot(params, check_mode):
    dest = params["dest"]
    if os.path.exists(dest):
        raise WorkshopError(f"{dest} exists already: a snapshot is never overwritten; choose a new dest", path=dest)
    if check_mode:
        return dict(changed=True, path=dest, source=_where(params))
    conn = WorkshopRedis.from_params(params)
    rdb_path = _resolve_rdb_path(params, conn)
    project = container = None
    if params["source"] == "container":
        project = ComposeProject.from_params(params)
        container = project.select(names=[params["service"]])[0]
        _check_folder_in_container(project, container, rdb_path)
        source = f"{container.name}:{rdb_path}"
    else:
        if not os.path.isdir(os.path.dirname(rdb_path) or "/"):
            raise WorkshopError(
                f"No folder {os.path.dirname(rdb_path)} on this host for rdb_path {rdb_path}: fix backup_redis_rdb_path; "
                "no snapshot was taken",
                path=rdb_path,
            )
        source = rdb_path
    saved = conn.snapshot(params["method"], params["save_timeout"])
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    try:
        with Busy(os.path.dirname(os.path.dirname(dest))), atomic_file(dest) as target:
            if container is not None:
                _copy_from_container(project, container, rdb_path, target.tmp)
            else:
                _copy_host_file(rdb_path, target.tmp)
            os.chmod(target.tmp, 0o600)  # job records hold participants' prompts
            summary = rdb_summary(target.tmp, zsets=[queue_key(queue) for queue in QUEUES])
            volatile = sum(1 for entry in iter_rdb(target.tmp) if entry.expire_ms is not None)
            digest = sha256_file(target.tmp)
    except OSError as exc:
        raise WorkshopError(f"Cannot write the snapshot to {dest}: {exc.strerror or exc}", path=dest) from None
    return dict(
        changed=True,
        path=dest,
        source=source,
        size=summary["size_bytes"],
        sha256=digest,
        keys=summary["keys"] - volatile,
        volatile_keys=volatile,
        queues=summary["zset_sizes"],
        job_records=summary["job_records"],
        rdb_version=summary["version"],
        checksum=summary["checksum"],
        lastsave=saved["lastsave"],
        rdb_saves=saved["rdb_saves"],
        image=container.attrs.get("Config", {}).get("Image") if container is not None else None,
    )


def _copy_from_container(project, container, rdb_path, tmp):
    """Copy the RDB out of the container; a stream cut midway is said as such, a full disk as a write failure."""
    try:
        written = project.copy_out(container, rdb_path, tmp)
    except OSError as exc:
        if exc.errno is not None:
            raise  # our own disk: the caller names dest
        cut = exc
    except tarfile.TarError as exc:
        cut = exc
    except urllib3.exceptions.HTTPError as exc:  # the HTTP stream from the Docker Engine broke
        cut = exc
    else:
        if os.path.getsize(tmp) == written:
            return
        cut = f"{os.path.getsize(tmp)} of {written} bytes arrived"
    raise WorkshopError(
        f"The Docker Engine at {project.engine} stopped streaming {rdb_path} out of {container.name} mid-copy "
        f"({type(cut).__name__ if not isinstance(cut, str) else 'short copy'}: {cut}): is the Docker Engine, or the container, "
        "still up? Nothing partial was kept; run the backup again",
        path=rdb_path,
        container=container.name,
    ) from None


def _copy_host_file(path, dest):
    try:
        src = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise WorkshopError(f"Cannot read the snapshot {path} (source) on this host: {exc.strerror}", path=path) from None
    with src, open(dest, "wb") as out:
        for block in iter(lambda: src.read(1 << 20), b""):
            out.write(block)
        out.flush()
        os.fsync(out.fileno())


def main():
    module = AnsibleModule(
        argument_spec=connection_argument_spec(
            project_dir_required=False,
            dest=dict(type="path", required=True),
            method=dict(type="str", choices=["bgsave", "save"], default="bgsave"),
            source=dict(type="str", choices=["container", "host"], default="container"),
            rdb_path=dict(type="str"),
            service=dict(type="str", default="redis"),
            save_timeout=dict(type="int", default=300),
        ),
        mutually_exclusive=CONNECTION_MUTUALLY_EXCLUSIVE,
        required_if=[("source", "container", ["project_dir"])],
        supports_check_mode=True,
    )
    require_libraries(module, "redis", *(["docker"] if module.params["source"] == "container" else []))
    try:
        result = take_snapshot(module.params, module.check_mode)
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **exc.context)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
