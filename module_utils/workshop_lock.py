"""One run at a time per workshop: a lock file in the workshop's folder, and busy marks on partial folders.

The lock is `<workshop folder>/.lock`, a JSON owner record {run_id, host, pid, since, purpose}
created with O_EXCL, so of two runs only one gets it. It is held across many module calls (the
whole backup), so its owner is the run (the ansible-playbook process on the controller), not a
module's process; a phase whose work is one module run (cleanup, retention) holds it for that run
instead (`held_while_running`), its owner that module's process. A lock whose owner is gone is taken
over, with a warning: gone means the owner process is dead when it ran on this same host, or the
lock is older than `stale_after` seconds (the only test possible when the controller is another machine).

A module writing into a partial backup folder also holds a kernel lock (flock) on that folder
for as long as it works in it; the kernel drops it when the process dies. A partial folder is
removed only by the holder of the workshop lock and only when no process holds it busy, so a
module still running after its ansible-playbook was killed is never pulled from under.
"""

import contextlib
import errno
import fcntl
import json
import os
import socket
import time

from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import fsync_dir, make_workshop_folder
from ansible.module_utils.workshop_time import utc_iso

LOCK_NAME = ".lock"


# A lock older than this (seconds) is taken as left by a run that died on another host.
STALE_AFTER = 21600


def lock_path(folder):
    return os.path.join(folder, LOCK_NAME)


def require_absolute(path, option):
    """Refuse a relative path at once: it would depend on the module's working directory."""
    if not path or not os.path.isabs(path):
        raise WorkshopError(
            f"{option} is '{path}', a relative path: set it to an absolute path (workshop_backup_root, e.g. "
            "/var/backups/comfy-wrapup)",
            path=path,
        )
    return path


def this_host():
    return socket.gethostname()


def pid_alive(pid):
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def read_owner(path):
    """The owner record of the lock at `path`; None when there is no lock; {} when it is unreadable."""
    try:
        with open(path, encoding="utf-8") as lock:
            text = lock.read()
    except FileNotFoundError:
        return None
    try:
        owner = json.loads(text)
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def owner_gone(owner, stale_after, now=None, host=None):
    """Why the owner of a lock is gone ('' when it may still be running)."""
    now = time.time() if now is None else now
    host = host or this_host()
    if not owner:
        return "the lock file is unreadable"
    since = owner.get("since_epoch")
    if owner.get("host") == host and owner.get("pid") is not None and not pid_alive(owner["pid"]):
        return f"its process {owner['pid']} on {host} is not running any more"
    if isinstance(since, (int, float)) and now - since > stale_after:
        return f"it is older than {int(stale_after)}s (since {owner.get('since')})"
    return ""


def describe(owner):
    if not owner:
        return "an unreadable owner"
    return (
        f"run {owner.get('run_id')} ({owner.get('purpose') or 'a run'}) of pid {owner.get('pid')} on {owner.get('host')} "
        f"since {owner.get('since')}"
    )


