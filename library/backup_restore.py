#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: test that a backup restores, or restore it into a workshop project."""

DOCUMENTATION = r"""
---
module: backup_restore
short_description: Test that a workshop backup restores, or restore it into a (new) project directory
description:
  - V(tested) is the checklist's emergency recovery test. It brings every file of a backup back into a
    scratch folder (archives extracted safely, every other file copied), compares each restored file
    with the backup's C(MANIFEST.json) by sha256, loads C(redis/dump.rdb) into a throwaway Redis
    container started from the same image as the workshop's Redis service, with AOF off (a server
    with AOF on ignores C(dump.rdb)), and compares its key count (keys with a time to live apart)
    and the size of every queue with what the backup recorded. It records the result, with the
    measured time, in the C(restore_test) section of O(record), removes the scratch folder and the
    container whatever happened, and fails naming every file, member or queue at fault.
  - V(restored) is the real recovery into O(dest), a workshop project directory, and the named
    volume of its Redis. The backup is verified against its manifest first. Each archive is extracted
    safely into a temporary folder inside O(dest), compared with the manifest, and only then moved
    into place; configuration goes to O(dest) (mode 0600); the RDB is loaded with AOF off into a
    throwaway Redis on the volume, compared, then C(CONFIG SET appendonly yes) writes a fresh AOF
    so the workshop's Redis (AOF on) starts with the data. When something would be written, a non-empty
    O(dest) (or O(dest_dirs) folder outside it) or an existing volume is refused unless O(confirm) is
    O(workshop_id); files already equal are left alone, and a volume holding what an earlier restore of
    the backup left there (its note of every file's sha256) is too.
  - Extraction refuses, before writing anything of the archive, a member with an absolute path or
    a C(..) component, a symbolic or hard link leading outside, and device files or pipes, naming
    the member.
version_added: "0.1.0"
author: comfy-wrapup contributors (@comfy-wrapup)
requirements:
  - docker (Python library)
attributes:
  check_mode:
    support: full
    description: >-
      V(tested) reports the backup it would test and runs nothing; V(restored) lists every path it
      would write and changes nothing.
  diff_mode:
    support: none
    description: Returns no diff.
extends_documentation_fragment:
  - workshop_redis
  - workshop_compose
options:
  state:
    description: V(tested) - the restore test into a scratch folder; V(restored) - the real recovery into O(dest).
    type: str
    choices: [tested, restored]
    required: true
  backup_dir:
    description: The folder holding the workshop's sealed backups (the local source).
    type: path
  name:
    description: The backup to restore from O(backup_dir); default the newest sealed one.
    type: str
  path:
    description: A backup folder to restore directly (one fetched from an off-host target).
    type: path
  source:
    description: Where the backup came from, as recorded (V(local) or the off-host target's name).
    type: str
    default: local
  scratch_root:
    description: For V(tested), the folder the scratch folder is made in (and removed from).
    type: path
  record:
    description: For V(tested), the run record that gets the C(restore_test) section.
    type: path
  redis_image:
    description: The Redis image to load the snapshot with; default the image of O(redis_service) in the compose project.
    type: str
  redis_service:
    description: The workshop's Redis service in its compose project.
    type: str
    default: redis
  load_timeout:
    description: Seconds the throwaway Redis may take to load the snapshot (and to write the AOF).
    type: int
    default: 300
  dest:
    description: For V(restored), the workshop project directory to restore into.
    type: path
  dest_dirs:
    description:
      - For V(restored), where each top folder of the archives goes, as name to path (C(outputs),
        C(inputs), C(user_data), C(workflows)); a member under another name is refused.
    type: dict
    default: {}
  dest_project_name:
    description:
      - For V(restored), the compose project of O(dest) (its Redis volume is named after it).
      - Default C(COMPOSE_PROJECT_NAME) of the backup's .env, else the name of O(dest).
    type: str
  redis_volume:
    description: For V(restored), the compose volume of Redis's data; the Docker volume is C(<project>_<redis_volume>).
    type: str
    default: redis-data
  confirm:
    description:
      - For V(restored), the workshop id, to overwrite a non-empty O(dest) (or a non-empty folder of O(dest_dirs)
        outside it) or an existing Redis volume.
    type: str
    default: ""
  protected_dirs:
    description:
      - For V(restored), folders O(dest) and O(dest_dirs) must be neither inside nor around (the workshop's
        backups); the backup's own folder always counts.
    type: list
    elements: path
    default: []
  workshop_id:
    description: For V(restored), the workshop's id, which O(confirm) must equal.
    type: str
"""

