"""Waiting for the workshop's queue to drain, and what becomes of jobs that never finish.

The platform moves a job in several separate Redis commands (platform README, "How the queue
manager moves a job"): between its ZPOPMIN from queue:pending and its ZADD to queue:running a
job is in no queue, and the job_updated event arrives inside that window. So empty queues alone
never mean drained. The drain is a state machine over plain functions here:

- `new_state` / the `resume` dict: when the drain began, the counts then, every job id seen open
  since (pending, running, or a pending/running record in no queue), the jobs the platform deleted
  (a `job_deleted` event), and the jobs a policy acted on.
- `look`: one consistent view. Drained only when the queues waited for are empty, every job seen
  open has a terminal record (completed, failed, cancelled) and sits in the set its record names,
  no record anywhere says pending/running outside a queue, nothing known has vanished, and a
  confirming re-read agrees. Events on queue:updates only wake the wait early.
- `classify` / `settle`: on timeout, each open job gets a class, and the policies act only where
  that cannot corrupt the queue: atomically (WATCH/MULTI/EXEC over the record and all four
  queues), only on jobs whose worker is gone unless forced, each job ending in exactly one set
  with a record that agrees.

A known job record that vanishes, or a finished queue that shrinks (FLUSHALL, a Redis that came
back empty), raises WorkshopError naming what vanished: never "drained".
"""

import json
import time

from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_redis import QUEUES, queue_key
from ansible.module_utils.workshop_time import epoch_of, utc_iso

UPDATES_CHANNEL = "queue:updates"
OPEN = ("pending", "running")
TERMINAL = ("completed", "failed", "cancelled")
# Classes of the open jobs on timeout (see classify).
ALIVE, GONE, CANCELLED, PENDING = "running_worker_alive", "running_worker_gone", "cancelled_in_running", "pending"
GHOST, UNREADABLE, NO_QUEUE, MOVING = "ghost", "unreadable", "in_no_queue", "moving"
BATCH = 500
# Finished records this many seconds older than the drain count as moving while not in their queue.
UNFILED_MARGIN = 60
SETTLE_TRIES = 50


class Unreadable:
    """A job record that is not a JSON object: kept as it is, named by its id, never a crash."""

    def __init__(self, raw):
        self.excerpt = raw[:60]

    def get(self, key, default=None):
        return default


def parse_record(raw):
    """The job record of a stored value: dict, None when missing, or Unreadable."""
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return Unreadable(raw)
    return record if isinstance(record, dict) else Unreadable(raw)


