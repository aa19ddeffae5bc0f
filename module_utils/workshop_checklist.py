"""The checklist's "Verification Checklist": its ten lines, each ✓ with the evidence that proves it or
✗ with the reason and what to do, read from the run record and the files the phases left.

build_checklist(record, facts) -> {"status", "ok", "lines": [{"item", "ok", "evidence" | "reason"}],
"failing"}; facts (gather_facts, on the workshop host) are the newest backup's MANIFEST.json files
and the report folder's files. Nothing here carries a time of its own, so an unchanged record
gives an unchanged checklist (a second run rewrites nothing).
"""

import json
import os

from ansible.module_utils.workshop_record import failures_text, fetch_failed, unreached_targets
from ansible.module_utils.workshop_report_text import (
    _get,
    as_number,
    backup_verify,
    count_of,
    format_stamp,
    verify_state,
)

READY = "READY FOR STORAGE"
FOLLOW_UP = "NEEDS FOLLOW-UP"
CHECKLIST_FILE = "checklist.json"
REPORT_FILES = ("report.md", "report.html", "metrics.json")

# (key, the checklist's words), in the checklist's order.
ITEMS = (
    ("outputs", "All participant outputs backed up"),
    ("logs", "All logs exported and compressed"),
    ("snapshot", "Database snapshot created"),
    ("config", "Configuration documented"),
    ("report", "Report generated"),
    ("restore", "Backups verified (test restore one)"),
    ("notified", "Participants notified of output availability"),
    ("feedback", "Feedback collected"),
    ("cleanup", "Cleanup completed"),
    ("next_use", "System documented for next use"),
)
LISTED = 4


def human_bytes(size):
    """ "27.0 MB" (decimal units, as ls -h --si), "512 bytes"."""
    size = as_number(size) or 0
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{int(size)} bytes"


def _names(names, limit=LISTED):
    names = [str(name) for name in names]
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _yes(value):
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


# --- facts from the workshop host --------------------------------------------------------------------


def read_manifest_files(backup_path):
    """({relative path: size} of the backup's MANIFEST.json, None) or (None, why it could not be read)."""
    manifest = os.path.join(str(backup_path), "MANIFEST.json")
    try:
        with open(manifest, encoding="utf-8") as stream:
            files = json.load(stream).get("files")
    except FileNotFoundError:
        return None, f"{manifest} is missing (the backup was moved or deleted)"
    except (OSError, ValueError, AttributeError) as exc:
        return None, f"{manifest} is unreadable ({exc})"
    if not isinstance(files, dict):
        return None, f"{manifest} lists no files"
    return {name: as_number((entry or {}).get("size")) or 0 for name, entry in files.items()}, None


def gather_facts(record, report_dir, report_files=None):
    """What the checklist reads on the host besides the record: the backup's manifest and the report folder.

    `report_files`, when given, are the report's files as they are being written (the report's own
    checklist); else those found in `report_dir`.
    """
    facts = {"report_dir": report_dir}
    backup_path = _get(record, "backup", "path")
    if backup_path:
        facts["backup_files"], facts["backup_files_error"] = read_manifest_files(backup_path)
    if report_files is None:
        report_files = [name for name in REPORT_FILES if report_dir and os.path.isfile(os.path.join(report_dir, name))]
    facts["report_files"] = list(report_files)
    return facts


# --- the ten lines -----------------------------------------------------------------------------------


def _ok(evidence):
    return True, evidence


def _not(reason):
    return False, reason


NO_BACKUP = "no backup is recorded in the run record: run --tags backup"


def _backup_problem(record, prefix):
    """Why the recorded backup does not prove the files under `prefix` (None when it does)."""
    backup = _get(record, "backup") or {}
    name = backup.get("name") or backup.get("path")
    state = verify_state(record)
    if state == "unverified":
        return f"backup {name} is not verified: run --tags backup (it verifies what it writes)"
    if state == "failed":
        failures = [f for f in (backup_verify(record) or {}).get("failures") or [] if isinstance(f, dict)]
        where = failures_text([f for f in failures if str(f.get("file") or "").startswith(prefix)] or failures)
        return f"backup {name} FAILED verification ({where or 'what failed was not recorded'}): make a new backup (--tags backup)"
    return None


def _files_under(facts, prefix):
    return {name: size for name, size in (facts.get("backup_files") or {}).items() if name.startswith(prefix)}


