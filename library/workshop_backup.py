#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: plan, open, seal and verify the workshop's backups."""

DOCUMENTATION = r"""
---
module: workshop_backup
short_description: Plan, open, seal and verify a ComfyUI workshop's backups
description:
  - A backup is one folder C(backup-<UTC time>) in the workshop's backup folder, built under a
    temporary name (C(.partial-backup-<time>)) by the other backup modules and renamed only when
    complete and verified, with C(MANIFEST.json) listing every file (path, size, sha256), every
    archive member, and the fingerprint of the data it was taken from.
  - V(planned) fingerprints the workshop's data (file listings of the sources, the queue in Redis,
    the containers and their restarts) and compares it with the newest sealed backup. Unchanged data needs no
    backup (RV(needed=false)); changed data gets a new folder name, never an old one. It checks
    that every source folder exists and that O(outputs_dir) is the folder the workshop writes its
    outputs to (C(OUTPUTS_PATH) of the .env, and what the compose project mounts), and free space
    for the estimate, before anything is written. It removes folders left by an interrupted backup
    (never complete, never a backup) only when O(lock_run_id) holds the workshop's lock and no
    process still works in them (it waits O(partial_wait) seconds for one that does).
  - V(opened) creates the partial folder the plan named (owner only, with C(redis/), C(logs/) and
    C(config/) in it) and keeps the configuration files O(config_files) of O(project_dir) in C(config/),
    mode 0600. A missing file of O(config_required_files) fails before anything is written; other
    missing ones are a warning. With O(config_encrypted), the files are only looked for (the
    controller writes them encrypted).
  - V(sealed) writes the manifest into the partial folder, fsyncs every file, verifies the folder
    against it (the Redis snapshot by its own checksum too), renames it to its final name, fsyncs the
    backup folder, and records the backup in O(record). A sealed backup is never written again.
  - V(verified) checks a sealed backup against its manifest, every archive member by member, and
    the Redis snapshot's own checksum, records the result in O(record) (C(backup.verify), C(ok) false
    on any failure, naming the file and the archive member), and fails loudly on any difference. A
    newer sealed backup the record does not know (its run was killed after sealing) is adopted into
    the record once it verifies.
version_added: "0.1.0"
author: comfy-wrapup contributors (@comfy-wrapup)
requirements:
  - redis (Python library, for V(planned))
  - docker (Python library, for V(planned))
attributes:
  check_mode:
    support: full
    description: >-
      V(planned) and V(verified) only read; V(opened) checks the configuration files and reports the
      folder it would create; V(sealed) reports the rename it would make.
  diff_mode:
    support: none
    description: Returns no diff.
extends_documentation_fragment:
  - workshop_redis
  - workshop_compose
options:
  state:
    description: What to do.
    type: str
    choices: [planned, opened, sealed, verified]
    required: true
  backup_dir:
    description: The workshop's backup folder, holding its backups.
    type: path
    required: true
  sources:
    description: For V(planned), the folders and files backed up, as name to path; their listings make the fingerprint.
    type: dict
    default: {}
  partial:
    description: For V(opened) and V(sealed), the partial folder to create or seal (RV(partial) of V(planned)).
    type: path
  config_files:
    description:
      - For V(opened), the configuration files to keep, relative to O(project_dir).
      - For V(planned), the same list; their content is part of what a re-run compares.
    type: list
    elements: str
    default: []
  config_required_files:
    description: For V(opened), the files of O(config_files) whose absence fails the backup.
    type: list
    elements: str
    default: []
  config_encrypted:
    description: For V(opened), only look for the configuration files; the controller keeps them encrypted.
    type: bool
    default: false
  name:
    description:
      - For V(sealed), the final name (RV(name) of V(planned)).
      - For V(verified), the backup to verify (default the newest).
    type: str
  facts:
    description: For V(sealed), facts recorded in the manifest (workshop id, fingerprint, Redis snapshot facts).
    type: dict
    default: {}
  project_dir:
    description:
      - For V(planned), the workshop's project directory, to find its containers.
      - For V(opened), the folder the configuration files are in.
    type: path
  outputs_dir:
    description:
      - For V(planned), the participants' outputs folder, cross-checked with C(OUTPUTS_PATH) in O(env_file)
        and the folders the compose project mounts as outputs; a mismatch fails naming both paths.
    type: path
  record:
    description: The run record; V(sealed) and V(verified) write the C(backup) section and C(backup.verify) into it.
    type: path
  record_data:
    description: For V(sealed), facts recorded in the C(backup) section of O(record) (and in the manifest, for adoption).
    type: dict
    default: {}
  lock_run_id:
    description: For V(planned), the run id holding the workshop's lock; without it no partial folder is removed.
    type: str
  partial_wait:
    description: For V(planned), seconds to wait for a process still working in a partial folder.
    type: int
    default: 120
  reuse_unchanged:
    description:
      - For V(verified), take the passed verification O(record) holds for this backup (its seal's, which read
        every file from disk, or an earlier V(verified)'s) instead of reading it again, when no file of the
        backup changed since that verification read it (same paths, sizes,
        modification and change times and inodes; any write to a file changes its change time).
      - Off, every byte is read again.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Is a backup needed, and is there room for it?
  workshop_backup:
    state: planned
    backup_dir: /var/backups/comfy-wrapup/berlin
    project_dir: /home/dev/projects/comfyui
    env_file: /home/dev/projects/comfyui/.env
    outputs_dir: /home/dev/projects/comfyui/data/outputs
    sources:
      outputs: /home/dev/projects/comfyui/data/outputs
  register: plan

- name: Create the backup's folder and keep the configuration in it
  workshop_backup:
    state: opened
    backup_dir: /var/backups/comfy-wrapup/berlin
    partial: "{{ plan.partial }}"
    project_dir: /home/dev/projects/comfyui
    config_files: [.env, docker-compose.yml]
    config_required_files: [.env, docker-compose.yml]
  when: plan.needed

- name: Verify the newest backup
  workshop_backup:
    state: verified
    backup_dir: /var/backups/comfy-wrapup/berlin
    record: /var/backups/comfy-wrapup/berlin/run-record.json
  register: verified

- name: It is intact
  ansible.builtin.assert:
    that: verified.problems | length == 0
"""

