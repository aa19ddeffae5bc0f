#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: copy a sealed backup off the workshop host, verify the copy, or fetch it back."""

DOCUMENTATION = r"""
---
module: archive_copy
short_description: Copy a workshop's sealed backup to S3-compatible storage or another machine, verify it, fetch it back
description:
  - V(present) copies one sealed backup (default the newest, which the run record must say verified) to one
    target, as C(<prefix>/<workshop_id>/<backup>/<file>), C(MANIFEST.json) last. Every file is checked
    against the manifest's sha256 as it is read. An object already there with the same checksum is
    skipped; one with other content fails naming its key and is never overwritten.
  - On S3, files of O(multipart_threshold_mb) or more go up as a multipart upload of O(part_size_mb) parts;
    the object appears only when complete. A killed run leaves the upload open and the next run resumes it
    (parts whose MD5 matches are kept). The sha256 is stored as object metadata (C(sha256)); after each
    upload the object's size, metadata and ETag are checked.
  - Over SSH (OpenSSH client, key O(target.key_file)), each file is appended to C(.<name>.part) beside its
    final name (a killed run resumes at its size), hashed by the storage host (C(sha256sum)), and
    hard-linked to its final name only when it matches (never replacing a file).
  - With O(slice_seconds), it stops between parts after that many seconds and returns RV(done=false) and
    RV(resume), to be called again with O(resume) (progress lines, as the drain shows).
  - V(verified) reads the copy back from the target (O(verify) V(all), or V(sample) - the manifest and
    O(sample_files) files at random) and compares each sha256 with the local manifest; any difference is
    recorded (C(verified) false) and fails naming the file.
  - V(fetched) downloads a backup (O(backup), or the newest complete one) from the target into
    O(dest)/<backup>/, checking each file against the copy's manifest; written into a C(.partial-fetch-*)
    folder and renamed when complete. An existing folder is checked, never overwritten.
  - Run record C(archive.targets.<name>) = C({where, at, backup, files, bytes, verified, verified_at}).
version_added: "0.2.0"
author: comfy-wrapup contributors (@comfy-wrapup)
requirements:
  - boto3 (Python library, for s3 targets)
  - ssh (OpenSSH client, for ssh targets; sh and sha256sum on the storage host)
attributes:
  check_mode:
    support: full
    description: Lists what would be uploaded or fetched (reading the target only) and changes nothing.
  diff_mode:
    support: none
    description: Returns no diff.
options:
  state:
    description: V(present) copies, V(verified) re-reads the copy, V(fetched) downloads it.
    type: str
    choices: [present, verified, fetched]
    default: present
  target:
    description: One entry of C(archive_targets).
    type: dict
    required: true
    suboptions:
      name:
        description: The target's name (the run record's key).
        type: str
        required: true
      type:
        description: V(s3) or V(ssh).
        type: str
        choices: [s3, ssh]
        required: true
      endpoint_url:
        description: S3 endpoint URL (empty - AWS).
        type: str
      region:
        description: S3 region.
        type: str
        default: us-east-1
      bucket:
        description: S3 bucket.
        type: str
      prefix:
        description: Key prefix in the bucket.
        type: str
        default: ""
      storage_class:
        description: S3 storage class of the objects (a cold tier, e.g. C(GLACIER_IR), C(STANDARD_IA)).
        type: str
      access_key:
        description: S3 access key (from a vault); unset - C(AWS_ACCESS_KEY_ID) of the host's environment.
        type: str
      secret_key:
        description: S3 secret key (from a vault); unset - C(AWS_SECRET_ACCESS_KEY) of the host's environment.
        type: str
      validate_certs:
        description: Check the endpoint's TLS certificate.
        type: bool
        default: true
      host:
        description: SSH storage host.
        type: str
      port:
        description: SSH port.
        type: int
        default: 22
      user:
        description: SSH user.
        type: str
      path:
        description: Folder on the storage host (absolute).
        type: path
      key_file:
        description: Private key on the workshop host for the storage host.
        type: path
  workshop_id:
    description: The workshop's id (the second level of the copy's path).
    type: str
    required: true
  backup_dir:
    description: For V(present) and V(verified), the workshop's local backup folder.
    type: path
  backup:
    description: The backup's folder name; default the newest verified (V(present), V(verified)) or complete (V(fetched)).
    type: str
  record:
    description: The run record (its C(backup.verify) is read, its C(archive) section written).
    type: path
  dest:
    description: For V(fetched), the local folder the backup is downloaded into.
    type: path
  verify:
    description: For V(verified), re-read V(all) files or a V(sample).
    type: str
    choices: [sample, all]
    default: sample
  sample_files:
    description: For O(verify=sample), how many files besides the manifest.
    type: int
    default: 3
  part_size_mb:
    description: S3 multipart part size (MiB, at least 5).
    type: int
    default: 64
  multipart_threshold_mb:
    description: S3 files of this size (MiB) or more go up in parts.
    type: int
    default: 64
  concurrency:
    description: S3 parts in flight at once (memory - this many parts); reading and hashing overlap sending.
    type: int
    default: 3
  slice_seconds:
    description: Stop after about this many seconds and return RV(resume) (0 - run to the end).
    type: int
    default: 0
  resume:
    description: RV(resume) of the previous slice of this run.
    type: dict
  known_hosts:
    description:
      - For ssh targets, the known_hosts file. A new host key is accepted and stored (in check mode accepted
        for that call only), a changed one refused.
    type: path
"""

