"""The Redis connection shared by every module that reads the workshop's queue.

One argument spec and one client, in the manner of community.general's redis module_utils,
so drain, snapshot and metrics connect, authenticate and fail the same way. The password
comes from the workshop's .env on the host (or, where there is no .env, a no_log option).
"""

import time

from ansible.module_utils.workshop_dotenv import dotenv_secret
from ansible.module_utils.workshop_errors import WorkshopError, WorkshopUnreachable

try:
    import redis
except ImportError:  # the module fails through require_libraries, naming the package, before any Redis step
    redis = None

# The platform's queues: sorted sets of job ids (README: Redis data model).
QUEUES = ("pending", "running", "completed", "failed")


def queue_key(queue):
    return f"queue:{queue}"


class RedisRefused(WorkshopError):
    """Redis answered a command with an error (not an authentication one): a command renamed or not
    allowed, a wrong type. Callers that can do without the command catch this, and only this."""


def _no_retries():
    """redis-py 6 and later retry a refused connection, and a refused password (an AuthenticationError is a
    ConnectionError there), three times with backoff: a wrong password was named after 3.4 s. The modules
    wait and read again where they mean to; one try is also what Ubuntu 22.04's redis-py 3.5 does, which
    has no Retry to give."""
    try:
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:
        return {}
    return {"retry": Retry(NoBackoff(), 0)}


