"""Roles and playbooks on a workshop without Docker: settings from an inventory group reach the
phases, and the checklist's --check renders the report preview. A real redis-server (scratch)
holds the jobs; the Docker Engine named does not answer, as on a workshop already shut down."""

import gzip
import json
import os
import re
import shutil
from types import SimpleNamespace

import pytest
import redis
from scratch_redis import free_port, port_of, running_redis

from conftest import run_playbook

# Runs ansible-playbook (no Docker): the playbook tier, not make test-unit.
pytestmark = pytest.mark.playbook

PASSWORD = "s3cret-group-vars"
BACKUP = "backup-20261129T170000Z"
JOBS = [("job-0", "user001", "completed"), ("job-1", "user002", "completed"), ("job-2", "user003", "failed")]


def job(job_id, user, status, n):
    return {
        "id": job_id,
        "user_id": user,
        "status": status,
        "created_at": f"2026-11-29T16:00:0{n}Z",
        "started_at": f"2026-11-29T16:00:1{n}Z",
        "completed_at": f"2026-11-29T16:01:0{n}Z",
        "workflow": {},
        "metadata": {},
        **({"error": "CUDA out of memory"} if status == "failed" else {}),
    }


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A workshop's project (.env) and backup root, with a backup whose snapshot and logs the report reads."""
    root = tmp_path_factory.mktemp("site")
    project, backups = root / "project", root / "backups"
    folder = backups / "ws" / BACKUP
    (folder / "redis").mkdir(parents=True)
    (folder / "logs").mkdir()
    (project / "data" / "outputs" / "user001").mkdir(parents=True)
    (project / "data" / "outputs" / "user001" / "img.png").write_bytes(b"\x89PNG" + bytes(60))
    with running_redis(root) as client:
        for n, (job_id, user, status) in enumerate(JOBS):
            client.set(f"job:{job_id}", json.dumps(job(job_id, user, status, n)))
            client.zadd(f"queue:{status}", {job_id: n})
        client.save()
        shutil.copy(root / "dump.rdb", folder / "redis" / "dump.rdb")
        client.config_set("requirepass", PASSWORD)
        with gzip.open(folder / "logs" / "queue-manager.log.gz", "wt") as log:
            log.write("2026-11-29T16:01:00.000000000Z 2026-11-29 16:01:00,000 - queue_manager - INFO - Job job-0 done\n")
        (backups / "ws" / "run-record.json").write_text(json.dumps({"backup": {"name": BACKUP, "path": str(folder)}}))
        (project / ".env").write_text(f"REDIS_PASSWORD={PASSWORD}\nNUM_USERS=4\n")
        settings = {
            "workshop_backup_root": str(backups),
            "workshop_project_dir": str(project),
            "workshop_redis_port": port_of(client),
            "workshop_docker_host": f"unix://{root}/no-engine.sock",
        }
        yield SimpleNamespace(root=root, backups=backups, settings=settings)


def ini_inventory(folder, settings):
    """The group's settings in an INI inventory's [workshop:vars]."""
    inventory = folder / "hosts"
    inventory.write_text(
        "[workshop]\nws ansible_connection=local ansible_python_interpreter=" + _host_python() + "\n\n"
        "[workshop:vars]\n" + "".join(f"{name}={value}\n" for name, value in settings.items())
    )
    return inventory


def group_vars_inventory(folder, settings):
    """The group's settings in group_vars/workshop.yml next to the inventory."""
    inventory = folder / "hosts"
    inventory.write_text("[workshop]\nws ansible_connection=local ansible_python_interpreter=" + _host_python() + "\n")
    (folder / "group_vars").mkdir()
    (folder / "group_vars" / "workshop.yml").write_text("---\n" + "".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))
    return inventory


def _host_python():
    import os
    import sys

    return os.environ.get("COMFY_WRAPUP_HOST_PYTHON") or sys.executable


@pytest.mark.parametrize("inventory_of", [ini_inventory, group_vars_inventory], ids=["workshop_vars", "group_vars_file"])
def test_workshop_settings_from_an_inventory_group_reach_every_phase(site, tmp_path, inventory_of):
    """[workshop:vars] (or group_vars/workshop.yml) sets the backup root, the project and Redis's port:
    the state phase reads the queue through that port, the report phase writes under that root."""
    inventory = inventory_of(tmp_path, site.settings)
    report = site.backups / "ws" / "report"
    shutil.rmtree(report, ignore_errors=True)

    run = run_playbook("post_workshop.yml", "--tags", "report", "-i", str(inventory))

    assert "Queue: 0 pending, 0 running, 2 completed, 1 failed" in run.text  # Redis on the group's port, its .env
    assert f"Report: {report}/report.md and report.html" in run.text
    assert sorted(p.name for p in report.iterdir()) == ["checklist.json", "metrics.json", "report.html", "report.md"]
    metrics = json.loads((report / "metrics.json").read_text())
    assert (metrics["jobs"]["submitted"], metrics["jobs"]["completed"], metrics["jobs"]["failed"]) == (3, 2, 1)
    assert f"Database snapshot: `{site.backups}/ws/{BACKUP}/redis/dump.rdb`" in (report / "report.md").read_text()