RETURN = r"""
needed:
  description:
    - V(planned) - whether the data changed since the newest sealed backup (or there is none).
    - Outputs that went since (retention or cleanup removed them), with nothing added or changed and every
      other source, the Redis queues and the containers as they were, are no change (RV(outputs_removed_since)).
    - A newest backup whose verification or restore test failed (run record) always needs a new one.
    - Changes are seen by path, size and modification time (as rsync sees them) and, for the configuration
      files O(config_files), by content; the outputs left after a removal are compared by sha256.
  returned: state=planned
  type: bool
outputs_removed_since:
  description: V(planned) - the newest backup, when outputs only went since it and nothing else changed (it
    holds every file left, so no new backup is made); else null.
  returned: state=planned
  type: str
name:
  description: The backup's name (V(planned) - the one to make; V(sealed), V(verified) - the one sealed or verified).
  returned: state in (planned, sealed, verified)
  type: str
  sample: backup-20261129T170000Z
partial:
  description: V(planned) - the temporary folder to build the backup in; V(opened) - the folder created.
  returned: state in (planned, opened)
  type: str
config_present:
  description: V(opened) - the configuration files found, kept in C(config/) unless O(config_encrypted).
  returned: state=opened
  type: list
  elements: str
  sample: [.env, docker-compose.yml]
config_missing:
  description: V(opened) - the optional configuration files not found (a warning says so).
  returned: state=opened
  type: list
  elements: str
  sample: [docker-compose.users.yml]
latest:
  description: The newest sealed backup before this run, null when there is none.
  returned: state in (planned, sealed, verified)
  type: str
fingerprint:
  description: V(planned) - the fingerprint of the workshop's data now.
  returned: state=planned
  type: dict
estimate_bytes:
  description: V(planned) - bytes the backup will take at most (sources plus Redis and logs).
  returned: state=planned
  type: int
free_bytes:
  description: V(planned) - free bytes on the backup disk.
  returned: state=planned
  type: int
removed_partials:
  description: V(planned) - folders of interrupted backups removed (in check mode, that would be).
  returned: state=planned
  type: list
  elements: str
outputs:
  description: V(planned) - files, bytes and links in O(outputs_dir), counted as the archive and the state phase count them.
  returned: state=planned and outputs_dir given
  type: dict
  sample: {files: 404, bytes: 123456789, links: 0}
unrecorded:
  description: V(planned) - the newest sealed backup when the run record does not name it (a killed run sealed it), else null.
  returned: state=planned
  type: str
failures:
  description: V(verified) - every difference found, as file, archive member (or null) and reason.
  returned: state=verified
  type: list
  elements: dict
  sample: [{file: outputs.tar, member: outputs/user003/img.png, reason: content differs from the manifest}]
adopted:
  description: V(verified) - whether the verified backup was added to the run record, which did not know it.
  returned: state=verified
  type: bool
reused:
  description: V(verified) - whether the record's earlier passed verification was taken (O(reuse_unchanged)), nothing read again.
  returned: state=verified
  type: bool
verified_at:
  description: V(verified) - when the reused verification read the backup (UTC, ISO 8601); null when this run read it.
  returned: state=verified
  type: str
path:
  description: V(sealed), V(verified) - the backup folder.
  returned: state in (sealed, verified)
  type: str
files:
  description: V(sealed), V(verified) - files in the backup.
  returned: state in (sealed, verified)
  type: int
problems:
  description: V(verified) - every difference found (the task fails when there is any).
  returned: state=verified
  type: list
  elements: str
"""

