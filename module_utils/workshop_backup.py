"""The workshop's backups: archives with member manifests, a sealed folder per backup, verification.

A backup is one folder, `<workshop backup dir>/backup-<UTC stamp>/`, built under a temporary
name (`.partial-backup-<stamp>`) and renamed only once complete and verified, with MANIFEST.json
listing every file (path, size, sha256), every member of every archive, and the fingerprint of
the data it was taken from. A folder without MANIFEST.json is never a backup; a sealed one is
never written again.
"""

import errno
import hashlib
import json
import os
import shutil
import tarfile
import time
from datetime import datetime, timezone

from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import write_atomically

MANIFEST = "MANIFEST.json"
PREFIX = "backup-"
PARTIAL_PREFIX = ".partial-backup-"
CHUNK = 1 << 20
# Space kept free beyond the estimate, for file system overhead and the manifests.
SPACE_MARGIN = 64 << 20


def backup_name(now=None):
    return PREFIX + datetime.fromtimestamp(now or time.time(), timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def sha256_stream(stream):
    digest = hashlib.sha256()
    for block in iter(lambda: stream.read(CHUNK), b""):
        digest.update(block)
    return digest.hexdigest()


def sha256_file(path):
    with open(path, "rb") as stream:
        return sha256_stream(stream)


def list_tree(root):
    """Every regular file under `root` as (relative path, size, mtime_ns), sorted; a missing root is empty."""
    found = []
    if not os.path.isdir(root):
        return found
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    stat = entry.stat(follow_symlinks=False)
                    found.append((os.path.relpath(entry.path, root), stat.st_size, stat.st_mtime_ns))
    return sorted(found)


def tree_fingerprint(roots):
    """sha256 of the listings of `roots` {name: path}: changes whenever a file is added, removed or rewritten."""
    digest = hashlib.sha256()
    total = 0
    for name in sorted(roots):
        for relpath, size, mtime_ns in list_tree(roots[name]):
            digest.update(f"{name}/{relpath}\0{size}\0{mtime_ns}\n".encode("utf-8", "surrogateescape"))
            total += size
    return digest.hexdigest(), total


def _space_error(path, exc):
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return WorkshopError(
            f"The disk holding {path} is full: free space there or set workshop_backup_root to a bigger disk. "
            "The partial file was removed; earlier backups are untouched",
            path=path,
        )
    return WorkshopError(f"Cannot write {path}: {exc.strerror}", path=path)


def write_archive(dest, sources):
    """Write a tar of `sources` {arcname prefix: folder} to `dest`, hashing each file as it is read.

    Outputs are PNG and MP4 that do not compress, so the archive is stored, not compressed: the
    cost is one read of every file, which is also what gives the manifest its hashes. The tar goes
    to a temporary name, is read back and checked against the manifest, and only then renamed.
    Returns the members [{path, size, sha256}].
    """
    tmp = f"{dest}.partial"
    members = []
    try:
        # Mode "w" on a plain file, not the stream mode "w|", whose small internal buffer is slow.
        with open(tmp, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT, copybufsize=CHUNK) as tar:
                for prefix in sorted(sources):
                    root = sources[prefix]
                    for relpath, size, _ in list_tree(root):
                        members.append(_add_member(tar, os.path.join(root, relpath), f"{prefix}/{relpath}", size))
            raw.flush()
            os.fsync(raw.fileno())
        check_archive(tmp, members)
        os.replace(tmp, dest)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise _space_error(dest, exc) from None
    except WorkshopError:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return members


class _HashingReader:
    """A file read through for tarfile, hashing what passes and insisting on the size stat gave."""

    def __init__(self, stream, path, size):
        self.stream, self.path, self.left = stream, path, size
        self.digest = hashlib.sha256()

    def read(self, size=-1):
        block = self.stream.read(self.left if size is None or size < 0 else min(size, self.left))
        if not block and self.left:
            raise WorkshopError(f"{self.path} shrank while being archived: re-run once the workshop is quiet", path=self.path)
        self.left -= len(block)
        self.digest.update(block)
        return block


def _add_member(tar, path, arcname, size):
    info = tarfile.TarInfo(arcname)
    stat = os.stat(path)
    info.size, info.mtime, info.mode = size, stat.st_mtime, stat.st_mode & 0o7777
    with open(path, "rb") as stream:
        reader = _HashingReader(stream, path, size)
        tar.addfile(info, reader)
    return {"path": arcname, "size": size, "sha256": reader.digest.hexdigest()}


def check_archive(path, members):
    """Read the tar at `path` through and compare every member with `members`; raise on any difference."""
    expected = {member["path"]: member for member in members}
    seen = set()
    problems = []
    try:
        with tarfile.open(path, mode="r:", copybufsize=CHUNK) as tar:
            for info in tar:
                if not info.isfile():
                    continue
                digest = sha256_stream(tar.extractfile(info))
                want = expected.get(info.name)
                if want is None:
                    problems.append(f"{info.name}: not in the manifest")
                elif (info.size, digest) != (want["size"], want["sha256"]):
                    problems.append(f"{info.name}: content differs from the manifest")
                seen.add(info.name)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise WorkshopError(f"{path} is not a readable tar archive ({exc}): the backup is damaged", path=path) from None
    problems += [f"{name}: missing from the archive" for name in sorted(set(expected) - seen)]
    if problems:
        raise WorkshopError(
            f"{path} does not match its manifest: {'; '.join(problems[:10])}"
            + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""),
            path=path,
            problems=problems,
        )


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
    """Free bytes on the disk that holds (or will hold) `backup_dir`."""
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