EXAMPLES = r"""
- name: Copy the newest verified backup to object storage, 30 seconds per progress line
  archive_copy:
    target:
      name: r2
      type: s3
      endpoint_url: https://ACCOUNT.r2.cloudflarestorage.com
      bucket: workshops
      access_key: "{{ vault_r2_access_key }}"
      secret_key: "{{ vault_r2_secret_key }}"
    workshop_id: berlin
    backup_dir: /var/backups/comfy-wrapup/berlin
    record: /var/backups/comfy-wrapup/berlin/run-record.json
    slice_seconds: 30
  register: copied
  no_log: true
- name: The copy is complete
  ansible.builtin.assert:
    that: copied.done
- name: Fetch the newest backup back from the storage host
  archive_copy:
    state: fetched
    target: {name: nas, type: ssh, host: nas.example.org, user: backup, path: /srv/workshops, key_file: /root/.ssh/nas}
    workshop_id: berlin
    dest: /tmp/restore
  register: fetched
- name: Every file came back
  ansible.builtin.assert:
    that: fetched.files > 0
"""

RETURN = r"""
backup:
  description: The backup's folder name.
  returned: always
  type: str
  sample: backup-20261129T170211Z
where:
  description: Where the copy is (V(present), V(verified)).
  returned: state in (present, verified)
  type: str
  sample: s3://workshops/comfy/berlin/backup-20261129T170211Z/
done:
  description: V(present) - the copy is complete (every file and the manifest there).
  returned: state=present
  type: bool
uploaded:
  description: V(present) - files uploaded by this call (in check mode - that would be).
  returned: state=present
  type: list
  elements: str
unchanged:
  description: V(present) - files already on the target with the same checksum (skipped).
  returned: state=present
  type: list
  elements: str
pending:
  description: V(present) - files still to upload (the next slice goes on).
  returned: state=present
  type: list
  elements: str
progress:
  description: V(present) - files and bytes done of the whole backup, bytes sent by this run, seconds, rate.
  returned: state=present
  type: dict
  sample: {files_done: 3, files: 9, bytes_done: 73400320, bytes: 1073741824, bytes_sent: 73400320, seconds: 2.1, rate_mib_s: 33.3}
summary:
  description: V(present) - the progress as one line.
  returned: state=present
  type: str
resume:
  description: V(present) - give it as O(resume) to the next slice.
  returned: state=present
  type: dict
checked:
  description: V(verified) - files read back from the target.
  returned: state=verified
  type: list
  elements: str
failures:
  description: V(verified) - files that differ ({file, reason}).
  returned: state=verified
  type: list
  elements: dict
path:
  description: V(fetched) - the local backup folder.
  returned: state=fetched
  type: str
files:
  description: Files of the backup, manifest included (V(fetched); null in check mode when not fetched yet).
  returned: state in (present, fetched)
  type: int
bytes:
  description: Bytes of the backup, manifest included (V(fetched); null in check mode when not fetched yet).
  returned: state in (present, fetched)
  type: int
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_archive import (
    MIB,
    Progress,
    backup_entries,
    choose_backup,
    copy_backup,
    fetch_backup,
    make_target,
    record_archive,
    verify_copy,
)
from ansible.module_utils.workshop_connection import require_libraries
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_record import read_record
from ansible.module_utils.workshop_s3 import target_argument_spec


def _local(params):
    if not params["backup_dir"]:
        raise WorkshopError(f"state={params['state']} needs backup_dir (the workshop's local backup folder)")
    backup = choose_backup(params["backup_dir"], params["record"], params["backup"])
    return backup, os.path.join(params["backup_dir"], backup)


def present(params, store, check_mode):
    try:
        backup, folder = _local(params)
    except WorkshopError as exc:
        if not check_mode:
            raise
        # A dry run before the first backup: the backup phase would make the backup this one copies.
        return dict(
            changed=True,
            backup=None,
            where=None,
            done=False,
            uploaded=[],
            unchanged=[],
            pending=[],
            progress={},
            summary=f"nothing to list yet: {exc.msg}",
            resume={},
            files=0,
            bytes=0,
        )
    entries = backup_entries(folder)
    progress = Progress(entries, params["resume"], owner=f"{params['target']['name']}/{params['workshop_id']}/{backup}")
    deadline = time.time() + params["slice_seconds"] if params["slice_seconds"] > 0 else None
    name = params["target"]["name"]
    where = store.where(params["workshop_id"], backup)
    outcome = copy_backup(store, folder, params["workshop_id"], backup, progress, deadline=deadline, check_mode=check_mode)
    result = dict(
        changed=bool(outcome["uploaded"]) or (check_mode and bool(outcome["pending"])),
        backup=backup,
        where=where,
        done=outcome["done"],
        uploaded=outcome["pending"] if check_mode else outcome["uploaded"],
        unchanged=outcome["skipped"],
        pending=outcome["pending"],
        progress=progress.report(),
        summary=progress.summary(),
        resume=progress.state(),
        files=len(entries),
        bytes=sum(entry[1] for entry in entries),
    )
    sent_this_run = progress.sent > 0
    if outcome["done"] and params["record"] and not check_mode:
        before = ((read_record(params["record"]).get("archive") or {}).get("targets") or {}).get(name) or {}
        entry = dict(where=where, backup=backup, files=result["files"], bytes=result["bytes"])
        if sent_this_run or before.get("backup") != backup:
            # Every object was checked against the manifest as it went up (size, sha256, ETag).
            entry.update(verified=True, verify="upload")
        record_archive(params["record"], name, entry)
    return result


def verified(params, store, check_mode):
    backup, folder = _local(params)
    checked, failures = verify_copy(store, folder, params["workshop_id"], backup, params["verify"], params["sample_files"])
    where = store.where(params["workshop_id"], backup)
    entries = backup_entries(folder)
    if params["record"] and not check_mode:
        record_archive(
            params["record"],
            params["target"]["name"],
            dict(
                where=where,
                backup=backup,
                files=len(entries),
                bytes=sum(entry[1] for entry in entries),
                verified=not failures,
                verify=params["verify"],
                failures=failures,
            ),
        )
    return dict(changed=False, backup=backup, where=where, checked=checked, failures=failures)


def fetched(params, store, check_mode):
    if not params["dest"]:
        raise WorkshopError("state=fetched needs dest (the local folder to download into)")
    return fetch_backup(store, params["workshop_id"], params["backup"], params["dest"], check_mode=check_mode)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "verified", "fetched"], default="present"),
            target=target_argument_spec(),
            workshop_id=dict(type="str", required=True),
            backup_dir=dict(type="path"),
            backup=dict(type="str"),
            record=dict(type="path"),
            dest=dict(type="path"),
            verify=dict(type="str", choices=["sample", "all"], default="sample"),
            sample_files=dict(type="int", default=3),
            part_size_mb=dict(type="int", default=64),
            multipart_threshold_mb=dict(type="int", default=64),
            concurrency=dict(type="int", default=3),
            slice_seconds=dict(type="int", default=0),
            resume=dict(type="dict"),
            known_hosts=dict(type="path"),
        ),
        required_if=[("state", "fetched", ["dest"]), ("state", "present", ["backup_dir"]), ("state", "verified", ["backup_dir"])],
        supports_check_mode=True,
    )
    if module.params["target"]["type"] == "s3":
        require_libraries(module, "boto3")
    handlers = {"present": present, "verified": verified, "fetched": fetched}
    store = None
    try:
        store = make_target(
            module.params["target"],
            known_hosts=module.params["known_hosts"],
            part_size=module.params["part_size_mb"] * MIB,
            threshold=module.params["multipart_threshold_mb"] * MIB,
            concurrency=module.params["concurrency"],
            check_mode=module.check_mode,
        )
        result = handlers[module.params["state"]](module.params, store, module.check_mode)
    except WorkshopError as exc:
        if store:
            store.close()
        module.fail_json(msg=exc.msg, **dict({"target": module.params["target"]["name"]}, **exc.context))
    store.close()
    if result.get("failures"):
        module.fail_json(
            msg=f"The copy of {result['backup']} at {result['where']} differs from the manifest: "
            + "; ".join(f"{f['file']}: {f['reason']}" for f in result["failures"][:10])
            + ". Recorded as not verified; archive again to another prefix or target",
            **result,
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
