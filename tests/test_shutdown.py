"""Optional phase: shut the workshop down. One project, quiesce, then check, then delete."""

import contextlib
import gzip
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request

import docker.errors
import pytest
import test_backup
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_time import parse_time
from test_backup import BACKUP_ROOT, backup, backups

from conftest import (
    COMPOSE_PROJECT,
    PROJECT_DIR,
    QUEUE_MANAGER,
    REPO,
    SLOT_SUFFIX,
    compose,
    http,
    redis_answers,
    run_playbook,
    services_up,
    staging,
    submit,
    wait_for,
    wait_for_status,
)

PROJECT_LABEL = "com.docker.compose.project"
WSBERLIN = f"wsberlin{SLOT_SUFFIX}"  # another compose project name, one per slot
# The backup tests' fixtures: the played staging workshop, and a workshop id (backup folder) per test.
played = test_backup.played
workshop_id = test_backup.workshop_id


def project_state(engine, project=COMPOSE_PROJECT):
    """Containers (id, status), networks and volumes of one compose project, as the Docker Engine has them."""
    label = {"label": f"{PROJECT_LABEL}={project}"}
    return dict(
        containers={c.name: (c.id, c.status) for c in engine.containers.list(all=True, filters=label)},
        networks=sorted(n.name for n in engine.networks.list(filters=label)),
        volumes=sorted(v.name for v in engine.volumes.list(filters=label)),
    )


def shutdown(workshop_id, mode, expect_ok=True, check=False, **extra):
    extra_vars = {"workshop_id": workshop_id, "shutdown_mode": mode, **extra}
    if mode == "down_volumes":
        extra_vars.setdefault("shutdown_confirm", workshop_id)
    run = run_playbook("playbooks/shutdown.yml", extra_vars=extra_vars, check=check, expect_ok=expect_ok)
    run.output = flat(run.output)
    return run


def flat(output):
    """The output with the YAML callback's line wrapping and quote doubling undone, to search in."""
    return " ".join(output.split()).replace("''", "'")


def log_text(path):
    with gzip.open(path, "rt") as log:
        return log.read()


def record_of(workshop_id):
    return json.loads((BACKUP_ROOT / workshop_id / "run-record.json").read_text())


def running_services():
    return compose("ps", "--services", "--filter", "status=running").stdout.split()


def back_up_and_running(rdb, rewrite=False):
    """The staging workshop up again, Redis answering and the queue empty, for the next test; with
    rewrite, its files written again by the role first (a test changed them)."""
    if rewrite:
        staging("up")
    services_up(rdb)
    # What a test left queued is not the next test's work; a job whose worker was stopped under it
    # stays in queue:running (until JOB_TIMEOUT), cancelled so that nothing changes it any more.
    for job_id in rdb.zrange("queue:pending", 0, -1) + rdb.zrange("queue:running", 0, -1):
        http("DELETE", f"/api/jobs/{job_id}")
    wait_for(lambda: rdb.zcard("queue:pending") == 0, timeout=60, what="the pending queue to empty")


# --- moved from test_backup.py -------------------------------------------------------------------


def test_down_with_volumes_is_refused_without_a_verified_backup(workshop_id):
    run = shutdown(workshop_id, "down_volumes", expect_ok=False)
    assert run.returncode != 0
    assert "No sealed backup" in run.output
    assert running_services().count("redis") == 1


def test_stop_keeps_everything_and_the_data_survives_and_a_second_stop_changes_nothing(workshop_id, rdb, engine):
    before = rdb.zcard("queue:completed")
    kept = project_state(engine)
    first = shutdown(workshop_id, "stop", shutdown_stop_timeout="10")
    try:
        assert first.changed() > 0
        assert running_services() == []
        # The others stop together, Redis after every one of them (nothing writes to it once it stops).
        finished = {
            c.labels["com.docker.compose.service"]: parse_time(c.attrs["State"]["FinishedAt"])
            for c in engine.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={COMPOSE_PROJECT}"})
        }
        assert max(finished.values()) == finished["redis"] > max(at for service, at in finished.items() if service != "redis")
        again = shutdown(workshop_id, "stop")
        assert again.changed() == 0, again.output
        after = project_state(engine)
        assert {name: cid for name, (cid, _) in after["containers"].items()} == {
            name: cid for name, (cid, _) in kept["containers"].items()
        }
        assert (after["networks"], after["volumes"]) == (kept["networks"], kept["volumes"])
    finally:
        back_up_and_running(rdb)
    assert rdb.zcard("queue:completed") == before