def _manifest_problem(record, facts):
    if facts.get("backup_files") is None:
        why = facts.get("backup_files_error") or "the backup's MANIFEST.json was not read"
        return f"{why}: run --tags backup"
    return None


def _verified_at(record):
    at = (backup_verify(record) or {}).get("at")
    return f", verified {format_stamp(at)}" if at else ", verified"


def line_outputs(record, facts):
    backup = _get(record, "backup")
    if not backup:
        return _not(NO_BACKUP)
    problem = _backup_problem(record, "outputs")
    if problem:
        return _not(problem)
    outputs = backup.get("outputs")
    if not isinstance(outputs, dict):
        return _not(f"backup {backup.get('name')} records no outputs: run --tags backup")
    evidence = (
        f"{count_of(outputs.get('files')) or 0} files, {human_bytes(outputs.get('bytes'))} "
        f"({as_number(outputs.get('bytes')) or 0} bytes) in outputs.tar of backup {backup.get('name')}{_verified_at(record)}"
    )
    copies = _get(record, "archive", "targets") or {}
    # A target's entry names the backup it holds: a copy of an older backup is no copy of this one.
    off = sorted(
        name
        for name, entry in copies.items()
        if isinstance(entry, dict) and _yes(entry.get("verified")) and entry.get("backup") == backup.get("name")
    )
    if off:
        evidence += f"; verified off-host copies: {_names(off)}"
    return _ok(evidence)


def _rolled(record):
    """The cleanup's yearly log archive(s), as cleanup records them: {archive, members, verified} (or a list)."""
    rolled = _get(record, "cleanup", "logs_rolled")
    if not rolled:
        return ""
    entries = rolled if isinstance(rolled, (list, tuple)) else [rolled]

    def described(entry):
        if not isinstance(entry, dict):
            return str(entry)
        state = "verified" if entry.get("verified") else "not verified"
        members = count_of(entry.get("members") or [])
        return f"{entry.get('archive', '?')} ({members} member{'' if members == 1 else 's'}, {state})"

    return "; rolled into " + ", ".join(described(entry) for entry in entries)


def line_logs(record, facts):
    backup = _get(record, "backup")
    if not backup:
        return _not(NO_BACKUP)
    problem = _backup_problem(record, "logs/") or _manifest_problem(record, facts)
    if problem:
        return _not(problem)
    logs = _files_under(facts, "logs/")
    if not logs:
        return _not(f"no logs in backup {backup.get('name')} (logs/): run --tags backup")
    plain = sorted(name for name in logs if not name.endswith(".gz"))
    if plain:
        return _not(f"not compressed in backup {backup.get('name')}: {_names(plain)}: make a new backup (--tags backup)")
    combined = [name for name in sorted(logs) if "workshop-logs" in name]
    what = f"{combined[0]} and {len(logs) - len(combined)} per-service logs" if combined else _names(sorted(logs))
    evidence = (
        f"{len(logs)} gzip files, {human_bytes(sum(logs.values()))} ({sum(logs.values())} bytes) in backup "
        f"{backup.get('name')}: {what}{_verified_at(record)}"
    )
    return _ok(evidence + _rolled(record))


def line_snapshot(record, facts):
    backup = _get(record, "backup")
    if not backup:
        return _not(NO_BACKUP)
    redis = backup.get("redis")
    if not isinstance(redis, dict):
        return _not(f"backup {backup.get('name')} records no database snapshot: run --tags backup")
    if str(redis.get("checksum")) != "ok":
        return _not(
            f"the snapshot of backup {backup.get('name')} did not pass its CRC check ({redis.get('checksum')}): "
            "make a new backup (--tags backup)"
        )
    problem = _backup_problem(record, "redis/")
    if problem:
        return _not(problem)
    name = redis.get("file") or "redis/dump.rdb"
    evidence = (
        f"{name} of backup {backup.get('name')}: {as_number(redis.get('size')) or 0} bytes, RDB version "
        f"{redis.get('rdb_version')}, CRC ok, {redis.get('keys')} keys ({redis.get('job_records')} job records)"
    )
    if redis.get("sha256"):
        evidence += f", sha256 {str(redis['sha256'])[:12]}…"
    return _ok(evidence)


