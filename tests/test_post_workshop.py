"""The whole checklist in one run, as an admin runs it: post_workshop.yml, then again."""

from test_retention import RETENTION_VARS, check_retention_and_cleanup

from conftest import BACKUP_ROOT, run_playbook


def test_a_second_full_run_changes_nothing(played_workshop_id):
    extra = {"workshop_id": played_workshop_id, **RETENTION_VARS}
    first = run_playbook("post_workshop.yml", extra_vars=extra)
    assert first.changed() > 0
    check_retention_and_cleanup(played_workshop_id, first.output)

    second = run_playbook("post_workshop.yml", "--diff", extra_vars=extra)

    assert second.changed() == 0, second.output[-6000:]
    assert (BACKUP_ROOT / played_workshop_id).stat().st_mode & 0o777 == 0o700