def folder_files(folder):
    """Every file of a backup folder but the manifest, as {relative path: (size, sha256)}."""
    return {
        relpath: {"size": size, "sha256": sha256_file(os.path.join(folder, relpath))}
        for relpath, size, _ in list_tree(folder)
        if relpath != MANIFEST
    }


def seal(partial, final, manifest):
    """Write the manifest into `partial`, verify the whole folder against it, rename it to `final`."""
    if os.path.exists(final):
        raise WorkshopError(f"{final} exists already: a backup is never overwritten", path=final)
    manifest = {**manifest, "files": folder_files(partial)}
    try:
        write_atomically(os.path.join(partial, MANIFEST), (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode(), 0o600)
    except WorkshopError as exc:
        raise _space_error(partial, OSError(errno.ENOSPC, exc.msg)) from None
    problems = verify_folder(partial)
    if problems:
        raise WorkshopError(f"The new backup in {partial} failed verification: {'; '.join(problems)}", path=partial)
    os.rename(partial, final)
    return manifest


def verify_folder(folder, check_rdb=None):
    """Every difference between a backup folder and its manifest (empty when it is intact).

    Files are compared by size and sha256, archives member by member, and the Redis snapshot
    with `check_rdb(path)` (its own checksum) when given.
    """
    manifest = read_manifest(folder)
    problems = []
    listed = manifest.get("files", {})
    present = {relpath: size for relpath, size, _ in list_tree(folder) if relpath != MANIFEST}
    for relpath in sorted(set(listed) - set(present)):
        problems.append(f"{relpath}: missing")
    for relpath in sorted(set(present) - set(listed)):
        problems.append(f"{relpath}: not in the manifest")
    for relpath in sorted(set(listed) & set(present)):
        path = os.path.join(folder, relpath)
        if present[relpath] != listed[relpath]["size"] or sha256_file(path) != listed[relpath]["sha256"]:
            problems.append(f"{relpath}: content differs from the manifest")
    if problems:
        return problems
    for relpath, members in sorted(archives_of(folder).items()):
        try:
            check_archive(os.path.join(folder, relpath), members)
        except WorkshopError as exc:
            problems.append(exc.msg)
    rdb = manifest.get("redis", {}).get("file")
    if check_rdb and rdb and rdb in present:
        try:
            check_rdb(os.path.join(folder, rdb))
        except WorkshopError as exc:
            problems.append(exc.msg)
    return problems


def members_file(archive_relpath):
    """The member list of an archive, kept beside it in the backup folder."""
    return f"{archive_relpath}.members.json"


def write_members(archive_path, members):
    write_atomically(members_file(archive_path), (json.dumps(members, indent=0) + "\n").encode(), 0o600)


def archives_of(folder):
    """{archive relative path: its members} for every archive of a backup folder."""
    found = {}
    for relpath, _, _ in list_tree(folder):
        if relpath.endswith(".members.json"):
            with open(os.path.join(folder, relpath), encoding="utf-8") as listing:
                found[relpath[: -len(".members.json")]] = json.load(listing)
    return found
