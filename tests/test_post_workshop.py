"""The whole checklist in one run, as an admin runs it: post_workshop.yml, then again."""

import shutil
import uuid
from pathlib import Path

import pytest

from conftest import run_playbook, staging

BACKUP_ROOT = Path("/var/lib/comfy-wrapup/backups")


@pytest.fixture
def workshop_id(staging_workshop):
    staging("play", staging_workshop_play_jobs_per_user="1-2", staging_workshop_play_bursts=1)
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    yield name
    shutil.rmtree(BACKUP_ROOT / name, ignore_errors=True)


def test_a_second_full_run_changes_nothing(workshop_id):
    first = run_playbook("post_workshop.yml", extra_vars={"workshop_id": workshop_id})
    assert first.changed() > 0

    second = run_playbook("post_workshop.yml", "--diff", extra_vars={"workshop_id": workshop_id})

    assert second.changed() == 0, second.output[-6000:]
    assert (BACKUP_ROOT / workshop_id).stat().st_mode & 0o777 == 0o700
