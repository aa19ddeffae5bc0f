"""Immediate phase: close submissions and drain the queue (queue_drain, compose_services, the drain role)."""

import contextlib
import json
import subprocess
import threading
import time
import urllib.request
import uuid

import pytest
from ansible.module_utils.workshop_drain import RedisQueue, look, new_state, wait_until_drained
from ansible.module_utils.workshop_redis import WorkshopRedis

from conftest import (
    BACKUP_ROOT,
    COMPOSE_PROJECT,
    FRONTEND_BASE_PORT,
    PROJECT_DIR,
    QUEUE_MANAGER,
    REDIS_ARGS,
    REDIS_PORT,
    compose,
    dotenv,
    epoch,
    http,
    job_record,
    redis_answers,
    run_module,
    run_playbook,
    staging,
    submit,
    wait_for,
    wait_for_status,
)

QUEUES = ("pending", "running", "completed", "failed")
STATUS_URL = f"{QUEUE_MANAGER}/api/queue/status"
RECORD = BACKUP_ROOT / "staging" / "run-record.json"


def frontend_states():
    states = {}
    for line in subprocess.run(
        [
            "docker",
            "ps",
            "--all",
            "--filter",
            f"label=com.docker.compose.project={COMPOSE_PROJECT}",
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
    if set(frontend_states().values()) != {"running"}:
        run_playbook("playbooks/drain.yml", extra_vars={"drain_reopen": True})


def test_draining_a_busy_queue_ends_within_a_second_of_the_last_completion(staging_workshop, rdb, fresh_record):
    # Enough work (about 24 s) that the queue is still busy when the wait starts after announcing and closing,
    # on a machine loaded enough to take three times the usual 5 s to get there (18 s once fell short).
    jobs = [submit(f"user00{1 + i % 6}", metadata={"staging": {"duration": 2.0, "succeed": True}}) for i in range(12)]

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
    assert "Check mode, nothing waited for: " in run.text and "Queue NOT drained" not in run.text


@pytest.mark.fault
def test_a_hung_job_makes_the_drain_time_out_naming_it(staging_workshop, rdb, fresh_record, cleanup_jobs, fault_case):
    fault_case(
        "Hung job (the drain times out)",
        expected="drain fails naming the job, its user, worker and heartbeat; the job left in queue:running",
    )
    hung = submit("user003", metadata={"staging": {"hang": True}})
    wait_for_status(rdb, hung, {"running"})

    run = run_playbook("playbooks/drain.yml", extra_vars={"drain_timeout": 3, "drain_progress_seconds": 1}, expect_ok=False)

    assert run.returncode != 0
    assert f"Stuck job {hung} of user003 on worker-1" in run.output
    assert "heartbeat alive" in run.output
    assert rdb.zscore("queue:running", hung) is not None  # policy leave: still there
    fault_case.observed(f"'Stuck job {hung} of user003 on worker-1 (heartbeat alive)'; still in queue:running")


def where(rdb, job_id):
    return [queue for queue in QUEUES if rdb.zscore(f"queue:{queue}", job_id) is not None]


def agrees(rdb, job_id, status):
    """The job is in exactly the set its record names (a cancelled one: in none) and the record says `status`."""
    record = job_record(rdb, job_id)
    assert record["status"] == status, record
    assert where(rdb, job_id) == ([] if status == "cancelled" else [status])


@contextlib.contextmanager
def dead_worker(rdb):
    """worker-1 stopped and its heartbeat expired (its TTL, 60 s, cut short)."""
    compose("stop", "worker-1")
    rdb.delete("worker:worker-1:heartbeat")
    try:
        yield
    finally:
        compose("start", "worker-1")
        wait_for(lambda: rdb.exists("worker:worker-1:heartbeat"), what="worker-1 polling again")


def test_fail_leaves_a_job_whose_worker_still_polls_and_the_worker_then_finishes_it(staging_workshop, rdb, cleanup_jobs):
    # Long enough to still run once the ad hoc ansible run has started on a busy machine.
    slow = submit("user004", metadata={"staging": {"duration": 15, "succeed": True}})
    wait_for_status(rdb, slow, {"running"})

    ok, result = run_module("queue_drain", {**REDIS_ARGS, "timeout": 1, "stuck_policy": "fail", "on_timeout": "return"})

    assert ok and not result["changed"] and not result["drained"]
    assert [(job["id"], job["kind"]) for job in result["stuck_jobs"]] == [(slow, "running_worker_alive")]
    assert result["actions"] == [
        {"id": slow, "kind": "running_worker_alive", "action": "left: worker worker-1 still polls (force acts anyway)"}
    ]
    wait_for_status(rdb, slow, {"completed"}, timeout=40)
    wait_for(lambda: where(rdb, slow) == ["completed"], what="the job filed")
    agrees(rdb, slow, "completed")


def test_fail_with_force_fails_a_hung_job_of_a_live_worker_and_says_so(staging_workshop, rdb, cleanup_jobs):
    hung = submit("user004", metadata={"staging": {"hang": True}})
    wait_for_status(rdb, hung, {"running"})

    ok, result = run_module(
        "queue_drain",
        {
            **REDIS_ARGS,
            "timeout": 1,
            "stuck_policy": "fail",
            "force": True,
            "on_timeout": "return",
            "fail_reason": "Workshop over",
        },
    )

    assert ok and result["changed"] and result["drained"]
    assert result["actions"] == [{"id": hung, "kind": "running_worker_alive", "action": "failed"}]
    assert result["forced"] == [hung]
    agrees(rdb, hung, "failed")
    assert job_record(rdb, hung)["error"] == "Workshop over"


@pytest.mark.fault
def test_fail_and_requeue_act_on_a_job_whose_worker_is_gone(staging_workshop, rdb, cleanup_jobs, fault_case):
    fault_case(
        "Worker gone with a job held",
        expected="the held jobs named running_worker_gone; requeue puts them back pending, "
        "fail ends them failed; every record kept",
    )
    hung = submit("user005", metadata={"staging": {"hang": True}})
    other = submit("user005", metadata={"staging": {"hang": True}})
    wait_for_status(rdb, hung, {"running"})
    wait_for_status(rdb, other, {"running"})
    with dead_worker(rdb):
        ok, result = run_module("queue_drain", {**REDIS_ARGS, "timeout": 1, "stuck_policy": "requeue", "on_timeout": "return"})

        assert ok and result["changed"] and not result["drained"]
        assert {job["id"]: job["kind"] for job in result["stuck_jobs"]} == {
            hung: "running_worker_gone",
            other: "running_worker_gone",
        }
        assert sorted(a["action"] for a in result["actions"]) == ["requeued", "requeued"]
        job = job_record(rdb, hung)
        assert job["started_at"] is None and job["worker_id"] is None
        agrees(rdb, hung, "pending")
        agrees(rdb, other, "pending")

        ok, result = run_module("queue_drain", {**REDIS_ARGS, "timeout": 1, "stuck_policy": "fail", "on_timeout": "return"})

        assert ok and result["drained"]
        assert sorted(a["action"] for a in result["actions"]) == ["failed", "failed"]  # pending jobs are failed too
        agrees(rdb, hung, "failed")
        agrees(rdb, other, "failed")
        fault_case.observed("2 jobs named running_worker_gone; requeued to pending, then failed; records and sets agree")


def test_a_job_cancelled_while_running_is_finished_as_cancelled(staging_workshop, rdb, cleanup_jobs):
    hung = submit("user006", metadata={"staging": {"hang": True}})
    wait_for_status(rdb, hung, {"running"})
    assert http("DELETE", f"/api/jobs/{hung}")[0] == 204
    assert where(rdb, hung) == ["running"]  # the platform keeps it there

    ok, result = run_module("queue_drain", {**REDIS_ARGS, "timeout": 1, "on_timeout": "return"})
    assert not result["drained"] and result["stuck_jobs"][0]["kind"] == "cancelled_in_running"
    assert result["actions"] == [] and where(rdb, hung) == ["running"]  # leave: nothing moved

    ok, result = run_module("queue_drain", {**REDIS_ARGS, "timeout": 1, "stuck_policy": "requeue", "on_timeout": "return"})

    assert ok and result["drained"] and result["totals"]["cancelled"] == 1
    assert result["actions"] == [{"id": hung, "kind": "cancelled_in_running", "action": "finished as cancelled"}]
    agrees(rdb, hung, "cancelled")


def test_ghosts_and_unreadable_records_are_named_and_cleared_by_policy(staging_workshop, rdb, cleanup_jobs):
    ghost, garbled = str(uuid.uuid4()), str(uuid.uuid4())
    rdb.zadd("queue:running", {ghost: time.time()})
    rdb.set(f"job:{garbled}", "{truncated")
    rdb.zadd("queue:running", {garbled: time.time()})
    try:
        ok, result = run_module("queue_drain", {**REDIS_ARGS, "timeout": 1})

        assert not ok and not result["drained"]
        assert "While draining" not in result["msg"]  # a timeout that names them, not a crash
        assert f"Stuck job {ghost}" in result["msg"] and f"Stuck job {garbled}" in result["msg"]
        assert "drain_clear_broken=true" in result["msg"]
        assert {job["id"]: job["kind"] for job in result["stuck_jobs"]} == {ghost: "ghost", garbled: "unreadable"}

        ok, result = run_module("queue_drain", {**REDIS_ARGS, "timeout": 1, "clear_broken": True, "on_timeout": "return"})

        assert ok and result["changed"] and result["drained"]
        assert where(rdb, ghost) == where(rdb, garbled) == []
        assert rdb.get(f"job:{garbled}") == "{truncated"  # the record itself is kept
    finally:
        rdb.zrem("queue:running", ghost)
        rdb.zrem("queue:running", garbled)
        rdb.delete(f"job:{garbled}")


def drain_watching(rdb, outcome):
    """A queue_drain run (ad hoc, 60 s timeout) in a thread, returned once it has connected to Redis
    and taken its first look; its result goes to outcome["result"]. Not a fixed sleep: under load
    the ansible start-up alone can outlast one, and the fault would then hit before the drain."""
    connected = {client["id"] for client in rdb.client_list()}
    waiter = threading.Thread(target=lambda: outcome.update(result=run_module("queue_drain", {**REDIS_ARGS, "timeout": 60})))
    waiter.start()
    wait_for(lambda: {client["id"] for client in rdb.client_list()} - connected, timeout=120, interval=0.05, what="the drain")
    time.sleep(1.5)
    return waiter


@pytest.mark.fault
def test_flushall_mid_drain_is_not_drained(staging_workshop, rdb, cleanup_jobs, fault_case):
    fault_case("FLUSHALL mid-drain", expected="drain fails 'NOT drained' naming the vanished job")
    hung = submit("user001", metadata={"staging": {"hang": True}})
    wait_for_status(rdb, hung, {"running"})
    outcome = {}
    waiter = drain_watching(rdb, outcome)
    rdb.flushall()
    waiter.join(timeout=120)

    ok, result = outcome["result"]
    assert not ok and not result.get("drained")
    assert "NOT drained" in result["msg"] and f"job:{hung}" in result["msg"]
    assert result["vanished"] == [hung]
    fault_case.observed(f"not drained; vanished: job:{hung}")


@pytest.mark.fault
def test_a_bad_env_stops_no_frontend_and_names_host_and_path(staging_workshop, fresh_record, tmp_path, fault_case):
    fault_case(
        "Missing .env / wrong Redis password (drain)",
        expected="drain fails naming the host and the .env path; no frontend stopped",
    )
    wrong = tmp_path / ".env"
    wrong.write_text((PROJECT_DIR / ".env").read_text().replace("REDIS_PASSWORD=", "REDIS_PASSWORD=wrong"))
    for env_file, expected in ((tmp_path / "missing.env", "No .env at"), (wrong, "refused the password")):
        run = run_playbook("playbooks/drain.yml", extra_vars={"workshop_env_file": str(env_file)}, expect_ok=False)

        assert run.returncode != 0
        assert expected in run.output and str(env_file) in run.output
        assert "Cannot drain on localhost" in run.output and "No frontend was stopped" in run.output
        assert "Module failed" not in run.output
        assert set(frontend_states().values()) == {"running"}
        fault_case.observed("'No .env at ...' and 'refused the password', each naming the path; every frontend still running")


@pytest.mark.parametrize("switch", ["drain_close_submissions", "drain_reopen"])
def test_boolean_switches_work_as_strings(staging_workshop, fresh_record, switch):
    run = run_playbook("playbooks/drain.yml", f"-e{switch}=false")

    assert set(frontend_states().values()) == ({"running"} if switch == "drain_close_submissions" else {"exited"})
    assert json.loads(RECORD.read_text())["drain"]["drained"] is True
    assert oct(RECORD.parent.stat().st_mode & 0o777) == "0o700"
    again = run_playbook("playbooks/drain.yml", "-edrain_reopen=true", "-edrain_stuck_force=false", "-edrain_clear_broken=false")
    assert "Submissions open again" in again.output and set(frontend_states().values()) == {"running"}
    assert run.returncode == 0


@pytest.mark.fault
def test_redis_stopped_during_the_wait_fails_clearly(staging_workshop, rdb, cleanup_jobs, fault_case):
    fault_case(
        "Redis killed mid-drain",
        expected="drain fails 'Cannot reach Redis at ...'; never drained; the held job still running in Redis once it is back",
    )
    hung = submit("user006", metadata={"staging": {"hang": True}})
    wait_for_status(rdb, hung, {"running"})
    outcome = {}
    waiter = drain_watching(rdb, outcome)
    compose("stop", "redis")
    try:
        waiter.join(timeout=60)
        ok, result = outcome["result"]
        assert not ok
        assert f"Cannot reach Redis at 127.0.0.1:{REDIS_PORT}" in result["msg"]
        assert "While draining the queue" in result["msg"]
        assert not result.get("drained")
    finally:
        compose("start", "redis")
        wait_for(lambda: redis_answers(rdb), what="redis back")
    agrees(rdb, hung, "running")  # nothing lost: the job held by the worker is still running, in its set
    fault_case.observed(f"failed: {result['msg'][:120]}; job {hung} still running in Redis after the restart")


def test_check_mode_of_the_module_reports_what_it_would_wait_for(staging_workshop, rdb, cleanup_jobs):
    hung = submit("user001", metadata={"staging": {"hang": True}})
    wait_for_status(rdb, hung, {"running"})

    ok, result = run_module("queue_drain", {**REDIS_ARGS, "timeout": 30}, check=True)

    assert ok and not result["changed"] and not result["drained"]
    assert result["counts"]["running"] == 1
    assert "pending and running to be empty" in result["would_wait_for"]
    assert rdb.zscore("queue:running", hung) is not None


def test_reading_the_depth_over_http_with_jmespath(staging_workshop, rdb, cleanup_jobs):
    ok, result = run_module("queue_drain", {"source": "http", "status_url": STATUS_URL, "queues": ["pending"], "timeout": 10})
    assert ok and result["drained"] and result["counts"]["depth"] == 0

    args = {"source": "http", "status_url": STATUS_URL, "depth_query": "mode", "timeout": 1, "on_timeout": "return"}
    ok, result = run_module("queue_drain", args)
    assert not ok and "depth_query 'mode'" in result["msg"]


def test_reopen_brings_the_frontends_back_and_the_next_drain_records_its_own_times(staging_workshop, rdb, fresh_record):
    run_playbook("playbooks/drain.yml")
    assert set(frontend_states().values()) == {"exited"}

    first = json.loads(RECORD.read_text())

    reopened = run_playbook("playbooks/drain.yml", extra_vars={"drain_reopen": True})

    assert reopened.changed() > 0
    assert set(frontend_states().values()) == {"running"}
    with urllib.request.urlopen(f"http://127.0.0.1:{FRONTEND_BASE_PORT}/", timeout=10) as page:
        assert b"user001" in page.read()
    assert json.loads(RECORD.read_text())["drain"]["drained"] is False

    # The next drain is a drain of its own: its cut-off, its final time, its totals with the new job.
    job = submit("user003", metadata={"staging": {"duration": 0.1, "succeed": True}})
    wait_for_status(rdb, job, {"completed"})
    run_playbook("playbooks/drain.yml", extra_vars={"drain_cutoff_minutes": 30})
    again = json.loads(RECORD.read_text())
    assert again["drain"]["drained"] is True and again["drain"]["final_time"] > first["drain"]["final_time"]
    assert again["drain"]["total_jobs"] >= first["drain"]["total_jobs"] + 1  # not the first drain's, kept
    assert again["announcement"]["cutoff"] != first["announcement"]["cutoff"]
    assert again["drain"]["reopened_at"] is None  # announced: a re-run keeps this cut-off, even after a timeout

    # The frontends started by hand after that drain, then the reopen asked for: that drain is over all the same.
    compose("up", "-d")
    run_playbook("playbooks/drain.yml", extra_vars={"drain_reopen": True})
    ended = json.loads(RECORD.read_text())["drain"]
    assert ended["drained"] is False and ended["reopened_at"] and ended["final_time"] == again["drain"]["final_time"]
    assert run_playbook("playbooks/drain.yml", extra_vars={"drain_reopen": True}).changed() == 0


def test_an_unknown_frontend_pattern_is_named(staging_workshop, fresh_record):
    run = run_playbook("playbooks/drain.yml", extra_vars={"drain_frontend_pattern": "^frontend-"}, expect_ok=False)
    assert f"No service of compose project '{COMPOSE_PROJECT}' matches pattern '^frontend-'" in run.output


def test_alone_with_an_unknown_compose_project_the_drain_stops_before_announcing(staging_workshop, fresh_record):
    announcement = RECORD.parent / "announcement.txt"
    announcement.unlink(missing_ok=True)
    run = run_playbook("playbooks/drain.yml", extra_vars={"workshop_compose_project": "nosuch"}, expect_ok=False)
    assert "Cannot close submissions on localhost: No containers of compose project 'nosuch'" in run.text, run.output[-3000:]
    assert not RECORD.exists() and not announcement.exists()
    assert set(frontend_states().values()) == {"running"}


@pytest.fixture(scope="module")
def step_pause(staging_workshop):
    """The staging queue manager sleeps 0.25 s between the Redis commands of every move of a job.

    Brought up once for the tests that use it (the last of this file), then back to no pause.
    """
    staging("up", staging_workshop_step_pause=0.25)
    yield 0.25
    staging("up")


def drain_queue():
    return RedisQueue(WorkshopRedis("127.0.0.1", REDIS_PORT, password=dotenv("REDIS_PASSWORD")))


def test_never_drained_inside_the_platforms_pending_to_running_window(step_pause, rdb, cleanup_jobs):
    """Hundreds of drain looks, each a new drain, while jobs move one slow step at a time.

    Every job passes through the window where it is in neither queue (the old drain's "drained"):
    the test asserts each window was seen, and that no look reported drained unless the job was
    filed in queue:completed by the time the look returned (each step of a move lasts 0.25 s, far
    longer than a look, so a look inside a window returns while the job is still unfiled).
    """
    queue = drain_queue()
    tries = in_window = 0
    try:
        for _ in range(8):
            job_id = submit("user002", metadata={"staging": {"duration": 0, "succeed": True}})
            windows = 0
            while True:
                filed_before = rdb.zscore("queue:completed", job_id) is not None
                drained, counts, _ = look(queue, new_state(None, time.time(), queue.counts()), ["pending", "running"])
                filed_after = rdb.zscore("queue:completed", job_id) is not None
                tries += 1
                if counts["pending"] == counts["running"] == 0 and not filed_after:
                    windows += 1  # empty queues, job not done: where the old drain said drained
                assert not drained or filed_after, (job_id, job_record(rdb, job_id), where(rdb, job_id))
                if filed_before:
                    break
                time.sleep(0.01)
            assert windows > 0, "the window was not reproduced"
            in_window += windows
    finally:
        queue.close()
    assert tries >= 300 and in_window >= 100, (tries, in_window)


def test_one_drain_follows_a_job_through_every_move_and_returns_after_it(step_pause, rdb, cleanup_jobs):
    queue = drain_queue()
    try:
        state = new_state(None, time.time(), queue.counts())
        job_id = submit("user003", metadata={"staging": {"duration": 0.2, "succeed": True}})
        drained, _, _, drained_at = wait_until_drained(queue, state, ["pending", "running"], time.time() + 30, 0.05)
    finally:
        queue.close()
    assert drained and job_id in state["seen"]
    assert where(rdb, job_id) == ["completed"] and job_record(rdb, job_id)["status"] == "completed"
    assert drained_at >= rdb.zscore("queue:completed", job_id)


def test_the_drain_playbook_with_the_step_pause_records_drained_after_the_last_job(step_pause, rdb, fresh_record):
    jobs = [submit(f"user00{1 + i % 3}", metadata={"staging": {"duration": 0.3, "succeed": True}}) for i in range(4)]

    run_playbook("playbooks/drain.yml", extra_vars={"drain_progress_seconds": 1})

    record = json.loads(RECORD.read_text())["drain"]
    assert record["drained"] is True
    for job_id in jobs:
        agrees(rdb, job_id, "completed")
    last_filed = max(rdb.zscore("queue:completed", job_id) for job_id in jobs)
    assert epoch(record["final_time"]) >= last_filed
    assert record["total_jobs"] == rdb.zcard("queue:completed")