class RedisQueue:
    """The queue as the platform keeps it in Redis; every read here is one round trip or one MULTI."""

    def __init__(self, conn):
        self.conn = conn
        self.client = conn.client
        self.pubsub = None
        self.deleted = set()  # job ids of job_deleted events seen while waiting (a hint, never the truth)

    def counts(self):
        return self.conn.queue_counts()

    def view(self):
        """Both open queues with scores and the sizes of all four, read in one MULTI/EXEC: one instant."""
        counts = self.counts()  # checks the key types first
        pipe = self.client.pipeline(transaction=True)
        pipe.zrange(queue_key("pending"), 0, -1, withscores=True)
        pipe.zrange(queue_key("running"), 0, -1, withscores=True)
        for queue in QUEUES:
            pipe.zcard(queue_key(queue))
        replies = self.conn.call(pipe.execute)
        counts = dict(zip(QUEUES, replies[2:]))
        return dict(pending=dict(replies[0]), running=dict(replies[1]), counts=counts)

    def records(self, job_ids):
        """{id: record dict, None when missing, or Unreadable}, read in batches of MGET."""
        job_ids = list(job_ids)
        found = {}
        for start in range(0, len(job_ids), BATCH):
            chunk = job_ids[start : start + BATCH]
            raw = self.conn.call(self.client.mget, [f"job:{job_id}" for job_id in chunk])
            found.update((job_id, parse_record(value)) for job_id, value in zip(chunk, raw))
        return found

    def all_records(self):
        """{id: record} of every readable job record (SCAN, never KEYS)."""
        keys = self.conn.call(lambda: list(self.client.scan_iter(match="job:*", count=1000)))
        records = self.records(key[len("job:") :] for key in keys)
        return {job_id: r for job_id, r in records.items() if isinstance(r, dict)}

    def open_records(self):
        """{id: record} of every job record anywhere whose status is pending or running."""
        return {job_id: r for job_id, r in self.all_records().items() if r.get("status") in OPEN}

    def unfiled(self, records, since):
        """Ids of completed/failed records finished since `since` (epoch) that are not in their queue yet:
        the platform writes the record first and moves the id after."""
        recent = {
            job_id: r["status"]
            for job_id, r in records.items()
            if r.get("status") in ("completed", "failed") and (epoch_of(r.get("completed_at")) or 0) >= since
        }
        filed = self.scores(recent, ("completed", "failed"))
        return sorted(job_id for job_id, status in recent.items() if status not in filed[job_id])

    def scores(self, job_ids, queues=QUEUES):
        """{id: {queue: its score there}} for `job_ids` in `queues`, one round trip."""
        job_ids = list(job_ids)
        if not job_ids:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            for queue in queues:
                pipe.zscore(queue_key(queue), job_id)
        replies = iter(self.conn.call(pipe.execute))
        return {job_id: {q: score for q, score in zip(queues, replies) if score is not None} for job_id in job_ids}

    def memberships(self, job_ids):
        """{id: [queues holding it]} for `job_ids`, one round trip."""
        return {job_id: list(found) for job_id, found in self.scores(job_ids).items()}

    def heartbeats(self, workers):
        """{worker: whether worker:<id>:heartbeat (TTL 60 s, refreshed on each poll) still exists}."""
        workers = sorted(workers)
        if not workers:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for worker in workers:
            pipe.exists(f"worker:{worker}:heartbeat")
        return {worker: bool(alive) for worker, alive in zip(workers, self.conn.call(pipe.execute))}

    def finished_since(self, since):
        """Jobs completed and failed since `since` (epoch), from the scores of their queues."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zcount(queue_key("completed"), since, "+inf")
        pipe.zcount(queue_key("failed"), since, "+inf")
        completed, failed = self.conn.call(pipe.execute)
        return completed, failed

    def wait_for_change(self, seconds):
        """Sleep up to `seconds`, waking at once on a queue:updates event (noting job_deleted ids)."""
        if self.pubsub is None:
            self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            self.conn.call(self.pubsub.subscribe, UPDATES_CHANNEL)
        deadline = time.monotonic() + seconds
        # get_message returns None for the subscribe confirmation too: keep waiting until the deadline.
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            message = self.conn.call(self.pubsub.get_message, timeout=left)
            if message is not None:
                self._note(message.get("data"))
                return

    def _note(self, data):
        try:
            event = json.loads(data)
            if event.get("type") == "job_deleted":
                self.deleted.add(str((event.get("data") or {}).get("job_id")))
        except (ValueError, TypeError, AttributeError):
            pass  # the platform fails to serialise some events: a hint only

    def close(self):
        if self.pubsub is not None:
            self.pubsub.close()

    def settle(self, job_id, action, reason, force=False):
        """Move one job atomically; returns what was done. See `_settle`."""
        return self.conn.call(self._settle, job_id, action, reason, force)

    def _settle(self, job_id, action, reason, force):
        """One WATCH/MULTI/EXEC over the record, the four queues and the worker's heartbeat.

        The job is re-read and re-checked under WATCH: if its record or any queue changes before
        EXEC (a worker completing it, a worker taking it), EXEC is refused and it is re-read. It
        ends in exactly one set (none for a cleared entry), with a record that agrees.
        """
        job_key = f"job:{job_id}"
        with self.client.pipeline(transaction=True) as pipe:
            for _dummy in range(SETTLE_TRIES):
                try:
                    pipe.watch(job_key, *(queue_key(q) for q in QUEUES))
                    record = parse_record(pipe.get(job_key))
                    member = [q for q in QUEUES if pipe.zscore(queue_key(q), job_id) is not None]
                    worker = record.get("worker_id") if isinstance(record, dict) else None
                    if worker:
                        pipe.watch(f"worker:{worker}:heartbeat")
                    alive = bool(worker) and bool(pipe.exists(f"worker:{worker}:heartbeat"))
                    plan = _plan(job_id, record, member, alive, action, reason, force)
                    if isinstance(plan, str):
                        pipe.unwatch()
                        return plan
                    commands, outcome = plan
                    pipe.multi()
                    for name, args in commands:
                        getattr(pipe, name)(*args)
                    pipe.execute()
                    return outcome
                except self.conn.watch_error:
                    continue
        return "left: the queue kept changing; try again"


def _plan(job_id, record, member, alive, action, reason, force):
    """What `action` does to the job as it is now: a reason string to leave it, or (commands, outcome)."""
    now = time.time()
    job_key = f"job:{job_id}"
    remove = [("zrem", (queue_key(q), job_id)) for q in member]
    if action == "clear":
        if isinstance(record, dict):
            return "left: it has a readable record now"
        if not member:
            return "finished meanwhile"
        return remove, "cleared from " + ", ".join(queue_key(q) for q in member) + (" (record kept)" if record else "")
    if not isinstance(record, dict):
        return "left: no readable record (clear_broken clears it)"
    status = record.get("status")
    if status in ("completed", "failed"):
        return "finished meanwhile"
    if action == "finish":
        if status != "cancelled" or not member or "completed" in member or "failed" in member:
            return "finished meanwhile"
        record = dict(record, completed_at=record.get("completed_at") or job_time(now))
        return remove + _write(job_key, record), "finished as cancelled"
    if status == "cancelled":
        return "left: cancelled (finished as cancelled, never requeued or failed)"
    if status == "running" and alive and not force:
        return f"left: worker {record.get('worker_id')} still polls (force acts anyway)"
    if status == "pending" and action == "requeue":
        return "left: already pending"
    if status == "pending" and "pending" not in member and not force:
        return "left: pending in no queue, a worker may be taking it (force acts anyway)"
    if status == "running" and "running" not in member and not force:
        return "left: running in no queue, a worker may be taking it (force acts anyway)"
    if status not in OPEN:
        return f"left: status {status!r} is not the platform's"
    if action == "requeue":
        record = dict(record, status="pending", started_at=None, worker_id=None)
        created = epoch_of(record.get("created_at")) or now
        try:
            priority = int(record.get("priority", 2))
        except (TypeError, ValueError):
            priority = 2
        add = [("zadd", (queue_key("pending"), {job_id: priority * 1e6 + created}))]
        return remove + add + _write(job_key, record), "requeued"
    record = dict(record, status="failed", error=reason, completed_at=job_time(now))
    add = [("zadd", (queue_key("failed"), {job_id: now}))]
    return remove + add + _write(job_key, record), "failed"


def job_time(epoch):
    """A job record's time as the platform writes it: ISO-8601 UTC ending in Z."""
    return utc_iso(epoch).replace("+00:00", "Z")