def test_the_checklist_in_check_mode_renders_the_report_preview_and_writes_nothing(site, tmp_path):
    inventory = ini_inventory(tmp_path, site.settings)
    report = site.backups / "ws" / "report"
    shutil.rmtree(report, ignore_errors=True)

    run = run_playbook("post_workshop.yml", "--check", "--tags", "report", "-i", str(inventory))

    assert run.recap["ws"]["failed"] == 0
    assert "# Workshop Report - 2026-11-29" in run.text  # the preview, rendered from the metrics in memory
    assert "Total jobs submitted: 3" in run.text and "Successfully completed: 2" in run.text
    assert f"Report: {report}/report.md and report.html (open it offline in any browser) - not written: check mode" in run.text
    assert not report.exists()


def test_a_drain_slice_that_fails_fails_the_wait_with_its_own_message(tmp_path):
    """The wait loop's break condition reads `drained`, which a failed slice does not return: the
    task must end with the module's message (the fleet summary shows it), not a conditional's error."""
    port = free_port()  # nothing answers there: the first slice fails
    playbook = tmp_path / "wait.yml"
    playbook.write_text(
        json.dumps(
            [
                {
                    "hosts": "localhost",
                    "gather_facts": False,
                    "module_defaults": {"queue_drain": {"redis_port": port, "redis_password": PASSWORD}},
                    "tasks": [{"ansible.builtin.include_role": {"name": "drain", "tasks_from": "wait"}}],
                }
            ]
        )
    )

    run = run_playbook(str(playbook), extra_vars={"drain_progress_seconds": 1, "drain_timeout": 3}, expect_ok=False)

    assert run.returncode != 0
    fatal = run.output.split("fatal: [localhost]")[-1]
    assert f"Cannot reach Redis at 127.0.0.1:{port}" in fatal, run.output[-3000:]
    assert "Error while evaluating conditional" not in run.output


@pytest.mark.parametrize(
    ("playbook", "workshop_id", "extra"),
    [
        ("post_workshop.yml", "../escape", {}),
        ("post_workshop.yml", "a/b", {}),
        ("post_workshop.yml", "logs", {}),  # the yearly log archives' folder
        ("post_workshop.yml", "share", {}),  # the share archives' prefix on S3
        # An empty id would equal an empty confirmation: down_volumes must not run unconfirmed.
        ("playbooks/shutdown.yml", "", {"shutdown_mode": "down_volumes", "shutdown_confirm": ""}),
        ("playbooks/cleanup.yml", "", {"cleanup_outputs": "true", "cleanup_confirm": ""}),
        # JSON null: `string` would make it 'None', and the workshop's folder the backup root itself.
        ("playbooks/backup.yml", None, {}),
    ],
    ids=["dotdot", "slash", "reserved-logs", "reserved-share", "shutdown-empty", "cleanup-empty", "null"],
)
def test_an_unsafe_workshop_id_is_refused_before_anything_runs(site, tmp_path, playbook, workshop_id, extra):
    inventory = ini_inventory(tmp_path, site.settings)
    before = sorted(str(path) for path in site.root.rglob("*"))

    run = run_playbook(playbook, "-i", str(inventory), extra_vars={"workshop_id": workshop_id, **extra}, expect_ok=False)

    assert run.returncode != 0
    shown = "null" if workshop_id is None else f"'{workshop_id}'"
    assert f"workshop_id {shown} on ws is not a safe folder name" in " ".join(run.output.split())
    assert "TASK [workshop : Refuse a workshop id" in run.output
    assert sorted(str(path) for path in site.root.rglob("*")) == before  # nothing written anywhere


def test_hosts_of_one_run_sharing_a_workshop_id_are_refused_and_the_others_go_on(site, tmp_path):
    """Two fleet hosts with one id would write over each other's archive keys and share links."""
    host = f"ansible_connection=local ansible_python_interpreter={_host_python()}"
    inventory = tmp_path / "hosts"
    inventory.write_text(
        f"[workshop]\nws workshop_id=dup {host}\nws2 workshop_id=dup {host}\nws3 workshop_id=own {host}\n\n"
        "[workshop:vars]\n" + "".join(f"{name}={value}\n" for name, value in site.settings.items())
    )

    run = run_playbook("playbooks/state.yml", "-i", str(inventory), expect_ok=False)

    text = " ".join(run.output.split())
    assert "workshop_id 'dup' of ws is also the id of ws2 in this run" in text, run.output[-3000:]
    assert "workshop_id 'dup' of ws2 is also the id of ws in this run" in text
    recap = dict(re.findall(r"^(ws\d?)\s+: .*failed=(\d+)", run.output, re.M))
    assert recap == {"ws": "1", "ws2": "1", "ws3": "0"}
    assert "Workshop own on ws3" in text


