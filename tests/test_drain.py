"""Immediate phase: close submissions and drain the queue (queue_drain, compose_services, the drain role)."""

import json
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import (
    REDIS_ARGS,
    compose,
    epoch,
    http,
    job_record,
    redis_answers,
    run_module,
    run_playbook,
    submit,
    wait_for,
    wait_for_status,
)

RECORD = Path("/var/lib/comfy-wrapup/backups/staging/run-record.json")


def frontend_states():
    states = {}
    for line in subprocess.run(
        [
            "docker",
            "ps",
            "--all",
            "--filter",
            "label=com.docker.compose.project=comfyui",
            "--format",
            '{{.Label "com.docker.compose.service"}} {{.State}}',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines():
        service, state = line.split()
        states[service] = state
    return {service: state for service, state in states.items() if service.startswith("user")}


@pytest.fixture
def fresh_record():
    """Each test starts with no run record, and leaves the frontends open."""
    RECORD.unlink(missing_ok=True)
    yield RECORD
    run_playbook("playbooks/drain.yml", extra_vars={"drain_reopen": True})


def test_draining_a_busy_queue_ends_within_a_second_of_the_last_completion(staging_workshop, rdb, fresh_record):
    # Enough work (about 18 s) that the queue is still busy when the wait starts after announcing and closing.
    jobs = [submit(f"user00{1 + i % 6}", metadata={"staging": {"duration": 1.5, "succeed": True}}) for i in range(12)]

    run = run_playbook("playbooks/drain.yml", extra_vars={"drain_progress_seconds": 2})

    record = json.loads(RECORD.read_text())["drain"]
    last_completion = max(epoch(job_record(rdb, job_id)["completed_at"]) for job_id in jobs)
    assert record["drained"] is True
    assert 0 <= epoch(record["final_time"]) - last_completion < 1.0
    assert record["total_jobs"] == rdb.zcard("queue:completed")
    assert record["totals"]["completed"] >= 1
    assert record["counts_at_end"]["pending"] == record["counts_at_end"]["running"] == 0
    assert set(frontend_states().values()) == {"exited"}
    assert "pending" in run.output and "after" in run.output  # progress lines were shown
    assert (RECORD.parent / "announcement.txt").read_text().startswith("We're in the final hour")


def test_a_second_drain_changes_nothing(staging_workshop, fresh_record):
    run_playbook("playbooks/drain.yml")
    first = RECORD.read_text()

    again = run_playbook("playbooks/drain.yml")

    assert again.changed() == 0, again.output
    assert RECORD.read_text() == first


def test_check_mode_changes_nothing(staging_workshop, rdb, fresh_record, cleanup_jobs):
    hung = submit("user002", metadata={"staging": {"hang": True}})
    wait_for_status(rdb, hung, {"running"})
    before = {key: rdb.dump(key) for key in rdb.keys("*") if not key.startswith("worker:")}
    frontends = frontend_states()

    run = run_playbook("playbooks/drain.yml", check=True)

    assert frontend_states() == frontends and set(frontends.values()) == {"running"}
    assert {key: rdb.dump(key) for key in before} == before
    assert not RECORD.exists()
    assert "1 running" in run.output


def test_a_hung_job_makes_the_drain_time_out_naming_it(staging_workshop, rdb, fresh_record, cleanup_jobs):
    hung = submit("user003", metadata={"staging": {"hang": True}})
    wait_for_status(rdb, hung, {"running"})

    run = run_playbook("playbooks/drain.yml", extra_vars={"drain_timeout": 3, "drain_progress_seconds": 1}, expect_ok=False)

    assert run.returncode != 0
    assert f"Stuck job {hung} of user003 on worker-1" in run.output
    assert "heartbeat alive" in run.output
    assert rdb.zscore("queue:running", hung) is not None  # policy leave: still there


def test_the_fail_policy_fails_stuck_jobs_with_the_reason(staging_workshop, rdb, cleanup_jobs):
    hung = submit("user004", metadata={"staging": {"hang": True}})
    wait_for_status(rdb, hung, {"running"})

    ok, result = run_module(
        "queue_drain",
        {**REDIS_ARGS, "timeout": 1, "stuck_policy": "fail", "on_timeout": "return", "fail_reason": "Workshop over"},
    )

    assert ok and result["changed"] and result["drained"]
    assert result["actions"] == [{"id": hung, "action": "failed"}]
    job = job_record(rdb, hung)
    assert job["status"] == "failed" and job["error"] == "Workshop over"
    assert rdb.zscore("queue:failed", hung) is not None and rdb.zscore("queue:running", hung) is None


def test_the_requeue_policy_puts_stuck_jobs_back_in_pending(staging_workshop, rdb, cleanup_jobs):
    hung = submit("user005", metadata={"staging": {"hang": True}})
    wait_for_status(rdb, hung, {"running"})
    compose("stop", "worker-1")  # the worker died: a requeued job waits for the next one
    try:
        ok, result = run_module("queue_drain", {**REDIS_ARGS, "timeout": 1, "stuck_policy": "requeue", "on_timeout": "return"})

        assert ok and result["changed"] and not result["drained"]
        assert result["stuck_jobs"][0]["id"] == hung
        assert result["actions"] == [{"id": hung, "action": "requeued"}]
        job = job_record(rdb, hung)
        assert job["status"] == "pending" and job["started_at"] is None and job["worker_id"] is None
        assert rdb.zscore("queue:pending", hung) is not None and rdb.zscore("queue:running", hung) is None
    finally:
        http("DELETE", f"/api/jobs/{hung}")
        compose("start", "worker-1")


def test_redis_stopped_during_the_wait_fails_clearly(staging_workshop, rdb, cleanup_jobs):
    hung = submit("user006", metadata={"staging": {"hang": True}})
    wait_for_status(rdb, hung, {"running"})
    outcome = {}
    waiter = threading.Thread(target=lambda: outcome.update(result=run_module("queue_drain", {**REDIS_ARGS, "timeout": 60})))
    waiter.start()
    time.sleep(3)
    compose("stop", "redis")
    try:
        waiter.join(timeout=60)
        ok, result = outcome["result"]
        assert not ok
        assert "Cannot reach Redis at 127.0.0.1:6379" in result["msg"]
        assert "While draining the queue" in result["msg"]
    finally:
        compose("start", "redis")
        wait_for(lambda: redis_answers(rdb), what="redis back")


def test_check_mode_of_the_module_reports_what_it_would_wait_for(staging_workshop, rdb, cleanup_jobs):
    hung = submit("user001", metadata={"staging": {"hang": True}})
    wait_for_status(rdb, hung, {"running"})

    ok, result = run_module("queue_drain", {**REDIS_ARGS, "timeout": 30}, check=True)

    assert ok and not result["changed"] and not result["drained"]
    assert result["counts"]["running"] == 1
    assert "pending and running to be empty" in result["would_wait_for"]
    assert rdb.zscore("queue:running", hung) is not None


def test_reading_the_depth_over_http_with_jmespath(staging_workshop, rdb, cleanup_jobs):
    ok, result = run_module("queue_drain", {"source": "http", "queues": ["pending"], "timeout": 10})
    assert ok and result["drained"] and result["counts"]["depth"] == 0

    ok, result = run_module("queue_drain", {"source": "http", "depth_query": "mode", "timeout": 1, "on_timeout": "return"})
    assert not ok and "depth_query 'mode'" in result["msg"]


def test_reopen_brings_the_frontends_back(staging_workshop, fresh_record):
    run_playbook("playbooks/drain.yml")
    assert set(frontend_states().values()) == {"exited"}

    reopened = run_playbook("playbooks/drain.yml", extra_vars={"drain_reopen": True})

    assert reopened.changed() > 0
    assert set(frontend_states().values()) == {"running"}
    with urllib.request.urlopen("http://127.0.0.1:8188/", timeout=10) as page:
        assert b"user001" in page.read()


def test_an_unknown_frontend_pattern_is_named(staging_workshop, fresh_record):
    run = run_playbook("playbooks/drain.yml", extra_vars={"drain_frontend_pattern": "^frontend-"}, expect_ok=False)
    assert "No service of compose project 'comfyui' matches pattern '^frontend-'" in run.output
