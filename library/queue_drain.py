#!/usr/bin/python
"""Ansible module: wait until the workshop's job queue has drained."""

DOCUMENTATION = r"""
---
module: queue_drain
short_description: Wait until a ComfyUI workshop's job queue has drained
description:
  - Waits until C(queue:pending) and C(queue:running) are empty (or C(queue:pending) only),
    reading the platform's keys in Redis and waking at once on C(queue:updates) events,
    with polling as the fallback, so an empty queue is noticed within about a second.
  - Or, with O(source=http), polls the queue manager's status URL and reads the depth with a
    JMESPath expression, the analogue of the checklist's C(curl ... | jq .queue_depth).
  - When O(timeout) expires, it lists the stuck jobs (id, participant, worker, running since,
    whether that worker's heartbeat is alive), applies O(stuck_policy), and fails or returns
    as O(on_timeout) says. No job is ever dropped silently.
  - For progress an admin can watch, call it repeatedly with a short O(slice_seconds), passing
    the previous result's RV(resume); the drain role does so in a loop whose label shows the depth.
version_added: "0.1.0"
author: comfy-wrapup
requirements:
  - redis (Python library)
  - jmespath (Python library, for O(source=http))
attributes:
  check_mode:
    support: full
    description: Reports the queue now and what it would wait for, without waiting or changing any job.
  diff_mode:
    support: none
extends_documentation_fragment:
  - workshop_redis
options:
  source:
    description: Where the queue is read.
    type: str
    choices: [redis, http]
    default: redis
  queues:
    description: The queues that must be empty; C(pending) only lets running jobs finish on their own.
    type: list
    elements: str
    choices: [pending, running]
    default: [pending, running]
  timeout:
    description: Seconds to wait in all, counted from the first call (see O(resume)).
    type: int
    default: 3600
  slice_seconds:
    description: At most this many seconds in this call; it then returns with RV(drained=false) so the caller can show progress.
    type: float
  poll_interval:
    description: Seconds between reads when no C(queue:updates) event wakes the wait earlier.
    type: float
    default: 0.5
  on_timeout:
    description: On expiry of O(timeout), V(fail) the task or V(return) the result with RV(timed_out=true).
    type: str
    choices: [fail, return]
    default: fail
  stuck_policy:
    description:
      - What to do with jobs that did not finish when O(timeout) expired.
      - V(leave) them as they are; V(requeue) running jobs back into C(queue:pending) (for a worker
        that died); V(fail) every job still pending or running, with O(fail_reason) as their error.
      - V(requeue) and V(fail) need O(source=redis).
    type: str
    choices: [leave, requeue, fail]
    default: leave
  fail_reason:
    description: The error recorded on jobs failed by O(stuck_policy=fail).
    type: str
    default: "Workshop ended: the job did not finish before the drain timeout"
  resume:
    description: RV(resume) of the previous call, to continue one drain across calls.
    type: dict
  status_url:
    description: The queue manager's status endpoint, for O(source=http).
    type: str
    default: http://127.0.0.1:3000/api/queue/status
  depth_query:
    description:
      - JMESPath expression giving the depth from the status, for O(source=http).
      - Default C(sum([pending_jobs, running_jobs])), or C(queue_depth) when O(queues=[pending]).
    type: str
  validate_certs:
    description: Verify the TLS certificate of O(status_url).
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: Wait up to an hour for every job to finish
  queue_drain:
    env_file: /home/dev/projects/comfyui/.env
    timeout: 3600
  register: drain

- name: Note the completion time and the total of jobs for the report
  ansible.builtin.assert:
    that: drain.drained
    success_msg: "Drained at {{ drain.drained_at }}; {{ drain.counts.completed }} jobs completed"

- name: After 30 minutes, fail what is still stuck, and carry on
  queue_drain:
    env_file: /home/dev/projects/comfyui/.env
    timeout: 1800
    stuck_policy: fail
    on_timeout: return

- name: Wait through the queue manager's API, as the checklist's watch | jq does
  queue_drain:
    source: http
    status_url: https://comfy.example.org/api/queue/status
    queues: [pending]
"""