import json
import os
import shutil

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_backup import (
    LOGS_ALLOWANCE,
    PARTIAL_PREFIX,
    backup_name,
    check_outputs_dir,
    check_space,
    config_fingerprint,
    folder_signature,
    free_space,
    members_file,
    only_removed_since,
    open_partial,
    read_manifest,
    seal,
    sealed_backups,
    stale_partials,
    tree_fingerprint,
    trusted_members,
    verify_folder,
)
from ansible.module_utils.workshop_connection import CONNECTION_MUTUALLY_EXCLUSIVE, connection_argument_spec, require_libraries
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import tree_usage
from ansible.module_utils.workshop_lock import Busy, holds_lock, require_absolute, wait_not_busy
from ansible.module_utils.workshop_rdb import verify_rdb
from ansible.module_utils.workshop_record import describe_failures, read_record, record_backup, record_verify


def _partials(params, check_mode, warnings):
    """Remove the folders of interrupted backups, only under our lock and once no process works in them."""
    backup_dir = params["backup_dir"]
    partials = stale_partials(backup_dir)
    removed = []
    ours = bool(params["lock_run_id"]) and holds_lock(backup_dir, params["lock_run_id"])
    for folder in partials:
        if not ours:
            if not check_mode:
                warnings.append(f"{folder} left by an interrupted backup was kept: this run does not hold the workshop's lock")
            else:
                removed.append(folder)
            continue
        if not wait_not_busy(folder, 0 if check_mode else params["partial_wait"]):
            warnings.append(f"{folder} is still being written by a process of an earlier run: left alone")
            continue
        removed.append(folder)
        if not check_mode:
            shutil.rmtree(folder)
    return removed


def _run_record(params):
    """The run record ({} without one)."""
    return read_record(params["record"]) if params["record"] else {}


def _recorded_backup(record):
    """The run record's backup section ({} before any backup)."""
    return record.get("backup") or {}


def plan(params, check_mode):
    # Imported here: only the plan talks to Redis and Docker, and their libraries cost a module run
    # 0.2 s of CPU to import (the seal and the verification run without them).
    from ansible.module_utils.workshop_compose import ComposeProject, containers_fingerprint
    from ansible.module_utils.workshop_redis import WorkshopRedis

    backup_dir = require_absolute(params["backup_dir"], "backup_dir")
    warnings = []
    for name, folder in sorted(params["sources"].items()):
        if name == "outputs" and params["outputs_dir"]:
            continue  # checked with more to say below
        if not os.path.isdir(folder):
            raise WorkshopError(
                f"The source folder {name} ({folder}) does not exist: fix its path (workshop_user_dirs / "
                "workshop_outputs_dir); nothing was backed up",
                path=folder,
            )
    outputs = None
    project = ComposeProject.from_params(params)
    if params["outputs_dir"]:
        check_outputs_dir(params["outputs_dir"], params["project_dir"], params.get("env_file"), project.containers())
        outputs = {key: value for key, value in tree_usage(params["outputs_dir"]).items() if key in ("files", "bytes", "links")}
    conn = WorkshopRedis.from_params(params)
    removed = _partials(params, check_mode, warnings)
    files_digest, per_source, files_bytes = tree_fingerprint(params["sources"])
    fingerprint = _canonical(
        dict(
            files=files_digest,
            sources=per_source,
            config=config_fingerprint(params["project_dir"], params["config_files"]),
            redis=conn.queue_fingerprint(),
            containers=containers_fingerprint(project),
        )
    )
    sealed = sealed_backups(backup_dir)
    latest = sealed[-1] if sealed else None
    latest_dir = os.path.join(backup_dir, latest) if latest else None
    manifest = _latest_manifest(latest_dir, warnings) if latest else {}
    record = _run_record(params)
    # A newest backup whose verification or restore test failed is no backup to rely on: a new one,
    # whatever changed (as the checklist asks).
    failed = _failed_checks(record, latest)
    needed = failed or not _same_data(manifest.get("fingerprint"), fingerprint)
    outputs_removed_since = None
    if needed and not failed and latest and _only_outputs_removed(manifest, fingerprint, params, latest_dir, warnings):
        needed, outputs_removed_since = False, latest
    name = backup_name()
    if needed and name in sealed:
        raise WorkshopError(f"{os.path.join(backup_dir, name)} exists already: run again in a second", path=backup_dir)
    memory = conn.call(conn.client.info, "memory").get("used_memory_dataset", 0)
    estimate = files_bytes + memory + LOGS_ALLOWANCE
    free = check_space(backup_dir, estimate) if needed else free_space(backup_dir)
    recorded = _recorded_backup(record).get("name")
    return dict(
        changed=bool(removed),
        needed=needed,
        name=name,
        partial=os.path.join(backup_dir, PARTIAL_PREFIX + name[len("backup-") :]),
        latest=latest,
        unrecorded=latest if latest and latest != recorded and (recorded is None or latest > recorded) else None,
        fingerprint=fingerprint,
        outputs_removed_since=outputs_removed_since,
        estimate_bytes=estimate,
        free_bytes=free,
        removed_partials=removed,
        outputs=outputs,
        warnings=warnings,
    )