def test_down_with_volumes_runs_after_a_verified_backup_and_the_backup_restores_it(workshop_id, rdb, engine):
    backup(workshop_id)
    [folder] = backups(workshop_id)
    completed = rdb.zcard("queue:completed")
    try:
        run = shutdown(workshop_id, "down_volumes")

        assert f"Volumes DELETED: {COMPOSE_PROJECT}_redis-data" in run.output
        assert project_state(engine) == dict(containers={}, networks=[], volumes=[])
        shutdown_record = record_of(workshop_id)["shutdown"]
        assert shutdown_record["volumes_deleted"] == [f"{COMPOSE_PROJECT}_redis-data"]
        assert shutdown_record["networks_removed"] == [f"{COMPOSE_PROJECT}_default"]
        assert shutdown_record["final_state"]["keys_compared"] > completed
        assert shutdown_record["final_state"]["ttl_keys_left_out"] == ["worker:worker-1:heartbeat"]
        # Every log, the stop's lines too (kept after the quiesce), outlives the containers.
        assert "ready to exit" in log_text(f"{shutdown_record['logs_kept_in']}/redis.log.gz")
        again = shutdown(workshop_id, "down_volumes")
        assert again.changed() == 0, again.output
        # The workshop's containers are gone: the restore test loads the snapshot into a Redis of the image
        # the backup recorded.
        tested = run_playbook("playbooks/restore_test.yml", extra_vars={"workshop_id": workshop_id})
        assert f"Restore test of {folder.name} (from local) PASSED" in tested.text, tested.output[-3000:]
    finally:
        back_up_and_running(rdb)
    # The data is gone from the workshop, and still whole in the backup.
    assert rdb.zcard("queue:completed") == 0
    facts = json.loads((folder / "MANIFEST.json").read_text())["redis"]
    assert facts["queues"]["queue:completed"] == completed
    assert facts["image"].startswith("comfy-wrapup/staging-redis:")


# --- one project ---------------------------------------------------------------------------------


def test_a_project_started_under_another_name_deletes_nothing_of_the_other_project(played, rdb, engine, tmp_path):
    """The project directory runs as compose project WSBERLIN while "comfyui" still has its volume."""
    name = "test-proj-" + os.urandom(3).hex()
    compose("down")  # comfyui: containers and network gone, its volume kept
    assert project_state(engine)["volumes"] == [f"{COMPOSE_PROJECT}_redis-data"]
    try:
        staging("up", staging_workshop_compose_project=WSBERLIN)
        env = PROJECT_DIR / ".env"
        env.write_text(re.sub(r"(?m)^COMPOSE_PROJECT_NAME=.*\n", "", env.read_text()))
        wsberlin = project_state(engine, WSBERLIN)
        assert wsberlin["volumes"] == [f"{WSBERLIN}_redis-data"] and wsberlin["containers"]
        backup(name, extra={"workshop_compose_project": WSBERLIN})

        run = shutdown(name, "down_volumes", workshop_compose_project=WSBERLIN)

        assert project_state(engine) == dict(containers={}, networks=[], volumes=[f"{COMPOSE_PROJECT}_redis-data"])
        assert project_state(engine, WSBERLIN) == dict(containers={}, networks=[], volumes=[])
        record = record_of(name)["shutdown"]
        assert record["project"] == WSBERLIN
        assert record["volumes_deleted"] == [f"{WSBERLIN}_redis-data"]
        assert sorted(record["containers_removed"]) == sorted(wsberlin["containers"])
        assert f"Volumes DELETED: {WSBERLIN}_redis-data" in run.output
    finally:
        for container in engine.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={WSBERLIN}"}):
            container.remove(force=True)
        for network in engine.networks.list(filters={"label": f"{PROJECT_LABEL}={WSBERLIN}"}):
            network.remove()
        for volume in engine.volumes.list(filters={"label": f"{PROJECT_LABEL}={WSBERLIN}"}):
            volume.remove()
        shutil.rmtree(BACKUP_ROOT / name, ignore_errors=True)
        back_up_and_running(rdb, rewrite=True)


# --- quiesce, then check ---------------------------------------------------------------------------