EXAMPLES = r"""
- name: Test that the newest backup restores
  backup_restore:
    state: tested
    backup_dir: /var/backups/comfy-wrapup/berlin
    scratch_root: /var/backups/comfy-wrapup/berlin
    record: /var/backups/comfy-wrapup/berlin/run-record.json
    project_dir: /home/dev/projects/comfyui
  register: restore_test

- name: It restored
  ansible.builtin.assert:
    that: restore_test.failures | length == 0

- name: Restore into a new project directory
  backup_restore:
    state: restored
    backup_dir: /var/backups/comfy-wrapup/berlin
    dest: /home/dev/projects/comfyui-restored
    dest_dirs:
      outputs: /home/dev/projects/comfyui-restored/data/outputs
      inputs: /home/dev/projects/comfyui-restored/data/inputs
    redis_image: redis:7-alpine
    workshop_id: berlin
  register: restored

- name: Show what it wrote
  ansible.builtin.assert:
    that: restored.written | length > 0
"""

RETURN = r"""
backup:
  description: The backup's name.
  returned: always
  type: str
  sample: backup-20261129T170000Z
path:
  description: The backup folder restored from.
  returned: always
  type: str
ok:
  description: V(tested) - whether every file and the Redis data came back as the backup recorded.
  returned: state=tested
  type: bool
seconds:
  description: V(tested) - the measured restore time (files, comparison, Redis load), in seconds.
  returned: state=tested and not check mode
  type: float
files_compared:
  description: Files (and archive members) compared with the manifest.
  returned: not check mode
  type: int
keys:
  description: Keys loaded - persistent (no time to live), volatile, and the persistent count the backup recorded.
  returned: not check mode
  type: dict
  sample: {loaded: 812, volatile: 0, recorded: 812}
queues:
  description: Size of every queue after loading.
  returned: not check mode
  type: dict
  sample: {"queue:pending": 0, "queue:running": 0, "queue:completed": 400, "queue:failed": 4}
failures:
  description: Every difference, as file, member (archive member or queue, or null) and reason.
  returned: always
  type: list
  elements: dict
image:
  description: The Redis image the snapshot was loaded with, and its Redis version.
  returned: not check mode
  type: dict
written:
  description: V(restored) - every path written (in check mode, that would be).
  returned: state=restored
  type: list
  elements: str
unchanged:
  description: V(restored) - files already equal to the backup, left alone.
  returned: state=restored
  type: int
volume:
  description: V(restored) - the Docker volume of Redis's data, and whether it was (or would be) written.
  returned: state=restored
  type: dict
"""

import io
import json
import os
import shutil
import tarfile
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_backup import (
    MANIFEST,
    archives_of,
    free_space,
    read_manifest,
    sha256_file,
    verify_folder,
)
from ansible.module_utils.workshop_compose import ComposeProject, normalize_project_name, tree_digests
from ansible.module_utils.workshop_connection import CONNECTION_MUTUALLY_EXCLUSIVE, connection_argument_spec, require_libraries
from ansible.module_utils.workshop_dotenv import read_dotenv
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import atomic_file, filesystem_of, human_bytes, inside, move_into_place
from ansible.module_utils.workshop_rdb import verify_rdb
from ansible.module_utils.workshop_record import describe_failures, read_record, save_record
from ansible.module_utils.workshop_restore import (
    RDB_FILE,
    ThrowawayRedis,
    compare_redis,
    compare_tree,
    list_members,
    newest_backup,
    redis_image,
    restore_files,
    safe_extract,
)
from ansible.module_utils.workshop_time import utc_iso

try:
    import docker
    import docker.errors
except ImportError:
    pass  # main() fails through require_libraries

SCRATCH_PREFIX = ".restore-test-"


def _backup_folder(params):
    if params["path"]:
        folder = params["path"].rstrip("/")
        if not os.path.isfile(os.path.join(folder, MANIFEST)):
            raise WorkshopError(f"{folder} holds no {MANIFEST}: it is not a sealed backup", path=folder)
        return folder
    if not params["backup_dir"]:
        raise WorkshopError("Give backup_dir (the local backups) or path (a fetched backup folder)")
    return newest_backup(params["backup_dir"], params["name"])


