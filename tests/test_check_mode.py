"""What CI runs against staging: the whole checklist with --check --diff over real SSH changes nothing;
then the real thing over the same connection, twice, the second run changing nothing.

"Nothing" is measured from outside Ansible: every file and folder of the project and of the backup
root with its mode, size and mtime; every Redis key with its value (the workers' heartbeats apart,
which they rewrite every few seconds, job or no job); every container of the project in its state.
"""

import contextlib
import json

from test_retention import RETENTION_VARS, check_retention_and_cleanup

from conftest import BACKUP_ROOT, COMPOSE_PROJECT, PROJECT_DIR, docker_client, run_playbook, ssh_inventory

CHECKLIST_TASK = "report : Show the verification checklist"


def files_state(*roots):
    """path -> (mode, size, mtime) of every file, folder and link under the roots, the roots included."""
    state = {}
    for root in roots:
        if not root.exists():
            state[str(root)] = None
            continue
        for path in [root, *root.rglob("*")]:
            info = path.lstat()
            state[str(path)] = (info.st_mode, info.st_size if not path.is_dir() else None, info.st_mtime_ns)
    return state


def redis_state(rdb):
    """key -> (type, value) of every key but the workers' heartbeats."""
    state = {}
    for key in rdb.scan_iter(count=1000):
        if key.startswith("worker:") and key.endswith(":heartbeat"):
            continue
        kind = rdb.type(key)
        value = {
            "string": lambda k: rdb.get(k),
            "zset": lambda k: rdb.zrange(k, 0, -1, withscores=True),
            "hash": lambda k: rdb.hgetall(k),
            "list": lambda k: rdb.lrange(k, 0, -1),
            "set": lambda k: sorted(rdb.smembers(k)),
        }[kind](key)
        state[key] = (kind, value)
    return state


def containers_state():
    with contextlib.closing(docker_client()) as client:
        return {
            c.name: (c.status, c.attrs["State"]["StartedAt"], c.attrs["RestartCount"])
            for c in client.containers.list(all=True, filters={"label": f"com.docker.compose.project={COMPOSE_PROJECT}"})
        }


def workshop_state(rdb, workshop_id):
    return {
        "files": files_state(PROJECT_DIR, BACKUP_ROOT / workshop_id),
        "redis": redis_state(rdb),
        "containers": containers_state(),
    }


def checklist_at_the_end(run):
    """What the verification checklist printed: the last task of the wrap-up, only the fleet summary after it
    (with the workshop id's check every play starts with)."""
    after = run.tasks_after(CHECKLIST_TASK)
    assert all(task.startswith(("fleet : ", "workshop : ")) for task in after), after
    return run.task_output(CHECKLIST_TASK)


def test_the_whole_checklist_in_check_mode_over_ssh_changes_nothing_then_runs_then_changes_nothing(
    played_workshop_id, rdb, sshd, tmp_path
):
    """As an admin runs it, over SSH: the preview, the wrap-up (retention on, every class due), the wrap-up again."""
    inventory = ssh_inventory(tmp_path, sshd, f"workshop_id={played_workshop_id}")
    before = workshop_state(rdb, played_workshop_id)
    assert before["redis"] and before["containers"]  # a played workshop, so there is something to change

    # The most destructive shutdown, previewed before the first backup: its guard defers to the backup the run would make.
    down_volumes = {"shutdown_mode": "down_volumes", "shutdown_confirm": played_workshop_id}
    preview = run_playbook(
        "post_workshop.yml",
        "--check",
        "--diff",
        "--tags",
        "all,shutdown",
        "-i",
        str(inventory),
        extra_vars={**RETENTION_VARS, **down_volumes},
    )

    assert preview.recap["vps"]["failed"] == 0 and preview.recap["vps"]["unreachable"] == 0, preview.output[-3000:]
    assert "the backup this run would make (checked by the real run before anything stops)" in preview.text
    assert f"Volumes that would be DELETED: {COMPOSE_PROJECT}_redis-data" in preview.text
    assert preview.recap["vps"]["changed"] > 0  # it says what it would do...
    # ...ends with the verification checklist of the record as it is (nothing backed up yet)...
    tail = checklist_at_the_end(preview)
    assert "✗ All participant outputs backed up: no backup is recorded in the run record: run --tags backup" in tail
    after = workshop_state(rdb, played_workshop_id)
    for part in ("files", "redis", "containers"):  # ...and does none of it
        assert after[part] == before[part], part

    first = run_playbook("post_workshop.yml", "-i", str(inventory), extra_vars=RETENTION_VARS)

    assert first.recap["vps"]["failed"] == 0 and first.recap["vps"]["changed"] > 0
    record = json.loads((BACKUP_ROOT / played_workshop_id / "run-record.json").read_text())
    assert record["backup"]["verify"]["ok"] is True
    assert (BACKUP_ROOT / played_workshop_id / "report" / "report.md").exists()
    # The verification checklist ends the run: ✓ for what this run did, ✗ with a reason for the rest.
    shown = checklist_at_the_end(first)
    assert "✓ All participant outputs backed up: " in shown and "✓ Report generated: " in shown
    assert "✗ Backups verified (test restore one): no restore test yet: run playbooks/restore_test.yml" in shown
    checklist = json.loads((BACKUP_ROOT / played_workshop_id / "report" / "checklist.json").read_text())
    assert [line["ok"] for line in checklist["lines"][:5]] == [True] * 5
    assert f"Status: {checklist['status']}: {'; '.join(checklist['failing'])}" in shown
    check_retention_and_cleanup(played_workshop_id, first.output)

    second = run_playbook("post_workshop.yml", "--diff", "-i", str(inventory), extra_vars=RETENTION_VARS)

    assert second.recap["vps"]["failed"] == 0 and second.recap["vps"]["changed"] == 0, second.output[-6000:]
    # The unchanged newest backup is not read again: the first run's verification read it.
    verify = json.loads((BACKUP_ROOT / played_workshop_id / "run-record.json").read_text())["backup"]["verify"]
    assert f"files intact (read at {verify['at']}, no file changed since;" in second.text
    checklist_at_the_end(second)
    assert (BACKUP_ROOT / played_workshop_id).stat().st_mode & 0o777 == 0o700
