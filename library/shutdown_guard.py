#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: may the workshop's containers (and volumes) be removed? Only reads."""

DOCUMENTATION = r"""
---
module: shutdown_guard
short_description: Check that taking a workshop down loses nothing the backup does not hold
description:
  - Reads, and changes nothing. It fails, saying why and what to do, when the shutdown would lose data.
  - V(preflight) (before anything stops) - the newest sealed backup of the workshop must verify
    (every file, archive member and the Redis snapshot's checksum), the run record must not say its
    verification failed (C(backup.verify.ok) false), and it must hold the log of every container
    of the project (the logs die with the containers) unless O(without_logs_backup). For
    O(mode=down_volumes), every volume in O(volumes) must be covered - Redis's data volume by the
    backup's snapshot, any other by O(volumes_not_needed) - and belong to the project. With
    O(require_offsite), the run record must also name a verified off-host copy of that newest backup
    (C(archive.targets.<name>) with its C(backup) and C(verified) true).
  - V(final) (O(mode=down_volumes), after every service stopped) - copies the snapshot the stopped
    Redis wrote as it shut down out of its container (from the volume, through the Docker API),
    checks it was written at that shutdown, and compares it by content with the backup's
    C(redis/dump.rdb) - every key, its type and its value; keys with a TTL (the workers'
    heartbeats) are left out and named. It compares the participants' files (O(sources)) with the
    backup's archives by path, size and sha256. Any difference is named and refuses the shutdown.
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
    description: The workshop's project directory.
    type: path
    required: true
  step:
    description: V(preflight) before the services stop, V(final) once they have.
    type: str
    choices: [preflight, final]
    required: true
  mode:
    description: The shutdown guarded - V(down) keeps the volumes, V(down_volumes) deletes them.
    type: str
    choices: [down, down_volumes]
    required: true
  backup_dir:
    description: The workshop's backup folder (its sealed backups, C(backup-<time>)).
    type: path
    required: true
  run_record:
    description: The workshop's run record (JSON); its C(backup.verify) is read.
    type: path
  volumes:
    description: The volumes the shutdown would delete (all of them must be covered).
    type: list
    elements: str
    default: []
  volumes_not_needed:
    description: Volumes the admin names as not needed; they may be deleted without a backup.
    type: list
    elements: str
    default: []
  redis_service:
    description: Compose service of Redis.
    type: str
    default: redis
  rdb_path:
    description: Path of Redis's snapshot inside its container (in its data volume).
    type: str
    default: /data/dump.rdb
  sources:
    description: For V(final), the participants' folders backed up, as name to path (the archives' member prefixes).
    type: dict
    default: {}
  not_before:
    description:
      - For V(final), when this run asked Redis to stop (ISO-8601); its snapshot must be written after it.
      - Unset (Redis was stopped before this run), the snapshot must be written within O(stop_timeout)
        seconds before Redis stopped.
    type: str
  stop_timeout:
    description: Seconds Redis had to stop and save.
    type: int
    default: 10
  without_logs_backup:
    description: Allow removing containers whose logs are not in a verified backup (they are lost).
    type: bool
    default: false
  require_offsite:
    description: For O(mode=down_volumes), refuse unless O(run_record) names a verified off-host copy of the newest backup.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Before anything stops, the newest backup must verify and cover every volume
  shutdown_guard:
    step: preflight
    mode: down_volumes
    project_dir: /home/dev/projects/comfyui
    project_name: comfyui
    backup_dir: /var/backups/comfy-wrapup/berlin
    run_record: /var/backups/comfy-wrapup/berlin/run-record.json
    volumes: [comfyui_redis-data]
  register: guard

- name: Once stopped, the final state must be the backup's, key by key and file by file
  shutdown_guard:
    step: final
    mode: down_volumes
    project_dir: /home/dev/projects/comfyui
    project_name: comfyui
    backup_dir: /var/backups/comfy-wrapup/berlin
    sources:
      outputs: /home/dev/projects/comfyui/data/outputs
  register: final

- name: Every key was compared
  ansible.builtin.assert:
    that: final.keys_compared > 0
"""

