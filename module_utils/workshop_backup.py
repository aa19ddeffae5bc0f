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
import re
import shutil
import tarfile
import time
from datetime import datetime, timezone
from typing import NamedTuple, Optional

from ansible.module_utils.workshop_dotenv import read_dotenv
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import (  # pylint: disable=unused-import
    CHUNK,
    Sha256,
    atomic_file,
    fsync_dir,
    human_bytes,
    nearest_existing,
    sha256_file,  # other helpers import it from here too
    sha256_stream,
    walk_tree,
    write_atomically,
)
from ansible.module_utils.workshop_record import describe_failures
from ansible.module_utils.workshop_time import epoch_of, utc_iso

MANIFEST = "MANIFEST.json"
PREFIX = "backup-"
PARTIAL_PREFIX = ".partial-backup-"
BACKUP_TIME = re.compile(r"^backup-(\d{8}T\d{6}Z)")
# A backup named this much later than the host's clock was not sealed by it (a hand rename, a clock
# set wrong): sorted by name, it would stay the newest for good.
FUTURE_SLACK = 3600
# Times a file that changes while it is read is read again before the backup gives up on it.
READ_TRIES = 3
# Space kept free beyond the estimate, for file system overhead and the manifests.
SPACE_MARGIN = 64 << 20
# Set aside for the logs before they are exported: compressed, a workshop's are far below it.
LOGS_ALLOWANCE = 64 << 20
# A file read in a pass over a whole backup has its pages dropped from the page cache behind the
# reader every this many bytes (DiskReader).
DROP_BEHIND = 8 << 20
# How much of the next source file the kernel is asked to read while the current one is archived.
READ_AHEAD = 32 << 20


def backup_name(now=None):
    return PREFIX + datetime.fromtimestamp(now or time.time(), timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def list_tree(root):
    """Every file under `root` as (relative path, size, mtime_ns), sorted, as walk_tree finds them; a missing root is empty."""
    return [(entry.relpath, entry.size, entry.mtime_ns) for entry in walk_tree(root) if entry.kind == "file"]


def tree_fingerprint(roots):
    """sha256 of the listings of `roots` {name: path}: changes whenever a file or link is added, removed or
    rewritten; with each root's own sha256 {name: digest} (which part changed) and the bytes listed."""
    digest = hashlib.sha256()
    per_root = {}
    total = 0
    for name in sorted(roots):
        own = hashlib.sha256()
        for entry in walk_tree(roots[name]):
            line = f"{name}/{entry.relpath}\0{entry.size}\0{entry.mtime_ns}\0{entry.target or ''}\n".encode(
                "utf-8", "surrogateescape"
            )
            digest.update(line)
            own.update(line)
            total += entry.size
        per_root[name] = own.hexdigest()
    return digest.hexdigest(), per_root, total


def config_fingerprint(project_dir, names):
    """{name: sha256, or None when missing} of the configuration files `names` under `project_dir`."""
    found = {}
    for name in names:
        path = os.path.join(project_dir, name)
        try:
            found[name] = sha256_file(path)
        except FileNotFoundError:
            found[name] = None
        except OSError as exc:
            raise WorkshopError(
                f"Cannot read the configuration file {path} ({exc.strerror}): fix its permissions", path=path
            ) from None
    return found


def only_removed_since(root, members, prefix):
    """Whether everything now under `root` is in a backup's `members` (its archive's member list, paths
    under `prefix`/): each file with the same size and sha256, each link kept as a link with the same
    target. Files went, none came or changed. (Retention and cleanup remove outputs held by a backup; a new
    backup of what is left would hold nothing new.) A file that cannot be read counts as changed: the
    backup that follows names it."""
    listed = {member.get("path"): member for member in members if isinstance(member, dict)}
    files = []
    for entry in walk_tree(root):
        member = listed.get(f"{prefix}/{entry.relpath}")
        if member is None:
            return False
        if entry.kind == "link":
            if member.get("link") != entry.target:
                return False
        elif member.get("size") != entry.size:
            return False
        else:
            files.append((entry.path, member.get("sha256")))
    try:
        return all(sha256_file(path) == digest for path, digest in files)
    except OSError:
        return False


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
            written_out = 0
            with raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT, copybufsize=CHUNK) as tar:
                entries = [
                    (f"{prefix}/{entry.relpath}", entry) for prefix in sorted(sources) for entry in walk_tree(sources[prefix])
                ]
                for number, (arcname, entry) in enumerate(entries):
                    if entry.kind == "link":
                        members.append(_add_link(tar, entry, arcname))
                        continue
                    if number + 1 < len(entries):
                        _read_ahead(entries[number + 1][1])
                    member = _add_file(tar, raw, entry, arcname)
                    if member is None:
                        vanished.append(entry.path)
                    else:
                        members.append(member)
                    if tar.offset - written_out >= DROP_BEHIND:
                        # Start writing what is written so far out to disk now, rather than all at the fsync.
                        drop_cache(raw.fileno(), written_out, tar.offset - written_out)
                        written_out = tar.offset
            files = sum(1 for member in members if "sha256" in member)
            if files < min_files:
                raise WorkshopError(
                    f"The archive {dest} would hold {files} files, far fewer than the {min_files} expected from the "
                    f"workshop's state ({', '.join(sorted(sources.values()))}): check the outputs folder; nothing was kept",
                    path=dest,
                    files=files,
                    min_files=min_files,
                )
            # Read back from the disk, not from the page cache that still holds what was just written.
            _fsync_file(target.tmp)
            check_archive(target.tmp, members)
    except OSError as exc:
        raise _space_error(dest, exc) from None
    return members, vanished


