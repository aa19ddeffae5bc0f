"""The staging workshop behaves like the platform (../shared/platform/README.md): the same
Redis keys and job JSON, the same HTTP API, the same log lines, the same persistence."""

import json
import re
import time
from pathlib import Path

import pytest

from conftest import (
    PROJECT_DIR,
    compose,
    dotenv,
    empty_staging,
    http,
    job_record,
    redis_answers,
    staging,
    submit,
    wait_for,
    wait_for_status,
)

QUEUES = ("pending", "running", "completed", "failed")
JOB_FIELDS = {
    "id",
    "user_id",
    "workflow",
    "status",
    "priority",
    "created_at",
    "started_at",
    "completed_at",
    "worker_id",
    "result",
    "error",
    "metadata",
}


def test_a_submitted_job_completes_with_its_timestamps_and_output_file(staging_workshop, rdb):
    job_id = submit("user001", metadata={"staging": {"duration": 0.2, "succeed": True}})

    job = wait_for_status(rdb, job_id, {"completed"})

    assert set(job) == JOB_FIELDS
    # The platform's move is not atomic: the record says completed before the id reaches queue:completed.
    wait_for(lambda: rdb.zscore("queue:completed", job_id) is not None, timeout=5, what=f"job {job_id} in queue:completed")
    assert rdb.zscore("queue:pending", job_id) is None and rdb.zscore("queue:running", job_id) is None
    assert job["worker_id"] == "worker-1"
    assert job["created_at"] <= job["started_at"] <= job["completed_at"]
    assert job_id in rdb.smembers("user:user001:jobs")
    outputs = job["result"]["outputs"]
    assert outputs and all(name.startswith("user001/") for name in outputs)
    for name in outputs:
        data = (PROJECT_DIR / "data" / "outputs" / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")


def test_a_failing_job_ends_in_queue_failed_with_its_error(staging_workshop, rdb):
    job_id = submit("user002", metadata={"staging": {"duration": 0.1, "fail": "CUDA out of memory"}})

    job = wait_for_status(rdb, job_id, {"failed"})

    assert job["error"] == "CUDA out of memory"
    # The platform's move is not atomic: the record says failed before the id reaches queue:failed.
    wait_for(lambda: rdb.zscore("queue:failed", job_id) is not None, timeout=5, what=f"job {job_id} in queue:failed")


def test_queue_status_equals_the_zcards(staging_workshop, rdb, cleanup_jobs):
    # Something in every queue: a hung job stays running, slow jobs stay pending behind it. The worker
    # leaves the hung job at once and takes the first slow one: from then on nothing moves for 2 s.
    held = rdb.zcard("queue:running")  # left by an earlier test, if any
    submit("user003", metadata={"staging": {"hang": True}})
    slow = [submit("user003", metadata={"staging": {"duration": 2, "succeed": True}}) for _ in range(3)]
    wait_for(lambda: rdb.zcard("queue:running") == held + 2, what="the hung job and a slow one running")

    status, body = http("GET", "/api/queue/status")
    counts = {queue: rdb.zcard(f"queue:{queue}") for queue in ("pending", "running", "completed", "failed")}

    assert status == 200
    assert (body["pending_jobs"], body["running_jobs"], body["completed_jobs"], body["failed_jobs"]) == (
        counts["pending"],
        counts["running"],
        counts["completed"],
        counts["failed"],
    )
    assert body["queue_depth"] == counts["pending"]
    for job_id in slow:
        wait_for_status(rdb, job_id, {"completed"})


def test_a_hung_job_stays_in_queue_running(staging_workshop, rdb, cleanup_jobs):
    hung = submit("user004", metadata={"staging": {"hang": True}})
    after = submit("user004", metadata={"staging": {"duration": 0.1, "succeed": True}})

    wait_for_status(rdb, after, {"completed"})  # the worker went on past the hung job
    time.sleep(1)

    assert rdb.zscore("queue:running", hung) is not None
    assert job_record(rdb, hung)["status"] == "running"
    assert rdb.exists("worker:worker-1:heartbeat")  # the worker is alive: only the job is stuck
    assert 0 < rdb.ttl("worker:worker-1:heartbeat") <= 60


def test_worker_logs_carry_the_platform_lines(staging_workshop, rdb):
    done = submit("user005", metadata={"staging": {"duration": 0.1, "succeed": True}})
    failed = submit("user005", metadata={"staging": {"duration": 0.1, "fail": "Model file not found"}})
    wait_for_status(rdb, failed, {"failed"})

    worker_log = compose("logs", "--no-color", "worker-1").stdout
    manager_log = compose("logs", "--no-color", "queue-manager").stdout

    assert f"Processing job {done} for user user005" in worker_log
    assert f"Job {done} completed successfully" in worker_log
    assert f"Job {failed} failed: Model file not found" in worker_log
    assert f"Job {done} submitted by user user005" in manager_log
    assert f"Assigned job {done} to worker worker-1" in manager_log
    assert " - INFO - " in worker_log  # the platform's "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


def test_cancelling_a_pending_job_deletes_it_without_a_trace(staging_workshop, rdb, cleanup_jobs):
    blocker = submit("user001", metadata={"staging": {"duration": 2, "succeed": True}})
    wait_for_status(rdb, blocker, {"running"})
    pending = submit("user001")

    status, _ = http("DELETE", f"/api/jobs/{pending}")

    assert status == 204
    assert not any(rdb.zscore(f"queue:{queue}", pending) is not None for queue in QUEUES)
    assert job_record(rdb, pending) is None and pending not in rdb.smembers("user:user001:jobs")


def test_cancelling_a_running_job_only_sets_its_status_and_leaves_it_in_queue_running(staging_workshop, rdb, cleanup_jobs):
    hung = submit("user002", metadata={"staging": {"hang": True}})
    running = wait_for_status(rdb, hung, {"running"})

    status, _ = http("DELETE", f"/api/jobs/{hung}")
    time.sleep(0.5)

    assert status == 204
    assert job_record(rdb, hung) == {**running, "status": "cancelled"}
    assert rdb.zscore("queue:running", hung) is not None
    assert http("DELETE", f"/api/jobs/{hung}")[0] == 400  # neither pending nor running any more


def test_timestamps_are_written_as_the_platform_writes_them(staging_workshop, rdb):
    job_id = submit("user003", metadata={"staging": {"duration": 0.1, "succeed": True}})
    job = wait_for_status(rdb, job_id, {"completed"})

    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?")
    for field in ("created_at", "started_at", "completed_at"):
        assert job[field].endswith("Z") and stamp.fullmatch(job[field][:-1]), job[field]
    heartbeat = rdb.get("worker:worker-1:heartbeat")
    assert heartbeat.endswith("+00:00") and stamp.fullmatch(heartbeat[:-6]), heartbeat
    assert 0 < rdb.ttl("worker:worker-1:heartbeat") <= 60


def test_invalid_user_id_is_refused(staging_workshop):
    status, _ = http("POST", "/api/jobs", {"user_id": "../etc", "workflow": {}, "metadata": {}})
    assert status in (400, 422)


def test_redis_data_survives_a_restart_of_the_redis_service(staging_workshop, rdb):
    job_id = submit("user002", metadata={"staging": {"duration": 0.1, "succeed": True}})
    wait_for_status(rdb, job_id, {"completed"})
    before = _contents(rdb, job_id)

    compose("restart", "redis")
    wait_for(lambda: redis_answers(rdb), what="redis to answer after its restart")

    assert _contents(rdb, job_id) == before
    assert json.loads(rdb.get(f"job:{job_id}"))["status"] == "completed"


def _contents(client, job_id):
    """The values, not DUMP's bytes: a large set reloads with its members in another order."""
    return (
        client.get(f"job:{job_id}"),
        client.zrange("queue:completed", 0, -1, withscores=True),
        client.smembers("user:user002:jobs"),
        client.dbsize() - len(list(client.scan_iter("worker:*:heartbeat"))),
    )


def test_the_project_directory_looks_like_the_platforms(staging_workshop):
    env = (PROJECT_DIR / ".env").read_text()
    for key in ("REDIS_PASSWORD=", "ADMIN_PASSWORD=", "NUM_USERS=6", "DOMAIN=", "SSL_CERT_PATH=", "OUTPUTS_PATH="):
        assert key in env
    assert oct((PROJECT_DIR / ".env").stat().st_mode & 0o777) == "0o600"
    assert oct((PROJECT_DIR / "ssl" / "privkey.pem").stat().st_mode & 0o777) == "0o600"
    for path in (
        "docker-compose.yml",
        "docker-compose.users.yml",
        "ssl/fullchain.pem",
        "data/outputs",
        "data/inputs",
        "data/workflows/example_workflow.json",
        "data/user_data/user006",
    ):
        assert (PROJECT_DIR / path).exists(), path
    services = set(compose("config", "--services").stdout.split())
    assert services == {"redis", "queue-manager", "worker-1", "admin", *(f"user{i:03d}" for i in range(1, 7))}


def test_the_redis_password_is_in_no_process_argument(staging_workshop):
    password = dotenv("REDIS_PASSWORD").encode()
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes() if proc.name.isdigit() else b""
        except OSError:  # the process ended meanwhile
            continue
        assert password not in cmdline, proc.name


# The last tests of this file: the queue manager brought up once with a small max queue depth and
# a step pause (one bring-up for both settings, and one back to the defaults at the end of the file).
@pytest.fixture(scope="module")
def tuned(staging_workshop):
    staging("up", staging_workshop_max_queue_depth=3, staging_workshop_step_pause=0.5)
    yield
    staging("up")


def test_submissions_beyond_max_queue_depth_get_429(tuned, rdb):
    # The blocker runs long enough for the four submissions, each slowed by the step pause.
    blocker = submit("user006", metadata={"staging": {"duration": 8, "succeed": True}})
    wait_for_status(rdb, blocker, {"running"})
    queued = [submit("user006", metadata={"staging": {"duration": 0.1, "succeed": True}}) for _ in range(3)]
    status, body = http("POST", "/api/jobs", {"user_id": "user006", "workflow": {}, "metadata": {}})
    assert status == 429, body
    for job_id in queued:
        wait_for_status(rdb, job_id, {"completed"})


def test_the_step_pause_holds_the_take_window_open(tuned, rdb):
    """With the pause, a job taken by the worker is seen in no queue with its record already running."""
    job_id = submit("user004", metadata={"staging": {"duration": 0.1, "succeed": True}})
    seen = wait_for(
        lambda: (
            (job := job_record(rdb, job_id))
            and job["status"] == "running"
            and rdb.zscore("queue:pending", job_id) is None
            and rdb.zscore("queue:running", job_id) is None
            and job
        ),
        timeout=20,
        interval=0.02,
        what="the job between ZPOPMIN and ZADD queue:running",
    )
    assert seen["worker_id"] == "worker-1"
    wait_for_status(rdb, job_id, {"completed"}, timeout=30)


def test_a_job_whose_worker_restarts_under_it_stays_running_and_emptying_staging_does_not_wait_for_it(staging_workshop, rdb):
    job_id = submit("user003", metadata={"staging": {"duration": 120, "succeed": True}})
    wait_for_status(rdb, job_id, {"running"})

    compose("restart", "-t", "1", "worker-1")
    time.sleep(1)  # the restarted worker polls; it never takes up the job it held (the platform's way)

    assert job_record(rdb, job_id)["status"] == "running" and rdb.zscore("queue:running", job_id) is not None
    started = time.monotonic()
    empty_staging(rdb)
    assert time.monotonic() - started < 30
    assert job_record(rdb, job_id) is None and rdb.zcard("queue:running") == 0


def test_a_finished_job_left_in_queue_running_by_a_halfway_move_is_not_waited_for(staging_workshop, rdb):
    job_id = submit("user003", metadata={"staging": {"duration": 0.1, "succeed": True}})
    wait_for_status(rdb, job_id, {"completed"})
    wait_for(lambda: rdb.zscore("queue:completed", job_id) is not None, what="the job filed")
    # What the queue manager leaves when it stops between SET job:<id> and ZREM queue:running.
    rdb.zadd("queue:running", {job_id: time.time()})

    started = time.monotonic()
    empty_staging(rdb)
    assert time.monotonic() - started < 30
    assert job_record(rdb, job_id) is None and rdb.zcard("queue:running") == 0
