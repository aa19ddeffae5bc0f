"""One workshop's line of the fleet summary, read on its host from the run record and the report folder.

Plain data from what the phases recorded: nothing is inferred that the record does not say
(a workshop without a drain section was not drained by this tool; no verify entry is "not verified").
"""

import os

from ansible.module_utils.workshop_record import read_record, unreached_targets


def fleet_entry(record_path, report_dir):
    """What the fleet summary shows for one workshop: drained at, jobs, backup verified, archived, shared, report,
    and the storage targets the retention schedule could not reach."""
    record = read_record(record_path)
    drain = record.get("drain") or {}
    backup = record.get("backup") or {}
    verify = backup.get("verify") or {}
    counts = drain.get("counts_at_end") or {}
    targets = (record.get("archive") or {}).get("targets") or {}
    share = record.get("share") or {}
    report = os.path.join(report_dir, "report.md")
    return {
        "drained": drain.get("drained"),
        "drained_at": drain.get("final_time"),
        "jobs_completed": drain.get("total_jobs"),
        "jobs_failed": counts.get("failed"),
        "backup": backup.get("name"),
        # Verified means the record's verification is of the newest backup and found nothing wrong.
        "backup_verified": verify.get("ok") is True and verify.get("backup") == backup.get("name") if verify else None,
        "archived": sorted(
            name
            for name, target in targets.items()
            if target.get("backup") == backup.get("name") and target.get("verified") is True
        ),
        "shared": (
            {
                "delivery": share.get("delivery"),
                "participants": len(share.get("participants") or {}),
                "until": share.get("period_ends"),
            }
            if share
            else None
        ),
        "report": report if os.path.isfile(report) else None,
        "retention_unreached": unreached_targets(record.get("retention")),
    }
