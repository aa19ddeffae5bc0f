"""The drain's state machine (module_utils/workshop_drain.py) against a scratch redis-server.

A `Platform` here replays the platform's queue manager command by command, in its order
(platform README, "How the queue manager moves a job"), so each test can stop a move between
any two of its Redis commands and look at the queue there.
"""

import json
import time
import uuid

import pytest
import redis
from ansible.module_utils import workshop_drain
from ansible.module_utils.workshop_drain import (
    ALIVE,
    CANCELLED,
    GHOST,
    GONE,
    NO_QUEUE,
    PENDING,
    UNREADABLE,
    RedisQueue,
    classify,
    look,
    new_state,
    settle_stuck,
    stuck_message,
    wait_until_drained,
)
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_redis import WorkshopRedis
from scratch_redis import running_redis

QUEUES = ("pending", "running", "completed", "failed")
BOTH = ["pending", "running"]


def stamp():
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".123456Z"


class Platform:
    """The platform's moves as lists of single Redis commands (no MULTI), to run step by step."""

    def __init__(self, client):
        self.client = client

    def submit(self, user="user001", status="pending"):
        job_id = str(uuid.uuid4())
        record = dict(id=job_id, user_id=user, workflow={}, status="pending", priority=2, created_at=stamp())
        record.update(started_at=None, completed_at=None, worker_id=None, result=None, error=None, metadata={})
        for step in (
            lambda: self.client.set(f"job:{job_id}", json.dumps(record)),
            lambda: self.client.zadd("queue:pending", {job_id: 2e6 + time.time()}),
            lambda: self.client.sadd(f"user:{user}:jobs", job_id),
            lambda: self.client.publish("queue:updates", json.dumps({"type": "job_created", "data": record})),
        ):
            step()
        return job_id

    def take(self, worker="worker-1"):
        """Steps of GET /api/workers/next-job: heartbeat, ZPOPMIN, GET, SET running, PUBLISH, ZADD running."""
        held = {}

        def pop():
            held["id"] = self.client.zpopmin("queue:pending")[0][0]

        def write():
            record = json.loads(self.client.get(f"job:{held['id']}"))
            record.update(status="running", started_at=stamp(), worker_id=worker)
            self.client.set(f"job:{held['id']}", json.dumps(record))

        return [
            lambda: self.client.set(f"worker:{worker}:heartbeat", "2026-11-29T15:00:00+00:00", ex=60),
            pop,
            write,
            lambda: self.client.publish("queue:updates", json.dumps({"type": "job_updated", "data": {"id": held["id"]}})),
            lambda: self.client.zadd("queue:running", {held["id"]: time.time()}),
        ]

    def finish(self, job_id, status="completed"):
        """Steps of complete-job / fail-job: SET, PUBLISH, ZREM running, ZADD finished, (INCR)."""

        def write():
            record = json.loads(self.client.get(f"job:{job_id}"))
            record.update(status=status, completed_at=stamp())
            self.client.set(f"job:{job_id}", json.dumps(record))

        steps = [
            write,
            lambda: self.client.publish("queue:updates", json.dumps({"type": "job_updated", "data": {"id": job_id}})),
            lambda: self.client.zrem("queue:running", job_id),
            lambda: self.client.zadd(f"queue:{status}", {job_id: time.time()}),
        ]
        if status == "completed":
            steps.append(lambda: self.client.incr("user:user001:completed"))
        return steps

    def cancel_running(self, job_id):
        record = json.loads(self.client.get(f"job:{job_id}"))
        record["status"] = "cancelled"
        self.client.set(f"job:{job_id}", json.dumps(record))

    def delete_pending(self, job_id):
        for queue in QUEUES:
            self.client.zrem(f"queue:{queue}", job_id)
        self.client.srem("user:user001:jobs", job_id)
        self.client.delete(f"job:{job_id}")
        self.client.publish("queue:updates", json.dumps({"type": "job_deleted", "data": {"job_id": job_id}}))

    def run(self, steps):
        for step in steps:
            step()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_redis(tmp_path_factory.mktemp("drain")) as client:
        yield client


@pytest.fixture
def client(server):
    server.flushall()
    return server