def _latest_manifest(latest_dir, warnings):
    """read_manifest, or {} with a warning: a newest backup whose manifest cannot be read is no backup to
    rely on, so a new one is made beside it (the day the newest backup is damaged is no day to refuse one)."""
    try:
        return read_manifest(latest_dir)
    except WorkshopError as exc:
        warnings.append(f"{exc}: that backup cannot be relied on, so a new one is made; it is left as it is")
        return {}


def _same_data(stored, fingerprint):
    """Whether a backup's stored fingerprint says the data is as now: every part it has. A backup sealed
    before a part was added (the per-source digests, the configuration's) is compared without it."""
    if not isinstance(stored, dict):
        return False
    return all(stored[key] == fingerprint.get(key) for key in stored if key != "sources")


def _failed_checks(record, latest):
    """Whether the run record says the verification or the restore test of backup `latest` failed."""
    if not latest or not isinstance(record, dict):
        return False
    backup = record.get("backup") if isinstance(record.get("backup"), dict) else {}
    for outcome in (backup.get("verify"), record.get("restore_test")):
        if isinstance(outcome, dict) and outcome.get("backup") == latest and outcome.get("ok") is False:
            return True
    return False


def _trusted_members(latest_dir, manifest, archive, warnings):
    """trusted_members, or None with a warning (a new backup is then made, and `--tags verify` names what is wrong)."""
    try:
        return trusted_members(latest_dir, manifest, archive)
    except ValueError as exc:
        warnings.append(
            f"{os.path.join(latest_dir, members_file(archive))} cannot be relied on ({exc}): a new backup is made; "
            f"run --tags verify to check {os.path.basename(latest_dir)}"
        )
        return None


def _only_outputs_removed(manifest, fingerprint, params, latest_dir, warnings):
    """Whether outputs went since the backup at `latest_dir` (its `manifest`) and nothing else changed
    (only_removed_since): every other part of the fingerprint (Redis, containers, any part added later) and
    every other source as stored."""
    stored = manifest.get("fingerprint")
    if not isinstance(stored, dict) or not isinstance(stored.get("sources"), dict) or "outputs" not in params["sources"]:
        return False
    parts = (set(stored) | set(fingerprint)) - {"files", "sources"}
    sources = (set(stored["sources"]) | set(fingerprint["sources"])) - {"outputs"}
    if any(stored.get(key) != fingerprint.get(key) for key in parts) or any(
        stored["sources"].get(name) != fingerprint["sources"].get(name) for name in sources
    ):
        return False
    members = _trusted_members(latest_dir, manifest, "outputs.tar", warnings)
    return members is not None and only_removed_since(params["sources"]["outputs"], members, "outputs")


def _canonical(value):
    """The fingerprint as JSON gives it back (tuples become lists), so stored and fresh ones compare equal."""
    return json.loads(json.dumps(value, sort_keys=True))


def open_backup(params, check_mode):
    backup_dir = require_absolute(params["backup_dir"], "backup_dir")
    config = open_partial(
        backup_dir,
        params["partial"],
        params["project_dir"],
        params["config_files"],
        params["config_required_files"],
        copy_config=not params["config_encrypted"],
        check_mode=check_mode,
    )
    warnings = []
    if config["missing"]:
        warnings.append(
            f"Not in {params['project_dir']}, so not in the backup: {', '.join(config['missing'])} "
            "(optional: not in backup_config_required_files)"
        )
    return dict(
        changed=True,
        partial=params["partial"],
        config_present=config["present"],
        config_missing=config["missing"],
        warnings=warnings,
    )


