"""A fleet in one run: three workshops reached over real SSH, one of them broken.

The session's own staging workshop (played), a second real staging workshop brought up here (slot
SLOT+30, two participants), and a third host whose Redis and queue manager nothing answers for. One
`ansible-playbook post_workshop.yml` must wrap up the two, fail the third clearly without stopping
the others, and end with a fleet summary (screen and file) that lists all three as they are.
"""

import fcntl
import json
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from conftest import (
    BACKUP_ROOT,
    PROJECT_DIR,
    QUEUE_MANAGER,
    REDIS_PORT,
    SLOT,
    SSH_PORT,
    STAGING_VARS,
    http,
    redis_answers,
    run_playbook,
    wait_for,
)

# The second workshop's slot: +30 keeps every port of slots 0-27 clear of the tests' sshd ports
# (23000+slot) and below 65536; checked here, not assumed.
SECOND_SLOT = SLOT + 30
SECOND = {
    "project_dir": Path(f"/var/lib/comfy-wrapup/staging-s{SECOND_SLOT}/comfyui"),
    "backup_root": Path(f"/var/lib/comfy-wrapup/backups-s{SECOND_SLOT}"),
    "redis_port": 6379 + 1000 * SECOND_SLOT,
    "queue_manager": f"http://127.0.0.1:{3000 + 1000 * SECOND_SLOT}",
}
SECOND_USERS = 2
SECOND_PORTS = [6379, 3000, 8080, *range(8188, 8188 + SECOND_USERS)]


def test_the_second_workshops_ports_are_valid_and_clear_of_the_sshd_ports():
    for base in SECOND_PORTS:
        port = base + 1000 * SECOND_SLOT
        assert port < 65536 and not 23000 <= port <= 23057, port


def second_staging(action, **extra):
    """playbooks/staging.yml on the second workshop's slot (inventory/local derives it from the slot)."""
    extra_vars = {**STAGING_VARS, "staging_workshop_num_users": SECOND_USERS, "staging_workshop_action": action, **extra}
    return run_playbook("playbooks/staging.yml", extra_vars=extra_vars, env={"COMFY_WRAPUP_SLOT": str(SECOND_SLOT)})


