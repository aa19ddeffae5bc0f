"""What CI runs against staging: the whole checklist with --check --diff over real SSH changes nothing.

"Nothing" is measured from outside Ansible: every file and folder of the project and of the backup
root with its mode, size and mtime; every Redis key with its value (the workers' heartbeats apart,
which they rewrite every few seconds, job or no job); every container of the project in its state.
"""

import contextlib
import json

from conftest import BACKUP_ROOT, COMPOSE_PROJECT, PROJECT_DIR, docker_client, run_playbook, ssh_inventory


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


def test_the_whole_checklist_in_check_mode_over_ssh_changes_nothing_then_runs(played_workshop_id, rdb, sshd, tmp_path):
    inventory = ssh_inventory(tmp_path, sshd, f"workshop_id={played_workshop_id}")
    before = workshop_state(rdb, played_workshop_id)
    assert before["redis"] and before["containers"]  # a played workshop, so there is something to change

    preview = run_playbook("post_workshop.yml", "--check", "--diff", "--tags", "all,shutdown", "-i", str(inventory))

    assert preview.recap["vps"]["failed"] == 0 and preview.recap["vps"]["unreachable"] == 0
    assert preview.recap["vps"]["changed"] > 0  # it says what it would do...
    # ...ends with the verification checklist of the record as it is (nothing backed up yet)...
    tail = preview.task_output("report : Show the verification checklist")
    assert all(task.startswith("fleet : ") for task in preview.tasks_after("report : Show the verification checklist"))
    assert "✗ All participant outputs backed up: no backup is recorded in the run record: run --tags backup" in tail
    after = workshop_state(rdb, played_workshop_id)
    for part in ("files", "redis", "containers"):  # ...and does none of it
        assert after[part] == before[part], part

    real = run_playbook("post_workshop.yml", "-i", str(inventory))

    assert real.recap["vps"]["failed"] == 0 and real.recap["vps"]["changed"] > 0
    record = json.loads((BACKUP_ROOT / played_workshop_id / "run-record.json").read_text())
    assert record["backup"]["verify"]["ok"] is True
    assert (BACKUP_ROOT / played_workshop_id / "report" / "report.md").exists()
    checklist = json.loads((BACKUP_ROOT / played_workshop_id / "report" / "checklist.json").read_text())
    assert checklist["lines"][0]["ok"] is True