def seal_backup(params, check_mode):
    backup_dir, name, partial = require_absolute(params["backup_dir"], "backup_dir"), params["name"], params["partial"]
    final = os.path.join(backup_dir, name)
    sealed = sealed_backups(backup_dir)
    result = dict(changed=True, name=name, path=final, latest=sealed[-1] if sealed else None)
    if check_mode:
        return result
    if not partial or not os.path.isdir(partial):
        raise WorkshopError(f"No partial backup at {partial} to seal: run the backup from its start", path=partial)
    with Busy(partial):
        facts = dict(params["facts"], name=name, record=params["record_data"])
        sealed = seal(partial, final, facts, check_rdb=verify_rdb)
    files = len(sealed.manifest["files"])
    if params["record"]:
        record_backup(params["record"], name, final, files, params["record_data"], signature=sealed.signature)
    return dict(result, files=files)


def verify(params, check_mode):
    backup_dir = require_absolute(params["backup_dir"], "backup_dir")
    sealed = sealed_backups(backup_dir)
    name = params["name"] or (sealed[-1] if sealed else None)
    if name is None or name not in sealed:
        raise WorkshopError(
            f"No sealed backup {name + ' ' if name else ''}in {backup_dir}: make one first (tag backup)",
            path=backup_dir,
        )
    folder = os.path.join(backup_dir, name)
    # The files' signature only matters to a run record, which keeps it with the verification.
    signature = folder_signature(folder) if params["record"] else None
    recorded_backup = _recorded_backup(_run_record(params))
    earlier = recorded_backup.get("verify") or {}
    same = earlier.get("backup") == name and earlier.get("signature") == signature
    reused = bool(params["reuse_unchanged"] and earlier.get("ok") is True and same)
    failures = [] if reused else verify_folder(folder, check_rdb=verify_rdb)
    manifest = read_manifest(folder)
    adopted = False
    if params["record"]:
        recorded = recorded_backup.get("name")
        adopted = not failures and recorded != name and (recorded is None or name > recorded)
        if not check_mode:
            if adopted:
                record_backup(
                    params["record"], name, folder, len(manifest.get("files", {})), manifest.get("record") or {}, adopted=True
                )
            record_verify(params["record"], name, failures, signature=signature)
    return dict(
        changed=adopted,
        name=name,
        path=folder,
        latest=sealed[-1],
        files=len(manifest.get("files", {})),
        problems=describe_failures(failures),
        failures=failures,
        adopted=adopted,
        reused=reused,
        verified_at=earlier.get("at") if reused else None,
    )


def main():
    argument_spec = connection_argument_spec(
        project_dir_required=False,
        state=dict(type="str", choices=["planned", "opened", "sealed", "verified"], required=True),
        backup_dir=dict(type="path", required=True),
        sources=dict(type="dict", default={}),
        partial=dict(type="path"),
        config_files=dict(type="list", elements="str", default=[]),
        config_required_files=dict(type="list", elements="str", default=[]),
        config_encrypted=dict(type="bool", default=False),
        name=dict(type="str"),
        facts=dict(type="dict", default={}),
        outputs_dir=dict(type="path"),
        record=dict(type="path"),
        record_data=dict(type="dict", default={}),
        lock_run_id=dict(type="str"),
        partial_wait=dict(type="int", default=120),
        reuse_unchanged=dict(type="bool", default=False),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=CONNECTION_MUTUALLY_EXCLUSIVE,
        required_if=[
            ("state", "planned", ["project_dir"]),
            ("state", "opened", ["partial", "project_dir"]),
            ("state", "sealed", ["partial", "name"]),
        ],
        supports_check_mode=True,
    )
    state = module.params["state"]
    require_libraries(module, *(["redis", "docker"] if state == "planned" else []))
    try:
        if state == "planned":
            result = plan(module.params, module.check_mode)
        elif state == "opened":
            result = open_backup(module.params, module.check_mode)
        elif state == "sealed":
            result = seal_backup(module.params, module.check_mode)
        else:
            result = verify(module.params, module.check_mode)
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **exc.context)
    for warning in result.pop("warnings", []):
        module.warn(warning)
    if result.get("problems"):
        module.fail_json(msg=f"Backup {result['path']} is damaged: {'; '.join(result['problems'][:10])}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