@pytest.fixture
def platform(client):
    return Platform(client)


@pytest.fixture
def queue(client):
    port = client.connection_pool.connection_kwargs["port"]
    opened = RedisQueue(WorkshopRedis("127.0.0.1", port))
    yield opened
    opened.close()


def fresh(queue):
    return new_state(None, time.time(), queue.counts())


def where(client, job_id):
    return [q for q in QUEUES if client.zscore(f"queue:{q}", job_id) is not None]


def record(client, job_id):
    """The job's record; None when missing, Unreadable when not JSON."""
    return workshop_drain.parse_record(client.get(f"job:{job_id}"))


def test_never_drained_at_any_step_of_a_jobs_moves_and_drained_after_the_last(client, platform, queue):
    job_id = platform.submit()
    resumed = fresh(queue)
    steps = platform.take() + platform.finish(job_id)
    filed = len(steps) - 1  # ZADD queue:completed; the INCR of the participant's counter after it is no move
    for number, step in enumerate(steps, 1):
        step()
        last = number >= filed
        # A drain that began before the job moved, and one that begins now, in the middle of the move.
        for state in (resumed, fresh(queue)):
            drained, _counts, why = look(queue, state, BOTH)
            assert drained is last, (number, why, where(client, job_id), record(client, job_id)["status"])
    assert record(client, job_id)["status"] == "completed" and where(client, job_id) == ["completed"]


def test_between_zpopmin_and_zadd_the_queues_are_empty_but_not_drained(client, platform, queue):
    job_id = platform.submit()
    take = platform.take()
    platform.run(take[:4])  # heartbeat, ZPOPMIN, SET running, PUBLISH: the window the issue describes

    assert client.zcard("queue:pending") == client.zcard("queue:running") == 0
    drained, counts, why = look(queue, fresh(queue), BOTH)
    assert not drained and counts["pending"] == counts["running"] == 0
    assert "outside the queues" in why
    take[4]()
    assert where(client, job_id) == ["running"]


def test_pending_only_waits_for_the_window_before_the_record_says_running(client, platform, queue):
    platform.submit()
    take = platform.take()
    platform.run(take[:2])  # popped: in no queue, record still pending
    assert not look(queue, fresh(queue), ["pending"])[0]
    take[2]()  # record running: for queues=[pending] that job is no longer waited for
    assert look(queue, fresh(queue), ["pending"])[0]


def test_the_confirming_re_read_must_agree(client, platform, queue):
    class LateArrival(RedisQueue):
        """A job arrives between the first consistent look and the confirming one."""

        views = 0

        def view(self):
            self.views += 1
            if self.views == 2:
                platform.submit()
            return super().view()

    late = LateArrival(queue.conn)
    drained, counts, _ = look(late, fresh(late), BOTH)
    assert not drained and counts["pending"] == 1 and late.views == 2


def test_flushall_mid_drain_fails_naming_the_vanished_jobs(client, platform, queue):
    done = platform.submit()
    platform.run(platform.take())
    platform.run(platform.finish(done))
    running = platform.submit()
    platform.run(platform.take())
    state = fresh(queue)
    assert not look(queue, state, BOTH)[0]

    client.flushall()

    with pytest.raises(WorkshopError) as raised:
        look(queue, state, BOTH)
    assert "NOT drained" in raised.value.msg
    assert "queue:completed held 1 jobs when the drain began, now 0" in raised.value.msg
    assert f"job:{running}" in raised.value.msg and raised.value.context["vanished"] == [running]
    assert done not in raised.value.msg  # finished before the drain began: counted in queue:completed


def test_a_known_job_record_that_vanishes_is_named(client, platform, queue):
    job_id = platform.submit()
    platform.run(platform.take())
    state = fresh(queue)
    look(queue, state, BOTH)
    client.delete(f"job:{job_id}")
    client.zrem("queue:running", job_id)

    with pytest.raises(WorkshopError) as raised:
        look(queue, state, BOTH)
    assert f"job:{job_id}" in raised.value.msg and raised.value.context["vanished"] == [job_id]


