"""The workshop's backups: archives with member manifests, a sealed folder per backup, verification.

A backup is one folder, `<workshop backup dir>/backup-<UTC stamp>/`, built under a temporary
name (`.partial-backup-<stamp>`) and renamed only once complete and verified, with MANIFEST.json
listing every file (path, size, sha256), every member of every archive, and the fingerprint of
the data it was taken from. A folder without MANIFEST.json is never a backup; a sealed one is
never written again.
"""

import errno
import functools
import hashlib
import json
import operator
import os
import shutil
import tarfile
import time
from datetime import datetime, timezone

from ansible.module_utils.workshop_dotenv import read_dotenv
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import (
    CHUNK,
    atomic_file,
    fsync_dir,
    sha256_file,
    sha256_stream,
    walk_tree,
    write_atomically,
)

MANIFEST = "MANIFEST.json"
PREFIX = "backup-"
PARTIAL_PREFIX = ".partial-backup-"
# Times a file that changes while it is read is read again before the backup gives up on it.
READ_TRIES = 3
# Space kept free beyond the estimate, for file system overhead and the manifests.
SPACE_MARGIN = 64 << 20


def backup_name(now=None):
    return PREFIX + datetime.fromtimestamp(now or time.time(), timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def list_tree(root):
    """Every file under `root` as (relative path, size, mtime_ns), sorted, as walk_tree finds them; a missing root is empty."""
    return [(entry.relpath, entry.size, entry.mtime_ns) for entry in walk_tree(root) if entry.kind == "file"]


def tree_fingerprint(roots):
    """sha256 of the listings of `roots` {name: path}: changes whenever a file or link is added, removed or rewritten."""
    digest = hashlib.sha256()
    total = 0
    for name in sorted(roots):
        for entry in walk_tree(roots[name]):
            line = f"{name}/{entry.relpath}\0{entry.size}\0{entry.mtime_ns}\0{entry.target or ''}\n"
            digest.update(line.encode("utf-8", "surrogateescape"))
            total += entry.size
    return digest.hexdigest(), total


def _space_error(path, exc):
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return WorkshopError(
            f"The disk holding {path} is full: free space there or set workshop_backup_root to a bigger disk. "
            "The partial file was removed; earlier backups are untouched",
            path=path,
        )
    return WorkshopError(f"Cannot write {path}: {exc.strerror}", path=path)


def write_archive(dest, sources, min_files=0):
    """Write a tar of `sources` {arcname prefix: folder} to `dest`, hashing each file as it is read.

    Outputs are PNG and MP4 that do not compress, so the archive is stored, not compressed: the
    cost is one read of every file, which is also what gives the manifest its hashes. The tar goes
    to a temporary name, is read back and checked against the manifest, and only then renamed
    (and the rename made durable). Links are archived as walk_tree lists them. A file that changes
    while it is read is read again (READ_TRIES times), never recorded truncated; a file that
    vanished after it was listed is left out and reported. Fewer files than `min_files` refuses
    the archive. Returns (members [{path, size, sha256} or {path, link}], vanished [paths]).
    """
    members, vanished = [], []
    try:
        with atomic_file(dest) as target:
            # Mode "w" on a plain file, not the stream mode "w|", whose small internal buffer is slow.
            raw = open(target.tmp, "wb")  # noqa: SIM115 - closed by the with below
            with raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT, copybufsize=CHUNK) as tar:
                for prefix in sorted(sources):
                    for entry in walk_tree(sources[prefix]):
                        arcname = f"{prefix}/{entry.relpath}"
                        if entry.kind == "link":
                            members.append(_add_link(tar, entry, arcname))
                            continue
                        member = _add_file(tar, raw, entry, arcname)
                        if member is None:
                            vanished.append(entry.path)
                        else:
                            members.append(member)
            files = sum(1 for member in members if "sha256" in member)
            if files < min_files:
                raise WorkshopError(
                    f"The archive {dest} would hold {files} files, far fewer than the {min_files} expected from the "
                    f"workshop's state ({', '.join(sorted(sources.values()))}): check the outputs folder; nothing was kept",
                    path=dest,
                    files=files,
                    min_files=min_files,
                )
            check_archive(target.tmp, members)
    except OSError as exc:
        raise _space_error(dest, exc) from None
    return members, vanished


class _Changed(Exception):
    """The source file changed while it was read."""