def _docker(params):
    """(Docker client, the workshop's compose project or None)."""
    if params.get("project_dir"):
        project = ComposeProject.from_params(params)
        return project.client, project
    engine = params.get("docker_host") or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.DockerClient(base_url=engine, timeout=params["docker_timeout"])
        client.ping()
    except docker.errors.DockerException as exc:
        raise WorkshopError(f"No Docker Engine answers at {engine} ({exc}): set docker_host", docker_host=engine) from None
    return client, None


def _image(params, project, client, folder):
    """(image to run, its name for people): redis_image, else the workshop's Redis container's, else the one
    the backup recorded (a workshop taken down: its containers are gone), when this Docker Engine has it."""
    if params["redis_image"]:
        return params["redis_image"], params["redis_image"]
    try:
        if project is None:
            raise WorkshopError("Set redis_image (restore_redis_image), or project_dir to take the image of the workshop's Redis")
        return redis_image(project, params["redis_service"])
    except WorkshopError as exc:
        found = exc
    try:
        recorded = (read_manifest(folder).get("redis") or {}).get("image")
    except WorkshopError:
        recorded = None  # the restore names an unreadable manifest itself
    if recorded:
        try:
            return client.images.get(recorded).id, recorded
        except docker.errors.ImageNotFound:
            advice = f"the backup recorded {recorded}, which this Docker Engine does not have: pull it or set restore_redis_image"
        except docker.errors.DockerException as exc:
            raise WorkshopError(f"Cannot look up the image {recorded} the backup recorded: {exc}", image=recorded) from None
    else:
        advice = "set restore_redis_image to the workshop's Redis image (the platform runs redis:7-alpine)"
    raise WorkshopError(f"{found.msg}. No Redis image to load the snapshot with: {advice}", **found.context) from None


def _load_and_compare(client, image, label, rdb_path, recorded, timeout, volume=None, enable_aof=False):
    server = ThrowawayRedis(client, image, label, volume=volume, timeout=timeout)
    try:
        server.start(rdb_path)
        persistent, volatile, queues = server.counts()
        failures = compare_redis((persistent, volatile, queues), recorded)
        if enable_aof and not failures:
            server.enable_aof()
            server.shutdown()
        keys = dict(loaded=persistent, volatile=volatile, recorded=recorded.get("keys"))
        return failures, keys, queues, dict(name=label, id=image, redis_version=server.server_version)
    finally:
        server.remove()


# --- the restore test -----------------------------------------------------------------------------


def _outcome(entry):
    """What a restore test found, less when and how fast, and the keys whose time to live ran out meanwhile."""
    outcome = {k: v for k, v in entry.items() if k not in ("at", "seconds")}
    outcome["keys"] = {k: v for k, v in (outcome.get("keys") or {}).items() if k != "volatile"}
    return outcome


def test_restore(params, check_mode):
    folder = _backup_folder(params)
    name = os.path.basename(folder)
    result = dict(backup=name, path=folder, source=params["source"], failures=[])
    if check_mode:
        return dict(result, changed=True, ok=None)
    client, project = _docker(params)
    image, label = _image(params, project, client, folder)
    started = time.monotonic()
    scratch_root = params["scratch_root"] or os.path.dirname(folder)
    os.makedirs(scratch_root, mode=0o700, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=scratch_root)
    keys, queues, image_facts = {}, {}, dict(name=label, id=image, redis_version=None)
    try:
        try:
            failures, compared = restore_files(folder, scratch)
        except WorkshopError as exc:  # an unreadable manifest: a failed test, recorded as such
            failures, compared = [{"file": MANIFEST, "member": None, "reason": exc.msg}], 0
        rdb = os.path.join(scratch, RDB_FILE)
        if os.path.isfile(rdb):  # restored, so the manifest was read
            recorded = read_manifest(folder).get("redis") or {}
            try:
                found, keys, queues, image_facts = _load_and_compare(client, image, label, rdb, recorded, params["load_timeout"])
                failures += found
            except WorkshopError as exc:
                failures.append({"file": RDB_FILE, "member": None, "reason": exc.msg})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    seconds = round(time.monotonic() - started, 3)
    entry = dict(
        ok=not failures,
        at=utc_iso(time.time()),
        backup=name,
        source=params["source"],
        seconds=seconds,
        files_compared=compared,
        keys=keys,
        queues=queues,
        failures=failures,
    )
    changed = True
    if params["record"]:
        record = read_record(params["record"])
        changed = _outcome(record.get("restore_test") or {}) != _outcome(json.loads(json.dumps(entry)))
        # Also by backup: testing an older one afterwards must not hide that the newest passed.
        by_backup = dict(record.get("restore_tests") or {}, **{name: entry})
        save_record(params["record"], {**record, "restore_test": entry, "restore_tests": by_backup})
    return dict(
        result,
        changed=changed,
        ok=not failures,
        seconds=seconds,
        files_compared=compared,
        keys=keys,
        queues=queues,
        failures=failures,
        image=image_facts,
        scratch=scratch,
    )