def line_config(record, facts):
    backup = _get(record, "backup")
    if not backup:
        return _not(NO_BACKUP)
    problem = _backup_problem(record, "config/") or _manifest_problem(record, facts)
    if problem:
        return _not(problem)
    config = _files_under(facts, "config/")
    if not config:
        return _not(f"no configuration in backup {backup.get('name')} (config/): run --tags backup")
    return _ok(
        f"{_names(sorted(config), 6)} ({human_bytes(sum(config.values()))}) kept in backup "
        f"{backup.get('name')}{_verified_at(record)}"
    )


def line_report(record, facts):
    folder = facts.get("report_dir") or "the report folder"
    present = facts.get("report_files") or []
    missing = [name for name in ("report.md", "report.html") if name not in present]
    if missing:
        return _not(f"{', '.join(missing)} not in {folder}: run --tags report")
    return _ok(", ".join(f"{folder}/{name}" for name in present))


def line_restore(record, facts):
    test = _get(record, "restore_test")
    if not isinstance(test, dict):
        return _not("no restore test yet: run playbooks/restore_test.yml")
    newest = _get(record, "backup", "name")
    # Only a test of another backup defers to the newest's own: a fetch that failed (the off-host target did
    # not give the backup, whichever was asked for) says nothing of a backup, and its failure stands.
    deferred = newest and not fetch_failed(test) and test["backup"] != newest
    of_newest = _get(record, "restore_tests", newest) if deferred else None
    if isinstance(of_newest, dict):  # the last test was of an older backup; the newest was tested before it
        test = of_newest
    when = format_stamp(test["at"]) if test.get("at") else "at an unrecorded time"
    if not _yes(test.get("ok")):
        what = failures_text(test.get("failures")) or "what failed was not recorded"
        if fetch_failed(test):  # the target did not give the backup: a new one would not help
            which = f"backup {test['backup']}" if test.get("backup") else "the newest backup"
            return _not(
                f"the restore test of {which} on {test.get('source')} FAILED {when}: it could not be fetched intact "
                f"({what}): check that {test.get('source')} answers (address, credentials) and holds an intact copy "
                "(--tags verify_remote reads it back, --tags archive copies it again), then run "
                "playbooks/restore_test.yml again"
            )
        return _not(
            f"the restore test of backup {test['backup']} FAILED {when} ({what}): make a new backup and run "
            "playbooks/restore_test.yml again"
        )
    evidence = f"backup {test.get('backup')} restored {when}"
    if test.get("source") and test.get("source") != "local":
        evidence += f" from {test['source']}"
    details = []
    if as_number(test.get("files_compared")) is not None:
        details.append(f"{test['files_compared']} files equal to the manifest")
    keys = test.get("keys")
    if isinstance(keys, dict) and keys.get("loaded") is not None:
        details.append(f"{keys['loaded']} keys loaded")
    if as_number(test.get("seconds")) is not None:
        details.append(f"in {test['seconds']} s")
    if details:
        evidence += f" ({', '.join(details)})"
    if newest and test.get("backup") and newest != test.get("backup"):
        # A pass of an older backup says nothing of the one a recovery would use.
        return _not(f"{evidence}, but the newest backup {newest} was not restore-tested: run playbooks/restore_test.yml")
    return _ok(evidence)


def _messages(share):
    """(participants with a message, those sent, those only in the outbox), sorted."""
    people = share.get("participants") if isinstance(share.get("participants"), dict) else {}
    written = sorted(user for user, entry in people.items() if isinstance(entry, dict) and "to" in entry)
    sent = [user for user in written if people[user].get("sent_at")]
    return written, sent, [user for user in written if user not in sent]


def line_notified(record, facts):
    share = _get(record, "share")
    if not isinstance(share, dict):
        return _not(
            "the outputs were not shared (no share in the run record; sharing needs share_target or share_base_url): "
            "run --tags share"
        )
    written, sent, unsent = _messages(share)
    if not written:
        return _not("no message was written (no participant had outputs to share, or the share did not finish): run --tags share")
    outbox = share.get("outbox") or "the outbox"
    if unsent:
        return _not(
            f"{len(unsent)} of {len(written)} messages only in {outbox}, not sent ({_names(unsent)}): "
            "send those .eml files by hand, or set share_smtp_host (and an email per participant) and run --tags share"
        )
    delivery = share.get("delivery") or "?"
    return _ok(f"{len(sent)} messages sent by email (archives by {delivery}, copies in {outbox})")