class WorkshopRedis:
    """A Redis client for the workshop's queue whose errors name host, port and what to do."""

    def __init__(self, host, port, password=None, db=0, timeout=5.0, password_source="redis_password"):
        self.host = host
        self.port = port
        self.password_source = password_source
        self.password_given = bool(password)
        self.watch_error = redis.WatchError
        self.client = redis.Redis(
            host=host,
            port=port,
            db=db,
            password=password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
            **_no_retries(),
        )

    @classmethod
    def from_params(cls, params):
        """Build the client from the connection options (workshop_connection), reading the password from env_file."""
        password, source = params.get("redis_password"), "redis_password"
        if params.get("env_file"):
            source = f"{params['redis_password_key']} in {params['env_file']}"
            password = dotenv_secret(params["env_file"], params["redis_password_key"])
        return cls(
            params["redis_host"],
            params["redis_port"],
            password=password,
            db=params["redis_db"],
            timeout=params["redis_timeout"],
            password_source=source,
        )

    @property
    def address(self):
        return f"{self.host}:{self.port}"

    def call(self, function, *args, **kwargs):
        """Run a client or pipeline call; Redis errors become WorkshopError naming the address."""
        try:
            return function(*args, **kwargs)
        except (redis.AuthenticationError, redis.ResponseError) as exc:
            # NOAUTH is an AuthenticationError from redis-py 4 on, a ResponseError before.
            if isinstance(exc, redis.AuthenticationError) and self.password_given:
                raise WorkshopError(
                    f"Redis at {self.address} refused the password: check {self.password_source} (wrong password)",
                    redis=self.address,
                ) from None
            if isinstance(exc, redis.AuthenticationError) or "NOAUTH" in str(exc):
                raise WorkshopError(
                    f"Redis at {self.address} requires a password and none was given: set env_file to the "
                    f"workshop's .env (or check {self.password_source})",
                    redis=self.address,
                ) from None
            raise RedisRefused(f"Redis at {self.address} answered an error: {exc}", redis=self.address) from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise WorkshopUnreachable(
                f"Cannot reach Redis at {self.address} ({exc}): is the workshop's redis service running "
                "and its port published there?",
                redis=self.address,
            ) from None

    def queue_counts(self):
        """Sizes of the platform's queues, read in one round trip.

        A queue key of another type than a sorted set means this is not the platform's key
        layout; that raises rather than counting wrongly.
        """
        pipe = self.client.pipeline(transaction=False)
        for queue in QUEUES:
            pipe.type(queue_key(queue))
            pipe.zcard(queue_key(queue))
        replies = self.call(pipe.execute)
        counts = {}
        for index, queue in enumerate(QUEUES):
            key_type, size = replies[2 * index], replies[2 * index + 1]
            if key_type not in ("zset", "none"):
                raise WorkshopError(
                    f"{queue_key(queue)} on Redis at {self.address} is a {key_type}, not a sorted set: "
                    "this is not the platform's key layout (see the platform README)",
                    redis=self.address,
                    key=queue_key(queue),
                )
            counts[queue] = size
        return counts

    def persistence(self):
        """INFO persistence: Redis's own counters of its snapshots."""
        return self.call(self.client.info, "persistence")

    def snapshot(self, method="bgsave", timeout=300, poll=0.05):
        """Have Redis write its RDB file and wait until it has, without blocking it (BGSAVE, unless method=save).

        Completion is read from Redis's own persistence counters (INFO persistence), not LASTSAVE,
        whose one-second resolution misses a save ending in the same second as the one before:
        done when no background save is in progress and rdb_saves has moved past its value before
        the request (Redis 7; before 7, rdb_last_save_time has moved or rdb_changes_since_last_save
        is 0 after our save). BGSAVE SCHEDULE waits behind an AOF rewrite instead of failing.
        Returns {lastsave, rdb_saves, changes_since_save}.
        """
        before = self.persistence()
        if method == "save":
            self.call(self.client.save)
        else:
            self.call(self.client.bgsave, schedule=True)
        deadline = time.monotonic() + timeout
        while True:
            info = self.persistence()
            if not info.get("rdb_bgsave_in_progress") and _saved_since(before, info, method):
                if method == "bgsave" and info.get("rdb_last_bgsave_status") != "ok":
                    raise WorkshopError(
                        f"Redis at {self.address} failed to write its snapshot (rdb_last_bgsave_status "
                        f"{info.get('rdb_last_bgsave_status')}): check its disk and its log",
                        redis=self.address,
                    )
                return dict(
                    lastsave=info.get("rdb_last_save_time"),
                    rdb_saves=info.get("rdb_saves"),
                    changes_since_save=info.get("rdb_changes_since_last_save"),
                )
            if time.monotonic() > deadline:
                raise WorkshopError(
                    f"Redis at {self.address} did not finish its snapshot within {timeout}s "
                    f"(rdb_bgsave_in_progress {info.get('rdb_bgsave_in_progress')}): raise save_timeout or check its log",
                    redis=self.address,
                )
            time.sleep(poll)

    def rdb_location(self):
        """Where Redis writes its RDB file (CONFIG GET dir, dbfilename); None when CONFIG is not allowed
        (renamed or denied). A wrong password or a Redis that does not answer raises, as everywhere."""
        try:
            directory = self.call(self.client.config_get, "dir").get("dir")
            name = self.call(self.client.config_get, "dbfilename").get("dbfilename")
        except RedisRefused:
            return None
        return f"{directory.rstrip('/')}/{name}" if directory and name else None

    def queue_fingerprint(self):
        """What changes whenever a job is submitted, moved, finished or cancelled, and nothing else.

        The size and the newest member of each queue, and the number of keys without the workers'
        heartbeats (which the workers rewrite every few seconds, job or no job).
        """
        heartbeats = len(self.call(list, self.client.scan_iter(match="worker:*:heartbeat", count=1000)))
        pipe = self.client.pipeline(transaction=False)
        for queue in QUEUES:
            pipe.zcard(queue_key(queue))
            pipe.zrange(queue_key(queue), -1, -1, withscores=True)
        pipe.dbsize()
        replies = self.call(pipe.execute)
        return {
            "queues": {queue: [replies[2 * i], replies[2 * i + 1]] for i, queue in enumerate(QUEUES)},
            "keys": replies[-1] - heartbeats,
        }


def _saved_since(before, info, method):
    """Whether INFO persistence `info` shows a save completed after `before` was read."""
    if method == "save":
        return True  # SAVE returns once written
    if "rdb_saves" in before and "rdb_saves" in info:
        return info["rdb_saves"] > before["rdb_saves"]
    return info.get("rdb_last_save_time", 0) > before.get("rdb_last_save_time", 0) or (
        info.get("rdb_changes_since_last_save") == 0 and before.get("rdb_changes_since_last_save") != 0
    )