# --- the real recovery ----------------------------------------------------------------------------


def _route(member_path, dest_dirs, archive):
    top, _sep, rest = member_path.partition("/")
    if top not in dest_dirs:
        raise WorkshopError(
            f"{archive}: member {member_path} is under {top}/, which restore_dest_dirs does not place "
            f"(it places {', '.join(sorted(dest_dirs)) or 'nothing'}): add {top} to it; nothing was written",
            path=archive,
            member=member_path,
        )
    return os.path.join(dest_dirs[top], rest) if rest else dest_dirs[top]


def _refuse_overlap(targets, protected):
    """A target inside the workshop's backups, or holding them (/ for one), would write into sealed backups."""
    for backups in (os.path.realpath(folder) for folder in protected):
        for target in targets:
            real = os.path.realpath(target)
            if inside(real, backups) or inside(backups, real):
                raise WorkshopError(
                    f"{target} is {'inside' if inside(real, backups) else 'around'} the workshop's backups ({backups}): "
                    "restore into a project folder of its own; nothing was written",
                    path=target,
                )


def _left_as_they_are(dest_dirs, finals, backup):
    """A warning naming the files under the folders the restore fills that the backup does not hold."""
    planned = set(finals)
    extra = sorted(
        os.path.join(top, name)
        for root in sorted(set(dest_dirs.values()))
        if os.path.isdir(root)
        for top, _dirs, names in os.walk(root)
        for name in names
        if os.path.join(top, name) not in planned
    )
    if not extra:
        return []
    shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
    return [
        f"{len(extra)} files are not in {backup} and are left as they are ({shown}): remove them if the "
        "folders should hold the backup's files only"
    ]


def _same_file(path, member):
    return (
        os.path.isfile(path)
        and not os.path.islink(path)
        and os.path.getsize(path) == member["size"]
        and (sha256_file(path) == member["sha256"])
    )


def _project_name(params, folder):
    """The compose project of dest: explicit, else COMPOSE_PROJECT_NAME of the backup's .env, else dest's name."""
    if params["dest_project_name"]:
        return normalize_project_name(params["dest_project_name"])
    env = os.path.join(folder, "config", ".env")
    from_env = read_dotenv(env).get("COMPOSE_PROJECT_NAME") if os.path.isfile(env) else None
    return normalize_project_name(from_env or os.path.basename(os.path.normpath(params["dest"])))


# What a restore left in the Redis volume: the backup and every file's sha256. The workshop's Redis loads
# its AOF, which changes as soon as it writes; the dump.rdb beside it does not, so it alone proves nothing.
RESTORE_NOTE = ".comfy-wrapup-restore.json"


def _probe(client, image, volume, mode):
    """A container on `volume` at /data that is never started: Docker reads and writes its files."""
    return client.containers.create(
        image, command=["true"], volumes={volume: {"bind": "/data", "mode": mode}}, network_mode="none"
    )


def _volume_state(client, name, image, note):
    """(exists, holds exactly what the restore of `note`'s backup left there: its note and the same files)."""
    try:
        client.volumes.get(name)
    except docker.errors.NotFound:
        return False, False
    probe = _probe(client, image, name, "ro")
    try:
        try:
            stream, _stat = probe.get_archive(f"/data/{RESTORE_NOTE}")
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                kept = json.loads(tar.extractfile(tar.next()).read())
        except (docker.errors.NotFound, ValueError, AttributeError):
            return True, False
        # Only a volume noted by a restore of this backup is read whole (a live workshop's AOF can be large).
        if not isinstance(kept, dict) or {key: kept.get(key) for key in note} != note:
            return True, False
        files = tree_digests(probe, "/data")
    finally:
        probe.remove(force=True, v=True)
    files.pop(RESTORE_NOTE, None)
    return True, kept == dict(note, files=files)