@pytest.mark.parametrize("playbook", ["playbooks/cleanup.yml", "playbooks/retention.yml", "playbooks/restore_test.yml"])
def test_a_lock_held_by_another_run_refuses_the_phase_naming_it_and_stays_its(site, tmp_path, playbook):
    """The phase's module holds the workshop's lock while it works: a lock another live run holds refuses
    the run, naming that run, and stays that run's."""
    from ansible.module_utils.workshop_lock import acquire, new_owner, read_owner, release

    inventory = ini_inventory(tmp_path, site.settings)
    folder = str(site.backups / "ws")
    acquire(folder, new_owner("held-by-a-test", purpose="another run"))  # this live process holds it
    try:
        deleting = {"retention_enabled": "true", "retention_confirm": "ws"}  # unconfirmed, retention only lists (no lock)
        run = run_playbook(playbook, "-i", str(inventory), extra_vars=deleting, expect_ok=False)
        after = read_owner(os.path.join(folder, ".lock"))
    finally:
        release(folder, "held-by-a-test")

    assert run.returncode != 0
    assert "Another run holds the lock" in " ".join(run.output.split()), run.output[-3000:]
    assert "held-by-a-test (another run)" in " ".join(run.output.split())
    assert after["run_id"] == "held-by-a-test"


def test_a_rerun_on_a_queue_drained_before_drains_nothing_and_more_jobs_or_open_frontends_drain_again(site, tmp_path):
    """post_workshop.yml's state phase reads the queue empty; with the drain recorded, the drain phase
    changes nothing and asks neither Redis nor Docker again. A job completed since makes the drain run
    and bring the totals up to date, its FINAL_TIME kept; frontends it could not see closed (the Docker
    Engine here does not answer) stop the drain before it announces anything."""
    inventory = ini_inventory(tmp_path, site.settings)
    record = site.backups / "ws" / "run-record.json"
    original = record.read_text()
    no_close = {"drain_close_submissions": "false"}  # -e as a string: the frontends left out of it
    try:
        first = run_playbook("post_workshop.yml", "--tags", "drain", "-i", str(inventory), extra_vars=no_close)
        assert first.changed("ws") > 0 and "Queue drained at" in first.text and "nothing to drain" not in first.text
        drained = json.loads(record.read_text())
        assert drained["drain"]["drained"] is True and drained["drain"]["total_jobs"] == 2

        again = run_playbook("post_workshop.yml", "--tags", "drain", "-i", str(inventory), extra_vars=no_close)
        assert again.changed("ws") == 0 and json.loads(record.read_text()) == drained
        final = drained["drain"]["final_time"]
        assert f"The queue was drained at {final} (2 jobs completed); nothing is pending or running" in again.text
        assert "TASK [drain : Wait for the queue to drain]" not in again.output

        # One more job completed since (submissions reopened and closed again by hand): the totals are
        # brought up to date, and the workshop's FINAL_TIME stays the drain's (nothing was open at this one's start).
        client = redis.Redis(port=site.settings["workshop_redis_port"], password=PASSWORD, decode_responses=True)
        client.set("job:job-late", json.dumps(job("job-late", "user004", "completed", 9)))
        client.zadd("queue:completed", {"job-late": 9})
        try:
            renewed = run_playbook("post_workshop.yml", "--tags", "drain", "-i", str(inventory), extra_vars=no_close)
        finally:
            client.delete("job:job-late")
            client.zrem("queue:completed", "job-late")
            client.close()
        assert "nothing to drain" not in renewed.text and renewed.changed("ws") > 0, renewed.output[-3000:]
        latest = json.loads(record.read_text())["drain"]
        assert latest["total_jobs"] == 3 and latest["counts_at_end"]["completed"] == 3
        assert {key: value for key, value in latest.items() if key not in ("total_jobs", "counts_at_end")} == {
            key: value for key, value in drained["drain"].items() if key not in ("total_jobs", "counts_at_end")
        }

        # Whether the frontends are closed is unknown here (no Docker Engine): drained, but not left as it is;
        # the drain stops before it announces a cut-off, since it could not close them.
        announced = json.loads(record.read_text()).get("announcement")
        closing = run_playbook("post_workshop.yml", "--tags", "drain", "-i", str(inventory), expect_ok=False)
        assert closing.returncode != 0 and "nothing to drain" not in closing.text
        assert "Cannot close submissions on ws: No Docker Engine answers at unix://" in closing.text, closing.output[-3000:]
        assert "Nothing was announced and no frontend was stopped" in closing.text
        assert json.loads(record.read_text()).get("announcement") == announced
    finally:
        record.write_text(original)
        (site.backups / "ws" / "announcement.txt").unlink(missing_ok=True)