def _read_ahead(entry):
    """Ask the kernel to start reading the next file (its first READ_AHEAD bytes) while this one is archived:
    tar -cf waits for each file's first read; this does not (2 GiB of outputs: 5.3 s -> 4.5 s to write)."""
    if entry.kind != "file" or not hasattr(os, "posix_fadvise"):
        return
    try:
        fd = os.open(entry.path, os.O_RDONLY)
    except OSError:
        return  # _add_file says what is wrong with it
    try:
        os.posix_fadvise(fd, 0, READ_AHEAD, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)


def _times(info):
    return info.st_size, info.st_mtime_ns, info.st_ctime_ns


class _Changed(Exception):
    """The source file changed while it was read."""


class _SourceError(Exception):
    """Reading the source file failed (not writing the archive)."""


class _HashingReader:
    """A file read through for tarfile, hashing what passes and insisting on the size stat gave."""

    def __init__(self, stream, size):
        self.stream, self.left = stream, size
        self.digest = Sha256()

    def read(self, size=-1):
        wanted = self.left if size is None or size < 0 else min(size, self.left)
        try:
            block = self.stream.read(wanted)
        except OSError as exc:
            raise _SourceError(exc) from None
        if len(block) < wanted:  # a buffered read of a file comes up short only at its end
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
                # The change time too: a write whose modification time was put back still moves it.
                changed = _times(after) != _times(before)
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


def _fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DiskReader:
    """A file read from the disk rather than the page cache, and hashed whole as it is read, in one pass.

    Opening it asks the kernel to drop the file's cached pages (posix_fadvise DONTNEED: only clean
    pages go, so the file must be fsynced first, as every backup file is), so a check that reads it
    reads what the disk holds, not what was just written. What has been read is dropped behind the
    reader every DROP_BEHIND bytes: the kernel then reuses those pages for the next ones instead of
    taking fresh ones (checking a just-written 2 GiB archive: about 3 s instead of 5, README "Speed").

    tarfile reads an archive in order and seeks only forward (over the padding of a member): the
    skipped bytes are read and hashed too, so checking the members also gives the whole file's
    sha256. A seek backwards ends the whole-file hash (sha256() then reads the file once more).
    With whole_file False (a check of the members alone), nothing is hashed here."""

    def __init__(self, path, whole_file=True):
        self.path = path
        self.file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        drop_cache(self.file.fileno())
        self.digest, self.position, self.in_order, self.dropped_to = Sha256(), 0, whole_file, 0

    def read(self, size=-1):
        block = self.file.readall() if size is None or size < 0 else self.file.read(size)
        if self.in_order:
            self.digest.update(block)
        self.position += len(block)
        if self.position - self.dropped_to >= DROP_BEHIND:
            drop_cache(self.file.fileno(), self.dropped_to, self.position - self.dropped_to)
            self.dropped_to = self.position
        return block

    def seek(self, offset, whence=os.SEEK_SET):
        target = {os.SEEK_SET: offset, os.SEEK_CUR: self.position + offset}.get(whence)
        if target is None:
            target = os.fstat(self.file.fileno()).st_size + offset
        while self.in_order and self.position < target:
            if not self.read(min(CHUNK, target - self.position)):
                break
        if target != self.position:
            self.in_order = False
            self.position = self.file.seek(target)
            self.dropped_to = min(self.dropped_to, self.position)
        return self.position

    def tell(self):
        return self.position

    def sha256(self):
        """sha256 (hex) of the whole file: the rest read on to its end (or all of it again if it was read out of order)."""
        if not self.in_order:
            self.seek(0)
            drop_cache(self.file.fileno())
            return sha256_stream(self)
        self.seek(0, os.SEEK_END)
        while self.read(CHUNK):
            pass
        return self.digest.hexdigest()

    def close(self):
        self.file.close()