def _clear_redis_files(client, name, image):
    """Remove what a Redis left in the volume before the backup's data goes in: its AOF above all, which it
    loads instead of dump.rdb (a rewrite would leave the old files behind, for Redis to delete at its next start)."""
    try:
        client.containers.run(
            image,
            ["sh", "-c", f"rm -rf /data/appendonlydir /data/dump.rdb /data/{RESTORE_NOTE}"],
            volumes={name: {"bind": "/data", "mode": "rw"}},
            network_mode="none",
            remove=True,
        )
    except docker.errors.DockerException as exc:
        raise WorkshopError(f"Cannot empty the Redis files of the volume {name}: {exc}", volume=name) from None


def _keep_note(client, name, image, note):
    """Write the restore's note into the volume, with the sha256 of every file the restore left there."""
    probe = _probe(client, image, name, "rw")
    try:
        text = json.dumps(dict(note, files=tree_digests(probe, "/data")), sort_keys=True).encode()
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            info = tarfile.TarInfo(RESTORE_NOTE)
            info.size, info.mode, info.mtime = len(text), 0o600, int(time.time())
            tar.addfile(info, io.BytesIO(text))
        probe.put_archive("/data", archive.getvalue())
    except docker.errors.DockerException as exc:
        raise WorkshopError(
            f"The backup's data is in the volume {name}, but its note {RESTORE_NOTE} could not be written ({exc}): "
            "the next restore will load it again",
            volume=name,
        ) from None
    finally:
        probe.remove(force=True, v=True)


