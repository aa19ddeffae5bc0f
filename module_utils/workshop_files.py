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
