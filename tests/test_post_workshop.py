"""The whole checklist in one run, as an admin runs it: post_workshop.yml, then again."""

from conftest import BACKUP_ROOT, run_playbook


def test_a_second_full_run_changes_nothing(played_workshop_id):
    first = run_playbook("post_workshop.yml", extra_vars={"workshop_id": played_workshop_id})
    assert first.changed() > 0

    second = run_playbook("post_workshop.yml", "--diff", extra_vars={"workshop_id": played_workshop_id})

    assert second.changed() == 0, second.output[-6000:]
    assert (BACKUP_ROOT / played_workshop_id).stat().st_mode & 0o777 == 0o700