def recover(params, check_mode):
    for needed in ("dest", "workshop_id"):
        if not params[needed]:
            raise WorkshopError(f"state=restored needs {needed}")
    folder = _backup_folder(params)
    dest = params["dest"].rstrip("/") or "/"
    # The backup's own folder (a fetched copy's too) and the workshop's backups it names.
    _refuse_overlap([dest, *params["dest_dirs"].values()], [os.path.dirname(folder), *params["protected_dirs"]])
    failures = verify_folder(folder, check_rdb=verify_rdb)
    if failures:
        raise WorkshopError(
            f"Backup {folder} does not match its manifest, so it is not restored: {'; '.join(describe_failures(failures)[:10])}",
            path=folder,
            failures=failures,
        )
    manifest = read_manifest(folder)
    client, project = _docker(params)
    image, label = _image(params, project, client, folder)
    project_name = _project_name(params, folder)
    volume = f"{project_name}_{params['redis_volume']}"
    # Everything the backup would write, member by member, and what is already there.
    archives = archives_of(folder)
    plan = []  # (archive, member, final path)
    for archive in sorted(archives):
        list_members(os.path.join(folder, archive))  # refuses an unsafe archive, naming the member
        for member in archives[archive]:
            plan.append((archive, member, _route(member["path"], params["dest_dirs"], archive)))
    config = [relpath for relpath in sorted(manifest.get("files", {})) if relpath.startswith("config/")]
    warnings = [
        f"{relpath} is encrypted with ansible-vault: not restored; decrypt it into {dest} by hand"
        for relpath in config
        if relpath.endswith(".vault")
    ]
    config = [relpath for relpath in config if not relpath.endswith(".vault")]
    # dest, and any folder of restore_dest_dirs placed outside it, that already holds something.
    occupied = [
        folder
        for folder in sorted({dest, *params["dest_dirs"].values()})
        if (folder == dest or not inside(os.path.abspath(folder), os.path.abspath(dest)))
        and os.path.isdir(folder)
        and os.listdir(folder)
    ]
    note = dict(backup=os.path.basename(folder), rdb_sha256=manifest["files"][RDB_FILE]["sha256"])
    exists, same_volume = _volume_state(client, volume, image, note)
    to_write = []
    unchanged = 0
    for archive, member, final in plan:
        if "link" in member:
            if os.path.islink(final) and os.readlink(final) == member["link"]:
                unchanged += 1
                continue
        elif _same_file(final, member):
            unchanged += 1
            continue
        to_write.append((archive, member, final))
    config_write = []
    for relpath in config:
        final = os.path.join(dest, relpath[len("config/") :])
        if _same_file(final, manifest["files"][relpath]):
            unchanged += 1
        else:
            config_write.append((relpath, final))
    written = [final for _a, _m, final in to_write] + [final for _r, final in config_write]
    if not same_volume:
        written.append(f"docker volume {volume}: {RDB_FILE}, loaded with AOF off, then a fresh AOF")
    # Asked only when there is something to write: a re-run on what is restored already changes nothing.
    if written and (occupied or exists) and (not params["workshop_id"] or params["confirm"] != params["workshop_id"]):
        what = " and ".join(
            [f"{folder} is not empty" for folder in occupied] + ([f"the volume {volume} exists"] if exists else [])
        )
        raise WorkshopError(
            f"{what}: a restore there overwrites what it holds. To confirm, set restore_confirm={params['workshop_id']}; "
            "nothing was written",
            path=dest,
            volume=volume,
        )
    running = [c.name for c in client.containers.list(filters={"label": f"com.docker.compose.project={project_name}"})]
    if written and running:
        raise WorkshopError(
            f"Containers of compose project {project_name} are running ({', '.join(sorted(running))}): stop them first; "
            "nothing was written",
            project=project_name,
        )
    warnings += _left_as_they_are(params["dest_dirs"], [final for _a, _m, final in plan], os.path.basename(folder))
    env_file = os.path.join(folder, "config", ".env")
    env_project = read_dotenv(env_file).get("COMPOSE_PROJECT_NAME") if "config/.env" in config else None
    if env_project and normalize_project_name(env_project) != project_name:
        warnings.append(
            f"The restored .env says COMPOSE_PROJECT_NAME={env_project}: docker compose in {dest} uses that project "
            f"and its volume, not {volume}; set COMPOSE_PROJECT_NAME={project_name} in {dest}/.env"
        )
    result = dict(
        backup=os.path.basename(folder),
        path=folder,
        changed=bool(written),
        written=written,
        unchanged=unchanged,
        volume=dict(name=volume, written=not same_volume),
        failures=[],
        warnings=warnings,
    )
    if not written:
        return result
    # Checked in a dry run too: its "Would restore" must not promise what the disks cannot hold.
    for place, needed in _space_needs(dest, params["dest_dirs"], archives, to_write, config_write, manifest):
        free = free_space(place)
        if free < needed:
            raise WorkshopError(
                f"Not enough space to restore into {place}: about {human_bytes(needed)} needed, {human_bytes(free)} free; "
                "free space or choose another folder; nothing was written",
                path=place,
                needed_bytes=needed,
                free_bytes=free,
            )
    if check_mode:
        return result
    try:
        compared = _write_files(folder, dest, archives, to_write, config_write, manifest)
    except OSError as exc:
        raise WorkshopError(
            f"Cannot restore into {exc.filename or dest}: {exc.strerror}. What was moved into place stays; fix it and "
            f"run again with restore_confirm={params['workshop_id']} (files already equal to the backup are left alone)",
            path=exc.filename or dest,
        ) from None
    if not same_volume:
        _create_volume(client, volume, project_name, params["redis_volume"])
        _clear_redis_files(client, volume, image)
        found, keys, queues, image_facts = _load_and_compare(
            client,
            image,
            label,
            os.path.join(folder, RDB_FILE),
            manifest.get("redis") or {},
            params["load_timeout"],
            volume=volume,
            enable_aof=True,
        )
        if found:
            raise WorkshopError(
                f"The Redis data loaded into {volume} differs from the backup: {'; '.join(describe_failures(found))}",
                volume=volume,
                failures=found,
            )
        _keep_note(client, volume, image, note)
        result.update(keys=keys, queues=queues, image=image_facts)
    result["files_compared"] = compared
    return result


