# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The checklist's "Clean Up and Optimize" (roles/retention/README.md, cleanup).

- Temporary files the phases made, in this workshop's folder: `.partial-backup-*` folders no
  process holds, `.partial-fetch-*` and `.restore-test-*` scratch folders, `*.partial` files; and the
  checklist's log extracts in the project directory (errors-found.txt, ...).
- Log exports rolled into one yearly archive per host, `<backup root>/logs/workshop-logs-YYYY.tar.gz`:
  this workshop's merged log (from its newest verified backup, which keeps its own copy) and the
  loose `workshop-logs-*.txt[.gz]` exports of the project directory. The new archive is written to
  a temporary name, re-read (sha256 of every member against its source), then renamed; only then do
  the loose originals go.
- Participants' outputs, after the share period and only when each file is in a backup verified
  off-host, identical (size and sha256).
"""

import fcntl
import gzip
import io
import os
import re
import shutil
import tarfile
import time

from ansible.module_utils.workshop_backup import backup_epoch
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import (
    WORKSHOP_FOLDER_MODE,
    atomic_file,
    fsync_dir,
    open_for_writing,
    sha256_stream,
)
from ansible.module_utils.workshop_lock import is_busy
from ansible.module_utils.workshop_retention import (
    LOGS_DIR,
    LOOSE_LOG_PATTERN,
    YEARLY_PATTERN,
    OffsiteCheck,
    archive_digests,
    outputs_in_offsite_backup,
    workshop_facts,
)

PARTIAL_FOLDERS = (".partial-backup-", ".partial-fetch-", ".restore-test-")
CHECKLIST_EXTRACTS = ("errors-found.txt", "warnings-found.txt", "ssl-issues.txt", "connection-issues.txt")
MERGED_LOG = "logs/workshop-logs.txt.gz"
YEARLY_NAME = "workshop-logs-{year}.tar.gz"
STAMP = re.compile(r"(\d{8})")


def _size_of(path):
    if os.path.isdir(path) and not os.path.islink(path):
        return sum(os.lstat(os.path.join(root, name)).st_size for root, _dirs, files in os.walk(path) for name in files)
    return os.lstat(path).st_size


def temporaries(workshop_folder, project_dir):
    """[{path, bytes, why}] of the temporary files to remove (nothing another process still writes)."""
    found = []
    if os.path.isdir(workshop_folder):
        for name in sorted(os.listdir(workshop_folder)):
            path = os.path.join(workshop_folder, name)
            if name.startswith(PARTIAL_FOLDERS) and os.path.isdir(path) and not os.path.islink(path):
                if is_busy(path):
                    continue  # a live process still writes into it: the next run removes it
                found.append({"path": path + "/", "bytes": _size_of(path), "why": "a phase's unfinished temporary folder"})
        for root, dirs, files in os.walk(workshop_folder):
            # Sealed backups are never edited; partial folders go whole (above).
            dirs[:] = sorted(d for d in dirs if not d.startswith(("backup-", *PARTIAL_FOLDERS)))
            for name in sorted(files):
                if name.endswith(".partial"):
                    path = os.path.join(root, name)
                    found.append({"path": path, "bytes": os.lstat(path).st_size, "why": "a file left half-written"})
    if project_dir and os.path.isdir(project_dir):
        for name in CHECKLIST_EXTRACTS:
            path = os.path.join(project_dir, name)
            if os.path.isfile(path) and not os.path.islink(path):
                found.append({"path": path, "bytes": os.lstat(path).st_size, "why": "the checklist's log extract"})
    return found


def remove(path):
    try:
        if os.path.isdir(path.rstrip("/")) and not os.path.islink(path.rstrip("/")):
            shutil.rmtree(path.rstrip("/"))
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise WorkshopError(f"Cannot remove {path} on the host: {exc.strerror}", path=path) from None


# --- the yearly log archive ----------------------------------------------------------------------


def _year_of(epoch):
    return time.gmtime(epoch).tm_year


def log_sources(facts, workshop_id, project_dir):
    """[{member, path, gzip, year, original}] to roll: the merged log of the newest verified backup, loose exports."""
    sources = []
    backup = facts["newest_verified"]
    if backup:
        path = os.path.join(facts["folder"], backup, MERGED_LOG)
        if os.path.isfile(path):
            stamp = backup[len("backup-") :]
            year = _year_of(facts["end"] if facts["end"] is not None else backup_epoch(backup))
            member = f"{workshop_id}/workshop-logs-{stamp}.txt.gz"
            sources.append({"member": member, "path": path, "gzip": False, "year": year, "original": False})
    if project_dir and os.path.isdir(project_dir):
        for name in sorted(os.listdir(project_dir)):
            path = os.path.join(project_dir, name)
            if LOOSE_LOG_PATTERN.match(name) and os.path.isfile(path) and not os.path.islink(path):
                stamp = STAMP.search(name)
                year = int(stamp.group(1)[:4]) if stamp else _year_of(os.path.getmtime(path))
                member = f"{workshop_id}/{name}" + ("" if name.endswith(".gz") else ".gz")
                sources.append({"member": member, "path": path, "gzip": not name.endswith(".gz"), "year": year, "original": True})
    return sources


def _member_bytes(source):
    """The bytes a source becomes in the archive (loose .txt is gzipped, deterministically: mtime 0)."""
    with open(source["path"], "rb") as stream:
        data = stream.read()
    if source["gzip"]:
        buffer = io.BytesIO()
        with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as packed:
            packed.write(data)
        data = buffer.getvalue()
    return data


def roll_plan(backup_root, sources):
    """{year: {archive, add: [source + sha256], present: [members]}}; raises when a member name holds other content."""
    folder = os.path.join(backup_root, LOGS_DIR)
    plans = {}
    for source in sources:
        archive = os.path.join(folder, YEARLY_NAME.format(year=source["year"]))
        entry = plans.setdefault(source["year"], {"archive": archive, "add": [], "present": [], "existing": None})
        if entry["existing"] is None:
            entry["existing"] = archive_digests(archive) if os.path.isfile(archive) else {}
        data = _member_bytes(source)
        digest = sha256_stream(io.BytesIO(data))
        had = entry["existing"].get(source["member"])
        if had == digest:
            entry["present"].append(dict(source, sha256=digest))
        elif had is not None:
            raise WorkshopError(
                f"{archive} already holds {source['member']} with other content than {source['path']}: it is never "
                f"rewritten. Rename the export, then run cleanup again",
                path=archive,
                member=source["member"],
            )
        else:
            entry["add"].append(dict(source, sha256=digest))
    return plans


def write_yearly(archive, add):
    """Write the archive again with `add` appended, through its temporary name; verified before the rename.

    Returns {member: sha256} of the new archive as re-read.
    """
    folder = os.path.dirname(archive)
    if not os.path.isdir(folder):
        os.makedirs(folder, mode=WORKSHOP_FOLDER_MODE, exist_ok=True)
        os.chmod(folder, WORKSHOP_FOLDER_MODE)
    expected = archive_digests(archive) if os.path.isfile(archive) else {}
    lock_fd = os.open(folder, os.O_RDONLY)
    try:
        # One writer per host at a time (two workshops' cleanups on one host).
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        with atomic_file(archive) as target:
            with open_for_writing(target.tmp) as raw, tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as out:
                if expected:
                    with tarfile.open(archive, "r:gz") as old:
                        for info in old:
                            out.addfile(info, old.extractfile(info) if info.isfile() else None)
                for source in add:
                    data = _member_bytes(source)
                    info = tarfile.TarInfo(source["member"])
                    info.size = len(data)
                    info.mtime = int(os.path.getmtime(source["path"]))
                    info.mode = 0o600
                    out.addfile(info, io.BytesIO(data))
                    expected[source["member"]] = source["sha256"]
            got = archive_digests(target.tmp)
            if got != expected:
                bad = sorted(name for name in set(got) | set(expected) if got.get(name) != expected.get(name))
                raise WorkshopError(
                    f"The new {archive} does not read back as written ({', '.join(bad[:5])}): it was not kept, the old one "
                    f"and every original are untouched. Check the disk of {folder}",
                    path=archive,
                )
    except OSError as exc:
        raise WorkshopError(f"Cannot write {archive} on the host: {exc.strerror}", path=archive) from None
    finally:
        os.close(lock_fd)
    fsync_dir(folder)
    return expected


def yearly_archives_with(backup_root, workshop_id):
    """{archive: [members of the workshop]} of the host's yearly log archives that hold any (each read in full)."""
    folder = os.path.join(backup_root, LOGS_DIR)
    found = {}
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if YEARLY_PATTERN.match(name):
                path = os.path.join(folder, name)
                members = sorted(m for m in archive_digests(path) if m.startswith(workshop_id + "/"))
                if members:
                    found[path] = members
    return found


