"""Plain helpers over the workshop's files."""

import contextlib
import errno
import functools
import hashlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.workshop_errors import WorkshopError

# Bytes read at a time when streaming a file (hashing, archiving).
CHUNK = 1 << 20
# Blocks shorter than this are hashed on the caller's thread: handing them over would cost more.
HAND_OVER_MIN = 64 << 10
# The workshop folder (<workshop_backup_root>/<workshop_id>): one mode wherever it is created or touched.
WORKSHOP_FOLDER_MODE = 0o700


def make_workshop_folder(folder):
    """Create the workshop's folder (and its parents) with WORKSHOP_FOLDER_MODE, unless it is there."""
    if os.path.isdir(folder):
        return
    try:
        os.makedirs(folder, mode=WORKSHOP_FOLDER_MODE, exist_ok=True)
        os.chmod(folder, WORKSHOP_FOLDER_MODE)
    except OSError as exc:
        raise WorkshopError(
            f"Cannot create the workshop's folder {folder} on this host ({exc.strerror}): "
            "check workshop_backup_root (a folder this user may write to)",
            path=folder,
        ) from None


def human_bytes(size):
    """ "512 B", "3.1 KiB", "27.0 MiB" (binary units, as df -h and du -h give them)."""
    size = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


@functools.lru_cache(maxsize=None)
def _hashing_threads():
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="sha256")


class Sha256:
    """sha256 of a stream of blocks, each hashed on a worker thread while the caller reads (or writes) the next.

    hashlib lets go of the GIL while it hashes a block, so reading a big file and hashing it take
    the time of the slower of the two rather than their sum (two cores: ~1.3 GB/s each way here).
    A block must not change once given (bytes, as read() returns them)."""

    def __init__(self):
        self._digest, self._pending = hashlib.sha256(), None

    def update(self, block):
        self._wait()
        if len(block) < HAND_OVER_MIN:
            self._digest.update(block)
        else:
            self._pending = _hashing_threads().submit(self._digest.update, block)

    def _wait(self):
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def hexdigest(self):
        self._wait()
        return self._digest.hexdigest()


def sha256_stream(stream):
    """sha256 (hex) of what a binary stream holds from where it stands, read CHUNK bytes at a time."""
    digest = Sha256()
    for block in iter(lambda: stream.read(CHUNK), b""):
        digest.update(block)
    return digest.hexdigest()


def sha256_file(path):
    with open(path, "rb") as stream:
        return sha256_stream(stream)


class Entry:
    """One entry of a walked tree: a regular file (possibly reached through a followed link) or a link kept as a link.

    kind is "file" or "link"; path is where to open it; relpath its name under the root; for a
    file reached through a link, via is the link's target; for a kept link, target is the link's
    target relative to the link (inside the same root).
    """

    __slots__ = ("kind", "mtime_ns", "path", "relpath", "size", "target", "via")

    def __init__(self, relpath, kind, size, mtime_ns, path, via=None, target=None):
        self.relpath, self.kind, self.size, self.mtime_ns = relpath, kind, size, mtime_ns
        self.path, self.via, self.target = path, via, target