def _create(path, owner):
    """Create the lock file with `owner`; False when it exists already."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    except OSError as exc:
        raise _cannot_lock(path, exc) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as lock:
            lock.write(json.dumps(owner, sort_keys=True) + "\n")
            lock.flush()
            os.fsync(lock.fileno())
        fsync_dir(os.path.dirname(path))
    except OSError as exc:
        # An empty or half-written lock would be a stranger's to the next run: none rather than that.
        os.unlink(path)
        raise _cannot_lock(path, exc) from None
    return True


def _cannot_lock(path, exc):
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return WorkshopError(
        f"Cannot take the lock {path} on {this_host()}: {exc.strerror}"
        + (": the disk that holds it is full; free space on it (or set workshop_backup_root to a bigger disk)" if full else "")
        + ". Nothing was changed by this run",
        path=path,
    )


def new_owner(run_id, host=None, pid=None, purpose="", now=None):
    now = time.time() if now is None else now
    return dict(
        run_id=run_id,
        host=host or this_host(),
        pid=os.getpid() if pid is None else int(pid),
        since=utc_iso(now),
        since_epoch=now,
        purpose=purpose,
    )


def acquire(folder, owner, stale_after=STALE_AFTER, check_mode=False):
    """Take the lock of `folder` for `owner`; returns {acquired, held_already, taken_over, previous, warning}.

    Raises WorkshopError naming the live owner when another run holds it.
    """
    require_absolute(folder, "The workshop folder")
    path = lock_path(folder)
    result = dict(lock_file=path, owner=owner, held_already=False, taken_over=False, previous=None, warning="")
    for _dummy in range(5):
        current = read_owner(path)
        if current is None:
            if check_mode or _create(path, owner):
                return result
            continue
        if current.get("run_id") == owner["run_id"]:
            return dict(result, held_already=True, owner=current)
        # Whether the owner's process lives can be asked only on the machine it ran on: this one, where the
        # module runs. A controller elsewhere (the same one as ours too) is the workshop host's stranger: its
        # pid means nothing here, and only the lock's age can tell.
        gone = owner_gone(current, stale_after)
        if not gone:
            elsewhere = current.get("host") != this_host()
            started = "from this same controller" if elsewhere and current.get("host") == owner["host"] else "elsewhere"
            hint = (
                f"if that ansible-playbook is no longer running (stopped with Ctrl-C, killed), remove {path} on "
                f"{this_host()} and run again; otherwise it is taken over {int(stale_after)} s after it started"
                if elsewhere
                else f"if it is gone, remove {path}"
            )
            raise WorkshopError(
                f"Another run holds the lock of {folder}: {describe(current)}"
                f"{', started ' + started if elsewhere else ''}. Wait for it to finish; {hint}. Nothing was changed by this run",
                path=path,
                lock_owner=current,
            )
        warning = f"Took over the lock {path} of {describe(current)}: {gone}"
        result.update(taken_over=True, previous=current, warning=warning)
        if check_mode:
            return result
        # Move the stale lock aside (one rename wins), check it was the one judged gone, then create ours.
        aside = f"{path}.stale-{owner['run_id']}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            continue
        moved = read_owner(aside)
        if moved != current:
            # Someone else took it over in between: put theirs back and look again.
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
            os.unlink(aside)
            continue
        os.unlink(aside)
        if _create(path, owner):
            return result
    raise WorkshopError(f"Could not take the lock {path}: it kept changing hands; try again", path=path)


def release(folder, run_id, check_mode=False):
    """Release the lock when `run_id` holds it; returns {released, owner, warning}."""
    path = lock_path(folder)
    current = read_owner(path)
    if current is None:
        # A dry run took no lock: nothing to say.
        return dict(lock_file=path, released=False, owner=None, warning="" if check_mode else f"No lock at {path} to release")
    if current.get("run_id") != run_id:
        return dict(
            lock_file=path,
            released=False,
            owner=current,
            warning=f"The lock {path} belongs to {describe(current)}, not to run {run_id}: left alone",
        )
    if not check_mode:
        os.unlink(path)
        fsync_dir(folder)
    return dict(lock_file=path, released=True, owner=current, warning="")


@contextlib.contextmanager
def held_while_running(folder, purpose, check_mode=False):
    """The lock of `folder` held for as long as the `with` body runs, by this module's own process.

    For a phase whose work is all in one module run (cleanup, retention): no separate take and release
    tasks, and a run killed mid-way leaves a lock whose process is gone, which the next run takes over.
    In check mode it only checks that no live run holds the lock (as a take would), and writes nothing.
    Yields the warning of a take-over ('' when there was none)."""
    require_absolute(folder, "backup_dir")
    if not check_mode:
        make_workshop_folder(folder)
    owner = new_owner(f"{this_host()}-{os.getpid()}-{purpose.split()[0]}", purpose=purpose)
    taken = acquire(folder, owner, check_mode=check_mode)
    try:
        yield taken["warning"]
    finally:
        if not check_mode:
            release(folder, owner["run_id"])


def holds_lock(folder, run_id):
    current = read_owner(lock_path(folder))
    return bool(current) and current.get("run_id") == run_id


class Busy:
    """Hold a partial folder busy (shared flock on the folder) while a module writes into it."""

    def __init__(self, folder):
        self.folder = folder
        self.fd = None

    def __enter__(self):
        if self.folder and os.path.isdir(self.folder):
            self.fd = os.open(self.folder, os.O_RDONLY)
            fcntl.flock(self.fd, fcntl.LOCK_SH)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        return False


def is_busy(folder):
    """Whether a live process holds `folder` busy (see Busy)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)
    return False


def wait_not_busy(folder, timeout, poll=0.2):
    """Wait up to `timeout` seconds for `folder` to be free; returns whether it is."""
    deadline = time.monotonic() + timeout
    while is_busy(folder):
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True
