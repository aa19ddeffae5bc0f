"""Staging queue manager: the platform's job queue API over its Redis keys (http.server in place of FastAPI).

Every change of a job moves its id between the queue:* sets and rewrites job:{id} in one MULTI/EXEC,
under WATCH, so a job is never in two queues or none, even with the drain playbook writing meanwhile.
"""

import json
import re
import threading
import time
import uuid
from datetime import datetime

from common import HTTPError, env, iso, serve, setup_logging
from resp import Redis, RedisError

USER_ID = re.compile(r"[a-zA-Z0-9_-]{1,100}")
QUEUES = ("pending", "running", "completed", "failed")
UPDATES = "queue:updates"
# Every worker that ever polled, for total_workers (the platform counts its configured workers instead).
KNOWN_WORKERS = "workers:known"
HEARTBEAT_TTL = 60
JOB_ID = r"([^/]+)"


def job_key(job_id):
    return f"job:{job_id}"


def pending_score(priority, created):
    # Priority first, then first come first served within a priority.
    return priority * 1e6 + created


def event(kind, data):
    return ("PUBLISH", UPDATES, json.dumps({"type": kind, "data": data, "timestamp": iso(time.time())}))


class QueueManager:
    routes = (
        ("GET", r"/health", "health"),
        ("GET", r"/api/queue/status", "queue_status"),
        ("POST", r"/api/jobs", "submit"),
        ("GET", rf"/api/jobs/{JOB_ID}", "get_job"),
        ("DELETE", rf"/api/jobs/{JOB_ID}", "cancel"),
        ("PATCH", rf"/api/jobs/{JOB_ID}/priority", "set_priority"),
        ("GET", r"/api/users/([^/]+)/jobs", "user_jobs"),
        ("GET", r"/api/workers/next-job", "next_job"),
        ("POST", r"/api/workers/complete-job", "complete_job"),
        ("POST", r"/api/workers/fail-job", "fail_job"),
    )

    def __init__(self, redis, logger):
        self.redis = redis
        self.logger = logger
        self.max_depth = env("MAX_QUEUE_DEPTH", 100, int)
        self.job_timeout = env("JOB_TIMEOUT", 3600, float)
        self.version = env("APP_VERSION", "staging")
        self.mode = env("QUEUE_MODE", "single-gpu")
        self.started = time.monotonic()

    # Reading

    def load(self, job_id):
        raw = self.redis.execute("GET", job_key(job_id))
        return json.loads(raw) if raw else None

    def load_or_404(self, job_id):
        job = self.load(job_id)
        if job is None:
            raise HTTPError(404, "Job not found")
        return job

    def counts(self):
        return dict(zip(QUEUES, self.redis.pipeline([("ZCARD", f"queue:{queue}") for queue in QUEUES]), strict=True))

    def active_workers(self):
        """Workers whose heartbeat key is still alive (SCAN, never KEYS, on a live server)."""
        cursor, found = "0", set()
        while True:
            cursor, keys = self.redis.execute("SCAN", cursor, "MATCH", "worker:*:heartbeat", "COUNT", 100)
            found.update(keys)
            if cursor == "0":
                return len(found)

    def health(self, request):
        try:
            connected = self.redis.execute("PING") == "PONG"
            depth, workers = self.counts()["pending"], self.active_workers()
        except (ConnectionError, TimeoutError, RedisError):  # down, restarting, or a wrong password
            connected, depth, workers = False, 0, 0
        return 200, {
            "status": "healthy" if connected else "unhealthy",
            "version": self.version,
            "redis_connected": connected,
            "workers_active": workers,
            "queue_depth": depth,
            "uptime_seconds": int(time.monotonic() - self.started),
        }

    def queue_status(self, request):
        counts = self.counts()
        return 200, {
            "mode": self.mode,
            "pending_jobs": counts["pending"],
            "running_jobs": counts["running"],
            "completed_jobs": counts["completed"],
            "failed_jobs": counts["failed"],
            "total_workers": self.redis.execute("SCARD", KNOWN_WORKERS),
            "active_workers": self.active_workers(),
            "queue_depth": counts["pending"],
        }

    def get_job(self, request, job_id):
        return 200, self.load_or_404(job_id)

    def user_jobs(self, request, user_id):
        if not USER_ID.fullmatch(user_id):
            raise HTTPError(400, "Invalid user_id")
        ids = self.redis.execute("SMEMBERS", f"user:{user_id}:jobs")
        raw = self.redis.execute("MGET", *map(job_key, ids)) if ids else []
        jobs = [json.loads(item) for item in raw if item]
        return 200, sorted(jobs, key=lambda job: job["created_at"], reverse=True)

    # Participants

    def submit(self, request):
        body = request.json_body()
        user, workflow = body.get("user_id"), body.get("workflow")
        priority, metadata = body.get("priority", 2), body.get("metadata") or {}
        if not isinstance(user, str) or not USER_ID.fullmatch(user):
            raise HTTPError(400, "user_id must match ^[a-zA-Z0-9_-]{1,100}$")
        if not isinstance(workflow, dict):
            raise HTTPError(400, "workflow must be a JSON object (ComfyUI API format)")
        check_priority(priority)
        if not isinstance(metadata, dict):
            raise HTTPError(400, "metadata must be a JSON object")
        now = time.time()
        job = {
            "id": str(uuid.uuid4()),
            "user_id": user,
            "workflow": workflow,
            "status": "pending",
            "priority": priority,
            "created_at": iso(now),
            "started_at": None,
            "completed_at": None,
            "worker_id": None,
            "result": None,
            "error": None,
            "metadata": metadata,
        }

        def build():
            # Under WATCH queue:pending: two submissions at once cannot both take the last place.
            if self.redis.execute("ZCARD", "queue:pending") >= self.max_depth:
                raise HTTPError(429, "Queue is full")
            return [
                ("SET", job_key(job["id"]), json.dumps(job)),
                ("ZADD", "queue:pending", pending_score(priority, now), job["id"]),
                ("SADD", f"user:{user}:jobs", job["id"]),
                event("job_created", job),
            ], job

        self.redis.transaction(build, "queue:pending")
        self.logger.info("Job %s submitted by user %s", job["id"], user)
        return 201, job

    def cancel(self, request, job_id):
        def build():
            job = self.load_or_404(job_id)
            if job["status"] not in ("pending", "running"):
                raise HTTPError(409, f"Cannot cancel a job that is {job['status']}")
            queue = f"queue:{job['status']}"
            kind = "job_deleted" if job["status"] == "pending" else "job_updated"
            job.update(status="cancelled", completed_at=iso(time.time()))
            return [("ZREM", queue, job_id), ("SET", job_key(job_id), json.dumps(job)), event(kind, job)], job

        job = self.redis.transaction(build, job_key(job_id))
        self.logger.info("Job %s cancelled", job_id)
        return 200, job

    def set_priority(self, request, job_id):
        priority = request.json_body().get("priority")
        check_priority(priority)

        def build():
            job = self.load_or_404(job_id)
            if job["status"] != "pending":
                raise HTTPError(409, f"Cannot change the priority of a job that is {job['status']}")
            job["priority"] = priority
            return [
                ("SET", job_key(job_id), json.dumps(job)),
                ("ZADD", "queue:pending", pending_score(priority, datetime.fromisoformat(job["created_at"]).timestamp()), job_id),
                event("job_updated", job),
            ], job

        job = self.redis.transaction(build, job_key(job_id), "queue:pending")
        self.logger.info("Updated job %s priority to %d", job_id, priority)
        return 200, job

    # Workers

    def next_job(self, request):
        worker = request.query("worker_id")
        if not worker:
            raise HTTPError(400, "worker_id is required")
        self.redis.execute("SET", f"worker:{worker}:heartbeat", iso(time.time()), "EX", HEARTBEAT_TTL)
        self.redis.execute("SADD", KNOWN_WORKERS, worker)

        def build():
            # ZPOPMIN inside MULTI would leave the job in no queue if the queue manager died before
            # moving it: read the head under WATCH instead, and move it in the same EXEC that rewrites it.
            head = self.redis.execute("ZRANGE", "queue:pending", 0, 0)
            if not head:
                return [], None
            job_id = head[0]
            self.redis.execute("WATCH", job_key(job_id))
            job = self.load(job_id)
            if job is None:  # an id without its record: drop it; the worker's next poll gets the next job
                return [("ZREM", "queue:pending", job_id)], None
            now = time.time()
            job.update(status="running", started_at=iso(now), worker_id=worker)
            return [
                ("ZREM", "queue:pending", job_id),
                ("ZADD", "queue:running", now, job_id),
                ("SET", job_key(job_id), json.dumps(job)),
                event("job_updated", job),
            ], job

        job = self.redis.transaction(build, "queue:pending")
        if job is None:
            return 204, None
        self.logger.info("Assigned job %s to worker %s", job["id"], worker)
        return 200, job

    def complete_job(self, request):
        result = request.json_body().get("result")
        job = self.finish(request.query("job_id"), "completed", result=result)
        self.logger.info("Recorded job %s as completed", job["id"])
        return 200, job

    def fail_job(self, request):
        error = request.json_body().get("error")
        if not isinstance(error, str) or not error:
            raise HTTPError(400, "error must be a non-empty string")
        job = self.finish(request.query("job_id"), "failed", error=error)
        self.logger.info("Recorded job %s as failed", job["id"])
        return 200, job

    def finish(self, job_id, status, **fields):
        """Move a running job to queue:completed or queue:failed; 409 when it is no longer running."""
        if not job_id:
            raise HTTPError(400, "job_id is required")

        def build():
            job = self.load_or_404(job_id)
            if job["status"] != "running":
                # Cancelled (or timed out) meanwhile: its state stays what it is.
                raise HTTPError(409, f"Job is {job['status']}, not running")
            now = time.time()
            job.update(status=status, completed_at=iso(now), **fields)
            commands = [
                ("ZREM", "queue:running", job_id),
                ("ZADD", f"queue:{status}", now, job_id),
                ("SET", job_key(job_id), json.dumps(job)),
                event("job_updated", job),
            ]
            if status == "completed":
                commands.append(("INCR", f"user:{job['user_id']}:completed"))
            return commands, job

        return self.redis.transaction(build, job_key(job_id), "queue:running")

    # Housekeeping

    def cleanup_forever(self, interval):
        while True:
            time.sleep(interval)
            try:
                self.cleanup()
            except Exception:
                # Redis may be restarting: try again at the next interval.
                self.logger.exception("Cleanup of stale jobs failed")

    def cleanup(self):
        """Fail the jobs that have been running longer than JOB_TIMEOUT."""
        stale = self.redis.execute("ZRANGEBYSCORE", "queue:running", "-inf", time.time() - self.job_timeout)
        cleaned = 0
        for job_id in stale:
            try:
                self.finish(job_id, "failed", error="Job timeout exceeded")
                cleaned += 1
            except HTTPError as error:
                if error.status == 404:  # an id without its record would stay in queue:running forever
                    self.redis.execute("ZREM", "queue:running", job_id)
        if cleaned:
            self.logger.info("Cleaned up %d stale jobs", cleaned)


def check_priority(priority):
    if type(priority) is not int or not 0 <= priority <= 3:
        raise HTTPError(400, "priority must be 0 (instructor), 1 (high), 2 (normal) or 3 (low)")


def main():
    logger = setup_logging("queue_manager")
    redis = Redis(env("REDIS_HOST", "redis"), env("REDIS_PORT", 6379, int), env("REDIS_PASSWORD", None))
    manager = QueueManager(redis, logger)
    cleanup = threading.Thread(target=manager.cleanup_forever, args=(env("CLEANUP_INTERVAL", 30, float),), daemon=True)
    cleanup.start()
    logger.info(
        "Starting queue manager %s (max queue depth %d, job timeout %gs)", manager.version, manager.max_depth, manager.job_timeout
    )
    serve(manager, env("QUEUE_MANAGER_PORT", 3000, int))


if __name__ == "__main__":
    main()