def _write(job_key, record):
    event = {"type": "job_updated", "data": record, "timestamp": utc_iso(time.time())}
    return [("set", (job_key, json.dumps(record))), ("publish", (UPDATES_CHANNEL, json.dumps(event)))]


# The state machine


def new_state(resume, now, counts):
    """The drain's state: from `resume` (a previous call's), or a new drain starting `now`."""
    resume = resume or {}
    return dict(
        started=float(resume.get("started", now)),
        counts_at_start=resume.get("counts_at_start") or counts,
        seen=sorted(set(resume.get("seen") or resume.get("open_ids") or [])),
        deleted=sorted(set(resume.get("deleted") or [])),
        acted=sorted(set(resume.get("acted") or [])),
        cleared=sorted(set(resume.get("cleared") or [])),
        open_at=resume.get("open_at"),  # the last look that saw jobs open
    )


def lost_queues(counts, state):
    """Finished queues that shrank since the drain began: only lost data shrinks them."""
    return [
        f"{queue_key(q)} held {state['counts_at_start'][q]} jobs when the drain began, now {counts[q]}"
        for q in ("completed", "failed")
        if (state["counts_at_start"].get(q) or 0) > counts[q]
    ]


def look(queue, state, queues):
    """One consistent look at the queue; updates `state`. Returns (drained, counts, why-not text).

    Raises WorkshopError when data the drain knew of has vanished.
    """
    drained, counts, why = _look_once(queue, state, queues)
    if drained:
        # The confirming re-read: a second consistent view must agree.
        drained, counts, why = _look_once(queue, state, queues)
    return drained, counts, why


