"""The workshop's run record: one JSON file in its backup folder that every phase adds its
facts to (the drain's FINAL_TIME and TOTAL_JOBS, the backup's files, ...) and the report reads."""

import json
import os

from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import write_atomically


def read_record(path):
    """The record at `path`, {} when there is none yet."""
    try:
        with open(path, encoding="utf-8") as record:
            return json.load(record)
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise WorkshopError(f"The run record {path} is not valid JSON ({exc}): fix or move it aside", path=path) from None


def updated_record(record, section, data, keep_existing):
    """The record with `data` merged into `section`; with keep_existing, keys already set are kept."""
    current = dict(record.get(section) or {})
    for key, value in data.items():
        if not (keep_existing and key in current):
            current[key] = value
    return {**record, section: current}


def save_record(path, record):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomically(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode(), mode=0o640)