class SecondWorkshop:
    """The second workshop's bring-up, started in a thread so that it overlaps the played fixture's play."""

    def __init__(self):
        self.error = None
        self.seconds = {}
        self.thread = threading.Thread(target=self._bring_up, daemon=True)
        self.thread.start()

    def _bring_up(self):
        started = time.monotonic()
        try:
            with open("/tmp/comfy-wrapup-staging-bringup.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    second_staging("reset")
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        except BaseException as exc:  # noqa: BLE001  # pytest.fail in the thread: re-raised by ready()
            self.error = exc
        self.seconds["bring-up"] = time.monotonic() - started

    def ready(self):
        """Wait for the bring-up; a Redis client of the second workshop."""
        self.thread.join()
        if self.error:
            raise self.error
        env = dict(line.split("=", 1) for line in (SECOND["project_dir"] / ".env").read_text().splitlines() if "=" in line)
        self.redis = redis.Redis(port=SECOND["redis_port"], password=env["REDIS_PASSWORD"], decode_responses=True)
        wait_for(lambda: redis_answers(self.redis), what="the second workshop's Redis")
        return self.redis


@pytest.fixture(scope="module")
def second_workshop(staging_workshop):
    """A second real staging workshop (two participants), up for this file and torn down after it."""
    second = SecondWorkshop()
    yield second
    second.thread.join()
    started = time.monotonic()
    try:
        second_staging("down")
    finally:
        shutil.rmtree(SECOND["backup_root"], ignore_errors=True)
        if getattr(second, "redis", None):
            second.redis.close()
        second.seconds["tear-down"] = time.monotonic() - started
        print(f"\nfleet test seconds: {second.seconds}")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def host_line(name, client_key, **settings):
    python = os.environ.get("COMFY_WRAPUP_HOST_PYTHON") or sys.executable
    words = [
        name,
        "ansible_host=127.0.0.1",
        f"ansible_port={SSH_PORT}",
        "ansible_user=root",
        f"ansible_ssh_private_key_file={client_key}",
        f"ansible_python_interpreter={python}",
        "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'",
        f"workshop_docker_host={os.environ['DOCKER_HOST']}",
        *(f"{key}={value}" for key, value in settings.items()),
    ]
    return " ".join(words)


def test_a_fleet_of_three_wraps_up_two_fails_one_clearly_and_summarises_all(
    second_workshop, played_workshop_id, rdb, sshd, tmp_path
):
    second_rdb = second_workshop.ready()
    # Jobs on the second workshop too, so its summary has jobs to count.
    for user in ("user001", "user002", "user001"):
        workflow = {"5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}}}
        status, _ = http("POST", "/api/jobs", {"user_id": user, "workflow": workflow}, base=SECOND["queue_manager"])
        assert status == 201
    # The broken workshop: a project with its .env, but no Redis, no queue manager, no containers.
    broken_dir = tmp_path / "broken" / "comfyui"
    (broken_dir / "data" / "outputs").mkdir(parents=True)
    (broken_dir / ".env").write_text("REDIS_PASSWORD=not-used\nCOMPOSE_PROJECT_NAME=fleet-broken\n")
    broken_redis_port = free_port()
    second_id = f"second-{played_workshop_id}"
    workshops = {
        "ws-played": (played_workshop_id, BACKUP_ROOT),
        "ws-second": (second_id, SECOND["backup_root"]),
        "ws-broken": ("broken-workshop", tmp_path / "broken-backups"),
    }
    inventory = tmp_path / "fleet"
    inventory.write_text(
        "[workshop]\n"
        + host_line(
            "ws-played",
            sshd,
            workshop_id=played_workshop_id,
            workshop_project_dir=PROJECT_DIR,
            workshop_backup_root=BACKUP_ROOT,
            workshop_redis_port=REDIS_PORT,
            workshop_queue_manager_url=QUEUE_MANAGER,
        )
        + "\n"
        + host_line(
            "ws-second",
            sshd,
            workshop_id=second_id,
            workshop_project_dir=SECOND["project_dir"],
            workshop_backup_root=SECOND["backup_root"],
            workshop_redis_port=SECOND["redis_port"],
            workshop_queue_manager_url=SECOND["queue_manager"],
        )
        + "\n"
        + host_line(
            "ws-broken",
            sshd,
            workshop_id="broken-workshop",
            workshop_project_dir=broken_dir,
            workshop_backup_root=tmp_path / "broken-backups",
            workshop_redis_port=broken_redis_port,
            workshop_queue_manager_url=f"http://127.0.0.1:{free_port()}",
        )
        + "\n"
    )
    reports = tmp_path / "reports"

    started = time.monotonic()
    run = run_playbook(
        "post_workshop.yml", "-i", str(inventory), extra_vars={"fleet_summary_dest": str(reports)}, expect_ok=False
    )

    second_workshop.seconds["fleet run"] = time.monotonic() - started

    # One clear failure, and it stopped nobody else.
    assert run.returncode == 2, run.output[-4000:]
    assert run.recap["ws-played"]["failed"] == 0 and run.recap["ws-second"]["failed"] == 0, run.output[-4000:]
    assert run.recap["ws-broken"]["failed"] == 1 and run.recap["ws-broken"]["unreachable"] == 0
    assert "fatal: [ws-broken]" in run.output
    assert f"Cannot reach Redis at 127.0.0.1:{broken_redis_port}" in run.text  # names where it looked

    # Two complete wrap-ups: drained, backed up and verified, reported; jobs as the workshop's own Redis counts them.
    records = {}
    for host, client in (("ws-played", rdb), ("ws-second", second_rdb)):
        workshop_id, root = workshops[host]
        record = json.loads((root / workshop_id / "run-record.json").read_text())
        records[host] = record
        assert record["drain"]["drained"] is True
        assert record["drain"]["total_jobs"] == client.zcard("queue:completed") > 0
        assert record["backup"]["verify"]["ok"] is True and record["backup"]["verify"]["backup"] == record["backup"]["name"]
        assert (root / workshop_id / record["backup"]["name"]).is_dir()
        for name in ("report.md", "report.html", "metrics.json"):
            assert (root / workshop_id / "report" / name).is_file(), (host, name)
    assert records["ws-second"]["drain"]["total_jobs"] == 3
    # The broken one made no backup and no report.
    broken_folder = tmp_path / "broken-backups" / "broken-workshop"
    assert not list(broken_folder.glob("backup-*")) and not (broken_folder / "report").exists()

    # The summary: one file pair, three rows in host order, each as its record (or its failure) says.
    written = sorted(p.name for p in reports.iterdir())
    assert len(written) == 2 and written[0].endswith(".json") and written[1] == written[0][:-5] + ".md", written
    summary = json.loads((reports / written[0]).read_text())
    rows = {row["host"]: row for row in summary["workshops"]}
    assert [row["host"] for row in summary["workshops"]] == ["ws-broken", "ws-played", "ws-second"]
    for host, record in records.items():
        workshop_id, root = workshops[host]
        assert rows[host] == {
            "host": host,
            "workshop_id": workshop_id,
            "ok": True,
            "error": None,
            "drained": True,
            "drained_at": record["drain"]["final_time"],
            "jobs_completed": record["drain"]["total_jobs"],
            "jobs_failed": record["drain"]["counts_at_end"]["failed"],
            "backup": record["backup"]["name"],
            "backup_verified": True,
            "archived": [],
            "shared": None,
            "report": str(root / workshop_id / "report" / "report.md"),
            "retention_unreached": [],
        }
    broken = rows["ws-broken"]
    assert broken["ok"] is False and broken["workshop_id"] == "broken-workshop"
    assert broken["error"]["play"] == "Close submissions and drain the queue"
    assert broken["error"]["msg"].startswith(
        f"Cannot drain on ws-broken: While draining the queue: Cannot reach Redis at 127.0.0.1:{broken_redis_port}"
    )
    # On screen, the same lines as in the Markdown file.
    markdown = (reports / written[1]).read_text()
    lines = [line for line in markdown.splitlines() if line.startswith("- ")]
    assert len(lines) == 3 and "FAILED" in lines[0] and "broken-workshop (ws-broken)" in lines[0]
    assert "3 workshops: 2 went through the run, 1 failed." in markdown
    screen = run.output[run.output.index("FLEET SUMMARY") :]
    for line in lines:
        assert line in screen
    assert f"written to {reports / written[1]}" in screen
