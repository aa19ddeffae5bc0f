# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The data retention schedule: what may go, where, and what never goes (roles/retention/README.md).

A plan is computed once (read-only) and then applied exactly: every item it deletes is listed with
its place (`host` or a target's name), path or key, age in days and the rule. Ages count from `now`
(an argument, so tests are exact), and for workshop data from the workshop's end (the drain's
`final_time` in its run record), never from the newest item (restic #5193). A backup is kept or
deleted as a whole; its configuration snapshot (`config/`) is kept forever, moved out of it first.
"""

import json
import os
import re
import shutil
import tarfile
import tempfile

from ansible.module_utils.workshop_archive import check_present
from ansible.module_utils.workshop_backup import MANIFEST, backup_epoch, read_manifest, sealed_backups, trusted_members
from ansible.module_utils.workshop_errors import WorkshopError, WorkshopUnreachable
from ansible.module_utils.workshop_files import WORKSHOP_FOLDER_MODE, fsync_dir, sha256_file, sha256_stream
from ansible.module_utils.workshop_lock import STALE_AFTER, lock_path, owner_gone, read_owner
from ansible.module_utils.workshop_record import read_record, unreached_targets
from ansible.module_utils.workshop_time import epoch_of

DAY = 86400.0
# The checklist's Data Retention Schedule, in days. Reports and configuration snapshots: forever.
DEFAULT_SCHEDULE = {"logs": 7, "outputs": 30, "snapshots": 90, "backups": 365}
RECORD_NAME = "run-record.json"
REPORT_DIR = "report"
CONFIG_DIR = "config"
# Configuration snapshots of deleted backups, kept forever: <workshop folder>/config-snapshots/<backup>/.
CONFIG_KEEP = "config-snapshots"
# The yearly log archives of the host: <backup root>/logs/workshop-logs-YYYY.tar.gz.
LOGS_DIR = "logs"
YEARLY_PATTERN = re.compile(r"^workshop-logs-(\d{4})\.tar\.gz$")
LOOSE_LOG_PATTERN = re.compile(r"^workshop-logs-.*\.txt(\.gz)?$")
LOOSE_SNAPSHOT_PATTERN = re.compile(r"^redis-snapshot-.*\.rdb$")
DELETING_PREFIX = ".retention-deleting-"


def check_schedule(schedule):
    """The schedule with every class in days (int >= 0); raises naming a wrong entry."""
    merged = dict(DEFAULT_SCHEDULE)
    for name, days in (schedule or {}).items():
        if name in ("reports", "config", "configuration"):
            continue  # kept forever, whatever is set
        if name not in DEFAULT_SCHEDULE:
            raise WorkshopError(
                f"retention_schedule has an unknown class '{name}': use {', '.join(sorted(DEFAULT_SCHEDULE))} "
                f"(reports and configuration snapshots are kept forever)"
            )
        try:
            value = int(days)
        except (TypeError, ValueError):
            value = -1
        if value < 0 or str(days).strip() != str(value):
            raise WorkshopError(f"retention_schedule.{name} is {days!r}: give a whole number of days (0 or more)")
        merged[name] = value
    return merged


def age_days(now, since):
    return round((now - since) / DAY, 2)


class Plan:
    """What a run deletes (and moves), and what it keeps because a protection applies."""

    def __init__(self):
        self.delete = []
        self.move = []
        self.protected = []
        self.units = []  # [(where, kind, handle, [items])]: how each group of items is deleted
        self.unreached = []  # [{target, error}]: targets that could not be listed, left as they were
        self.locked = {}  # workshop id -> why: another run holds it on the host, so its targets are left too

    def unit(self, where, kind, handle, items):
        self.units.append((where, kind, handle, items))
        self.delete.extend(items)

    def protect(self, where, path, why):
        self.protected.append({"where": where, "path": path, "why": why})

    def as_dict(self):
        return {"deleted": self.delete, "moved": self.move, "protected": self.protected}


def item(where, path, age, rule, size):
    return {"where": where, "path": path, "age_days": age, "rule": rule, "bytes": size}


# --- what the run record says --------------------------------------------------------------------


def workshop_facts(folder, now=None):
    """What retention needs of one workshop folder: its record, end, backups and their verification (a
    backup named after `now`, the moment ages count from, is refused: sealed_backups)."""
    record = read_record(os.path.join(folder, RECORD_NAME))
    verify = (record.get("backup") or {}).get("verify") or {}
    sealed = sealed_backups(folder, now)
    newest_verified = verify.get("backup") if verify.get("ok") is True and verify.get("backup") in sealed else None
    failed = verify.get("backup") if verify.get("ok") is False else None
    offsite = {}
    for target, entry in ((record.get("archive") or {}).get("targets") or {}).items():
        if isinstance(entry, dict) and entry.get("verified") is True and entry.get("backup"):
            offsite.setdefault(entry["backup"], []).append(target)
    share = record.get("share") or {}
    return {
        "folder": folder,
        "record": record,
        "end": epoch_of((record.get("drain") or {}).get("final_time")),
        "sealed": sealed,
        "newest_verified": newest_verified,
        "failed": failed,
        "offsite": offsite,
        "share_ends": epoch_of(share.get("period_ends")),
    }


def workshop_folders(backup_root, now=None):
    """Workshop folders under the backup root: those with a run record or a backup (not logs/)."""
    if not os.path.isdir(backup_root):
        return []
    found = []
    for name in sorted(os.listdir(backup_root)):
        folder = os.path.join(backup_root, name)
        if name == LOGS_DIR or name.startswith(".") or not os.path.isdir(folder) or os.path.islink(folder):
            continue
        if os.path.isfile(os.path.join(folder, RECORD_NAME)) or sealed_backups(folder, now):
            found.append(folder)
    return found


class OffsiteCheck:
    """Whether a backup the run record says verified off-host is still on a target now.

    The record says what was true when the archive phase ran; since then a bucket's lifecycle rule, an
    admin or a failed disk may have taken the copy. Host data is deleted on the strength of an off-host
    copy only when one of this run's targets holds it now: every file there with its size and content
    (check_present with content: hashed on the SSH host, S3's checksums or ETag; nothing downloaded).
    Each backup is looked at once, when a deletion depends on it, and its outputs' listing read once. (A
    copy the schedule itself retires in this run, older than its limit, counts: it retires the host's too.)
    """

    def __init__(self, stores=()):
        self.stores = {store.target["name"]: store for store in stores}
        self.seen = {}
        self.listed = {}
        self.down = {}  # target name -> why it did not answer: asked once per run (a timeout costs 30 s)

    def members(self, facts, backup):
        """backup_members of one of the workshop's backups, read once per run."""
        key = (facts["folder"], backup)
        if key not in self.listed:
            self.listed[key] = backup_members(facts, backup)
        return self.listed[key]

    def why_not(self, facts, backup):
        """None when a target holds the backup's copy now; else why no target does (a phrase)."""
        key = (facts["folder"], backup)
        if key not in self.seen:
            self.seen[key] = self._look(facts, backup)
        return self.seen[key]

    def _look(self, facts, backup):
        workshop = os.path.basename(facts["folder"].rstrip("/"))
        recorded = facts["offsite"].get(backup, ())
        # This run's targets first, in their order; a target that fails to answer is one reason, not the end.
        names = [name for name in self.stores if name in recorded] + [name for name in recorded if name not in self.stores]
        reasons = []
        for name in names:
            store = self.stores.get(name)
            if store is None:
                reasons.append(f"{name} is not among this run's targets, so its copy cannot be checked")
                continue
            if name in self.down:
                reasons.append(f"{name} could not be asked ({self.down[name]})")
                continue
            try:
                failures = check_present(store, os.path.join(facts["folder"], backup), workshop, backup, content=True)
            except WorkshopUnreachable as exc:
                self.down[name] = exc.msg
                reasons.append(f"{name} could not be asked ({exc.msg})")
                continue
            if not failures:
                return None
            reasons.append(f"on {name}, {_first_failure(failures)}")
        return "; ".join(reasons) or "not verified off-host on any target (run record archive.targets.*)"

    def confirmed(self, facts):
        """The workshop's backups on the host, verified off-host, that a target holds now."""
        return [backup for backup in on_host_offsite(facts) if self.why_not(facts, backup) is None]


def _first_failure(failures):
    """check_present's failures as a phrase: the first, and how many more."""
    more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
    return f"{failures[0]['file']}: {failures[0]['reason']}{more}"


def on_host_offsite(facts):
    """The workshop's backups still on the host that its run record says verified off-host."""
    return [backup for backup in facts["offsite"] if backup in facts["sealed"]]


def backup_members(facts, backup):
    """{outputs member path: (size, sha256)} of one of the workshop's backups on the host, from its member
    list once that matches the backup's MANIFEST.json (trusted_members); {} when it cannot be relied on."""
    folder = os.path.join(facts["folder"], backup)
    try:
        members = trusted_members(folder, read_manifest(folder))
    except (ValueError, WorkshopError):
        return {}
    return {
        member["path"]: (member.get("size"), member["sha256"])
        for member in members
        if isinstance(member.get("path"), str) and "sha256" in member
    }


def last_output_holders(facts, members=backup_members, among=None):
    """{backup: N} for the workshop's backups each holding N output files (by path) that no newer backup holds.

    Newer than what counts: the reference, the newest verified backup (else the newest sealed one whose
    verification did not fail, so that a failed newer backup does not lift this). A backup made after
    outputs were removed (the share period over, then a backup made because something else changed)
    holds only what was left: each removed file's newest holder is then its last backup, and it is
    kept. One holder per file: an older backup holding only files a newer holder has goes with the
    schedule. A failed backup is never a holder (it is kept anyway). An unreadable member list (of the
    backups on the host; `members`: backup_members or OffsiteCheck.members) counts as holding nothing:
    the reference's, so the older backups are kept until a readable newest (the backup phase makes a
    new one when the list does not match its MANIFEST); an older one's, so it goes with the schedule.
    `among`: the backups a place holds (a target's), each file's newest holder there; None: the host's. A
    place without the reference (a target it was not copied to) keeps its own newest holder of every file.
    """
    reference = _reference_backup(facts)
    if reference is None:
        return {}
    covered = set(members(facts, reference)) if among is None or reference in among else set()
    holders = {}
    for backup in reversed(facts["sealed"][: facts["sealed"].index(reference)]):
        if backup == facts["failed"] or (among is not None and backup not in among):
            continue
        lacked = [path for path in members(facts, backup) if path not in covered]
        if lacked:
            holders[backup] = len(lacked)
            covered.update(lacked)
    return holders


def _reference_backup(facts):
    if facts["newest_verified"] is not None:
        return facts["newest_verified"]
    usable = [backup for backup in facts["sealed"] if backup != facts["failed"]]
    return usable[-1] if usable else None


def _last_holder_why(facts, lacked, where="the host", reference_there=True):
    reference = _reference_backup(facts)
    if not reference_there:
        return (
            f"the newest backup on {where} to hold {lacked} output files ({reference}, {_reference_kind(facts)}, "
            f"is not there): their last copy there"
        )
    return (
        f"the newest backup on {where} to hold {lacked} output files that {reference}, {_reference_kind(facts)}, "
        f"lacks: their last copy there, kept while {reference} is the newest"
    )


def _reference_kind(facts):
    if facts["newest_verified"] is not None:
        return "the newest verified backup"
    return "the newest backup whose verification did not fail"


def offsite_members(facts, check):
    """{outputs member path: (size, sha256)} of the workshop's backups a target holds now (OffsiteCheck `check`)
    and still on the host."""
    found = {}
    for backup in check.confirmed(facts):
        found.update(check.members(facts, backup))
    return found


def outputs_in_offsite_backup(outputs_dir, facts, check):
    """([(path, relpath, size, mtime)] of outputs held identically by a backup a target holds now), [(path, why)]).

    No output at all while the workshop has no verified newest backup: an off-host copy alone would do, but a
    workshop whose backups do not verify is one for the admin to look at first."""
    if facts["newest_verified"] is None:
        why = "its newest backup failed verification" if facts["failed"] else "no verified backup of the workshop is known"
        return [], [(outputs_dir.rstrip("/") + "/", f"{why} (run record backup.verify): no output is removed")]
    kept, not_kept = [], []
    known = None  # asked of the targets only when there is an output to remove
    for root, dirs, files in os.walk(outputs_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            if os.path.islink(path) or not os.path.isfile(path):
                not_kept.append((path, "a link or special file: never removed by retention"))
                continue
            relpath = os.path.relpath(path, outputs_dir)
            size = os.path.getsize(path)
            known = offsite_members(facts, check) if known is None else known
            entry = known.get(f"outputs/{relpath}")
            if entry is None:
                not_kept.append((path, _not_offsite(facts, check, f"outputs/{relpath}")))
            elif entry[0] != size or entry[1] != sha256_file(path):
                not_kept.append((path, "changed since the backup verified off-host"))
            else:
                kept.append((path, relpath, size, os.path.getmtime(path)))
    return kept, not_kept


def _not_offsite(facts, check, member):
    """Why an output is in no backup a target holds: the targets' trouble when a backup verified off-host has it."""
    unconfirmed = [
        f"{backup}: {check.why_not(facts, backup)}"
        for backup in on_host_offsite(facts)
        if check.why_not(facts, backup) and member in check.members(facts, backup)
    ]
    if unconfirmed:
        return "its backup verified off-host is on no target now (" + "; ".join(unconfirmed) + ")"
    return "not in a backup verified off-host"


def yearly_members(backup_root):
    """{sha256 of a member: archive} over every yearly log archive of the host."""
    folder = os.path.join(backup_root, LOGS_DIR)
    found = {}
    if not os.path.isdir(folder):
        return found
    for name in sorted(os.listdir(folder)):
        if YEARLY_PATTERN.match(name):
            path = os.path.join(folder, name)
            for digest in archive_digests(path).values():
                found[digest] = path
    return found


def archive_digests(path):
    """{member name: sha256} of a tar.gz, every member read in full."""
    digests = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for info in tar:
                if info.isfile():
                    digests[info.name] = sha256_stream(tar.extractfile(info))
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise WorkshopError(
            f"Cannot read the log archive {path} ({exc}): move it aside and run cleanup again", path=path
        ) from None
    return digests


# --- the plan ------------------------------------------------------------------------------------


def _files_of(folder):
    """[(path, relpath, size)] of every file under `folder`, sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            found.append((path, os.path.relpath(path, folder), os.lstat(path).st_size))
    return found


def plan_host(params, now, plan, check):
    """The host's part: every workshop folder under the backup root, the project's loose exports, outputs."""
    schedule = params["schedule"]
    backup_root = params["backup_root"]
    folders = workshop_folders(backup_root, now)
    current = params.get("backup_dir")
    if current and os.path.isdir(current) and current not in folders:
        folders.append(current)
    facts_of = {}
    for folder in folders:
        owner = read_owner(lock_path(folder)) if folder != current else None
        if owner is not None and not owner_gone(owner, STALE_AFTER):
            # Another run holds that workshop (a backup, archive or shutdown in progress): not now. A lock
            # its run left behind (dead process, unreadable, or older than STALE_AFTER) holds nothing.
            why = f"another run holds the workshop's lock ({owner.get('run_id', 'unreadable lock')})"
            plan.protect("host", folder + "/", why)
            plan.locked[os.path.basename(folder.rstrip("/"))] = why
            continue
        facts = workshop_facts(folder, now)
        facts_of[folder] = facts
        _plan_workshop(facts, schedule, now, plan, check)
    _plan_loose(params, schedule, now, plan)
    current_facts = facts_of.get(current) if current else None
    if current_facts and params.get("outputs_dir"):
        _plan_outputs(params["outputs_dir"], current_facts, schedule, now, plan, check)
    if current_facts and params.get("share_folder"):
        _plan_share_folder(params["share_folder"], current_facts, schedule, now, plan)
    return facts_of


def _plan_workshop(facts, schedule, now, plan, check):
    folder = facts["folder"]
    # Kept forever, whatever the schedule says: named so a reader sees they were considered.
    for name in (REPORT_DIR, RECORD_NAME, CONFIG_KEEP):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            why = {
                REPORT_DIR: "reports are kept forever",
                RECORD_NAME: "run records are kept forever",
                CONFIG_KEEP: "configuration snapshots are kept forever",
            }[name]
            plan.protect("host", path + ("/" if os.path.isdir(path) else ""), why)
    limit = schedule["backups"]
    holders = _UNASKED  # the last holders of outputs: worked out once, and only when a backup is past its age
    for backup in facts["sealed"]:
        created = backup_epoch(backup)
        path = os.path.join(folder, backup) + "/"
        if created is None:
            plan.protect("host", path, "its name holds no creation time: never aged")
            continue
        age = age_days(now, created)
        if backup == facts["failed"]:
            plan.protect(
                "host", path, "its verification failed: kept for inspection, never counted as the newest verified backup"
            )
            continue
        if backup == facts["newest_verified"]:
            plan.protect("host", path, "the newest verified backup of the workshop")
            continue
        if age <= limit:
            continue
        if facts["newest_verified"] is None:
            plan.protect(
                "host", path, "no verified backup of the workshop is known (run record backup.verify): nothing of it is deleted"
            )
            continue
        if holders is _UNASKED:
            holders = last_output_holders(facts, check.members)
        if backup in holders:
            plan.protect("host", path, _last_holder_why(facts, holders[backup]))
            continue
        if backup not in facts["offsite"]:
            plan.protect("host", path, "not verified off-host on any target (run record archive.targets.*): the host copy stays")
            continue
        why_not = check.why_not(facts, backup)
        if why_not:
            plan.protect("host", path, f"verified off-host, but no target holds it now ({why_not}): the host copy stays")
            continue
        rule = f"full backups: {limit} days"
        files = [f for f in _files_of(os.path.join(folder, backup)) if not f[1].startswith(CONFIG_DIR + "/")]
        items = [item("host", p, age, rule, size) for p, _rel, size in files]
        if os.path.isdir(os.path.join(folder, backup, CONFIG_DIR)):
            plan.protect(
                "host",
                os.path.join(folder, backup, CONFIG_DIR) + "/",
                f"configuration snapshot: kept forever, moved to {CONFIG_KEEP}/{backup}/",
            )
        plan.unit("host", "backup", os.path.join(folder, backup), items)
    # A deletion a crash interrupted (renamed aside, not yet removed): finished, its configuration kept.
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(DELETING_PREFIX) and os.path.isdir(path) and not os.path.islink(path):
            created = backup_epoch(name[len(DELETING_PREFIX) :])
            age = age_days(now, created) if created is not None else None
            rule = "full backups: finishing an interrupted deletion"
            files = [f for f in _files_of(path) if not f[1].startswith(CONFIG_DIR + "/")]
            plan.unit("host", "backup", path, [item("host", p, age, rule, size) for p, _rel, size in files])
    # Share archives in the workshop folder (share/archives/*.zip): the share period's end decides.
    archives = os.path.join(folder, "share", "archives")
    if os.path.isdir(archives):
        _plan_share_files(archives, facts, schedule, now, plan)
    # Loose database snapshots in the workshop folder (outside any backup).
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith(".rdb") and os.path.isfile(path) and not os.path.islink(path):
            _plan_aged_file(path, "snapshots", schedule, now, plan)


def _plan_aged_file(path, rule_name, schedule, now, plan, needs=None):
    stat = os.lstat(path)
    age = age_days(now, stat.st_mtime)
    if age <= schedule[rule_name]:
        return
    if needs is not None:
        why = needs(path)
        if why:
            plan.protect("host", path, why)
            return
    label = {"snapshots": "database snapshots", "logs": "active logs"}[rule_name]
    plan.unit("host", "file", path, [item("host", path, age, f"{label}: {schedule[rule_name]} days", stat.st_size)])


def _plan_loose(params, schedule, now, plan):
    """The checklist's manual exports in the project directory: workshop-logs-*.txt[.gz], redis-snapshot-*.rdb."""
    project = params.get("project_dir")
    if not project or not os.path.isdir(project):
        return
    rolled = None
    for name in sorted(os.listdir(project)):
        path = os.path.join(project, name)
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        if LOOSE_SNAPSHOT_PATTERN.match(name):
            _plan_aged_file(path, "snapshots", schedule, now, plan)
        elif LOOSE_LOG_PATTERN.match(name):
            if rolled is None:
                rolled = yearly_members(params["backup_root"])

            def needs(candidate, rolled=rolled):
                if sha256_file(candidate) in rolled:
                    return None
                return "not in a yearly log archive yet (run the cleanup phase): the only copy"

            _plan_aged_file(path, "logs", schedule, now, plan, needs=needs)


def _plan_outputs(outputs_dir, facts, schedule, now, plan, check):
    limit = schedule["outputs"]
    if facts["end"] is None:
        if os.path.isdir(outputs_dir):
            plan.protect("host", outputs_dir + "/", "the workshop's end is not recorded (drain final_time): outputs are not aged")
        return
    age = age_days(now, facts["end"])
    if age <= limit:
        return
    kept, not_kept = outputs_in_offsite_backup(outputs_dir, facts, check)
    for path, why in not_kept:
        plan.protect("host", path, why)
    rule = f"output files: {limit} days from the workshop's end"
    for path, _relpath, size, _mtime in kept:
        plan.unit("host", "file", path, [item("host", path, age, rule, size)])


def _share_ended(facts, schedule, now, plan, where_path):
    """(age in days, rule) when share archives may go, None (protected, said why) when not."""
    if facts["share_ends"] is None:
        plan.protect("host", where_path, "the share period's end is not recorded (run record share.period_ends)")
        return None
    if now < facts["share_ends"]:
        return None
    if facts["newest_verified"] is None:
        plan.protect("host", where_path, "the workshop's outputs are in no verified backup: the share archives stay")
        return None
    since = facts["end"] if facts["end"] is not None else facts["share_ends"]
    return age_days(now, since), f"output files: until the share period ended ({schedule['outputs']} days)"


def _plan_share_files(folder, facts, schedule, now, plan):
    files = [f for f in _files_of(folder) if f[1].endswith(".zip")]
    if not files:
        return
    ended = _share_ended(facts, schedule, now, plan, folder + "/")
    if ended is None:
        return
    for path, _rel, size in files:
        plan.unit("host", "file", path, [item("host", path, ended[0], ended[1], size)])


def _plan_share_folder(share_folder, facts, schedule, now, plan):
    if os.path.isdir(share_folder):
        _plan_share_files(share_folder, facts, schedule, now, plan)


# --- targets -------------------------------------------------------------------------------------


def plan_target(store, facts_by_id, schedule, now, plan, backups=True, members=backup_members):
    """An off-host target: backups older than the schedule go, except the newest of each workshop there, the
    newest verified one (else the newest whose verification did not fail), and on this target the newest
    holder of each output that one lacks (last_output_holders among this target's backups, from the host's
    member lists; `members`: backup_members or OffsiteCheck.members). A workshop another run holds on the
    host (plan.locked) is left as it is.

    With backups False (the share target only), only its share archives are planned.
    """
    name = store.target["name"]
    limit = schedule["backups"]
    for workshop in target_workshops(store) if backups else []:
        backups = store.backups(workshop)
        if not backups:
            continue
        newest = backups[-1]
        facts = facts_by_id.get(workshop)
        reference = _reference_backup(facts) if facts else None
        holders = newest_not_whole = _UNASKED  # each worked out once, and only when an older copy is due
        for backup in backups:
            where = store.where(workshop, backup)
            created = backup_epoch(backup)
            if workshop in plan.locked:
                plan.protect(name, where, f"{plan.locked[workshop]} on the host: not now")
                continue
            if backup == newest:
                plan.protect(name, where, "the newest backup of the workshop on this target: never the only copy gone")
                continue
            if backup == reference:
                plan.protect(name, where, f"{_reference_kind(facts)} of the workshop")
                continue
            if created is None or age_days(now, created) <= limit:
                continue
            if holders is _UNASKED:
                holders = last_output_holders(facts, members, among=set(backups)) if facts else {}
            if backup in holders:
                plan.protect(name, where, _last_holder_why(facts, holders[backup], name, reference in backups))
                continue
            if newest_not_whole is _UNASKED:
                newest_not_whole = _copy_not_whole(store, workshop, newest, facts)
            if newest_not_whole:
                plan.protect(
                    name, where, f"the newest copy on this target, {newest}, is not whole ({newest_not_whole}): older copies stay"
                )
                continue
            age = age_days(now, created)
            files = target_files(store, workshop, backup)
            config = [key for key, _size in files if _is_config(store, workshop, backup, key)]
            if config:
                plan.protect(name, store.key(workshop, backup, CONFIG_DIR) + "/", "configuration snapshot: kept forever")
            rule = f"full backups: {limit} days"
            items = [item(name, key, age, rule, size) for key, size in files if key not in config]
            # MANIFEST.json first: a copy without it is no longer complete, whatever happens next.
            items.sort(key=lambda entry: (not entry["path"].endswith("/" + MANIFEST), entry["path"]))
            folder = store.key(workshop, backup, "").rstrip("/") if store.kind == "ssh" else None
            plan.unit(name, "target", (store, [entry["path"] for entry in items], folder), items)
    if store.kind == "s3":
        _plan_s3_share(store, facts_by_id, schedule, now, plan)


def plan_target_or_leave(store, facts_by_id, schedule, now, plan, backups=True, down=None, members=backup_members):
    """plan_target, except that a target that does not answer (a refused key or login still fails) stops
    neither the host's plan nor the other targets': none of its plan stays, and it is named in plan.unreached
    and as kept. `down`: {name: error} of targets already found not answering this run, not asked again."""
    name = store.target["name"]
    kept = len(plan.units), len(plan.delete), len(plan.protected)
    try:
        if name in (down or {}):
            raise WorkshopUnreachable(down[name])
        plan_target(store, facts_by_id, schedule, now, plan, backups=backups, members=members)
    except WorkshopUnreachable as exc:
        del plan.units[kept[0] :], plan.delete[kept[1] :], plan.protected[kept[2] :]
        plan.unreached.append({"target": name, "error": exc.msg})
        plan.protect(name, store.where("", "").rstrip("/"), f"not reached, nothing there changed this run: {exc.msg}")


_UNASKED = object()


def _copy_not_whole(store, workshop, backup, facts):
    """Why a copy on a target is not whole (a phrase), None when it is: checked against the host's backup when
    the host still has it, else against the copy's own MANIFEST.json (content too where the target can hash)."""
    try:
        if facts and backup in facts["sealed"]:
            failures = check_present(store, os.path.join(facts["folder"], backup), workshop, backup, content=True)
        else:
            with tempfile.TemporaryDirectory(prefix="retention-manifest-") as scratch:
                store.read_sha256(store.key(workshop, backup, MANIFEST), dest=os.path.join(scratch, MANIFEST))
                if not _lists_files(scratch):
                    return f"its {MANIFEST} lists no file of a backup"
                # No local files to compare S3 ETags with: S3 is judged on sizes and checksums, SSH hashed.
                failures = check_present(store, scratch, workshop, backup, content=store.kind == "ssh")
    except WorkshopError as exc:
        return f"it could not be checked: {exc.msg}"
    return _first_failure(failures) if failures else None


def _lists_files(folder):
    """Whether the MANIFEST.json in `folder` is a backup's: files, each with an integer size and a sha256."""
    try:
        with open(os.path.join(folder, MANIFEST), encoding="utf-8") as stream:
            files = json.load(stream).get("files")
        return bool(files) and all(isinstance(i["size"], int) and isinstance(i["sha256"], str) for i in files.values())
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return False


def _is_config(store, workshop, backup, key):
    return key.startswith(store.key(workshop, backup, CONFIG_DIR) + "/")


def target_workshops(store):
    if store.kind == "s3":
        base = (store.prefix.strip("/") + "/") if store.prefix.strip("/") else ""
        names = store.folders(base)
        return sorted(name for name in names if name and name != "share")
    completed = store.run(
        'cd "$1" 2>/dev/null || exit 0; for d in *; do [ -d "$d" ] && echo "$d"; done; true',
        store.root,
        what=f"listing {store.root}",
    )
    return sorted(line for line in completed.stdout.decode(errors="replace").splitlines() if line and line != "*")


def target_files(store, workshop, backup):
    """[(key or path, size)] of every file of a backup copy on a target."""
    if store.kind == "s3":
        return _s3_list(store, store.key(workshop, backup, "") + "/")
    folder = store.key(workshop, backup, "").rstrip("/")
    script = (
        'cd "$1" || exit 0; find . -type f | sort | while IFS= read -r f; do '
        'printf "%s %s\\n" "$(wc -c < "$f" | tr -d " ")" "${f#./}"; done'
    )
    completed = store.run(script, folder, what=f"listing {folder}")
    found = []
    for line in completed.stdout.decode(errors="replace").splitlines():
        size, _dummy, relpath = line.partition(" ")
        # An unreadable file has no size; a name that is not UTF-8 could not be named back to delete it.
        if not size.isdigit() or "\ufffd" in relpath:
            raise WorkshopError(
                f"Archive target '{store.target['name']}': {folder}/{relpath} cannot be read (size {size or 'unknown'}) "
                f"or named: check that the storage user owns the copy, then run the retention phase again",
                target=store.target["name"],
                path=f"{folder}/{relpath}",
            )
        found.append((f"{folder}/{relpath}", int(size)))
    return found


def _s3_list(store, prefix):
    found = []
    token = None
    while True:
        kwargs = {"Prefix": prefix}
        if token:
            kwargs["ContinuationToken"] = token
        page = store._call("listing", prefix, "list_objects_v2", **kwargs)
        found += [(obj["Key"], obj["Size"]) for obj in page.get("Contents") or []]
        if not page.get("IsTruncated"):
            break
        token = page["NextContinuationToken"]
    return sorted(found)


def _plan_s3_share(store, facts_by_id, schedule, now, plan):
    """Share archives on S3 (<prefix>/share/<workshop>/...) of workshops whose share period ended."""
    base = "/".join(part for part in (store.prefix.strip("/"), "share") if part)
    for workshop, facts in sorted(facts_by_id.items()):
        objects = _s3_list(store, f"{base}/{workshop}/")
        if not objects:
            continue
        ended = _share_ended(facts, schedule, now, plan, f"{store.target['name']}:{base}/{workshop}/")
        if ended is None:
            continue
        items = [item(store.target["name"], key, ended[0], ended[1], size) for key, size in objects]
        plan.unit(store.target["name"], "target", (store, [key for key, _size in objects], None), items)


# --- applying a plan -----------------------------------------------------------------------------


def apply_plan(plan, done):
    """Delete exactly what the plan lists, unit by unit, appending the items deleted to `done` (so that a
    caller still has them when a unit fails). A target that stops answering is left there, named in
    plan.unreached; the other targets are still done."""
    for where, kind, handle, items in plan.units:
        if where in [entry["target"] for entry in plan.unreached]:
            continue
        if kind == "backup":
            _delete_host_backup(handle)
        elif kind == "file":
            try:
                os.unlink(handle)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise WorkshopError(f"Cannot delete {handle} on the host: {exc.strerror}", path=handle) from None
        else:
            store, keys, folder = handle
            try:
                delete_on_target(store, keys, folder)
            except WorkshopUnreachable as exc:
                plan.unreached.append({"target": where, "error": exc.msg})
                continue
        done.extend(items)


def _delete_host_backup(folder):
    """Take the backup out of the sealed set at once (rename), keep its config/, then delete the rest.

    A folder already renamed (a deletion interrupted by a crash) is finished the same way.
    """
    parent, name = os.path.split(folder.rstrip("/"))
    if name.startswith(DELETING_PREFIX):
        aside, name = folder.rstrip("/"), name[len(DELETING_PREFIX) :]
    else:
        aside = os.path.join(parent, DELETING_PREFIX + name)
    try:
        if aside != folder.rstrip("/"):
            os.rename(folder, aside)
            fsync_dir(parent)
        keep = os.path.join(parent, CONFIG_KEEP, name)
        config = os.path.join(aside, CONFIG_DIR)
        if os.path.isdir(config) or os.path.isfile(os.path.join(aside, MANIFEST)):
            for path in (os.path.join(parent, CONFIG_KEEP), keep):
                if not os.path.isdir(path):
                    os.makedirs(path, mode=WORKSHOP_FOLDER_MODE)
            if os.path.isdir(config) and not os.path.exists(os.path.join(keep, CONFIG_DIR)):
                os.rename(config, os.path.join(keep, CONFIG_DIR))
            if os.path.isfile(os.path.join(aside, MANIFEST)) and not os.path.exists(os.path.join(keep, MANIFEST)):
                shutil.copy2(os.path.join(aside, MANIFEST), os.path.join(keep, MANIFEST))
            fsync_dir(keep)
        if os.path.isdir(config):
            raise WorkshopError(
                f"{keep}/{CONFIG_DIR} exists already and differs from the configuration in {aside}: both kept; look at them",
                path=aside,
            )
        shutil.rmtree(aside)
        fsync_dir(parent)
    except OSError as exc:
        raise WorkshopError(
            f"Deleting the backup {folder} failed ({exc.strerror}); what is left is in {aside}: look at it", path=folder
        ) from None


def delete_on_target(store, keys, folder=None):
    """Delete objects (S3) or files (SSH, then the copy's empty folders, never above `folder`)."""
    if store.kind == "s3":
        for key in keys:
            store._call("deleting", key, "delete_object", Key=key)
        return
    if keys:
        store.run('for f in "$@"; do rm -f "$f" || exit 1; done', *keys, what=f"deleting {len(keys)} files")
    if folder:
        store.run('[ -d "$1" ] || exit 0; find "$1" -depth -type d -empty -exec rmdir {} \\;', folder, what=f"removing {folder}")


# --- the phase -----------------------------------------------------------------------------------


def make_plan(params, now, stores=(), share_store=None):
    """The whole plan: the host (every workshop folder, loose exports, outputs), then each target.

    params: backup_root, backup_dir (this workshop's folder), project_dir, outputs_dir, share_folder,
    schedule (checked).
    """
    plan = Plan()
    offsite = OffsiteCheck(stores)
    facts_of = plan_host(params, now, plan, offsite)
    facts_by_id = {os.path.basename(folder.rstrip("/")): facts for folder, facts in facts_of.items()}
    for store in stores:
        plan_target_or_leave(store, facts_by_id, params["schedule"], now, plan, down=offsite.down, members=offsite.members)
    if share_store is not None and share_store.target["name"] not in [store.target["name"] for store in stores]:
        plan_target_or_leave(share_store, facts_by_id, params["schedule"], now, plan, backups=False)
    return plan


def retention_section(schedule, plan, deleted, moment):
    return {
        "at": moment,
        "schedule": dict(schedule, reports="forever", configuration="forever"),
        "deleted": deleted,
        "moved": list(plan.move),
        "protected": plan.protected,
        "unreached": plan.unreached,
    }


def section_changed(before, after):
    """Whether to write the section: always when something was deleted, moved or removed; otherwise only when
    there is none yet, the schedule changed, or another set of targets did not answer (one that answers again
    clears the checklist's follow-up). A run that did nothing else leaves the record of the last one that did."""
    if not before or after.get("deleted") or after.get("moved") or after.get("removed"):
        return True
    return before.get("schedule") != after.get("schedule") or unreached_targets(before) != unreached_targets(after)