def test_a_pending_job_deleted_by_the_platform_is_counted_when_its_event_was_seen(client, platform, queue):
    job_id = platform.submit()
    state = fresh(queue)
    look(queue, state, BOTH)
    queue.wait_for_change(0.05)  # subscribes
    platform.delete_pending(job_id)
    queue.wait_for_change(2)  # wakes on the job_deleted event

    drained, _, _ = look(queue, state, BOTH)
    assert drained and state["deleted"] == [job_id]


def test_a_record_whose_status_is_not_text_does_not_stop_the_drain(client, platform, queue):
    """A record of another shape (a status that is a list) is neither open nor done: looked past, not a crash."""
    job_id = platform.submit()
    for step in platform.take() + platform.finish(job_id):
        step()
    client.set("job:odd", json.dumps({"id": "odd", "user_id": "user001", "status": ["pending"]}))
    drained, _counts, why = look(queue, fresh(queue), BOTH)
    assert drained is True, why


def test_the_state_survives_a_json_round_trip(client, platform, queue):
    job_id = platform.submit()
    state = fresh(queue)
    look(queue, state, BOTH)
    again = new_state(json.loads(json.dumps(state)), time.time() + 100, {"completed": 99})

    assert again == state and again["seen"] == [job_id]
    assert new_state({"started": 5.0, "open_ids": ["a"]}, 9.0, {})["seen"] == ["a"]  # an older resume


def test_wait_until_drained_wakes_on_the_platforms_event(client, platform, queue):
    job_id = platform.submit()
    platform.run(platform.take())
    state = fresh(queue)
    queue.wait_for_change(0.01)
    platform.run(platform.finish(job_id))
    started = time.monotonic()
    drained, _, _, drained_at = wait_until_drained(queue, state, BOTH, time.time() + 5, 2.0)
    assert drained and drained_at and time.monotonic() - started < 1.5


def test_a_queue_that_emptied_between_two_calls_drained_when_its_last_job_was_filed(client, platform, queue):
    """A call sees the job running and ends (its slice is over); the job finishes; the next call starts
    seconds later (Ansible's turn between slices, on a busy host). Drained when the platform filed the
    job in queue:completed (after writing completed_at), not at that call's first look; a filing time
    from before the last look that saw the job open (a clock behind ours) is not believed."""
    job_id = platform.submit()
    platform.run(platform.take())
    state = fresh(queue)
    assert wait_until_drained(queue, state, BOTH, time.time() + 0.2, 0.05)[0] is False
    finish = platform.finish(job_id)
    platform.run(finish[:1])  # completed_at written...
    time.sleep(0.3)
    platform.run(finish[1:])  # ...and the job filed later, as the platform moves it
    filed = client.zscore("queue:completed", job_id)
    time.sleep(1.0)

    def resumed(queues=BOTH):
        again = new_state(json.loads(json.dumps(state)), time.time(), queue.counts())
        before = time.time()
        drained, _, _, drained_at = wait_until_drained(queue, again, queues, time.time() + 5, 0.05)
        assert drained
        return drained_at, before

    assert resumed()[0] == filed
    client.zadd("queue:completed", {job_id: state["open_at"] - 3600}, xx=True)
    drained_at, before = resumed()
    assert drained_at >= before  # not believed: now
    drained_at, before = resumed(["pending"])
    assert drained_at >= before  # a drain of the pending queue: a job taken leaves no time
    before = time.time()
    assert wait_until_drained(queue, fresh(queue), BOTH, time.time() + 5, 0.05)[3] >= before  # a new drain: now


def stuck_jobs(client, platform):
    """One open job of every class; returns {class: id}."""
    ids = {}
    ids[ALIVE] = platform.submit("user001")
    platform.run(platform.take("worker-live"))
    ids[GONE] = platform.submit("user002")
    platform.run(platform.take("worker-dead"))
    client.delete("worker:worker-dead:heartbeat")  # its TTL ran out
    ids[CANCELLED] = platform.submit("user003")
    platform.run(platform.take("worker-live"))
    platform.cancel_running(ids[CANCELLED])
    ids[GHOST] = str(uuid.uuid4())
    client.zadd("queue:running", {ids[GHOST]: time.time()})
    ids[UNREADABLE] = str(uuid.uuid4())
    client.set(f"job:{ids[UNREADABLE]}", "{not json")
    client.zadd("queue:running", {ids[UNREADABLE]: time.time()})
    ids[NO_QUEUE] = platform.submit("user005")
    platform.run(platform.take("worker-dead")[:3])  # popped and written running, the ZADD never came
    client.delete("worker:worker-dead:heartbeat")
    ids[PENDING] = platform.submit("user004")
    return ids


