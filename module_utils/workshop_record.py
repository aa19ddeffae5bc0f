"""The workshop's run record: one JSON file in its backup folder that every phase adds its
facts to (the drain's FINAL_TIME and TOTAL_JOBS, the backup's files, ...) and the report reads."""

import json
import os
import time

from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import make_workshop_folder, write_atomically
from ansible.module_utils.workshop_time import utc_iso


def read_record(path):
    """The record at `path`, {} when there is none yet; a record of another shape than the phases write
    (a section that is not a JSON object, edited by hand) is a WorkshopError naming the key."""
    try:
        with open(path, encoding="utf-8") as record:
            record = json.load(record)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise WorkshopError(
            f"Cannot read the run record {path} on this host ({exc.strerror}): check workshop_backup_root", path=path
        ) from None
    except ValueError as exc:
        raise WorkshopError(f"The run record {path} is not valid JSON ({exc}): fix or move it aside", path=path) from None
    misshapen = _misshapen_key(record)
    if misshapen is not None:
        raise WorkshopError(
            f"The run record {path} is not as the phases write it: {misshapen} (edited by hand?): "
            "fix that key, or move the record aside",
            path=path,
        )
    return record


# The values the phases, the checklist and the fleet summary read, by key ("*": every entry of an
# object), and what each is when set (null passes, but not for an object): a hand edit of another type is named here
# instead of failing somewhere later ("'list' object has no attribute 'get'") or passing for what it
# is not (the text "false" is truthy).
_TYPED_KEYS = (
    ("backup.verify", dict),
    ("archive.targets", dict),
    ("archive.targets.*", dict),
    ("backup.name", str),
    ("backup.verify.backup", str),
    ("backup.verify.ok", bool),
    ("archive.targets.*.backup", str),
    ("archive.targets.*.verified", bool),
    ("drain.drained", bool),
    ("drain.final_time", str),
    ("drain.total_jobs", int),
    ("drain.counts_at_end", dict),
    ("share.participants", dict),
)
_KINDS = {dict: "a JSON object", str: "text", bool: "true or false", int: "a whole number"}


def _misshapen_key(record):
    """The first key of `record` of another kind than the phases write, as a phrase; None when none.

    Every section (drain, backup, archive, ...) is a JSON object, and so is each value _TYPED_KEYS reads."""
    if not isinstance(record, dict):
        return f"its top level is {_kind(record)}, not a JSON object"
    for key, value in record.items():  # JSON's names are text
        if not isinstance(value, dict):
            return f"{key} is {_kind(value)}, not a JSON object"
    for path, kind in _TYPED_KEYS:
        for key, value in _values_at(record, path.split(".")):
            # bool is an int to Python; a count of true is no count.
            if (value is not None or kind is dict) and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
                return f"{key} is {_kind(value)}, not {_KINDS[kind]}"
    return None


def _values_at(node, parts, prefix=""):
    """(key, value) of every value at the path `parts` below `node` ("*" for every entry), where it exists."""
    if not parts:
        return [(prefix, node)]
    if not isinstance(node, dict):
        return []
    part, rest = parts[0], parts[1:]
    names = list(node) if part == "*" else [part] if part in node else []
    return [found for name in names for found in _values_at(node[name], rest, f"{prefix}.{name}" if prefix else name)]


def _kind(value):
    kinds = {str: "text", list: "a list", dict: "a JSON object", bool: "true/false", type(None): "null"}
    return kinds.get(type(value), "a number")


def unreached_targets(section):
    """The targets a retention section says did not answer (the checklist and the fleet summary name them)."""
    entries = (section if isinstance(section, dict) else {}).get("unreached") or []
    return sorted(str(entry.get("target")) for entry in entries if isinstance(entry, dict))


def updated_record(record, section, data, keep_existing):
    """The record with `data` merged into `section`; with keep_existing, keys already set are kept."""
    current = dict(record.get(section) or {})
    for key, value in data.items():
        if not (keep_existing and key in current):
            current[key] = value
    return {**record, section: current}


def save_record(path, record):
    make_workshop_folder(os.path.dirname(path))
    write_atomically(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode(), mode=0o640)


def describe_failures(failures):
    """One phrase per failure of a verification or restore test as the record keeps them: "file member m:
    reason", or the reason alone for a failure of no file (a fetch that failed)."""
    phrases = []
    for failure in failures or []:
        if not isinstance(failure, dict):
            continue
        member = f" member {failure['member']}" if failure.get("member") else ""
        phrases.append(
            f"{failure['file']}{member}: {failure.get('reason')}" if failure.get("file") else str(failure.get("reason"))
        )
    return phrases


def failures_text(failures, limit=3):
    """The first `limit` failures as one text ("" for none)."""
    return "; ".join(describe_failures(failures)[:limit])


def fetch_failed(test):
    """Whether a restore_test entry records a fetch from the off-host target that failed (it names no backup
    when the fetch failed before one was chosen): a test of no backup's content."""
    return test.get("fetched") is False or not test.get("backup")


def verify_entry(name, failures, now=None, signature=None):
    """backup.verify as the report and the shutdown guard read it; with the backup folder's file
    signature (workshop_backup.folder_signature) when the verification read the files on disk."""
    entry = {
        "ok": not failures,
        "at": utc_iso(time.time() if now is None else now),
        "backup": name,
        "failures": [{"file": f["file"], "member": f.get("member"), "reason": f["reason"]} for f in failures],
    }
    if signature:
        entry["signature"] = signature
    return entry


def record_backup(path, name, folder, files, data, adopted=False, signature=None):
    """Replace the record's backup section with a newly sealed (or adopted) backup, verified by its seal
    (which read every file from disk: with the folder's signature, a verification right after takes it)."""
    record = read_record(path)
    section = dict(data, name=name, path=folder, files=files, verify=verify_entry(name, [], signature=signature))
    if adopted:
        section["adopted"] = True
    save_record(path, {**record, "backup": section})


def record_verify(path, name, failures, signature=None):
    """Set backup.verify to this verification; an unchanged result keeps its time. Returns whether it wrote."""
    record = read_record(path)
    section = dict(record.get("backup") or {})
    entry = verify_entry(name, failures, signature=signature)
    before = section.get("verify") or {}
    if {k: v for k, v in before.items() if k != "at"} == {k: v for k, v in entry.items() if k != "at"}:
        return False
    section["verify"] = entry
    save_record(path, {**record, "backup": section})
    return True