def line_feedback(record, facts):
    share = _get(record, "share")
    if not isinstance(share, dict):
        return _not("no survey link was sent: the outputs were not shared yet (set share_survey_url, run --tags share)")
    url = share.get("survey_url") or share.get("share_survey_url")
    if not url:
        return _not("the messages carry no survey link: set share_survey_url and run --tags share -e share_resend=true")
    _written, sent, _unsent = _messages(share)
    if not sent:
        return _not(f"the survey link {url} is in messages none of which was sent: send them (see the line above)")
    return _ok(f"survey link {url} sent in {len(sent)} messages; the answers are collected by the survey")


def line_cleanup(record, facts):
    cleanup = _get(record, "cleanup")
    if not isinstance(cleanup, dict) or not cleanup:
        return _not("cleanup not run: --tags cleanup")
    when = format_stamp(cleanup["at"]) if cleanup.get("at") else "at an unrecorded time"
    if not _yes(cleanup.get("done")):
        return _not(f"cleanup started {when} but is not done: run --tags cleanup again and read why it stopped")
    # A storage target that did not answer kept everything the schedule would have aged there.
    unreached = unreached_targets(_get(record, "retention"))
    if unreached:
        return _not(
            f"cleanup done {when}, but the retention schedule did not finish on the storage target"
            f"{'' if len(unreached) == 1 else 's'} {_names(unreached)}, which did not answer: "
            f"run --tags retention once {'it answers' if len(unreached) == 1 else 'they answer'}"
        )
    parts = []
    for key, label in (("removed", "temporary files removed"), ("outputs_removed", "outputs removed from the VPS")):
        if cleanup.get(key) is not None:
            parts.append(f"{count_of(cleanup[key])} {label}")
    rolled = _rolled(record)
    return _ok(f"done {when}" + (f": {', '.join(parts)}" if parts else "") + rolled)


def line_next_use(record, facts):
    readiness = _get(record, "readiness")
    if not isinstance(readiness, dict):
        return _not(
            "no next-workshop readiness check yet: run playbooks/readiness.yml (and fill in the report's "
            "Recommendations for Next Time)"
        )
    lines = [entry for entry in readiness.get("lines") or [] if isinstance(entry, dict)]
    when = format_stamp(readiness["at"]) if readiness.get("at") else "at an unrecorded time"
    if not _yes(readiness.get("ok")):
        failing = [str(entry.get("item") or entry.get("name") or "?") for entry in lines if not _yes(entry.get("ok"))]
        return _not(
            f"the readiness check {when} found problems ({_names(failing) or 'not recorded'}): "
            "fix them and run playbooks/readiness.yml"
        )
    return _ok(f"readiness checked {when}: all {len(lines)} lines hold")


LINES = {
    "outputs": line_outputs,
    "logs": line_logs,
    "snapshot": line_snapshot,
    "config": line_config,
    "report": line_report,
    "restore": line_restore,
    "notified": line_notified,
    "feedback": line_feedback,
    "cleanup": line_cleanup,
    "next_use": line_next_use,
}


def build_checklist(record, facts=None):
    """The ten lines and the status that follows from them."""
    record, facts = record or {}, facts or {}
    lines = []
    for key, item in ITEMS:
        ok, text = LINES[key](record, facts)
        lines.append({"key": key, "item": item, "ok": ok, ("evidence" if ok else "reason"): text})
    failing = [line["item"] for line in lines if not line["ok"]]
    return {"status": FOLLOW_UP if failing else READY, "ok": not failing, "lines": lines, "failing": failing}


def status_text(checklist):
    """ "READY FOR STORAGE", or "NEEDS FOLLOW-UP: <the failing lines>"."""
    if checklist["ok"]:
        return READY
    return f"{FOLLOW_UP}: {'; '.join(checklist['failing'])}"


def checklist_table(checklist):
    """The checklist as plain text lines, one per item (what the play prints)."""
    out = []
    for line in checklist["lines"]:
        mark = "✓" if line["ok"] else "✗"
        out.append(f"{mark} {line['item']}: {line.get('evidence') or line.get('reason')}")
    out.append(f"Status: {status_text(checklist)}")
    return out


def checklist_json(checklist):
    return (json.dumps(checklist, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