class _SourceError(Exception):
    """Reading the source file failed (not writing the archive)."""


class _HashingReader:
    """A file read through for tarfile, hashing what passes and insisting on the size stat gave."""

    def __init__(self, stream, size):
        self.stream, self.left = stream, size
        self.digest = hashlib.sha256()

    def read(self, size=-1):
        try:
            block = self.stream.read(self.left if size is None or size < 0 else min(size, self.left))
        except OSError as exc:
            raise _SourceError(exc) from None
        if not block and self.left:
            raise _Changed("shrank")
        self.left -= len(block)
        self.digest.update(block)
        return block


def _add_link(tar, entry, arcname):
    info = tarfile.TarInfo(arcname)
    info.type, info.linkname, info.mtime, info.mode = tarfile.SYMTYPE, entry.target, entry.mtime_ns // 10**9, 0o777
    tar.addfile(info)
    return {"path": arcname, "link": entry.target}


def _add_file(tar, raw, entry, arcname):
    """Add one file, re-reading it when it changes while read; None when it vanished since it was listed."""
    start = tar.offset
    for _dummy in range(READ_TRIES):
        try:
            stream = open(entry.path, "rb")  # noqa: SIM115 - closed below, after the second stat
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise WorkshopError(f"Cannot read {entry.path} (source): {exc.strerror}", path=entry.path) from None
        try:
            before = os.fstat(stream.fileno())
            info = tarfile.TarInfo(arcname)
            info.size, info.mtime, info.mode = before.st_size, before.st_mtime, before.st_mode & 0o7777
            reader = _HashingReader(stream, before.st_size)
            try:
                tar.addfile(info, reader)
                after = os.fstat(stream.fileno())
                changed = (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns)
                if stream.read(1):
                    changed = True
            except _Changed:
                changed = True
            except _SourceError as exc:
                error = exc.args[0]
                raise WorkshopError(f"Cannot read {entry.path} (source): {error.strerror or error}", path=entry.path) from None
        finally:
            stream.close()
        if not changed:
            member = {"path": arcname, "size": before.st_size, "sha256": reader.digest.hexdigest()}
            if entry.via:
                member["via"] = entry.via
            return member
        # Take the half-written member back out of the tar and read the file again.
        if tar.members and tar.members[-1].name == arcname:
            tar.members.pop()
        raw.seek(start)
        raw.truncate(start)
        tar.offset = start
    raise WorkshopError(
        f"{entry.path} changed every time it was read ({READ_TRIES} tries): something is still writing it; "
        "re-run the backup once the workshop is quiet (nothing partial was kept)",
        path=entry.path,
    )


def archive_failures(path, members):
    """Every difference between the tar at `path` and its member list, as [{member, reason}] (empty when intact)."""
    expected = {member["path"]: member for member in members}
    seen = set()
    failures = []
    current = None
    try:
        with tarfile.open(path, mode="r:", copybufsize=CHUNK) as tar:
            for info in tar:
                current = info.name
                want = expected.get(info.name)
                seen.add(info.name)
                if want is None:
                    failures.append({"member": info.name, "reason": "not in the manifest"})
                elif "link" in want:
                    if not info.issym() or info.linkname != want["link"]:
                        failures.append({"member": info.name, "reason": f"should be a link to {want['link']}"})
                elif not info.isfile():
                    failures.append({"member": info.name, "reason": "is not a file in the archive"})
                else:
                    digest = sha256_stream(tar.extractfile(info))
                    if (info.size, digest) != (want["size"], want["sha256"]):
                        failures.append({"member": info.name, "reason": "content differs from the manifest"})
                current = None
    except (tarfile.TarError, EOFError, OSError) as exc:
        failures.append({"member": current, "reason": f"not a readable tar archive ({exc})"})
        return failures
    failures += [{"member": name, "reason": "missing from the archive"} for name in sorted(set(expected) - seen)]
    return failures


def check_archive(path, members):
    """Read the tar at `path` through and compare every member with `members`; raise on any difference."""
    failures = archive_failures(path, members)
    if failures:
        problems = [f"{failure['member'] or path}: {failure['reason']}" for failure in failures]
        raise WorkshopError(
            f"{path} does not match its manifest: {'; '.join(problems[:10])}"
            + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""),
            path=path,
            problems=problems,
        )