def inside(path, root):
    """Whether `path` is `root` or below it (both absolute, as given: resolve links first where they matter)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def walk_tree(root):
    """Every file under `root`, sorted by relative path, the one way the state and the backup count.

    Symbolic links are never dropped: a link whose target is inside `root` is kept as a link
    (its target's files are walked where they are); a link to a file or folder outside `root` is
    followed, its files listed under the link's name (a participant folder that is a link to
    another disk is backed up whole). A dangling link, a loop, or an entry that is neither file,
    folder nor link raises WorkshopError naming it. A missing root is empty.
    """
    found = []
    if not os.path.isdir(root):
        return found
    real_root = os.path.realpath(root)
    stack = [(root, "", frozenset([real_root]), None)]
    while stack:
        folder, prefix, chain, via = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            raise WorkshopError(f"Cannot list {folder}: {exc.strerror}", path=folder) from None
        for entry in entries:
            relpath = prefix + entry.name
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if not os.path.exists(target):
                    raise WorkshopError(
                        f"{entry.path} is a link to {os.readlink(entry.path)}, which does not exist: "
                        "restore its target or remove the link, then back up again",
                        path=entry.path,
                    )
                if via is None and inside(target, real_root):
                    stat = entry.stat(follow_symlinks=False)
                    link = os.path.relpath(target, os.path.dirname(os.path.realpath(folder) + os.sep + entry.name))
                    found.append(Entry(relpath, "link", 0, stat.st_mtime_ns, entry.path, target=link))
                    continue
                if os.path.isdir(target):
                    if target in chain:
                        raise WorkshopError(f"{entry.path} links back to {target}: a loop; remove the link", path=entry.path)
                    stack.append((entry.path, relpath + "/", chain | {target}, target))
                    continue
                stat = os.stat(entry.path)
                if not _is_regular(stat):
                    raise WorkshopError(f"{entry.path} links to {target}, which is not a regular file", path=entry.path)
                found.append(Entry(relpath, "file", stat.st_size, stat.st_mtime_ns, entry.path, via=target))
            elif entry.is_dir(follow_symlinks=False):
                real = os.path.realpath(entry.path) if via is not None else None
                stack.append((entry.path, relpath + "/", chain | {real} if real else chain, via))
            elif entry.is_file(follow_symlinks=False):
                stat = entry.stat(follow_symlinks=False)
                found.append(Entry(relpath, "file", stat.st_size, stat.st_mtime_ns, entry.path, via=via))
            else:
                raise WorkshopError(
                    f"{entry.path} is neither a file, a folder nor a link (a pipe, socket or device): move it away",
                    path=entry.path,
                )
    return sorted(found, key=lambda item: item.relpath)


def _is_regular(stat):
    import stat as stat_module

    return stat_module.S_ISREG(stat.st_mode)


def tree_usage(root):
    """Bytes and files under `root`, in total and per top-level folder (per participant for outputs).

    Counted as walk_tree lists them, which is what the backup archives: files (including those
    reached through a link to outside the folder), and links kept as links counted apart.
    """
    if not os.path.isdir(root):
        raise WorkshopError(f"No folder at {root}: check workshop_outputs_dir", path=root)
    per_folder = {}
    total_bytes = total_files = links = 0
    for entry in walk_tree(root):
        if entry.kind == "link":
            links += 1
            continue
        owner = entry.relpath.split("/", 1)[0] if "/" in entry.relpath else ""
        total_bytes += entry.size
        total_files += 1
        usage = per_folder.setdefault(owner, {"bytes": 0, "files": 0})
        usage["bytes"] += entry.size
        usage["files"] += 1
    return {"path": root, "bytes": total_bytes, "files": total_files, "links": links, "folders": per_folder}


def filesystem_usage(path):
    """Total, used and free bytes of the filesystem holding `path`."""
    usage = shutil.disk_usage(path)
    return {"path": path, "total": usage.total, "used": usage.used, "free": usage.free}


def temporary_name(path):
    """The one name a file has while it is written: `<path>.partial`, in the same folder (so the rename is atomic)."""
    return f"{path}.partial"


class AtomicFile:
    """What atomic_file yields: `tmp`, the name to write; `discard()` keeps the file at `path` as it is."""

    def __init__(self, path):
        self.path = path
        self.tmp = temporary_name(path)
        self.keep = True

    def discard(self):
        self.keep = False


@contextlib.contextmanager
def atomic_file(path):
    """Write `path` through its temporary name: the one write-temp-then-rename of the project.

    The block writes `tmp` (the yielded AtomicFile's). When it ends without an error, `tmp` is
    fsynced, renamed over `path` and the rename made durable (the folder fsynced); on any error, or
    when the block called discard(), `tmp` is removed and `path` left as it was. A crash or a full
    disk leaves either the old file or the new one, never a partial file under the real name.
    """
    target = AtomicFile(path)
    try:
        yield target
        if target.keep:
            if not os.path.islink(target.tmp):  # a link has no data of its own to sync
                fd = os.open(target.tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            os.replace(target.tmp, path)
            fsync_dir(os.path.dirname(path))
    finally:
        if os.path.lexists(target.tmp):
            os.unlink(target.tmp)


def move_into_place(source, path):
    """Move a file (or link) already written and verified elsewhere to `path`, durably: a rename, or across
    filesystems (a restore folder on another disk) a copy through `path`'s temporary name."""
    try:
        os.replace(source, path)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        with atomic_file(path) as target:
            if os.path.islink(source):
                os.symlink(os.readlink(source), target.tmp)
            else:
                shutil.copy2(source, target.tmp)
        os.unlink(source)
        return
    fsync_dir(os.path.dirname(path))


def nearest_existing(path):
    """`path`, or its nearest parent that exists: where a folder yet to be made will be (an absolute path)."""
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def filesystem_of(path):
    """The device of the filesystem that holds (or will hold) `path`."""
    return os.stat(nearest_existing(path)).st_dev


def open_for_writing(path, mode=0o600):
    """`path` opened for writing in binary, emptied, and created with `mode`; by default owner-only (a file of
    secrets or of participants' data: a fetched configuration, an archive being written)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb")


def write_atomically(path, data, mode=0o640):
    """Write `data` (bytes) to `path` through its temporary name, then rename (atomic_file)."""
    try:
        with atomic_file(path) as target, open_for_writing(target.tmp, mode) as out:
            out.write(data)
    except OSError as exc:
        raise WorkshopError(f"Cannot write {path}: {exc.strerror}", path=path) from None


def fsync_dir(folder):
    """Make a rename or creation in `folder` durable: fsync the folder itself."""
    dir_fd = os.open(folder or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_if_changed(path, content, mode=0o640, check_mode=False):
    """Write `content` (bytes) atomically unless `path` holds it already; returns whether it changed."""
    try:
        with open(path, "rb") as current:
            if current.read() == content:
                return False
    except FileNotFoundError:
        pass
    if not check_mode:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        write_atomically(path, content, mode)
    return True