RETURN = r"""
backup:
  description: The newest sealed backup relied on (its folder name), null when there is none and none is needed.
  returned: always
  type: str
  sample: backup-20261129T170000Z
project:
  description: The compose project name used.
  returned: always
  type: str
covered:
  description: V(preflight) - each volume to delete and what covers it.
  returned: step=preflight
  type: dict
  sample: {comfyui_redis-data: "redis/dump.rdb of the backup, compared by content with the final snapshot"}
logs_missing:
  description: V(preflight) - containers whose logs the backup lacks (only when O(without_logs_backup) allows it).
  returned: step=preflight
  type: list
  elements: str
keys_compared:
  description: V(final) - keys compared between the final snapshot and the backup's.
  returned: step=final
  type: int
ttl_keys:
  description: V(final) - keys with a TTL, left out of the comparison (the workers' heartbeats).
  returned: step=final
  type: list
  elements: str
files_compared:
  description: V(final) - participants' files compared with the backup's archives.
  returned: step=final
  type: int
final_snapshot:
  description: V(final) - where the final snapshot was read and when Redis wrote it.
  returned: step=final
  type: dict
  sample: {source: "comfy-redis:/data/dump.rdb", written: "2026-11-29T17:03:01.123456789Z"}
differences:
  description: Every difference found (the task fails when there is any).
  returned: on failure of step=final
  type: list
  elements: str
"""

import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_backup import read_manifest, sealed_backups, verify_folder
from ansible.module_utils.workshop_compose import ComposeProject
from ansible.module_utils.workshop_connection import CONNECTION_MUTUALLY_EXCLUSIVE, connection_argument_spec, require_libraries
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_rdb import verify_rdb
from ansible.module_utils.workshop_shutdown import (
    compare_files,
    compare_rdb,
    final_snapshot_problem,
    logs_missing,
    offsite_problem,
    recorded_verify_problem,
    volume_coverage,
)

NOTHING_REMOVED = "Nothing was removed."


def newest_verified_backup(params, why, verify=True):
    """The newest sealed backup's folder, after checking the run record and verifying it; raises otherwise."""
    backup_dir = params["backup_dir"]
    sealed = sealed_backups(backup_dir)
    if not sealed:
        raise WorkshopError(
            f"No sealed backup in {backup_dir}: {why}. Make one first (tag backup). {NOTHING_REMOVED}", path=backup_dir
        )
    newest = sealed[-1]
    folder = os.path.join(backup_dir, newest)
    if params["run_record"]:
        problem = recorded_verify_problem(params["run_record"], newest)
        if problem:
            raise WorkshopError(
                f"Refused: {problem}. Make a new backup (tag backup) and verify it. {NOTHING_REMOVED}", path=params["run_record"]
            )
    problems = verify_folder(folder, check_rdb=verify_rdb) if verify else []
    if problems:
        raise WorkshopError(
            f"Refused: the newest backup {folder} does not verify: {'; '.join(problems[:5])}. "
            f"Make a new backup (tag backup). {NOTHING_REMOVED}",
            path=folder,
            problems=problems,
        )
    return newest, folder


def preflight(params, project):
    inventory = project.inventory()
    services = sorted({entry["service"] for entry in inventory["services"]})
    result = dict(changed=False, project=project.name, backup=None, covered={}, logs_missing=[])
    if params["mode"] == "down" and (not services or params["without_logs_backup"]):
        return result  # nothing dies, or the admin accepts losing the logs
    why = f"the logs of {len(services)} containers of project '{project.name}' die with them"
    if params["mode"] == "down_volumes":
        why = f"deleting the volumes of project '{project.name}' needs a verified backup of their data"
    newest, folder = newest_verified_backup(params, why)
    result["backup"] = newest
    missing = logs_missing(folder, inventory["services"])
    if missing and not params["without_logs_backup"]:
        raise WorkshopError(
            f"Refused: backup {folder} holds no log of {', '.join(missing)} (project '{project.name}'), which die with "
            f"the containers. Back up again (tag backup), or set shutdown_without_logs_backup=true. {NOTHING_REMOVED}",
            containers=missing,
        )
    result["logs_missing"] = missing
    if params["mode"] == "down_volumes" and params["require_offsite"]:
        problem = offsite_problem(params["run_record"], newest) if params["run_record"] else "no run record given"
        if problem:
            raise WorkshopError(
                f"Refused: {problem}. The volumes hold the only copy besides this host's backup: archive it (tag archive) "
                f"and read it back (tag verify_remote), or set shutdown_require_offsite=false. {NOTHING_REMOVED}",
                backup=newest,
            )
    if params["mode"] == "down_volumes":
        foreign = sorted(set(params["volumes"]) - set(inventory["volumes"]))
        if foreign:
            raise WorkshopError(
                f"Refused: {', '.join(foreign)} is not a volume of compose project '{project.name}' "
                f"(its volumes: {', '.join(inventory['volumes']) or 'none'}). {NOTHING_REMOVED}",
                volumes=foreign,
            )
        covered, uncovered = volume_coverage(params["volumes"], redis_volume(params, inventory), params["volumes_not_needed"])
        if uncovered:
            raise WorkshopError(
                f"Refused: no backup covers volume(s) {', '.join(uncovered)} of project '{project.name}'. Back them up, "
                f"or name them in shutdown_volumes_not_needed if their data is not needed. {NOTHING_REMOVED}",
                volumes=uncovered,
            )
        result["covered"] = covered
    return result