def expected_outputs_dir(project_dir, env):
    """Where the compose project puts outputs: OUTPUTS_PATH of the .env (relative to the project), else ./data/outputs."""
    return os.path.normpath(os.path.join(project_dir, env.get("OUTPUTS_PATH") or "./data/outputs"))


def outputs_mounts(containers):
    """{host folder: [container:destination]} of the bind mounts whose destination is an outputs folder."""
    found = {}
    for container in containers:
        for mount in container.attrs.get("Mounts") or []:
            destination = mount.get("Destination") or ""
            if mount.get("Type") == "bind" and "output" in os.path.basename(destination.rstrip("/")).lower():
                found.setdefault(os.path.realpath(mount.get("Source", "")), []).append(f"{container.name}:{destination}")
    return found


def check_outputs_dir(outputs_dir, project_dir, env_file, containers):
    """Raise unless `outputs_dir` is the folder the workshop writes its outputs to, and exists."""
    env = read_dotenv(env_file) if env_file and os.path.exists(env_file) else {}
    expected = expected_outputs_dir(project_dir, env)
    source = f"OUTPUTS_PATH in {env_file}" if env.get("OUTPUTS_PATH") else "the platform's default ./data/outputs"
    given = os.path.realpath(outputs_dir)
    mounts = outputs_mounts(containers)
    if given != os.path.realpath(expected):
        raise WorkshopError(
            f"workshop_outputs_dir is {outputs_dir}, but the workshop writes its outputs to {expected} ({source}"
            + (f"; mounted by {', '.join(functools.reduce(operator.iadd, mounts.values(), []))}" if mounts else "")
            + "): fix workshop_outputs_dir; nothing was backed up",
            path=outputs_dir,
            expected=expected,
        )
    if mounts and given not in mounts:
        raise WorkshopError(
            f"workshop_outputs_dir is {outputs_dir}, but the compose project mounts "
            f"{'; '.join(folder + ' (' + ', '.join(where) + ')' for folder, where in sorted(mounts.items()))} "
            "as its outputs: fix workshop_outputs_dir or OUTPUTS_PATH; nothing was backed up",
            path=outputs_dir,
            mounted=sorted(mounts),
        )
    if not os.path.isdir(given):
        raise WorkshopError(f"The outputs folder {outputs_dir} does not exist: fix workshop_outputs_dir", path=outputs_dir)


def sealed_backups(backup_dir):
    """Names of the sealed backups in `backup_dir`, oldest first."""
    if not os.path.isdir(backup_dir):
        return []
    return sorted(
        name
        for name in os.listdir(backup_dir)
        if name.startswith(PREFIX) and os.path.isfile(os.path.join(backup_dir, name, MANIFEST))
    )


def read_manifest(folder):
    try:
        with open(os.path.join(folder, MANIFEST), encoding="utf-8") as manifest:
            return json.load(manifest)
    except (OSError, ValueError) as exc:
        raise WorkshopError(f"Cannot read {os.path.join(folder, MANIFEST)}: {exc}", path=folder) from None


def stale_partials(backup_dir):
    """Folders left by an interrupted backup: never complete, never a backup."""
    if not os.path.isdir(backup_dir):
        return []
    return sorted(os.path.join(backup_dir, n) for n in os.listdir(backup_dir) if n.startswith(PARTIAL_PREFIX))


def free_space(backup_dir):
    """Free bytes on the disk that holds (or will hold) `backup_dir` (an absolute path)."""
    if not os.path.isabs(backup_dir):
        raise WorkshopError(
            f"The backup folder {backup_dir} is a relative path: set workshop_backup_root to an absolute path",
            path=backup_dir,
        )
    probe = backup_dir
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return shutil.disk_usage(probe).free


def check_space(backup_dir, needed):
    """Raise unless the disk holding `backup_dir` has room for `needed` bytes and the margin."""
    free = free_space(backup_dir)
    if free < needed + SPACE_MARGIN:
        raise WorkshopError(
            f"Not enough space for the backup in {backup_dir}: about {needed >> 20} MiB needed (+{SPACE_MARGIN >> 20} MiB "
            f"margin), {free >> 20} MiB free. Free space or set workshop_backup_root to a bigger disk; nothing was written",
            path=backup_dir,
            needed_bytes=needed,
            free_bytes=free,
        )
    return free