RETURN = r"""
drained:
  description: Whether the queues waited for are empty.
  returned: always
  type: bool
timed_out:
  description: Whether O(timeout) expired before the queue drained.
  returned: always
  type: bool
started_at:
  description: When the drain started (first call), ISO-8601 UTC.
  returned: always
  type: str
  sample: "2026-11-29T16:45:00.000000+00:00"
ended_at:
  description: When this call returned, ISO-8601 UTC.
  returned: always
  type: str
drained_at:
  description: When the empty queue was noticed, ISO-8601 UTC; null while not drained.
  returned: always
  type: str
duration_seconds:
  description: Seconds from RV(started_at) to RV(ended_at).
  returned: always
  type: float
counts_at_start:
  description: Queue sizes when the drain started.
  returned: always
  type: dict
  sample: {pending: 12, running: 1, completed: 230, failed: 9}
counts:
  description: Queue sizes now (with C(depth) for O(source=http)).
  returned: always
  type: dict
  sample: {pending: 0, running: 0, completed: 242, failed: 10}
totals:
  description: Jobs completed, failed and cancelled since the drain started.
  returned: always
  type: dict
  sample: {completed: 12, failed: 1, cancelled: 0}
stuck_jobs:
  description: Jobs still running when O(timeout) expired (before O(stuck_policy) acted).
  returned: always
  type: list
  elements: dict
  sample:
    - id: 1b4e28ba-2fa1-11d2-883f-0016d3cca427
      user_id: user007
      worker_id: worker-1
      running_since: "2026-11-29T16:01:12.000000+00:00"
      running_seconds: 3712.4
      worker_heartbeat_alive: true
pending_jobs:
  description: Jobs still pending when O(timeout) expired.
  returned: always
  type: list
  elements: dict
actions:
  description: What O(stuck_policy) did, per job.
  returned: always
  type: list
  elements: dict
  sample: [{id: 1b4e28ba-2fa1-11d2-883f-0016d3cca427, action: requeued}]
summary:
  description: One line on the state of the drain, for progress labels.
  returned: always
  type: str
  sample: "3 pending, 1 running after 40s"
resume:
  description: Pass to O(resume) of the next call to continue this drain.
  returned: always
  type: dict
would_wait_for:
  description: In check mode, what the drain would wait for.
  returned: check mode
  type: str
"""

import json
import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.urls import fetch_url
from ansible.module_utils.workshop_drain import (
    HttpQueue,
    RedisQueue,
    describe,
    is_drained,
    wait_until_drained,
)
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_redis import (
    HAS_REDIS,
    REDIS_IMPORT_ERROR,
    REDIS_MUTUALLY_EXCLUSIVE,
    WorkshopRedis,
    redis_argument_spec,
)
from ansible.module_utils.workshop_time import utc_iso

try:
    import jmespath  # noqa: F401 - only its presence is checked here

    HAS_JMESPATH = True
    JMESPATH_IMPORT_ERROR = None
except ImportError:
    import traceback

    HAS_JMESPATH = False
    JMESPATH_IMPORT_ERROR = traceback.format_exc()


def http_fetcher(module):
    def fetch_json(url):
        response, info = fetch_url(module, url, timeout=10)
        if info["status"] != 200:
            raise WorkshopError(
                f"The queue manager at {url} answered {info['status']}: {info.get('msg')}. Check status_url",
                url=url,
            )
        try:
            return json.loads(response.read())
        except ValueError:
            raise WorkshopError(f"The queue manager at {url} did not answer JSON: check status_url", url=url) from None

    return fetch_json


def open_queue(module):
    params = module.params
    if params["source"] == "http":
        if not HAS_JMESPATH:
            module.fail_json(msg=missing_required_lib("jmespath"), exception=JMESPATH_IMPORT_ERROR)
        query = params["depth_query"] or (
            "queue_depth" if params["queues"] == ["pending"] else "sum([pending_jobs, running_jobs])"
        )
        return HttpQueue(http_fetcher(module), params["status_url"], query)
    if not HAS_REDIS:
        module.fail_json(msg=missing_required_lib("redis"), exception=REDIS_IMPORT_ERROR)
    return RedisQueue(WorkshopRedis.from_params(params))


def stuck_message(params, stuck, pending):
    lines = [f"The queue did not drain within {params['timeout']}s: {len(stuck)} running, {len(pending)} pending."]
    for job in stuck:
        heartbeat = "heartbeat alive" if job["worker_heartbeat_alive"] else "no heartbeat"
        lines.append(
            f"Stuck job {job['id']} of {job['user_id']} on {job['worker_id']} since {job['running_since']} ({heartbeat})."
        )
    lines.append(
        "Cancel it (DELETE /api/jobs/ID), or re-run with stuck_policy=requeue or stuck_policy=fail (drain_stuck_policy)."
    )
    return " ".join(lines)