def _look_once(queue, state, queues):
    view = queue.view()
    counts = view["counts"]
    seen = set(state["seen"]) | set(view["pending"]) | set(view["running"])
    state["seen"] = sorted(seen)
    lost = lost_queues(counts, state)
    if any(counts[q] for q in queues):
        if lost:
            raise_lost(lost, [])
        return False, counts, describe(counts, queues)
    # Tuples, not sets: a record's status may be anything (a list cannot be looked up in a set).
    waiting = OPEN if "running" in queues else ("pending",)
    records = queue.records(seen)
    deleted = set(state["deleted"]) | queue.deleted
    # Ids a policy cleared had no record (ghosts) or keep theirs: neither is a loss.
    vanished = sorted(
        job_id for job_id, r in records.items() if r is None and job_id not in deleted and job_id not in state["cleared"]
    )
    if lost or vanished:
        raise_lost(lost, vanished)
    state["deleted"] = sorted(deleted & seen)
    unsettled = [job_id for job_id, r in records.items() if isinstance(r, dict) and r.get("status") in waiting]
    members = queue.memberships(job_id for job_id, r in records.items() if isinstance(r, dict))
    moving = [
        job_id
        for job_id, r in records.items()
        if isinstance(r, dict) and r.get("status") in ("completed", "failed") and r["status"] not in members[job_id]
    ]
    everything = queue.all_records()
    stray = {job_id: r for job_id, r in everything.items() if r.get("status") in waiting}
    if stray:
        state["seen"] = sorted(seen | set(stray))
    # A minute's margin: the platform's completed_at and this host's clock may differ a little.
    moving = sorted(set(moving) | set(queue.unfiled(everything, state["started"] - UNFILED_MARGIN)))
    open_now = sorted(set(unsettled) | set(stray))
    if open_now or moving:
        parts = []
        if open_now:
            parts.append(f"{len(open_now)} job(s) pending/running outside the queues (between two moves)")
        if moving:
            parts.append(f"{len(moving)} finished job(s) not yet in their queue")
        return False, counts, "; ".join(parts)
    return True, counts, "drained"


def raise_lost(queues_lost, vanished):
    shown = ", ".join(f"job:{job_id}" for job_id in vanished[:10]) + (" ..." if len(vanished) > 10 else "")
    parts = list(queues_lost)
    if vanished:
        parts.append(f"{len(vanished)} job record(s) seen during the drain are gone: {shown}")
    raise WorkshopError(
        "Jobs vanished from Redis during the drain, so it is NOT drained: "
        + "; ".join(parts)
        + ". Redis may have been flushed or restarted empty: do not back up or shut down before checking it "
        "(its dump.rdb, appendonlydir). Pending jobs deleted through DELETE /api/jobs/ID also leave no trace: "
        "if that is what happened, run the drain again.",
        vanished=vanished,
        lost_queues=list(queues_lost),
    )


def wait_until_drained(queue, state, queues, until, poll_interval):
    """Look until drained or until the epoch `until`; returns (drained, counts, why, drained_at or None)."""
    first = True
    while True:
        drained, counts, why = look(queue, state, queues)
        now = time.time()
        if drained:
            return True, counts, why, emptied_at(queue, state, queues, now) if first else now
        state["open_at"] = now
        first = False
        left = until - now
        if left <= 0:
            return False, counts, why, None
        queue.wait_for_change(min(poll_interval, left))


def emptied_at(queue, state, queues, now):
    """When the queue emptied, found so by a call's first look. After a call that saw jobs open, it emptied
    between the two calls (that call's end, Ansible's turn, this call's start: seconds on a busy host):
    when the last of the jobs seen open was filed as completed or failed (its score there, the platform's
    time of the move, made after the record is written), if that is after the last look that saw jobs
    open. Else now: a drain of the pending queue alone (a job taken leaves no time), a clock behind."""
    if state.get("open_at") is None or "running" not in queues:
        return now
    filed = queue.scores(state["seen"], ("completed", "failed")).values()
    latest = max((score for found in filed for score in found.values()), default=None)
    return latest if latest is not None and state["open_at"] < latest <= now else now


