"""Plain helpers over the workshop's files."""

import os
import shutil

from ansible.module_utils.workshop_errors import WorkshopError


def tree_usage(root):
    """Bytes and files under `root`, in total and per top-level folder (per participant for outputs).

    Symbolic links are counted as links, not followed, so a link cannot make a folder count twice.
    """
    if not os.path.isdir(root):
        raise WorkshopError(f"No folder at {root}: check workshop_outputs_dir", path=root)
    per_folder = {}
    total_bytes = total_files = 0
    stack = [(root, None)]
    while stack:
        folder, top = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                owner = top or (entry.name if entry.is_dir(follow_symlinks=False) else "")
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, owner))
                    continue
                size = entry.stat(follow_symlinks=False).st_size
                total_bytes += size
                total_files += 1
                usage = per_folder.setdefault(owner, {"bytes": 0, "files": 0})
                usage["bytes"] += size
                usage["files"] += 1
    return {"path": root, "bytes": total_bytes, "files": total_files, "folders": per_folder}


def filesystem_usage(path):
    """Total, used and free bytes of the filesystem holding `path`."""
    usage = shutil.disk_usage(path)
    return {"path": path, "total": usage.total, "used": usage.used, "free": usage.free}


def write_atomically(path, data, mode=0o640):
    """Write `data` (bytes) to `path` through a temporary name in the same folder, then rename.

    A crash or a full disk leaves either the old file or the new one, never a partial file.
    """
    folder = os.path.dirname(path) or "."
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise WorkshopError(f"Cannot write {path}: {exc.strerror}", path=path) from None
    dir_fd = os.open(folder, os.O_RDONLY)
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