def folder_files(folder, sync=False):
    """Every file of a backup folder but the manifest, as {relative path: (size, sha256)}; with sync, fsynced too."""
    files = {}
    for relpath, size, _dummy in list_tree(folder):
        if relpath == MANIFEST:
            continue
        with open(os.path.join(folder, relpath), "rb") as stream:
            if sync:
                os.fsync(stream.fileno())
            files[relpath] = {"size": size, "sha256": sha256_stream(stream)}
    return files


def _sync_folders(folder):
    for root, _dummy, _dummy in os.walk(folder):
        fsync_dir(root)


def seal(partial, final, manifest, check_rdb=None):
    """Write the manifest into `partial`, verify the whole folder against it, rename it to `final`.

    Every file (the logs too) and folder is fsynced before the rename, and the backup folder after
    it, so a power cut cannot turn a sealed backup back into a partial one.
    """
    if os.path.exists(final):
        raise WorkshopError(f"{final} exists already: a backup is never overwritten", path=final)
    manifest = {**manifest, "files": folder_files(partial, sync=True)}
    try:
        write_atomically(os.path.join(partial, MANIFEST), (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode(), 0o600)
    except WorkshopError as exc:
        raise _space_error(partial, OSError(errno.ENOSPC, exc.msg)) from None
    failures = verify_folder(partial, check_rdb=check_rdb)
    if failures:
        raise WorkshopError(
            f"The new backup in {partial} failed verification: {'; '.join(describe_failures(failures))}",
            path=partial,
            failures=failures,
        )
    _sync_folders(partial)
    os.rename(partial, final)
    fsync_dir(os.path.dirname(final))
    return manifest


def describe_failures(failures):
    return [
        f"{failure['file']}{' member ' + failure['member'] if failure.get('member') else ''}: {failure['reason']}"
        for failure in failures
    ]


def verify_folder(folder, check_rdb=None):
    """Every difference between a backup folder and its manifest, as [{file, member, reason}] (empty when intact).

    Files are compared by size and sha256; an archive that differs is read member by member to
    name the participant's file at fault; every archive is checked member by member, and the Redis
    snapshot with `check_rdb(path)` (its own checksum) when given.
    """
    manifest = read_manifest(folder)
    failures = []
    listed = manifest.get("files", {})
    present = {relpath: size for relpath, size, _dummy in list_tree(folder) if relpath != MANIFEST}
    archives = archives_of(folder)
    for relpath in sorted(set(listed) - set(present)):
        failures.append({"file": relpath, "member": None, "reason": "missing"})
    for relpath in sorted(set(present) - set(listed)):
        failures.append({"file": relpath, "member": None, "reason": "not in the manifest"})
    damaged = set()
    for relpath in sorted(set(listed) & set(present)):
        path = os.path.join(folder, relpath)
        if present[relpath] != listed[relpath]["size"] or sha256_file(path) != listed[relpath]["sha256"]:
            damaged.add(relpath)
            failures.append({"file": relpath, "member": None, "reason": "content differs from the manifest"})
    for relpath, members in sorted(archives.items()):
        if relpath not in present:
            continue
        found = archive_failures(os.path.join(folder, relpath), members)
        if found and relpath in damaged:
            # The member names say more than the archive's name: keep those.
            failures = [failure for failure in failures if failure["file"] != relpath]
        failures += [{"file": relpath, "member": failure["member"], "reason": failure["reason"]} for failure in found]
    rdb = manifest.get("redis", {}).get("file")
    if check_rdb and rdb and rdb in present and rdb not in damaged:
        try:
            check_rdb(os.path.join(folder, rdb))
        except WorkshopError as exc:
            failures.append({"file": rdb, "member": None, "reason": exc.msg})
    return failures


def members_file(archive_relpath):
    """The member list of an archive, kept beside it in the backup folder."""
    return f"{archive_relpath}.members.json"


def write_members(archive_path, members):
    write_atomically(members_file(archive_path), (json.dumps(members, indent=0) + "\n").encode(), 0o600)


def archives_of(folder):
    """{archive relative path: its members} for every archive of a backup folder (an unreadable list: no members)."""
    found = {}
    for relpath, _dummy, _dummy in list_tree(folder):
        if relpath.endswith(".members.json"):
            try:
                with open(os.path.join(folder, relpath), encoding="utf-8") as listing:
                    found[relpath[: -len(".members.json")]] = json.load(listing)
            except ValueError:
                continue  # its own sha256 in the manifest names it as damaged
    return found