def cleanup(params, check_mode, now=None):
    """The cleanup phase; returns the module's result (removed, logs_rolled, outputs ...).

    params: workshop_id, backup_dir, backup_root, project_dir, outputs_dir, remove_outputs, confirm, stores (the
    archive targets, workshop_archive.make_target: an output goes only when one of them holds its backup now).
    """
    now = time.time() if now is None else now
    facts = workshop_facts(params["backup_dir"], now)
    removed = temporaries(params["backup_dir"], params["project_dir"])
    # Logs: roll, verify, and only then remove the loose originals.
    sources = log_sources(facts, params["workshop_id"], params["project_dir"])
    plans = roll_plan(params["backup_root"], sources)
    rolled = {}
    for year in sorted(plans):
        entry = plans[year]
        if entry["add"] and not check_mode:
            digests = write_yearly(entry["archive"], entry["add"])
            verified = all(digests.get(s["member"]) == s["sha256"] for s in entry["add"] + entry["present"])
        else:
            # A dry run has not written (nor read back) anything: null until a real run verified it.
            verified = None if entry["add"] else True
        members = sorted(m for m in entry["existing"] if m.startswith(params["workshop_id"] + "/"))
        members = sorted(set(members) | {s["member"] for s in entry["add"]})
        rolled[entry["archive"]] = {
            "archive": entry["archive"],
            "members": members,
            "added": [s["member"] for s in entry["add"]],
            "verified": verified,
        }
        for source in entry["add"] + entry["present"]:
            if source["original"] and (verified or check_mode):
                removed.append(
                    {"path": source["path"], "bytes": os.path.getsize(source["path"]), "why": f"rolled into {entry['archive']}"}
                )
    # The workshop's members in every other yearly archive of the host (rolled by earlier runs), read back in full.
    for archive, members in yearly_archives_with(params["backup_root"], params["workshop_id"]).items():
        rolled.setdefault(archive, {"archive": archive, "members": members, "added": [], "verified": True})
    rolled = [rolled[archive] for archive in sorted(rolled)]
    # Outputs, off by default: after the share period, each file held by a backup verified off-host.
    outputs = None
    outputs_kept = []
    if params.get("remove_outputs"):
        if not params["workshop_id"] or params.get("confirm") != params["workshop_id"]:  # nothing confirms nothing
            raise WorkshopError(
                f"Removing the participants' outputs of {params['workshop_id']} needs cleanup_confirm={params['workshop_id']} "
                f"(given: {params.get('confirm') or 'nothing'}). Nothing was removed"
            )
        if facts["share_ends"] is None or now < facts["share_ends"]:
            ends = (facts["record"].get("share") or {}).get("period_ends") or "not recorded"
            outputs_kept.append({"path": params["outputs_dir"], "why": f"the share period has not ended (ends: {ends})"})
        else:
            check = OffsiteCheck(params.get("stores") or ())
            kept, not_kept = outputs_in_offsite_backup(params["outputs_dir"], facts, check)
            outputs_kept += [{"path": path, "why": why} for path, why in not_kept]
            outputs = {"files": len(kept), "bytes": sum(f[2] for f in kept)}
            removed += [
                {"path": path, "bytes": size, "why": "output shared and in a backup verified off-host"}
                for path, _r, size, _m in kept
            ]
    if not check_mode:
        for entry in removed:
            remove(entry["path"])
    return {
        "changed": bool(removed) or any(r["added"] for r in rolled),
        "removed": removed,
        "logs_rolled": rolled,
        "outputs_removed": outputs if outputs and outputs["files"] else None,
        "outputs_kept": outputs_kept,
        "done": not outputs_kept and all(r["verified"] is True for r in rolled),
    }