def classify(queue):
    """Every open job with its class (see the constants), who, which worker, since when, whether it polls."""
    view = queue.view()
    stray = dict(queue.open_records())
    placed = {job_id: ("running", score) for job_id, score in view["running"].items()}
    placed.update((job_id, ("pending", score)) for job_id, score in view["pending"].items())
    records = queue.records(set(placed) | set(stray))
    workers = {r.get("worker_id") for r in records.values() if isinstance(r, dict) and r.get("worker_id")}
    alive = queue.heartbeats(workers)
    now = time.time()
    jobs = []
    for job_id in sorted(set(placed) | set(stray), key=lambda j: (placed.get(j, ("", 0))[1], j)):
        record = records.get(job_id)
        where, score = placed.get(job_id, (None, None))
        status = record.get("status") if isinstance(record, dict) else None
        worker = record.get("worker_id") if isinstance(record, dict) else None
        if where is None:
            if status not in OPEN:
                continue  # finished between the two reads
            kind = NO_QUEUE
        elif record is None:
            kind = GHOST
        elif isinstance(record, Unreadable):
            kind = UNREADABLE
        elif where == "running" and status == "cancelled":
            kind = CANCELLED
        elif where == "running" and status == "running":
            kind = ALIVE if alive.get(worker) else GONE
        elif where == "pending" and status == "pending":
            kind = PENDING
        else:
            kind = MOVING
        since = score if where == "running" else epoch_of(record.get("started_at") if isinstance(record, dict) else None)
        jobs.append(
            dict(
                id=job_id,
                kind=kind,
                queue=where,
                status=status,
                user_id=record.get("user_id") if isinstance(record, dict) else None,
                worker_id=worker,
                worker_heartbeat_alive=bool(worker and alive.get(worker)),
                running_since=utc_iso(since) if since else None,
                running_seconds=round(now - since, 1) if since else None,
                created_at=record.get("created_at") if isinstance(record, dict) else None,
            )
        )
    return jobs


def policy_action(job, policy, force, clear_broken):
    """The action a policy takes on a classified job, or None to leave it."""
    kind = job["kind"]
    if kind in (GHOST, UNREADABLE):
        return "clear" if clear_broken else None
    if policy == "leave" or kind == MOVING:
        return None
    if kind == CANCELLED:
        return "finish"
    if kind == PENDING:
        return "fail" if policy == "fail" else None
    if kind == ALIVE and not force:
        return None
    if kind == NO_QUEUE and not force:
        return None
    return policy


LEFT_BECAUSE = {
    ALIVE: "worker {worker} still polls (force acts anyway)",
    NO_QUEUE: "pending/running in no queue, a worker may be moving it (force acts anyway)",
    GHOST: "no record (clear_broken removes the id)",
    UNREADABLE: "unreadable record (clear_broken removes the id, keeping the record)",
}


def settle_stuck(queue, jobs, policy, reason, force, clear_broken, state):
    """Apply the policies to classified jobs; returns the actions [{id, kind, action}]."""
    actions = []
    for job in jobs:
        action = policy_action(job, policy, force, clear_broken)
        if action is None:
            if policy != "leave" and job["kind"] in LEFT_BECAUSE:
                reason_left = LEFT_BECAUSE[job["kind"]].format(worker=job["worker_id"])
                actions.append(dict(id=job["id"], kind=job["kind"], action=f"left: {reason_left}"))
            continue
        done = queue.settle(job["id"], action, reason, force)
        if not done.startswith("left") and done != "finished meanwhile":
            which = "cleared" if action == "clear" else "acted"
            state[which] = sorted(set(state[which]) | {job["id"]})
        actions.append(dict(id=job["id"], kind=job["kind"], action=done))
    return actions


