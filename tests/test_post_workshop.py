"""The whole checklist in one run, as an admin runs it: post_workshop.yml, then again."""

import json

from test_retention import RETENTION_VARS, check_retention_and_cleanup

from conftest import BACKUP_ROOT, run_playbook

CHECKLIST_TASK = "report : Show the verification checklist"


def checklist_at_the_end(run):
    """What the verification checklist printed: the last task of the wrap-up, only the fleet summary after it."""
    assert all(task.startswith("fleet : ") for task in run.tasks_after(CHECKLIST_TASK)), run.tasks_after(CHECKLIST_TASK)
    return run.task_output(CHECKLIST_TASK)


def test_a_second_full_run_changes_nothing(played_workshop_id):
    extra = {"workshop_id": played_workshop_id, **RETENTION_VARS}
    first = run_playbook("post_workshop.yml", extra_vars=extra)
    assert first.changed() > 0
    # The verification checklist ends the run: ✓ for what this run did, ✗ with a reason for the rest.
    shown = checklist_at_the_end(first)
    assert "✓ All participant outputs backed up: " in shown and "✓ Report generated: " in shown
    assert "✗ Backups verified (test restore one): no restore test yet: run playbooks/restore_test.yml" in shown
    checklist = json.loads((BACKUP_ROOT / played_workshop_id / "report" / "checklist.json").read_text())
    assert [line["ok"] for line in checklist["lines"][:5]] == [True] * 5
    assert f"Status: {checklist['status']}: {'; '.join(checklist['failing'])}" in shown
    check_retention_and_cleanup(played_workshop_id, first.output)

    second = run_playbook("post_workshop.yml", "--diff", extra_vars=extra)

    assert second.changed() == 0, second.output[-6000:]
    # The unchanged newest backup is not read again: the first run's verification read it.
    verify = json.loads((BACKUP_ROOT / played_workshop_id / "run-record.json").read_text())["backup"]["verify"]
    assert f"files intact (read at {verify['at']}, no file changed since;" in second.text
    checklist_at_the_end(second)
    assert (BACKUP_ROOT / played_workshop_id).stat().st_mode & 0o777 == 0o700
