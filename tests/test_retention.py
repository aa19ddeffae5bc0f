"""Retention and cleanup at the end of the whole checklist on the staging workshop (Docker tier).

No test of its own here (a full run costs minutes): tests/test_check_mode.py runs post_workshop.yml over
SSH, in check mode then twice, on a played workshop with RETENTION_VARS (retention enabled, two years
ahead, so every class is due) and calls check_retention_and_cleanup after the first real run; the
second proves both phases idempotent (changed=0).
"""

import json
import tarfile

from conftest import BACKUP_ROOT, PROJECT_DIR

# Two years on: every class is due, so what stays is what the protections keep (no archive target is
# configured in staging, so nothing of the workshop is verified off-host).
# The confirmation as an admin's group_vars can give it for good (a cron line gives the id itself).
RETENTION_VARS = {"retention_enabled": "true", "retention_confirm": "{{ workshop_id }}", "retention_now": "2028-12-01T00:00:00Z"}


def check_retention_and_cleanup(workshop_id, output):
    folder = BACKUP_ROOT / workshop_id
    assert "Deleted" in output and "the newest verified backup of the workshop" in output
    record = json.loads((folder / "run-record.json").read_text())
    backup = record["backup"]["name"]
    section = record["retention"]
    assert [e for e in section["deleted"] if workshop_id in e["path"] or str(PROJECT_DIR) in e["path"]] == []
    kept = {entry["path"]: entry["why"] for entry in section["protected"]}
    assert kept[f"{folder / backup}/"] == "the newest verified backup of the workshop"
    assert kept[str(folder / "run-record.json")] == "run records are kept forever"
    assert any(why == "not in a backup verified off-host" for why in kept.values())  # the participants' outputs
    assert (folder / backup / "MANIFEST.json").exists() and section["schedule"]["backups"] == 365

    # Cleanup rolled this workshop's merged log into the year's archive, byte for byte; the backup keeps its own.
    cleanup = record["cleanup"]
    year = record["drain"]["final_time"][:4]
    archive = BACKUP_ROOT / "logs" / f"workshop-logs-{year}.tar.gz"
    member = f"{workshop_id}/workshop-logs-{backup[len('backup-') :]}.txt.gz"
    rolled = {entry["archive"]: entry for entry in cleanup["logs_rolled"]}
    assert rolled[str(archive)]["verified"] is True and member in rolled[str(archive)]["members"]
    with tarfile.open(archive, "r:gz") as tar:
        assert tar.extractfile(member).read() == (folder / backup / "logs" / "workshop-logs.txt.gz").read_bytes()
    assert cleanup["done"] is True