WORKFLOW = {"5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}}}


def _post_job(user):
    body = json.dumps({"user_id": user, "workflow": WORKFLOW, "metadata": {"staging": {"duration": 0.05, "succeed": True}}})
    request = urllib.request.Request(
        QUEUE_MANAGER + "/api/jobs", data=body.encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return json.loads(response.read())["id"] if response.status == 201 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


# The first task after the guard: from here on, old code deleted whatever came in; new code stops first.
AFTER_THE_GUARD = re.compile(
    r"TASK \[shutdown : (Stop every service, Redis last, so nothing writes|List the services the shutdown would stop)"
)


def test_jobs_submitted_during_down_volumes_are_in_the_final_snapshot_or_it_is_refused(workshop_id, rdb):
    from ansible.module_utils.workshop_rdb import iter_rdb

    backup(workshop_id)
    [folder] = backups(workshop_id)
    accepted, go, done = [], threading.Event(), threading.Event()

    def participants():
        go.wait(300)
        while not done.is_set():
            job = _post_job("user005")
            if job:
                accepted.append(job)
            time.sleep(0.05)  # a participant's pace, not a flood the worker needs minutes for

    thread = threading.Thread(target=participants, daemon=True)
    thread.start()
    extra = {"workshop_id": workshop_id, "shutdown_mode": "down_volumes", "shutdown_confirm": workshop_id}
    process = subprocess.Popen(
        ["ansible-playbook", str(REPO / "playbooks/shutdown.yml"), "-e", json.dumps(extra)],
        cwd=REPO,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = []
    try:
        for line in process.stdout:
            output.append(line)
            if AFTER_THE_GUARD.search(line):
                go.set()
        process.wait(timeout=600)
    finally:
        done.set()
        go.set()
        thread.join(timeout=10)
    output = flat("".join(output))
    print(f"race: {len(accepted)} jobs accepted while down_volumes ran; playbook rc={process.returncode}")
    try:
        assert accepted, "no job was accepted while the shutdown ran: the test proves nothing\n" + output[-3000:]
        if process.returncode == 0:
            in_snapshot = {entry.key for entry in iter_rdb(folder / "redis" / "dump.rdb")}
            assert {f"job:{job}" for job in accepted} <= in_snapshot, output[-3000:]
        else:
            assert "Refused: the workshop's final state differs" in output, output[-3000:]
            assert any(f"job:{job}: written after the backup" in output for job in accepted)
            wait_for(lambda: redis_answers(rdb), what="Redis to answer again")
            assert all(rdb.exists(f"job:{job}") for job in accepted)
    finally:
        back_up_and_running(rdb)


def test_down_with_volumes_is_refused_unconfirmed_then_for_a_changed_value_then_for_a_new_job(workshop_id, rdb, engine):
    """Three refusals after one backup: no confirmation (before anything stops), then the final
    state differing from the backup, by a counter's value and then by a job written after it."""
    backup(workshop_id)
    unconfirmed = shutdown(workshop_id, "down_volumes", expect_ok=False, shutdown_confirm="")
    assert "To confirm, set shutdown_confirm=" + workshop_id in unconfirmed.output
    assert "redis" in running_services()

    counter = sorted(rdb.scan_iter(match="user:*:completed"))[0]
    rdb.incr(counter, 100)
    run = shutdown(workshop_id, "down_volumes", expect_ok=False)
    assert f"{counter}: value changed after the backup" in run.output
    assert project_state(engine)["volumes"] == [f"{COMPOSE_PROJECT}_redis-data"]
    assert "shutdown" not in record_of(workshop_id)
    wait_for(lambda: redis_answers(rdb), what="Redis to answer again")
    assert "redis" in running_services()

    job = submit("user003", metadata={"staging": {"duration": 0.1, "succeed": True}})
    wait_for_status(rdb, job, {"completed"})
    run = shutdown(workshop_id, "down_volumes", expect_ok=False)
    assert f"job:{job}: written after the backup" in run.output
    assert "Nothing was removed" in run.output
    assert "redis" in running_services()  # the services stopped for the check run again
    wait_for(lambda: redis_answers(rdb), what="Redis to answer again")
    assert rdb.exists(f"job:{job}")


@pytest.mark.fault
def test_a_failed_verify_in_the_run_record_refuses_down_volumes(workshop_id, engine, fault_case):
    fault_case(
        "down -v after a failed verify",
        expected="down_volumes refused naming the backup and the member; the project's containers, networks, volumes unchanged",
    )
    backup(workshop_id)
    [folder] = backups(workshop_id)
    record_path = BACKUP_ROOT / workshop_id / "run-record.json"
    record = json.loads(record_path.read_text())
    failure = {"file": "outputs.tar", "member": "outputs/user001/x.png", "reason": "content differs"}
    record.setdefault("backup", {})["verify"] = {"ok": False, "at": "2026-11-29T15:00:00+00:00", "backup": folder.name}
    record["backup"]["verify"]["failures"] = [failure]
    record_path.write_text(json.dumps(record))
    before = project_state(engine)

    run = shutdown(workshop_id, "down_volumes", expect_ok=False)

    assert f"backup {folder.name} failed its verification" in run.output
    assert "outputs.tar member outputs/user001/x.png" in run.output
    assert project_state(engine) == before
    fault_case.observed(f"refused: backup {folder.name} failed its verification; project unchanged")


# --- down needs a backup of the logs ------------------------------------------------------------------


def test_down_without_a_verified_logs_backup_is_refused_unless_confirmed(workshop_id, rdb, engine):
    before = project_state(engine)
    refused = shutdown(workshop_id, "down", expect_ok=False)
    assert refused.returncode != 0
    assert "No sealed backup" in refused.output and "logs" in refused.output
    assert project_state(engine) == before
    try:
        confirmed = shutdown(workshop_id, "down", shutdown_without_logs_backup="true")
        assert confirmed.changed() > 0
        assert project_state(engine) == dict(containers={}, networks=[], volumes=[f"{COMPOSE_PROJECT}_redis-data"])
        assert record_of(workshop_id)["shutdown"]["backup"] is None
    finally:
        back_up_and_running(rdb)


# --- check mode, then down ---------------------------------------------------------------------------


def test_check_mode_shows_exactly_what_each_mode_would_do_then_down_keeps_the_volumes_and_a_second_down_changes_nothing(
    workshop_id, rdb, engine
):
    """One backup: the three modes previewed (nothing changes), then `down` for real, twice."""
    backup(workshop_id)
    before = project_state(engine)
    containers = ", ".join(sorted(before["containers"]))

    for mode in ("stop", "down", "down_volumes"):
        preview = shutdown(workshop_id, mode, check=True)

        assert project_state(engine) == before, mode  # same containers, in the same states; same networks and volumes
        assert preview.changed() > 0, mode
        assert f"Containers: {containers}" in preview.output, mode
        if mode == "stop":
            assert f"Would stop in project {COMPOSE_PROJECT}: admin, queue-manager," in preview.output
            assert "redis" in preview.output.split(f"Would stop in project {COMPOSE_PROJECT}:")[1].split(".")[0].split(", ")[-1]
        else:
            assert f"Would remove from project {COMPOSE_PROJECT}:" in preview.output, mode
            assert f"Networks: {COMPOSE_PROJECT}_default" in preview.output, mode
        if mode == "down_volumes":
            assert f"Volumes that would be DELETED: {COMPOSE_PROJECT}_redis-data" in preview.output
        elif mode == "down":
            assert f"Volumes kept: {COMPOSE_PROJECT}_redis-data" in preview.output
        if mode != "stop":  # the containers' every log line, since the backup too, kept before they are removed
            assert f"since the backup too, would be kept in {BACKUP_ROOT / workshop_id}/shutdown-logs-" in preview.output, mode
        assert "shutdown" not in record_of(workshop_id), mode
    assert not list((BACKUP_ROOT / workshop_id).glob("shutdown-logs-*"))

    # A job after the backup: its lines are in no backup, and must not die with the containers.
    late = submit("user002", metadata={"staging": {"duration": 0.1, "succeed": True}})
    wait_for_status(rdb, late, {"completed"})
    try:
        first = shutdown(workshop_id, "down")
        assert first.changed() > 0
        assert project_state(engine) == dict(containers={}, networks=[], volumes=[f"{COMPOSE_PROJECT}_redis-data"])
        record = record_of(workshop_id)["shutdown"]
        assert record["mode"] == "down" and record["volumes_deleted"] == [] and record["backup"] == backups(workshop_id)[-1].name
        [kept] = (BACKUP_ROOT / workshop_id).glob("shutdown-logs-*")
        assert record["logs_kept_in"] == str(kept)
        assert late in log_text(kept / "worker-1.log.gz")
        assert "ready to exit" in log_text(kept / "redis.log.gz")  # stopped first: the stop's own lines too
        assert late not in log_text(backups(workshop_id)[-1] / "logs" / "worker-1.log.gz")

        again = shutdown(workshop_id, "down")

        assert again.changed() == 0, again.output
        assert record_of(workshop_id)["shutdown"] == record
    finally:
        back_up_and_running(rdb)


@pytest.mark.staging  # the Docker Engine only
def test_a_project_network_goes_past_a_removed_container_and_stays_for_a_strangers_live_one(engine):
    from ansible.module_utils.workshop_compose import ComposeProject

    name = f"netprobe{SLOT_SUFFIX.replace('-', '')}"
    network = engine.networks.create(f"{name}_default", labels={PROJECT_LABEL: name})
    [image] = engine.images.list(name="comfy-wrapup/staging-base")[:1]
    stranger = engine.containers.run(image.id, ["sleep", "300"], network=network.name, detach=True)
    project = ComposeProject(engine, name, os.environ["DOCKER_HOST"])
    try:
        with pytest.raises(WorkshopError) as refused:
            project.down(volumes=[], stop_timeout=1, check_mode=False)
        assert f"could not remove network {name}_default of compose project '{name}'" in refused.value.msg
        assert f"containers not of the project are attached to it ({stranger.name})" in refused.value.msg
        assert engine.networks.list(names=[f"{name}_default"])  # the stranger's network stays

        stranger.remove(force=True)
        project.down(volumes=[], stop_timeout=1, check_mode=False)
        assert not engine.networks.list(names=[f"{name}_default"])
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            stranger.remove(force=True)
        with contextlib.suppress(docker.errors.NotFound):
            network.remove()