def redis_volume(params, inventory):
    """The named volume mounted where Redis keeps its snapshot, or None."""
    data_dir = os.path.dirname(params["rdb_path"])
    for entry in inventory["services"]:
        if entry["service"] == params["redis_service"]:
            for mount in entry["volumes"]:
                if mount["destination"] == data_dir:
                    return mount["name"]
    return None


def final(params, project):
    inventory = project.inventory()
    entries = [entry for entry in inventory["services"] if entry["service"] == params["redis_service"]]
    if not entries:
        raise WorkshopError(
            f"No container of service {params['redis_service']} in project '{project.name}': its final snapshot cannot "
            f"be read. {NOTHING_REMOVED}",
            project=project.name,
        )
    entry = entries[0]
    # Verified by the preflight step of this run; its snapshot's checksum is checked again as it is read.
    newest, folder = newest_verified_backup(params, "the final state is compared with it", verify=False)
    container = project.select(names=[params["redis_service"]])[0]
    scratch = tempfile.mkdtemp(prefix="shutdown-guard-")  # mode 0700: the snapshot holds participants' prompts
    try:
        final_rdb = os.path.join(scratch, "dump.rdb")
        _dummy, stat = project.copy_out_with_stat(container, params["rdb_path"], final_rdb)
        problem = final_snapshot_problem(entry, stat.get("mtime"), params["not_before"], params["stop_timeout"] + 1)
        if problem:
            raise WorkshopError(f"Refused: {problem}. {NOTHING_REMOVED}", container=entry["container"])
        backup_rdb = os.path.join(folder, read_manifest(folder).get("redis", {}).get("file") or "redis/dump.rdb")
        key_differences, keys, ttl_keys = compare_rdb(backup_rdb, final_rdb)
    finally:
        shutil.rmtree(scratch)
    file_differences, files = compare_files(folder, params["sources"])
    differences = key_differences + file_differences
    if differences:
        raise WorkshopError(
            f"Refused: the workshop's final state differs from backup {folder}: {'; '.join(differences[:10])}"
            + (f" (and {len(differences) - 10} more)" if len(differences) > 10 else "")
            + f". Start the services again, back up again (tag backup), then retry. {NOTHING_REMOVED}",
            differences=differences,
            backup=newest,
        )
    return dict(
        changed=False,
        project=project.name,
        backup=newest,
        keys_compared=keys,
        ttl_keys=ttl_keys,
        files_compared=files,
        final_snapshot=dict(source=f"{entry['container']}:{params['rdb_path']}", written=stat.get("mtime")),
    )


def main():
    argument_spec = connection_argument_spec(
        step=dict(type="str", choices=["preflight", "final"], required=True),
        mode=dict(type="str", choices=["down", "down_volumes"], required=True),
        backup_dir=dict(type="path", required=True),
        run_record=dict(type="path"),
        volumes=dict(type="list", elements="str", default=[]),
        volumes_not_needed=dict(type="list", elements="str", default=[]),
        redis_service=dict(type="str", default="redis"),
        rdb_path=dict(type="str", default="/data/dump.rdb"),
        sources=dict(type="dict", default={}),
        not_before=dict(type="str"),
        stop_timeout=dict(type="int", default=10),
        without_logs_backup=dict(type="bool", default=False),
        require_offsite=dict(type="bool", default=False),
    )
    module = AnsibleModule(
        argument_spec=argument_spec, mutually_exclusive=CONNECTION_MUTUALLY_EXCLUSIVE, supports_check_mode=True
    )
    require_libraries(module, "docker")
    params = module.params
    try:
        project = ComposeProject.from_params(params)
        if params["step"] == "preflight":
            result = preflight(params, project)
        elif params["mode"] != "down_volumes":
            raise WorkshopError("step=final is for mode=down_volumes: down keeps the volumes")
        else:
            result = final(params, project)
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **exc.context)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