def kinds(queue):
    return {job["id"]: job["kind"] for job in classify(queue)}


def test_each_open_job_gets_its_class(client, platform, queue):
    ids = stuck_jobs(client, platform)

    assert kinds(queue) == {job_id: kind for kind, job_id in ids.items()}
    drained, counts, _why = look(queue, fresh(queue), BOTH)  # the unreadable record is no crash
    assert not drained and counts["running"] == 5


def one_set_each(client, ids):
    """Every job in at most one queue, and a record whose status names it (cancelled: in none)."""
    for kind, job_id in ids.items():
        sets, rec = where(client, job_id), record(client, job_id)
        assert len(sets) <= 1, (kind, sets)
        if isinstance(rec, dict):
            expected = [] if rec["status"] == "cancelled" else [rec["status"]]
            assert sets == expected, (kind, sets, rec["status"])


@pytest.mark.parametrize("policy", ["leave", "requeue", "fail"])
@pytest.mark.parametrize("force", [False, True])
def test_policies_act_only_where_they_cannot_corrupt(client, platform, queue, policy, force):
    ids = stuck_jobs(client, platform)
    state = fresh(queue)
    before = {job_id: (where(client, job_id), client.get(f"job:{job_id}")) for job_id in ids.values()}

    actions = settle_stuck(queue, classify(queue), policy, "Workshop over", force, False, state)

    done = {action["id"]: action["action"] for action in actions}
    status = {kind: (record(client, job_id) or {}).get("status") for kind, job_id in ids.items()}
    assert status[GHOST] is None and isinstance(record(client, ids[UNREADABLE]), workshop_drain.Unreadable)
    # Never touched without a readable record (clear_broken is off), nor the pending one by requeue.
    for kind in (GHOST, UNREADABLE):
        assert (where(client, ids[kind]), client.get(f"job:{ids[kind]}")) == before[ids[kind]]
    if policy == "leave":
        assert actions == [] and all(before[j] == (where(client, j), client.get(f"job:{j}")) for j in ids.values())
        return
    target = {"requeue": "pending", "fail": "failed"}[policy]
    assert done[ids[GONE]] == {"requeue": "requeued", "fail": "failed"}[policy] and status[GONE] == target
    assert done[ids[CANCELLED]] == "finished as cancelled" and status[CANCELLED] == "cancelled"
    assert where(client, ids[CANCELLED]) == []
    if force:
        assert status[ALIVE] == target and status[NO_QUEUE] == target
    else:
        assert done[ids[ALIVE]].startswith("left: worker worker-live still polls") and status[ALIVE] == "running"
        assert where(client, ids[ALIVE]) == ["running"] and status[NO_QUEUE] == "running"
    assert status[PENDING] == ("failed" if policy == "fail" else "pending")
    if policy == "fail":
        assert record(client, ids[GONE])["error"] == "Workshop over"
        assert record(client, ids[GONE])["completed_at"].endswith("Z")
    one_set_each(client, {k: v for k, v in ids.items() if k not in (GHOST, UNREADABLE, NO_QUEUE) or force})


def test_clear_broken_removes_ghosts_and_unreadable_ids_and_keeps_the_record(client, platform, queue):
    ids = stuck_jobs(client, platform)

    actions = settle_stuck(queue, classify(queue), "leave", "", False, True, fresh(queue))

    assert {a["id"]: a["action"] for a in actions} == {
        ids[GHOST]: "cleared from queue:running",
        ids[UNREADABLE]: "cleared from queue:running (record kept)",
    }
    assert where(client, ids[GHOST]) == where(client, ids[UNREADABLE]) == []
    assert client.get(f"job:{ids[UNREADABLE]}") == "{not json"