def _space_needs(dest, dest_dirs, archives, to_write, config_write, manifest):
    """[(folder, bytes)] the restore needs free, one per filesystem: on dest's, each archive with a member
    to write (extracted whole there, its members then moved) and the configuration; on another's (a
    restore_dest_dirs folder on another disk), the members copied there."""
    home = filesystem_of(dest)
    needs = {home: [dest, sum(m["size"] for a in {a for a, _m, _f in to_write} for m in archives[a] if "size" in m)]}
    needs[home][1] += sum(manifest["files"][relpath]["size"] for relpath, _final in config_write)
    devices = {}  # folder: its filesystem, looked up once (a participant's folder holds many files)
    for _archive, member, final in to_write:
        folder = os.path.dirname(final)
        if folder not in devices:
            devices[folder] = filesystem_of(folder)
        device = devices[folder]
        if device != home:
            place = next((d for d in sorted(dest_dirs.values()) if inside(final, d)), os.path.dirname(final))
            needs.setdefault(device, [place, 0])[1] += member.get("size", 0)
    return [tuple(need) for need in needs.values()]


def _write_files(folder, dest, archives, to_write, config_write, manifest):
    """Put the backup's files in place: each archive extracted into a temporary folder in dest, checked
    against the manifest, its members moved into place; the configuration copied. Returns how many were compared."""
    os.makedirs(dest, mode=0o755, exist_ok=True)
    compared = 0
    for archive in sorted({a for a, _m, _f in to_write}):
        partial = tempfile.mkdtemp(prefix=".restore-partial-", dir=dest)
        try:
            safe_extract(os.path.join(folder, archive), partial)
            found, count = compare_tree(partial, archives[archive], archive)
            compared += count
            if found:
                raise WorkshopError(
                    f"{archive} extracted into {partial} differs from the manifest: {'; '.join(describe_failures(found)[:10])}; "
                    "nothing of it was moved into place",
                    path=archive,
                    failures=found,
                )
            for _a, member, final in (entry for entry in to_write if entry[0] == archive):
                os.makedirs(os.path.dirname(final), exist_ok=True)
                if os.path.lexists(final) and (os.path.islink(final) or not os.path.isdir(final)):
                    os.unlink(final)
                move_into_place(os.path.join(partial, member["path"]), final)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    for relpath, final in config_write:
        with atomic_file(final) as target:
            shutil.copyfile(os.path.join(folder, relpath), target.tmp)
            os.chmod(target.tmp, 0o600)
            if sha256_file(target.tmp) != manifest["files"][relpath]["sha256"]:
                raise WorkshopError(f"{relpath} changed while copied to {final}: run again", path=final)
        compared += 1
    return compared


def _create_volume(client, name, project, key):
    try:
        client.volumes.get(name)
        return
    except docker.errors.NotFound:
        pass
    client.volumes.create(name=name, labels={"com.docker.compose.project": project, "com.docker.compose.volume": key})


def main():
    module = AnsibleModule(
        argument_spec=connection_argument_spec(
            project_dir_required=False,
            state=dict(type="str", choices=["tested", "restored"], required=True),
            backup_dir=dict(type="path"),
            name=dict(type="str"),
            path=dict(type="path"),
            source=dict(type="str", default="local"),
            scratch_root=dict(type="path"),
            record=dict(type="path"),
            redis_image=dict(type="str"),
            redis_service=dict(type="str", default="redis"),
            load_timeout=dict(type="int", default=300),
            dest=dict(type="path"),
            dest_dirs=dict(type="dict", default={}),
            dest_project_name=dict(type="str"),
            redis_volume=dict(type="str", default="redis-data"),
            confirm=dict(type="str", default="", no_log=False),
            protected_dirs=dict(type="list", elements="path", default=[]),
            workshop_id=dict(type="str"),
        ),
        mutually_exclusive=[*CONNECTION_MUTUALLY_EXCLUSIVE, ("backup_dir", "path")],
        required_one_of=[("backup_dir", "path")],
        required_if=[("state", "restored", ["dest", "workshop_id"])],
        supports_check_mode=True,
    )
    if not module.check_mode or module.params["state"] == "restored":
        require_libraries(module, "docker")
    try:
        if module.params["state"] == "tested":
            result = test_restore(module.params, module.check_mode)
        else:
            result = recover(module.params, module.check_mode)
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **exc.context)
    for warning in result.pop("warnings", []):
        module.warn(warning)
    if result.get("failures"):
        problems = "; ".join(describe_failures(result["failures"])[:10])
        module.fail_json(msg=f"Restore test of {result['backup']} ({result.get('source', 'local')}) FAILED: {problems}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
