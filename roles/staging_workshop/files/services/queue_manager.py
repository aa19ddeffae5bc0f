"""Staging queue manager: the platform's job queue API over its Redis keys (http.server in place of FastAPI).

Every change of a job is the platform's own sequence of separate Redis commands, in its order and with
no MULTI around them (../shared/platform/README.md, "How the queue manager moves a job"): between the
ZPOPMIN of a job and its ZADD to queue:running the job is in no queue, and the job_updated event is
published inside that window. STEP_PAUSE (seconds, default 0) sleeps between the commands of a move,
so a test can hold any of these windows open as long as it needs.
"""

import contextlib
import json
import re
import threading
import time
import uuid

from common import HTTPError, env, epoch_of, iso, job_time, serve, setup_logging
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


def job_json(job):
    return json.dumps(job)


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
        self.step_pause = env("STEP_PAUSE", 0.0, float)

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

    # The platform's moves, one Redis command at a time

    def run(self, *commands):
        """Send `commands` one by one, as the platform does, with STEP_PAUSE between them."""
        for index, command in enumerate(commands):
            if index and self.step_pause:
                time.sleep(self.step_pause)
            self.redis.execute(*command)

    def pause(self):
        if self.step_pause:
            time.sleep(self.step_pause)

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
        # The platform reads the depth, then writes: two submissions at once may both take the last place.
        if self.redis.execute("ZCARD", "queue:pending") >= self.max_depth:
            raise HTTPError(429, f"Queue is full (max depth: {self.max_depth})")
        now = time.time()
        job = {
            "id": str(uuid.uuid4()),
            "user_id": user,
            "workflow": workflow,
            "status": "pending",
            "priority": priority,
            "created_at": job_time(now),
            "started_at": None,
            "completed_at": None,
            "worker_id": None,
            "result": None,
            "error": None,
            "metadata": metadata,
        }
        # submit: SET job -> ZADD queue:pending -> SADD user jobs -> PUBLISH job_created.
        self.run(
            ("SET", job_key(job["id"]), job_json(job)),
            ("ZADD", "queue:pending", pending_score(priority, now), job["id"]),
            ("SADD", f"user:{user}:jobs", job["id"]),
            event("job_created", job),
        )
        self.logger.info("Job %s submitted by user %s", job["id"], user)
        return 201, job

    def cancel(self, request, job_id):
        """A pending job is deleted outright; a running one only gets status cancelled and stays in queue:running."""
        job = self.load_or_404(job_id)
        if job["status"] == "running":
            job["status"] = "cancelled"
            self.run(("SET", job_key(job_id), job_json(job)), event("job_updated", job))
            self.logger.info("Job %s marked for cancellation", job_id)
        elif job["status"] == "pending":
            self.run(
                *(("ZREM", f"queue:{queue}", job_id) for queue in QUEUES),
                ("SREM", f"user:{job['user_id']}:jobs", job_id),
                ("DEL", job_key(job_id)),
                event("job_deleted", {"job_id": job_id}),
            )
            self.logger.info("Job %s cancelled and removed from queue", job_id)
        else:
            raise HTTPError(400, f"Cannot cancel job in {job['status']} state")
        return 204, None

    def set_priority(self, request, job_id):
        priority = request.json_body().get("priority")
        check_priority(priority)
        job = self.load_or_404(job_id)
        if job["status"] != "pending":
            raise HTTPError(400, f"Cannot change priority of {job['status']} job")
        job["priority"] = priority
        self.run(
            ("SET", job_key(job_id), job_json(job)),
            event("job_updated", job),
            ("ZADD", "queue:pending", pending_score(priority, epoch_of(job["created_at"])), job_id),
        )
        self.logger.info("Updated job %s priority to %d", job_id, priority)
        return 200, {"status": "success", "job_id": job_id, "priority": priority}

    # Workers

    def next_job(self, request):
        """ZPOPMIN queue:pending -> GET job -> SET job (running) -> PUBLISH job_updated -> ZADD queue:running."""
        worker = request.query("worker_id")
        if not worker:
            raise HTTPError(400, "worker_id is required")
        # The heartbeat says only that the worker polls: a worker busy with a long job lets it expire.
        self.redis.execute("SET", f"worker:{worker}:heartbeat", iso(time.time()), "EX", HEARTBEAT_TTL)
        self.redis.execute("SADD", KNOWN_WORKERS, worker)
        popped = self.redis.execute("ZPOPMIN", "queue:pending")
        if not popped:
            return 204, None
        job_id = popped[0]
        self.pause()
        try:
            job = self.load(job_id)
        except ValueError:  # an unreadable record: the platform's get_job logs it and answers None
            job = None
        if job is None:  # the platform drops the id: the job is gone from every queue
            return 204, None
        self.pause()
        job.update(status="running", started_at=job_time(time.time()), worker_id=worker)
        self.run(
            ("SET", job_key(job_id), job_json(job)),
            event("job_updated", job),
            ("ZADD", "queue:running", time.time(), job_id),
        )
        self.logger.info("Assigned job %s to worker %s", job_id, worker)
        return 200, job

    def complete_job(self, request):
        result = request.json_body().get("result")
        job = self.finish(request.query("job_id"), "completed", result=result)
        self.logger.info("Recorded job %s as completed", job["id"])
        return 200, {"status": "success", "job_id": job["id"]}

    def fail_job(self, request):
        error = request.json_body().get("error")
        if not isinstance(error, str) or not error.strip():
            raise HTTPError(400, "error must be a non-empty string")
        job = self.finish(request.query("job_id"), "failed", error=error.strip())
        self.logger.info("Recorded job %s as failed", job["id"])
        return 200, {"status": "success", "job_id": job["id"]}

    def finish(self, job_id, status, **fields):
        """SET job (completed/failed) -> PUBLISH -> ZREM queue:running -> ZADD queue:<status> (-> INCR).

        As on the platform, whatever the record's status was (a job cancelled while running is
        completed all the same); 404 when the record is gone.
        """
        if not job_id:
            raise HTTPError(400, "job_id is required")
        job = self.load_or_404(job_id)
        job.update(status=status, completed_at=job_time(time.time()), **fields)
        commands = [
            ("SET", job_key(job_id), job_json(job)),
            event("job_updated", job),
            ("ZREM", "queue:running", job_id),
            ("ZADD", f"queue:{status}", time.time(), job_id),
        ]
        if status == "completed":
            commands.append(("INCR", f"user:{job['user_id']}:completed"))
        self.pause()
        self.run(*commands)
        return job

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
        """Fail the jobs that have been running longer than JOB_TIMEOUT (an id without its record stays)."""
        stale = self.redis.execute("ZRANGEBYSCORE", "queue:running", 0, time.time() - self.job_timeout)
        cleaned = 0
        for job_id in stale:
            with contextlib.suppress(HTTPError):  # a record that is gone: the platform counts it all the same
                self.finish(job_id, "failed", error="Job timeout exceeded")
            cleaned += 1
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
