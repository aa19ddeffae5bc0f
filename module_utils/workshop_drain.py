"""Waiting for the workshop's queue to drain, and what becomes of jobs that never finish.

The platform's keys are the truth; events on `queue:updates` only wake the wait early (the
platform may never publish them), with polling as the fallback, so an empty queue is noticed
within a second either way.
"""

import json
import time

from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_redis import QUEUES, queue_key
from ansible.module_utils.workshop_time import epoch_of, utc_iso

UPDATES_CHANNEL = "queue:updates"
STUCK_POLICIES = ("leave", "requeue", "fail")


class RedisQueue:
    """The queue as the platform keeps it in Redis."""

    def __init__(self, conn):
        self.conn = conn
        self.pubsub = None

    def counts(self):
        return self.conn.queue_counts()

    def open_ids(self):
        """Ids of the jobs still pending or running."""
        pipe = self.conn.client.pipeline(transaction=False)
        pipe.zrange(queue_key("pending"), 0, -1)
        pipe.zrange(queue_key("running"), 0, -1)
        pending, running = self.conn.call(pipe.execute)
        return pending + running

    def wait_for_change(self, seconds):
        """Sleep up to `seconds`, waking at once on a queue:updates event."""
        if self.pubsub is None:
            self.pubsub = self.conn.client.pubsub(ignore_subscribe_messages=True)
            self.conn.call(self.pubsub.subscribe, UPDATES_CHANNEL)
        deadline = time.monotonic() + seconds
        # get_message returns None for the subscribe confirmation too: keep waiting until the deadline.
        while (left := deadline - time.monotonic()) > 0:
            if self.conn.call(self.pubsub.get_message, timeout=left) is not None:
                return

    def close(self):
        if self.pubsub is not None:
            self.pubsub.close()

    def finished_since(self, since):
        """Jobs completed and failed since `since` (epoch), from the scores of their queues."""
        pipe = self.conn.client.pipeline(transaction=False)
        pipe.zcount(queue_key("completed"), since, "+inf")
        pipe.zcount(queue_key("failed"), since, "+inf")
        completed, failed = self.conn.call(pipe.execute)
        return completed, failed

    def jobs(self, job_ids):
        """The job records of `job_ids` (None for a missing one), read in one round trip."""
        if not job_ids:
            return []
        raw = self.conn.call(self.conn.client.mget, [f"job:{job_id}" for job_id in job_ids])
        return [json.loads(value) if value else None for value in raw]

    def stuck_jobs(self):
        """Every job still running: who, on which worker, since when, and whether that worker still polls."""
        running = self.conn.call(self.conn.client.zrange, queue_key("running"), 0, -1, withscores=True)
        records = self.jobs([job_id for job_id, _ in running])
        workers = sorted({record["worker_id"] for record in records if record and record.get("worker_id")})
        alive = dict(zip(workers, self.conn.call(self._heartbeats, workers)))
        stuck = []
        for (job_id, started), record in zip(running, records):
            record = record or {}
            worker = record.get("worker_id")
            stuck.append(
                dict(
                    id=job_id,
                    user_id=record.get("user_id"),
                    worker_id=worker,
                    running_since=utc_iso(started),
                    running_seconds=round(time.time() - started, 1),
                    worker_heartbeat_alive=bool(worker and alive.get(worker)),
                )
            )
        return stuck

    def _heartbeats(self, workers):
        pipe = self.conn.client.pipeline(transaction=False)
        for worker in workers:
            pipe.exists(f"worker:{worker}:heartbeat")
        return pipe.execute()

    def pending_jobs(self):
        """Every job still pending, in queue order."""
        ids = self.conn.call(self.conn.client.zrange, queue_key("pending"), 0, -1)
        return [
            dict(id=job_id, user_id=(record or {}).get("user_id"), created_at=(record or {}).get("created_at"))
            for job_id, record in zip(ids, self.jobs(ids))
        ]

    def settle(self, job_id, from_queue, policy, reason):
        """Requeue or fail one job atomically; returns what was done ('requeued', 'failed', or 'finished meanwhile').

        WATCH makes a job that the worker completes at this very moment keep its real outcome.
        """
        return self.conn.call(self._settle, job_id, from_queue, policy, reason)

    def _settle(self, job_id, from_queue, policy, reason):
        client = self.conn.client
        job_key = f"job:{job_id}"
        with client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(job_key, queue_key(from_queue))
                    raw = pipe.get(job_key)
                    if raw is None or pipe.zscore(queue_key(from_queue), job_id) is None:
                        return "finished meanwhile"
                    record = json.loads(raw)
                    now = time.time()
                    pipe.multi()
                    pipe.zrem(queue_key(from_queue), job_id)
                    if policy == "requeue":
                        record.update(status="pending", started_at=None, worker_id=None)
                        created = epoch_of(record.get("created_at")) or now
                        pipe.zadd(queue_key("pending"), {job_id: int(record.get("priority", 2)) * 1e6 + created})
                    else:
                        record.update(status="failed", error=reason, completed_at=utc_iso(now))
                        pipe.zadd(queue_key("failed"), {job_id: now})
                    pipe.set(job_key, json.dumps(record))
                    event = {"type": "job_updated", "data": record, "timestamp": utc_iso(now)}
                    pipe.publish(UPDATES_CHANNEL, json.dumps(event))
                    pipe.execute()
                    return "requeued" if policy == "requeue" else "failed"
                except self.conn.watch_error:
                    continue


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
        if not isinstance(depth, int):
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


def is_drained(counts, queues):
    """Whether every queue waited for is empty (`depth` for the HTTP source)."""
    if "depth" in counts:
        return counts["depth"] == 0
    return all(counts[queue] == 0 for queue in queues)


def wait_until_drained(queue, queues, until, poll_interval):
    """Wait until drained or until the epoch `until`; returns (counts, drained, drained_at epoch or None)."""
    while True:
        counts = queue.counts()
        if is_drained(counts, queues):
            return counts, True, time.time()
        left = until - time.time()
        if left <= 0:
            return counts, False, None
        queue.wait_for_change(min(poll_interval, left))


def describe(counts, queues):
    if "depth" in counts:
        return f"depth {counts['depth']}"
    return ", ".join(f"{counts[queue]} {queue}" for queue in queues)