def drain(module, queue):
    """One call of the drain: wait (unless checking), settle stuck jobs on expiry, report."""
    params = module.params
    now = time.time()
    resume = params["resume"] or {}
    started = float(resume.get("started", now))
    deadline = started + params["timeout"]
    counts = queue.counts()
    counts_at_start = resume.get("counts_at_start") or counts
    queues = params["queues"]
    result = dict(
        changed=False,
        started_at=utc_iso(started),
        counts_at_start=counts_at_start,
        stuck_jobs=[],
        pending_jobs=[],
        actions=[],
        drained_at=None,
    )
    if module.check_mode:
        drained = is_drained(counts, queues)
        result.update(
            drained=drained,
            timed_out=False,
            counts=counts,
            totals=dict(completed=0, failed=0, cancelled=0),
            ended_at=utc_iso(now),
            duration_seconds=0.0,
            drained_at=utc_iso(now) if drained else None,
            would_wait_for=f"{' and '.join(queues)} to be empty, now {describe(counts, queues)}; up to {params['timeout']}s",
            summary=f"now {describe(counts, queues)}",
            resume=dict(started=started, counts_at_start=counts_at_start),
        )
        return result

    redis_source = isinstance(queue, RedisQueue)
    tracked = set(resume.get("open_ids", [])) | (set(queue.open_ids()) if redis_source else set())
    until = deadline if params["slice_seconds"] is None else min(deadline, now + params["slice_seconds"])
    counts, drained, drained_at = wait_until_drained(queue, queues, until, params["poll_interval"])
    timed_out = not drained and time.time() >= deadline

    if timed_out and redis_source:
        result["stuck_jobs"] = queue.stuck_jobs()
        result["pending_jobs"] = queue.pending_jobs()
        policy, reason = params["stuck_policy"], params["fail_reason"]
        if policy != "leave":
            settle = [(job["id"], "running") for job in result["stuck_jobs"]]
            if policy == "fail":
                settle += [(job["id"], "pending") for job in result["pending_jobs"]]
            for job_id, from_queue in settle:
                result["actions"].append(dict(id=job_id, action=queue.settle(job_id, from_queue, policy, reason)))
            result["changed"] = any(a["action"] != "finished meanwhile" for a in result["actions"])
            counts = queue.counts()
            drained = is_drained(counts, queues)
            drained_at = time.time() if drained else None

    ended = time.time()
    if redis_source:
        still_open = set(queue.open_ids())
        left = sorted(tracked - still_open)
        cancelled = sum(1 for record in queue.jobs(left) if record and record.get("status") == "cancelled")
        completed, failed = queue.finished_since(started)
        open_ids = sorted(still_open)
    else:
        cancelled, open_ids = 0, []
        completed = (counts.get("completed") or 0) - (counts_at_start.get("completed") or 0)
        failed = (counts.get("failed") or 0) - (counts_at_start.get("failed") or 0)
    cancelled += int(resume.get("cancelled", 0))
    elapsed = round(ended - started, 3)
    result.update(
        drained=drained,
        timed_out=timed_out,
        counts=counts,
        totals=dict(completed=completed, failed=failed, cancelled=cancelled),
        ended_at=utc_iso(ended),
        duration_seconds=elapsed,
        drained_at=utc_iso(drained_at) if drained_at else None,
        summary=f"drained after {elapsed:.0f}s" if drained else f"{describe(counts, queues)} after {elapsed:.0f}s",
        resume=dict(started=started, counts_at_start=counts_at_start, open_ids=open_ids, cancelled=cancelled),
    )
    return result


def main():
    argument_spec = redis_argument_spec()
    argument_spec.update(
        source=dict(type="str", choices=["redis", "http"], default="redis"),
        queues=dict(type="list", elements="str", choices=["pending", "running"], default=["pending", "running"]),
        timeout=dict(type="int", default=3600),
        slice_seconds=dict(type="float"),
        poll_interval=dict(type="float", default=0.5),
        on_timeout=dict(type="str", choices=["fail", "return"], default="fail"),
        stuck_policy=dict(type="str", choices=["leave", "requeue", "fail"], default="leave"),
        fail_reason=dict(type="str", default="Workshop ended: the job did not finish before the drain timeout"),
        resume=dict(type="dict"),
        status_url=dict(type="str", default="http://127.0.0.1:3000/api/queue/status"),
        depth_query=dict(type="str"),
        validate_certs=dict(type="bool", default=True),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=REDIS_MUTUALLY_EXCLUSIVE,
        supports_check_mode=True,
    )
    if module.params["stuck_policy"] != "leave" and module.params["source"] != "redis":
        module.fail_json(msg=f"stuck_policy={module.params['stuck_policy']} needs source=redis: only Redis holds the jobs")
    queue = open_queue(module)
    try:
        result = drain(module, queue)
    except WorkshopError as exc:
        module.fail_json(msg=f"While draining the queue: {exc.msg}", **exc.context)
    finally:
        queue.close()
    if result["timed_out"] and module.params["on_timeout"] == "fail" and not result["drained"]:
        module.fail_json(msg=stuck_message(module.params, result["stuck_jobs"], result["pending_jobs"]), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
