# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bringing a backup back: safe extraction, comparison with the MANIFEST, and the Redis snapshot
loaded into a throwaway server of the workshop's own Redis image.

Extraction never trusts an archive: a member with an absolute path, a `..` component, a link
(symbolic or hard) that leads outside the folder it is extracted into, or a device file or pipe
refuses the whole archive before anything of it is written, naming the member. Python's own
`tarfile` filters (`filter='data'`, 3.12 and uneven backports) are not relied on: the hosts run
3.8+. Files are written under a temporary name and renamed, and the real location of every
folder written into is checked, so a link created earlier cannot lead a later member outside.
"""

import contextlib
import io
import os
import re
import shutil
import tarfile
import time

from ansible.module_utils.workshop_backup import (
    CHUNK,
    MANIFEST,
    archives_of,
    list_tree,
    read_manifest,
    sealed_backups,
    sha256_file,
)
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import Sha256, atomic_file, inside

try:
    import docker.errors
except ImportError:  # the module fails through require_libraries, naming the package, before any Docker step
    docker = None

QUEUE_KEYS = ("queue:pending", "queue:running", "queue:completed", "queue:failed")
RDB_FILE = "redis/dump.rdb"
_REFUSED_TYPES = {
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a named pipe (FIFO)",
}
# The Redis release that first wrote each RDB format version (src/rdb.h RDB_VERSION).
RDB_WRITERS = {9: "5.0", 10: "7.0", 11: "7.2", 12: "7.4"}


def _escapes(relpath):
    """Whether a relative path (already normalised) leaves the folder it is relative to."""
    return relpath == ".." or relpath.startswith("../")


def member_problem(info):
    """Why the tar member `info` may not be extracted, or None when it may (the lexical checks)."""
    name = info.name
    if not name or name.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", name):
        return "absolute path: an archive member must be relative to the folder it is extracted into"
    if ".." in name.split("/"):
        return "path with '..': it would be written outside the folder it is extracted into"
    if info.type in _REFUSED_TYPES:
        return f"{_REFUSED_TYPES[info.type]}: a backup holds files, folders and links only"
    if info.issym():
        target = info.linkname
        if not target or target.startswith("/"):
            return f"link to the absolute path {target}, outside the folder it is extracted into"
        if _escapes(os.path.normpath(os.path.join(os.path.dirname(name), target))):
            return f"link to {target}, which points outside the folder it is extracted into"
    elif info.islnk():
        target = info.linkname
        if not target or target.startswith("/") or _escapes(os.path.normpath(target)) or ".." in target.split("/"):
            return f"hard link to {target}, outside the folder it is extracted into"
    elif not (info.isfile() or info.isdir()):
        return f"unsupported member type {info.type!r}: a backup holds files, folders and links only"
    return None


def archive_refusals(archive):
    """[{member, reason}] of every member of the tar at `archive` that may not be extracted (empty: safe)."""
    refusals = []
    try:
        with tarfile.open(archive, mode="r:") as tar:
            for info in tar:
                problem = member_problem(info)
                if problem:
                    refusals.append({"member": info.name, "reason": problem})
    except (tarfile.TarError, EOFError, OSError) as exc:
        refusals.append({"member": None, "reason": f"not a readable tar archive ({exc})"})
    return refusals


def _refuse(archive, member, reason):
    raise WorkshopError(
        f"{archive}: member {member} refused: {reason}. Nothing of this archive was kept; do not restore this "
        "backup without looking at how it was altered",
        path=archive,
        member=member,
        reason=reason,
    )


def list_members(archive):
    """The members of a safe archive as [{path, size}, {path, link}, {path, hardlink} or {path, dir}]; refuses an unsafe one."""
    refusals = archive_refusals(archive)
    if refusals:
        _refuse(archive, refusals[0]["member"], refusals[0]["reason"])
    found = []
    with tarfile.open(archive, mode="r:") as tar:
        for info in tar:
            if info.isdir():
                found.append({"path": info.name.rstrip("/"), "dir": True})
            elif info.issym():
                found.append({"path": info.name, "link": info.linkname})
            elif info.islnk():
                found.append({"path": info.name, "hardlink": info.linkname})
            else:
                found.append({"path": info.name, "size": info.size})
    return found


def _real_parent(root, real_root, relpath, archive, member):
    """Create the folders of `relpath` under `root` and return the real parent, refusing one that leads outside."""
    parent = os.path.join(root, os.path.dirname(relpath))
    os.makedirs(parent, mode=0o700, exist_ok=True)
    real = os.path.realpath(parent)
    if not inside(real, real_root):
        _refuse(archive, member, f"its folder leads through a link to {real}, outside the folder it is extracted into")
    return real


def _remove_existing(path):
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)


def safe_extract(archive, dest):
    """Extract the tar at `archive` into the folder `dest`, refusing an unsafe archive before writing anything.

    Returns the members written, as [{path, size, sha256} or {path, link} or {path, hardlink}],
    the sha256 being of the bytes written (each file goes to a temporary name, then is renamed).
    """
    refusals = archive_refusals(archive)
    if refusals:
        _refuse(archive, refusals[0]["member"], refusals[0]["reason"])
    os.makedirs(dest, mode=0o700, exist_ok=True)
    real_root = os.path.realpath(dest)
    written = []
    folders = []
    with tarfile.open(archive, mode="r:", copybufsize=CHUNK) as tar:
        for info in tar:
            name = info.name.rstrip("/")
            if info.isdir():
                path = os.path.join(real_root, name)
                _real_parent(real_root, real_root, os.path.join(name, "x"), archive, info.name)
                folders.append((path, info))
                continue
            parent = _real_parent(real_root, real_root, name, archive, info.name)
            path = os.path.join(parent, os.path.basename(name))
            if info.issym():
                _remove_existing(path)
                os.symlink(info.linkname, path)
                if not inside(os.path.realpath(path), real_root):
                    os.unlink(path)
                    _refuse(archive, info.name, f"link to {info.linkname} resolves outside the folder it is extracted into")
                written.append({"path": name, "link": info.linkname})
            elif info.islnk():
                source = os.path.realpath(os.path.join(real_root, info.linkname))
                if not inside(source, real_root) or not os.path.isfile(source):
                    _refuse(archive, info.name, f"hard link to {info.linkname}, which is not a file extracted before it")
                _remove_existing(path)
                os.link(source, path)
                written.append({"path": name, "hardlink": info.linkname})
            else:
                written.append(dict(_write_member(tar, info, path), path=name))
    for path, info in reversed(folders):
        os.chmod(path, (info.mode & 0o777) | 0o700)
    return written


def _write_member(tar, info, path):
    digest = Sha256()
    size = 0
    source = tar.extractfile(info)
    with atomic_file(path) as target:
        with open(target.tmp, "wb") as out:
            for block in iter(lambda: source.read(CHUNK), b""):
                digest.update(block)
                size += len(block)
                out.write(block)
        os.chmod(target.tmp, info.mode & 0o777 or 0o600)
        os.utime(target.tmp, (info.mtime, info.mtime))
    return {"size": size, "sha256": digest.hexdigest()}


def compare_tree(root, members, label):
    """Compare the files restored under `root` with an archive's member list; returns (failures, files compared).

    Each file is read back from disk and hashed; links compared by target. Files there that the
    list does not name are failures too.
    """
    failures = []
    compared = 0
    expected = set()
    for member in members:
        path = os.path.join(root, member["path"])
        expected.add(member["path"])
        if "link" in member:
            if not os.path.islink(path) or os.readlink(path) != member["link"]:
                failures.append({"file": label, "member": member["path"], "reason": f"should be a link to {member['link']}"})
            compared += 1
            continue
        if not os.path.isfile(path) or os.path.islink(path):
            failures.append({"file": label, "member": member["path"], "reason": "missing after the restore"})
            continue
        compared += 1
        if os.path.getsize(path) != member["size"] or sha256_file(path) != member["sha256"]:
            failures.append({"file": label, "member": member["path"], "reason": "restored content differs from the manifest"})
    for relpath, _size, _mtime in list_tree(root):
        if relpath not in expected:
            failures.append({"file": label, "member": relpath, "reason": "restored but not in the manifest"})
    return failures, compared


def newest_backup(backup_dir, name=None):
    """The backup folder to restore: `name`, else the newest sealed one in `backup_dir`."""
    sealed = sealed_backups(backup_dir)
    chosen = name or (sealed[-1] if sealed else None)
    if chosen is None or chosen not in sealed:
        raise WorkshopError(
            f"No sealed backup {chosen + ' ' if chosen else ''}in {backup_dir}"
            + (f" (there: {', '.join(sealed)})" if sealed else "")
            + ": name one of them (restore_backup) or make one first (tag backup)",
            path=backup_dir,
        )
    return os.path.join(backup_dir, chosen)


def restore_files(folder, scratch):
    """Bring every file of the backup `folder` back under `scratch` and compare it with the MANIFEST.

    Archives are extracted safely into scratch/<archive name without .tar>/ and compared member by
    member; every other file is copied to scratch/<its path> and compared by sha256. An archive
    whose own bytes differ from the manifest is still extracted, so the member at fault is named.
    Returns (failures [{file, member, reason}], files compared).
    """
    manifest = read_manifest(folder)
    listed = manifest.get("files", {})
    archives = archives_of(folder)
    failures = []
    compared = 0
    present = {relpath for relpath, _size, _mtime in list_tree(folder) if relpath != MANIFEST}
    for relpath in sorted(set(listed) - present):
        failures.append({"file": relpath, "member": None, "reason": "missing from the backup"})
    for relpath in sorted(present - set(listed)):
        failures.append({"file": relpath, "member": None, "reason": "in the backup but not in the manifest"})
    for relpath in sorted(set(listed) & present):
        source = os.path.join(folder, relpath)
        if relpath in archives:
            if sha256_file(source) != listed[relpath]["sha256"]:
                failures.append({"file": relpath, "member": None, "reason": "content differs from the manifest"})
            dest = os.path.join(scratch, relpath[: -len(".tar")] if relpath.endswith(".tar") else relpath + ".d")
            try:
                safe_extract(source, dest)
            except WorkshopError as exc:
                failures.append(
                    {"file": relpath, "member": exc.context.get("member"), "reason": exc.context.get("reason", exc.msg)}
                )
                continue
            found, count = compare_tree(dest, archives[relpath], relpath)
            failures += found
            compared += count
            continue
        dest = os.path.join(scratch, relpath)
        os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
        shutil.copyfile(source, dest)
        compared += 1
        if os.path.getsize(dest) != listed[relpath]["size"] or sha256_file(dest) != listed[relpath]["sha256"]:
            failures.append({"file": relpath, "member": None, "reason": "restored content differs from the manifest"})
    return failures, compared


# --- Redis ----------------------------------------------------------------------------------------


def rdb_version(path):
    """The RDB format version in the header of the snapshot at `path` (None when it has none)."""
    with open(path, "rb") as stream:
        head = stream.read(9)
    if head[:5] != b"REDIS" or not head[5:].isdigit():
        return None
    return int(head[5:])


def redis_image(project, service, image=None):
    """(image to run, its name for people): `image` when given, else that of the workshop's Redis service."""
    if image:
        return image, image
    container = project.select(names=[service])[0]
    return container.attrs.get("Image") or container.image.id, container.attrs.get("Config", {}).get("Image", "")


