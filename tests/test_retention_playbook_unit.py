"""Retention through its playbook, without Docker: a workshop folder in a temp folder."""

import json
import os

import pytest
from test_retention_unit import NOW, W, days_ago, workshop

from conftest import run_playbook

# Runs ansible-playbook (no Docker): the playbook tier, not make test-unit.
pytestmark = pytest.mark.playbook


def flat(text):
    """The output with the callback's line wrapping undone."""
    return " ".join(text.split())


def settings(tmp_path, root, project, **extra):
    values = {
        "workshop_id": W,
        "workshop_project_dir": str(project),
        "workshop_backup_root": str(root),
        "retention_now": "2027-06-01T12:00:00Z",
        **extra,
    }
    path = tmp_path / "vars.json"
    path.write_text(json.dumps(values))
    return f"@{path}"


def test_retention_is_off_unless_enabled_then_check_lists_what_the_run_deletes(tmp_path):
    root, _folder, project, _outputs, _names, record = workshop(tmp_path, [20], verified=0, offsite={})
    snapshot = project / "redis-snapshot-20260128-180000.rdb"
    snapshot.write_bytes(b"REDIS0012")
    os.utime(snapshot, (days_ago(100), days_ago(100)))
    assert abs(NOW - days_ago(0)) < 1

    off = run_playbook("playbooks/retention.yml", "-e", settings(tmp_path, root, project), "-e", "retention_enabled=false")
    assert "retention not configured: set retention_enabled=true" in off.output and off.changed() == 0
    assert snapshot.exists() and "retention" not in json.loads(record.read_text())

    unconfirmed = settings(tmp_path, root, project, retention_enabled="true")
    listed = run_playbook("playbooks/retention.yml", "-e", unconfirmed)
    line = f"host: {snapshot} (100.0 days old; database snapshots: 90 days)"
    assert line in flat(listed.output) and "Would delete 1 files" in flat(listed.output) and listed.changed() == 0
    told = "nothing was deleted. What the schedule would delete is listed above; to delete it, run again with -e"
    assert f"{told} retention_confirm={W}" in flat(listed.output)
    assert snapshot.exists() and "retention" not in json.loads(record.read_text())
    on = settings(tmp_path, root, project, retention_enabled="true", retention_confirm=W)
    preview = run_playbook("playbooks/retention.yml", "-e", on, "--diff", check=True)
    assert line in flat(preview.output) and preview.changed() == 1 and snapshot.exists()
    assert f"-host: {snapshot}" in preview.output  # --diff
    applied = run_playbook("playbooks/retention.yml", "-e", on)
    assert line in flat(applied.output) and not snapshot.exists()
    assert [e["path"] for e in json.loads(record.read_text())["retention"]["deleted"]] == [str(snapshot)]
    # Nothing due any more: the head line alone, no empty template printed as "None".
    again = run_playbook("playbooks/retention.yml", "-e", on)
    assert "Deleted 0 files and objects" in again.output and "nothing is due" in flat(again.output)
    assert "- None" not in again.output and "'None'" not in again.output
    # (A second run changing nothing is proven on the module: tests/test_retention_unit.py.)

    # A target that does not answer: named in a warning and in the kept list; the run goes on (exit 0).
    attic = dict(name="attic", type="ssh", host="127.0.0.1", port=1, user="root", path="/srv/attic")
    unanswered = run_playbook(
        "playbooks/retention.yml",
        "-e",
        settings(tmp_path, root, project, retention_enabled="true", retention_confirm=W, retention_targets=[attic]),
    )
    said = flat(unanswered.output)
    assert "Retention did not finish on target 'attic', which does not answer" in said and "Connection refused" in said
    assert "ssh://root@127.0.0.1:1/srv/attic" in said and "not reached" in said