def test_a_cleared_ghost_is_no_loss_and_the_drain_finishes(client, platform, queue):
    ghost = str(uuid.uuid4())
    client.zadd("queue:running", {ghost: time.time()})
    state = fresh(queue)
    assert not look(queue, state, BOTH)[0] and state["seen"] == [ghost]

    actions = settle_stuck(queue, classify(queue), "leave", "", False, True, state)

    assert actions == [{"id": ghost, "kind": GHOST, "action": "cleared from queue:running"}]
    assert state["cleared"] == [ghost]
    assert look(queue, state, BOTH)[0]


def test_fail_racing_a_worker_that_completes_keeps_the_real_outcome(client, platform, queue):
    """The worker's SET lands between the drain's read and its EXEC: WATCH refuses the EXEC."""
    job_id = platform.submit()
    platform.run(platform.take("worker-dead"))
    client.delete("worker:worker-dead:heartbeat")
    finish = platform.finish(job_id)
    real_plan = workshop_drain._plan
    calls = []

    def racing_plan(*args):
        calls.append(args[1].get("status"))
        if len(calls) == 1:
            finish[0]()  # the worker reports: SET job completed
        return real_plan(*args)

    workshop_drain._plan = racing_plan
    try:
        outcome = queue.settle(job_id, "fail", "Workshop over")
    finally:
        workshop_drain._plan = real_plan
    assert calls == ["running", "completed"]  # re-read after the refused EXEC
    assert outcome == "finished meanwhile"
    platform.run(finish[1:])  # the worker's remaining steps
    assert where(client, job_id) == ["completed"] and record(client, job_id)["status"] == "completed"


def test_fail_on_a_job_the_worker_is_moving_leaves_it_to_the_platform(client, platform, queue):
    job_id = platform.submit()
    platform.run(platform.take("worker-dead"))
    client.delete("worker:worker-dead:heartbeat")
    finish = platform.finish(job_id)
    platform.run(finish[:2])  # record completed, still in queue:running

    assert kinds(queue) == {job_id: "moving"}
    actions = settle_stuck(queue, classify(queue), "fail", "Workshop over", True, True, fresh(queue))
    assert actions == []
    platform.run(finish[2:])
    assert where(client, job_id) == ["completed"] and record(client, job_id)["status"] == "completed"


def test_the_timeout_message_names_each_job_with_advice_that_works_on_the_platform(client, platform, queue):
    ids = stuck_jobs(client, platform)

    message = stuck_message(60, classify(queue))

    assert "5 running, 1 pending" in message
    for kind in (ALIVE, GONE, CANCELLED, GHOST, UNREADABLE, NO_QUEUE):
        assert f"Stuck job {ids[kind]}" in message and f"{kind})" in message
    assert "DELETE" not in message
    assert "drain_stuck_force=true" in message and "drain_clear_broken=true" in message


def test_an_http_timeout_suggests_no_policy_that_mode_refuses():
    message = workshop_drain.http_stuck_message(60, {"depth": 2}, "http://127.0.0.1:3000/api/queue/status")
    assert "stuck_policy" not in message and "drain_source=redis" in message


def test_an_unreachable_redis_is_a_workshop_error():
    with pytest.raises(WorkshopError) as raised:
        RedisQueue(WorkshopRedis("127.0.0.1", 1, timeout=1)).view()
    assert "Cannot reach Redis at 127.0.0.1:1" in raised.value.msg


@pytest.mark.fault
def test_a_wrong_password_names_its_source(server, fault_case):
    fault_case(
        "Wrong Redis password (drain, scratch redis-server)",
        expected="the drain's Redis view fails naming where the password came from",
    )
    server.config_set("requirepass", "right")
    try:
        port = server.connection_pool.connection_kwargs["port"]
        conn = WorkshopRedis("127.0.0.1", port, password="wrong", password_source="REDIS_PASSWORD in /srv/.env")
        with pytest.raises(WorkshopError) as raised:
            RedisQueue(conn).view()
        assert "refused the password: check REDIS_PASSWORD in /srv/.env" in raised.value.msg
        fault_case.observed(raised.value.msg)
    finally:
        admin = redis.Redis(port=server.connection_pool.connection_kwargs["port"], password="right")
        admin.config_set("requirepass", "")
        admin.close()