ADVICE = {
    ALIVE: "its worker still polls, so it may still be rendering: wait longer (drain_timeout), restart that worker, "
    "or use drain_stuck_policy=fail with drain_stuck_force=true (if the worker finishes it later, the platform "
    "records that too)",
    GONE: "its worker has not polled for 60 s (dead, or busy with one long job): drain_stuck_policy=requeue "
    "gives it to another worker, drain_stuck_policy=fail ends it",
    CANCELLED: "cancelled, but the platform keeps a running job in queue:running until its worker reports: "
    "drain_stuck_policy=fail or requeue finishes it as cancelled",
    PENDING: "no worker took it: check the workers, or drain_stuck_policy=fail ends it",
    GHOST: "its id is in the queue but job:ID does not exist: drain_clear_broken=true removes the id",
    UNREADABLE: "its record is not JSON: drain_clear_broken=true removes the id from the queue and keeps the record",
    NO_QUEUE: "its record says pending/running but it is in no queue (a move cut short?): "
    "drain_stuck_force=true with drain_stuck_policy=fail or requeue settles it",
    MOVING: "the platform is moving it to its finished queue; run the drain again",
}


def stuck_message(timeout, jobs):
    """The timeout message: every open job named, with advice that works on the platform."""
    running = sum(1 for job in jobs if job["queue"] == "running")
    pending = sum(1 for job in jobs if job["queue"] == "pending")
    lines = [f"The queue did not drain within {timeout}s: {running} running, {pending} pending."]
    for job in jobs:
        if job["kind"] == PENDING:
            continue
        where = f" on {job['worker_id']}" if job["worker_id"] else ""
        since = f" since {job['running_since']}" if job["running_since"] else ""
        heartbeat = ("heartbeat alive" if job["worker_heartbeat_alive"] else "no heartbeat") if job["worker_id"] else "no worker"
        lines.append(
            f"Stuck job {job['id']} of {job['user_id']}{where}{since} ({heartbeat}, {job['kind']}): {ADVICE[job['kind']]}."
        )
    if pending:
        lines.append(f"{pending} pending: {ADVICE[PENDING]}.")
    return " ".join(lines)


class HttpQueue:
    """The queue as the queue manager's status endpoint reports it (the checklist's curl | jq)."""

    def __init__(self, fetch_json, url, depth_query):
        import jmespath

        self.fetch_json = fetch_json
        self.url = url
        self.expression = jmespath.compile(depth_query)
        self.depth_query = depth_query

    def counts(self):
        body = self.fetch_json(self.url)
        depth = self.expression.search(body)
        if not isinstance(depth, int) or isinstance(depth, bool):
            raise WorkshopError(
                f"depth_query '{self.depth_query}' gives {depth!r}, not a number, on {self.url}: "
                f"the status has {sorted(body) if isinstance(body, dict) else type(body).__name__}",
                url=self.url,
            )
        counts = {queue: body.get(f"{queue}_jobs") for queue in QUEUES} if isinstance(body, dict) else {}
        counts["depth"] = depth
        return counts

    def wait_for_change(self, seconds):
        time.sleep(seconds)

    def close(self):
        pass


def http_wait(queue, until, poll_interval, confirm_gap=None):
    """The HTTP source: depth 0 on two reads `confirm_gap` apart (a job between two moves shows in
    neither count for a moment). Returns (drained, counts, why, drained_at or None)."""
    gap = poll_interval if confirm_gap is None else confirm_gap
    while True:
        counts = queue.counts()
        if counts["depth"] == 0:
            time.sleep(gap)
            again = queue.counts()
            if again["depth"] == 0:
                return True, again, "drained", time.time()
            counts = again
        left = until - time.time()
        if left <= 0:
            return False, counts, f"depth {counts['depth']}", None
        queue.wait_for_change(min(poll_interval, left))


def http_stuck_message(timeout, counts, url):
    return (
        f"The queue did not drain within {timeout}s: depth {counts.get('depth')} at {url}. "
        "The status URL shows counts only, so no job can be named or settled from it: run the drain with "
        "drain_source=redis to list the stuck jobs, with the advice for each, and to settle them."
    )


def describe(counts, queues):
    if "depth" in counts:
        return f"depth {counts['depth']}"
    return ", ".join(f"{counts[queue]} {queue}" for queue in queues)