def drop_cache(fd, offset=0, length=0):
    """Drop a file's clean pages (of a range; all by default) from the page cache, where the platform can,
    so its next read comes from disk. Linux also starts writing out the range's dirty pages."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def file_sha256(path):
    """sha256 (hex) of a file as the disk holds it (see DiskReader)."""
    reader = DiskReader(path)
    try:
        return reader.sha256()
    finally:
        reader.close()


def archive_failures(path, members):
    """Every difference between the tar at `path` and its member list, as [{member, reason}] (empty when intact).

    The tar is read from disk (see DiskReader)."""
    try:
        reader = DiskReader(path, whole_file=False)
    except OSError as exc:
        return [{"member": None, "reason": f"not a readable tar archive ({exc})"}]
    try:
        return _archive_failures(reader, path, members)
    finally:
        reader.close()


def _archive_failures(reader, path, members):
    expected = {member["path"]: member for member in members}
    seen = set()
    failures = []
    current = None
    try:
        with tarfile.open(fileobj=reader, mode="r:", copybufsize=CHUNK) as tar:
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
                    digest = _member_sha256(reader, info)
                    if (info.size, digest) != (want["size"], want["sha256"]):
                        failures.append({"member": info.name, "reason": "content differs from the manifest"})
                current = None
    except (tarfile.TarError, EOFError, OSError) as exc:
        failures.append({"member": current, "reason": f"not a readable tar archive ({exc})"})
        return failures
    failures += [{"member": name, "reason": "missing from the archive"} for name in sorted(set(expected) - seen)]
    return failures


def _member_sha256(reader, info):
    """sha256 (hex) of a regular member's bytes, read straight from the DiskReader (tarfile's own file
    object would copy every block once more); an archive that ends inside it raises as tarfile would."""
    reader.seek(info.offset_data)
    digest, left = Sha256(), info.size
    while left:
        block = reader.read(min(CHUNK, left))
        if not block:
            raise tarfile.ReadError("unexpected end of data")
        digest.update(block)
        left -= len(block)
    return digest.hexdigest()


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


def backup_epoch(name):
    """Creation time (epoch) of a backup, from its name `backup-YYYYmmddTHHMMSSZ` (the seal's clock); None
    for another name."""
    match = BACKUP_TIME.match(name or "")
    if not match:
        return None
    text = match.group(1)
    return epoch_of(f"{text[0:4]}-{text[4:6]}-{text[6:8]}T{text[9:11]}:{text[11:13]}:{text[13:15]}Z")


def sealed_backups(backup_dir, now=None):
    """Names of the sealed backups in `backup_dir`, oldest first (by name: the seal's UTC time).

    A backup named after the host's clock (by more than FUTURE_SLACK) is refused, naming it: it would
    be "the newest" whatever is sealed later, verified, archived and trusted instead of it."""
    if not os.path.isdir(backup_dir):
        return []
    names = sorted(
        name
        for name in os.listdir(backup_dir)
        if name.startswith(PREFIX) and os.path.isfile(os.path.join(backup_dir, name, MANIFEST))
    )
    now = time.time() if now is None else now
    future = [name for name in names if (backup_epoch(name) or 0) > now + FUTURE_SLACK]
    if future:
        raise WorkshopError(
            f"{os.path.join(backup_dir, future[-1])} is named after this host's clock ({utc_iso(now)}): a backup is "
            "named when it is sealed, so this one was renamed or copied by hand, or the clock was wrong then. "
            "Named so, it would stay the newest backup whatever is sealed later: move it out of the workshop's folder",
            path=os.path.join(backup_dir, future[-1]),
        )
    return names


def read_manifest(folder, from_disk=False):
    """The MANIFEST.json of a backup folder; with from_disk, read from the disk rather than the page cache."""
    try:
        with open(os.path.join(folder, MANIFEST), encoding="utf-8") as manifest:
            if from_disk:
                drop_cache(manifest.fileno())
            content = json.load(manifest)
    except (OSError, ValueError) as exc:
        raise WorkshopError(f"Cannot read {os.path.join(folder, MANIFEST)}: {exc}", path=folder) from None
    if not isinstance(content, dict):
        raise WorkshopError(f"Cannot read {os.path.join(folder, MANIFEST)}: it is not a JSON object", path=folder)
    return content


def stale_partials(backup_dir):
    """Folders left by an interrupted backup: never complete, never a backup."""
    if not os.path.isdir(backup_dir):
        return []
    return sorted(os.path.join(backup_dir, n) for n in os.listdir(backup_dir) if n.startswith(PARTIAL_PREFIX))


# The folders of a backup that the backup modules write into, made when its partial folder is opened.
BACKUP_FOLDERS = ("redis", "logs", "config")
CONFIG_FOLDER = "config"
CONFIG_MODE = 0o600


def _config_name(name, project_dir):
    """A configuration file's name, refused unless it is a path inside `project_dir` (relative, no "..")."""
    parts = name.split("/")
    if not name or os.path.isabs(name) or ".." in parts:
        raise WorkshopError(
            f"Configuration file '{name}' is not a path inside the project directory {project_dir}: "
            "fix backup_config_files (names relative to the project directory); nothing was written",
            path=name,
        )
    return os.path.normpath(name)


def open_partial(backup_dir, partial, project_dir, config_files, required=(), copy_config=True, check_mode=False):
    """Open a new backup's partial folder: `partial` (owner only) with BACKUP_FOLDERS in it, and the
    configuration files of `project_dir` named in `config_files` kept in config/ with CONFIG_MODE.

    A missing file of `required`, or a name that is not a file, fails before anything is written; other
    missing files are listed. With copy_config false (the controller keeps them encrypted instead) the
    files are only looked for. Returns {"present": [names], "missing": [names]}.
    """
    if os.path.dirname(partial) != backup_dir.rstrip("/") or not os.path.basename(partial).startswith(PARTIAL_PREFIX):
        raise WorkshopError(
            f"{partial} is not a partial backup folder of {backup_dir}: pass the plan's partial; nothing was written",
            path=partial,
        )
    names = [_config_name(name, project_dir) for name in config_files]
    present, missing = [], []
    for name in names:
        path = os.path.join(project_dir, name)
        if os.path.isfile(path):
            present.append(name)
        elif os.path.lexists(path):
            raise WorkshopError(
                f"Configuration file {path} is not a file: fix backup_config_files; nothing was written", path=path
            )
        else:
            missing.append(name)
    required = {os.path.normpath(name) for name in required}
    missing_required = [name for name in missing if name in required]
    if missing_required:
        raise WorkshopError(
            f"Required configuration missing in {project_dir}: {', '.join(missing_required)} "
            "(backup_config_required_files); nothing was written",
            path=project_dir,
        )
    if not check_mode:
        try:
            for folder in ("", *BACKUP_FOLDERS):
                os.makedirs(os.path.join(partial, folder), mode=0o700, exist_ok=True)
                os.chmod(os.path.join(partial, folder), 0o700)
        except OSError as exc:
            raise _space_error(partial, exc) from None
        for name in present if copy_config else ():
            dest = os.path.join(partial, CONFIG_FOLDER, name)
            os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
            try:
                with open(os.path.join(project_dir, name), "rb") as source:
                    content = source.read()
            except OSError as exc:
                raise WorkshopError(f"Cannot read {os.path.join(project_dir, name)}: {exc.strerror}", path=name) from None
            write_atomically(dest, content, CONFIG_MODE)
    return {"present": present, "missing": missing}


def free_space(backup_dir):
    """Free bytes on the disk that holds (or will hold) `backup_dir` (an absolute path)."""
    if not os.path.isabs(backup_dir):
        raise WorkshopError(
            f"The backup folder {backup_dir} is a relative path: set workshop_backup_root to an absolute path",
            path=backup_dir,
        )
    return shutil.disk_usage(nearest_existing(backup_dir)).free


def check_space(backup_dir, needed):
    """Raise unless the disk holding `backup_dir` has room for `needed` bytes (LOGS_ALLOWANCE of them set
    aside for the logs, not yet measured) and the margin."""
    free = free_space(backup_dir)
    if free < needed + SPACE_MARGIN:
        raise WorkshopError(
            f"Not enough space for the backup in {backup_dir}: about {human_bytes(needed)} needed ("
            f"{human_bytes(needed - LOGS_ALLOWANCE)} of files and Redis, {human_bytes(LOGS_ALLOWANCE)} set aside for the "
            f"logs) and a {human_bytes(SPACE_MARGIN)} margin, {human_bytes(free)} free. Free space or set "
            "workshop_backup_root to a bigger disk; nothing was written",
            path=backup_dir,
            needed_bytes=needed,
            free_bytes=free,
        )
    return free


def read_folder(folder, archives, sync=False):
    """One read of every file of a backup folder but the manifest, from disk: {relative path: {size, sha256}}
    and, for each archive of `archives` {relpath: members}, its member failures {relpath: [{member, reason}]}.

    With sync, each file is fsynced first (a new backup: its pages must be clean to be dropped and read from disk).
    An archive's member check and its whole-file sha256 come from the same read (DiskReader).
    """
    files, members_failed = {}, {}
    for relpath, size, _dummy in list_tree(folder):
        if relpath == MANIFEST:
            continue
        path = os.path.join(folder, relpath)
        if sync:
            _fsync_file(path)
        if relpath in archives:
            try:
                reader = DiskReader(path)
            except OSError as exc:
                raise WorkshopError(f"Cannot read {path}: {exc.strerror}", path=path) from None
            try:
                members_failed[relpath] = _archive_failures(reader, path, archives[relpath])
                digest = reader.sha256()
            finally:
                reader.close()
        else:
            digest = file_sha256(path)
        files[relpath] = {"size": size, "sha256": digest}
    return files, members_failed


def folder_files(folder, sync=False):
    """Every file of a backup folder but the manifest, as {relative path: {size, sha256}}, read from disk.

    With sync, each is fsynced first."""
    return read_folder(folder, {}, sync=sync)[0]


def _sync_folders(folder):
    for root, _dummy, _dummy in os.walk(folder):
        fsync_dir(root)


def seal(partial, final, manifest, check_rdb=None):
    """Write the manifest into `partial`, verify the whole folder against it, rename it to `final`.

    Every file is fsynced and read once from disk (not the page cache): that read gives the
    manifest its sha256 and checks each archive member by member against its member list. The
    manifest is then read back and compared, the folder listed again against it, and the Redis
    snapshot checked with `check_rdb`. Every file (the logs too) and folder is fsynced before the
    rename, and the backup folder after it, so a power cut cannot turn a sealed backup back into a
    partial one.

    Returns Sealed: the manifest, and the sealed folder's signature (folder_signature) when no file
    was written since the read began (else None): a verification can take the seal's read for it.
    """
    if os.path.exists(final):
        raise WorkshopError(f"{final} exists already: a backup is never overwritten", path=final)
    read_from = _file_stats(partial)  # before the read: a write during or after it shows below
    files, members_failed = read_folder(partial, archives_of(partial), sync=True)
    manifest = {**manifest, "files": files}
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    try:
        write_atomically(os.path.join(partial, MANIFEST), text.encode(), 0o600)
    except WorkshopError as exc:
        raise _space_error(partial, OSError(errno.ENOSPC, exc.msg)) from None
    failures = [
        {"file": relpath, "member": failure["member"], "reason": failure["reason"]}
        for relpath, found in sorted(members_failed.items())
        for failure in found
    ]
    written = _stat_line(MANIFEST, os.path.join(partial, MANIFEST))
    if read_manifest(partial, from_disk=True) != json.loads(text):
        failures.append({"file": MANIFEST, "member": None, "reason": "reads back different from what was written"})
    present = {relpath for relpath, _size, _dummy in list_tree(partial) if relpath != MANIFEST}
    failures += [{"file": relpath, "member": None, "reason": "missing"} for relpath in sorted(set(files) - present)]
    failures += [{"file": relpath, "member": None, "reason": "not in the manifest"} for relpath in sorted(present - set(files))]
    rdb = manifest.get("redis", {}).get("file")
    if check_rdb and rdb and rdb in files:
        try:
            check_rdb(os.path.join(partial, rdb))
        except WorkshopError as exc:
            failures.append({"file": rdb, "member": None, "reason": exc.msg})
    if failures:
        raise WorkshopError(
            f"The new backup in {partial} failed verification: {'; '.join(describe_failures(failures))}",
            path=partial,
            failures=failures,
        )
    _sync_folders(partial)
    os.rename(partial, final)
    fsync_dir(os.path.dirname(final))
    now = _file_stats(final)
    unchanged = written in now and [line for line in now if line != written] == read_from
    return Sealed(manifest, _signature_of(now) if unchanged else None)


class Sealed(NamedTuple):
    """What seal() made: the manifest it wrote, and the folder's signature as its read found it (None
    when something wrote to the folder meanwhile)."""

    manifest: dict
    signature: Optional[str]


def folder_signature(folder):
    """The sha256 of every file's path, size, modification and change times and inode in a backup
    folder, walked as walk_tree walks (a folder it cannot list fails, naming it, rather than being
    left out): a write to any file, or a file added, removed or replaced, changes it; no content is read."""
    return _signature_of(_file_stats(folder))


def _stat_line(relpath, path):
    info = os.lstat(path)
    return f"{relpath}\0{info.st_size}\0{info.st_mtime_ns}\0{info.st_ctime_ns}\0{info.st_ino}\n"


def _file_stats(folder):
    return [_stat_line(entry.relpath, entry.path) for entry in walk_tree(folder)]


def _signature_of(lines):
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def verify_folder(folder, check_rdb=None):
    """Every difference between a backup folder and its manifest, as [{file, member, reason}] (empty when intact).

    Every file is read once, from disk: compared by size and sha256; every archive is checked
    member by member in that same read (an archive that differs is named by the participant's
    files at fault); the Redis snapshot is checked with `check_rdb(path)` (its own checksum) when given.
    """
    manifest = read_manifest(folder)
    failures = []
    name = os.path.basename(folder.rstrip(os.sep))
    if name.startswith(PREFIX) and manifest.get("name", name) != name:
        failures.append(
            {"file": MANIFEST, "member": None, "reason": f"names the backup {manifest.get('name')}: copied or renamed by hand"}
        )
    listed = manifest.get("files", {})
    present = {relpath: size for relpath, size, _dummy in list_tree(folder) if relpath != MANIFEST}
    archives = archives_of(folder)
    for relpath in sorted(set(listed) - set(present)):
        failures.append({"file": relpath, "member": None, "reason": "missing"})
    for relpath in sorted(set(present) - set(listed)):
        failures.append({"file": relpath, "member": None, "reason": "not in the manifest"})
    files, members_failed = read_folder(folder, archives)
    damaged = set()
    for relpath in sorted(set(listed) & set(present)):
        if present[relpath] != listed[relpath]["size"] or files[relpath]["sha256"] != listed[relpath]["sha256"]:
            damaged.add(relpath)
            failures.append({"file": relpath, "member": None, "reason": "content differs from the manifest"})
    for relpath, found in sorted(members_failed.items()):
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


def trusted_members(folder, manifest, archive="outputs.tar"):
    """The member list of `archive` in the backup `folder`, once its sha256 matches the one the backup's
    `manifest` (read_manifest) records for it. ValueError saying why when it cannot be relied on."""
    listing = members_file(archive)
    try:
        listed = manifest.get("files", {}).get(listing) or {}
        with open(os.path.join(folder, listing), "rb") as stream:
            data = stream.read()
        if hashlib.sha256(data).hexdigest() != listed.get("sha256"):
            raise ValueError("its sha256 differs from the backup's MANIFEST.json")
        members = json.loads(data)
    except (OSError, AttributeError) as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(members, list) or not all(isinstance(member, dict) for member in members):
        raise ValueError("not a list of members")
    return members


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