class ThrowawayRedis:
    """A Redis server started from the workshop's image to load one RDB snapshot, AOF off, no network.

    Spoken to with redis-cli inside its container (no port published, no password needed), and
    removed with its anonymous volumes by remove(), whatever happened.
    """

    def __init__(self, client, image, label, volume=None, timeout=300):
        self.client, self.image, self.label, self.volume, self.timeout = client, image, label, volume, timeout
        self.container = None
        self.server_version = None

    def start(self, rdb_path):
        volumes = {self.volume: {"bind": "/data", "mode": "rw"}} if self.volume else None
        command = ["redis-server", "--port", "6379", "--bind", "127.0.0.1", "--dir", "/data", "--dbfilename", "dump.rdb"]
        command += ["--appendonly", "no", "--save", ""]
        try:
            self.container = self.client.containers.create(
                self.image,
                command=command,
                network_mode="none",
                volumes=volumes,
                labels={"comfy-wrapup.role": "restore"},
                detach=True,
            )
            self.container.put_archive("/data", _single_file_tar(rdb_path, "dump.rdb"))
            self.container.start()
        except docker.errors.DockerException as exc:
            raise WorkshopError(
                f"Cannot start a throwaway Redis from image {self.label}: {exc}. Set restore_redis_image to an image "
                "with redis-server (the one the workshop ran)",
                image=self.label,
            ) from None
        self._wait_loaded(rdb_path)

    def _wait_loaded(self, rdb_path):
        deadline = time.monotonic() + self.timeout
        while True:
            self.container.reload()
            if self.container.status in ("exited", "dead"):
                raise self._load_failure(rdb_path)
            if self.container.status == "running":
                try:
                    code, out = self.container.exec_run(["redis-cli", "PING"])
                except docker.errors.APIError:  # it stopped between the reload and the exec: the next reload says why
                    code, out = 1, b""
                if code == 0 and out.strip() == b"PONG":
                    self.server_version = self._version_from_logs()
                    return
            if time.monotonic() > deadline:
                raise WorkshopError(
                    f"The throwaway Redis ({self.label}) did not finish loading {RDB_FILE} within {self.timeout} s: "
                    "raise restore_load_timeout for a large snapshot",
                    image=self.label,
                )
            time.sleep(0.2)

    def _logs(self):
        try:
            return self.container.logs().decode("utf-8", "replace")
        except docker.errors.DockerException:
            return ""

    def _version_from_logs(self, logs=None):
        found = re.search(r"Redis version=(\d+\.\d+\.\d+)", logs if logs is not None else self._logs())
        return found.group(1) if found else None

    def _load_failure(self, rdb_path):
        logs = self._logs()
        version = self._version_from_logs(logs)
        refused = re.search(r"Can't handle RDB format version (\d+)", logs)
        if refused:
            file_version = int(refused.group(1))
            writer = RDB_WRITERS.get(file_version)
            return WorkshopError(
                f"{RDB_FILE} is RDB format version {file_version} (written by Redis {writer or 'newer than 7.4'}"
                f"{' or newer' if writer else ''}), newer than Redis {version or '?'} of image {self.label} can read: "
                "load it with the image the workshop ran when it was backed up (set restore_redis_image to it, e.g. "
                "redis:7-alpine of that time); the backup itself is not at fault",
                image=self.label,
                redis_version=version,
                rdb_version=file_version,
            )
        tail = " | ".join(line.strip() for line in logs.strip().splitlines()[-5:])
        return WorkshopError(
            f"The throwaway Redis ({self.label}, Redis {version or '?'}) stopped while loading {RDB_FILE} "
            f"(RDB version {rdb_version(rdb_path)}): {tail}",
            image=self.label,
            redis_version=version,
        )

    def cli(self, *args):
        try:
            code, out = self.container.exec_run(["redis-cli", *args])
        except docker.errors.APIError as exc:
            raise WorkshopError(
                f"redis-cli {args[0]} failed in the throwaway Redis ({self.label}): {exc}", image=self.label
            ) from None
        text = out.decode("utf-8", "replace").strip()
        if code != 0 or text.startswith("ERR") or text.startswith("(error)"):
            raise WorkshopError(f"redis-cli {' '.join(args)} failed in the throwaway Redis: {text}", image=self.label)
        return text

    def info(self, section):
        facts = {}
        for line in self.cli("INFO", section).splitlines():
            key, sep, value = line.strip().partition(":")
            if sep and not key.startswith("#"):
                facts[key] = value
        return facts

    def counts(self):
        """(persistent keys, keys with a time to live, {queue: size}) of the loaded data, every database."""
        keys = volatile = 0
        for key, value in self.info("keyspace").items():
            if re.fullmatch(r"db\d+", key):
                fields = dict(part.split("=", 1) for part in value.split(","))
                keys += int(fields["keys"])
                volatile += int(fields.get("expires", 0))
        queues = {queue: int(self.cli("ZCARD", queue)) for queue in QUEUE_KEYS}
        return keys - volatile, volatile, queues

    def enable_aof(self):
        """CONFIG SET appendonly yes and wait until Redis has written the fresh AOF of what it loaded."""
        self.cli("CONFIG", "SET", "appendonly", "yes")
        deadline = time.monotonic() + self.timeout
        while True:
            facts = self.info("persistence")
            if (
                facts.get("aof_enabled") == "1"
                and facts.get("aof_rewrite_in_progress") == "0"
                and facts.get("aof_rewrite_scheduled") == "0"
            ):
                if facts.get("aof_last_bgrewrite_status") != "ok":
                    raise WorkshopError(f"The throwaway Redis failed writing the AOF: {facts}", image=self.label)
                return
            if time.monotonic() > deadline:
                raise WorkshopError(f"The AOF was not written within {self.timeout} s", image=self.label)
            time.sleep(0.2)

    def shutdown(self):
        """Stop the server without a new RDB save (the AOF is synced at shutdown)."""
        self.container.exec_run(["redis-cli", "SHUTDOWN", "NOSAVE"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self.container.reload()
            if self.container.status in ("exited", "dead"):
                return
            time.sleep(0.2)
        raise WorkshopError("The throwaway Redis did not stop after SHUTDOWN", image=self.label)

    def remove(self):
        if self.container is None:
            return
        with contextlib.suppress(docker.errors.NotFound):
            self.container.remove(force=True, v=True)
        self.container = None


def _single_file_tar(path, arcname):
    """A tar (bytes) holding one file, for the Docker API's put_archive."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tar.gettarinfo(path, arcname)
        info.uid = info.gid = 999  # the redis user of the official images; root reads it anyway
        info.uname = info.gname = ""
        info.mode = 0o600  # job records hold participants' prompts; the server (root or the image's redis user) reads it
        with open(path, "rb") as stream:
            tar.addfile(info, stream)
    return buffer.getvalue()


def compare_redis(loaded, recorded):
    """Failures between the counts loaded (persistent, volatile, queues) and the backup's manifest facts."""
    persistent, _volatile, queues = loaded
    failures = []
    if "keys" in recorded and persistent != recorded["keys"]:
        failures.append(
            {
                "file": RDB_FILE,
                "member": None,
                "reason": f"{persistent} keys without a time to live loaded, the backup recorded {recorded['keys']}",
            }
        )
    for queue in QUEUE_KEYS:
        want = (recorded.get("queues") or {}).get(queue)
        if want is not None and queues[queue] != want:
            failures.append(
                {
                    "file": RDB_FILE,
                    "member": queue,
                    "reason": f"holds {queues[queue]} jobs after loading, the backup recorded {want}",
                }
            )
    return failures
