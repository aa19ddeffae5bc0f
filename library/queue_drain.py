#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: wait until the workshop's job queue has drained."""

DOCUMENTATION = r"""
---
module: queue_drain
short_description: Wait until a ComfyUI workshop's job queue has drained
description:
  - Waits until C(queue:pending) and C(queue:running) are empty (or C(queue:pending) only) on a
    consistent view of the platform's keys in Redis; C(queue:updates) events only wake the wait early,
    with polling as the fallback.
  - The platform moves a job in separate Redis commands, so empty queues alone are not enough. Drained
    means also that every job seen open since the drain began has a terminal record (completed, failed,
    cancelled) in the queue it names, that no record anywhere says pending or running outside a queue
    (a job between two moves), and that a confirming re-read agrees.
  - A job record seen during the drain that vanishes, or a finished queue that shrinks (FLUSHALL, Redis
    restarted empty), fails the task naming what vanished; it is never reported drained.
  - Or, with O(source=http), polls the queue manager's status URL and reads the depth with a
    JMESPath expression, the analogue of the checklist's C(curl ... | jq .queue_depth); the depth must
    read 0 twice, O(poll_interval) apart.
  - When O(timeout) expires, it classifies every open job (running with its worker alive, running with
    its worker gone, cancelled but still in C(queue:running), pending, an id with no record, an unreadable
    record, a pending/running record in no queue), applies O(stuck_policy), and fails or returns as
    O(on_timeout) says, with advice for each job. No job is ever dropped silently.
  - With O(state=read), it only reads the queue as a drain would see it (what check mode reports) and
    changes nothing, in check mode or not. The drain role asks so, before closing anything, whether the
    queue can be read at all.
  - For progress an admin can watch, call it repeatedly with a short O(slice_seconds), passing
    the previous result's RV(resume); the drain role does so in a loop whose label shows the depth.
version_added: "0.1.0"
author: comfy-wrapup contributors (@comfy-wrapup)
requirements:
  - redis (Python library)
  - jmespath (Python library, for O(source=http))
attributes:
  check_mode:
    support: full
    description: Reports the queue now and what it would wait for, without waiting or changing any job.
  diff_mode:
    support: none
    description: Returns no diff.
extends_documentation_fragment:
  - workshop_redis
  - workshop_compose
options:
  state:
    description:
      - V(drained) waits until the queue has drained (and settles stuck jobs on expiry, as O(stuck_policy) says).
      - V(read) only reads the queue now and returns what a drain would see (RV(drained), RV(counts), RV(summary)),
        waiting for nothing and changing nothing.
    type: str
    choices: [drained, read]
    default: drained
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
      - What to do with jobs that did not finish when O(timeout) expired. Each move is one WATCH/MULTI/EXEC
        over the job's record, the four queues and its worker's heartbeat, so a job a worker finishes
        meanwhile keeps its real outcome, and every job ends in exactly one queue with a record that agrees.
      - V(leave) them as they are.
      - V(requeue) running jobs whose worker is gone (no heartbeat) back into C(queue:pending).
      - V(fail) running jobs whose worker is gone, and every pending job, with O(fail_reason) as their error.
      - With V(requeue) or V(fail), jobs cancelled while running (which the platform keeps in
        C(queue:running)) are finished as cancelled.
      - Jobs whose worker still polls are left unless O(force). Ids without a record and unreadable
        records are left unless O(clear_broken).
      - V(requeue) and V(fail) need O(source=redis).
    type: str
    choices: [leave, requeue, fail]
    default: leave
  force:
    description:
      - Let O(stuck_policy) act also on running jobs whose worker still polls, and on records that say
        pending/running in no queue. A warning says so, since a worker that reports later makes the platform
        record its outcome too.
    type: bool
    default: false
  clear_broken:
    description:
      - On expiry, remove from the queues the ids that have no job record and those whose record is
        unreadable (the record itself is kept, as it is). Otherwise they are named and left.
    type: bool
    default: false
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

- name: After 30 minutes, fail what is stuck on a dead worker, clear ids without a record, and carry on
  queue_drain:
    env_file: /home/dev/projects/comfyui/.env
    timeout: 1800
    stuck_policy: fail
    clear_broken: true
    on_timeout: return
  register: drain

- name: Show what was done with each stuck job
  ansible.builtin.assert:
    that: drain.actions | rejectattr('action', 'match', 'left') | list | length == drain.actions | length
    fail_msg: "Some jobs were left: {{ drain.actions }}"

- name: Before closing anything, make sure the queue can be read (read only)
  queue_drain:
    env_file: /home/dev/projects/comfyui/.env
    state: read
  register: queue_now

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
  description:
    - When the drained queue was confirmed, ISO-8601 UTC; null while not drained.
    - When it emptied between two calls of a sliced wait, when the last job seen open was filed in
      C(queue:completed) or C(queue:failed) (its score there), if after the previous call's last look.
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
  description:
    - Jobs completed and failed since the drain started (from the queues' scores), and the jobs seen during
      the drain that were cancelled (deleted, for pending ones).
  returned: always
  type: dict
  sample: {completed: 12, failed: 1, cancelled: 0}
stuck_jobs:
  description:
    - Jobs not pending that were still open when O(timeout) expired (before O(stuck_policy) acted), each
      with its class C(kind) - V(running_worker_alive), V(running_worker_gone), V(cancelled_in_running),
      V(ghost) (an id with no record), V(unreadable), V(in_no_queue), V(moving) (the platform is moving it).
  returned: always
  type: list
  elements: dict
  sample:
    - id: 1b4e28ba-2fa1-11d2-883f-0016d3cca427
      kind: running_worker_alive
      queue: running
      status: running
      user_id: user007
      worker_id: worker-1
      running_since: "2026-11-29T16:01:12.000000+00:00"
      running_seconds: 3712.4
      worker_heartbeat_alive: true
      created_at: "2026-11-29T16:00:58.120000Z"
pending_jobs:
  description: Jobs still pending when O(timeout) expired, in queue order (C(kind) V(pending)).
  returned: always
  type: list
  elements: dict
actions:
  description: What O(stuck_policy) and O(clear_broken) did, per job (or why a job was left).
  returned: always
  type: list
  elements: dict
  sample: [{id: 1b4e28ba-2fa1-11d2-883f-0016d3cca427, kind: running_worker_gone, action: requeued}]
summary:
  description: One line on the state of the drain, for progress labels.
  returned: always
  type: str
  sample: "3 pending, 1 running after 40s"
resume:
  description:
    - Pass to O(resume) of the next call to continue this drain. With O(source=redis) it holds every job id
      seen open since the drain began (C(seen)), those the platform deleted (C(deleted)), those a policy
      moved (C(acted)) and the ids O(clear_broken) removed (C(cleared)).
  returned: always
  type: dict
forced:
  description:
    - Ids of the jobs O(force) requeued or failed although their worker still polled (or that were in no queue);
      a warning says so too.
  returned: always
  type: list
  elements: str
would_wait_for:
  description: In check mode or with O(state=read), what the drain would wait for.
  returned: check mode, or O(state=read)
  type: str
"""

import json
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_connection import CONNECTION_MUTUALLY_EXCLUSIVE, connection_argument_spec, require_libraries
from ansible.module_utils.workshop_drain import (
    ALIVE,
    NO_QUEUE,
    PENDING,
    HttpQueue,
    RedisQueue,
    classify,
    describe,
    http_stuck_message,
    http_wait,
    look,
    new_state,
    settle_stuck,
    stuck_message,
    wait_until_drained,
)
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_redis import WorkshopRedis
from ansible.module_utils.workshop_time import utc_iso


def http_fetcher(module):
    # Imported here: Ansible's HTTP client costs a module run 0.06 s of CPU to import, and only
    # source=http uses it.
    from ansible.module_utils.urls import fetch_url

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
    """The queue to read; raises WorkshopError (a .env missing or unreadable, a key not set)."""
    params = module.params
    if params["source"] == "http":
        require_libraries(module, "jmespath")
        query = params["depth_query"] or (
            "queue_depth" if params["queues"] == ["pending"] else "sum([pending_jobs, running_jobs])"
        )
        return HttpQueue(http_fetcher(module), params["status_url"], query)
    require_libraries(module, "redis")
    return RedisQueue(WorkshopRedis.from_params(params))


def only_look(module):
    """Whether this call only reads the queue: check mode, or state=read."""
    return module.check_mode or module.params["state"] == "read"


def drain_http(module, queue, now, resume):
    """The status-URL drain: depth 0 on two reads; nothing can be named or settled from counts."""
    params = module.params
    started = float(resume.get("started", now))
    deadline = started + params["timeout"]
    counts = queue.counts()
    counts_at_start = resume.get("counts_at_start") or counts
    if only_look(module):
        drained, why, drained_at = counts["depth"] == 0, describe(counts, params["queues"]), None
    else:
        until = deadline if params["slice_seconds"] is None else min(deadline, now + params["slice_seconds"])
        drained, counts, why, drained_at = http_wait(queue, until, params["poll_interval"])
    ended = time.time()
    totals = dict(
        completed=(counts.get("completed") or 0) - (counts_at_start.get("completed") or 0),
        failed=(counts.get("failed") or 0) - (counts_at_start.get("failed") or 0),
        cancelled=0,
    )
    return dict(
        started=started,
        ended=ended,
        drained=drained,
        drained_at=drained_at,
        timed_out=not drained and ended >= deadline and not only_look(module),
        counts=counts,
        counts_at_start=counts_at_start,
        totals=totals,
        why=why,
        stuck_jobs=[],
        pending_jobs=[],
        actions=[],
        resume=dict(started=started, counts_at_start=counts_at_start),
    )


def drain_redis(module, queue, now, resume):
    """One call of the Redis drain: look (or wait), settle stuck jobs on expiry, report."""
    params = module.params
    queues = params["queues"]
    state = new_state(resume, now, queue.counts())
    deadline = state["started"] + params["timeout"]
    result = dict(stuck_jobs=[], pending_jobs=[], actions=[], counts_at_start=state["counts_at_start"])
    if only_look(module):
        drained, counts, why = look(queue, state, queues)
        drained_at = time.time() if drained else None
    else:
        until = deadline if params["slice_seconds"] is None else min(deadline, now + params["slice_seconds"])
        drained, counts, why, drained_at = wait_until_drained(queue, state, queues, until, params["poll_interval"])
    timed_out = not drained and time.time() >= deadline and not only_look(module)
    if timed_out:
        jobs = classify(queue)
        result["stuck_jobs"] = [job for job in jobs if job["kind"] != PENDING]
        result["pending_jobs"] = [job for job in jobs if job["kind"] == PENDING]
        if params["stuck_policy"] != "leave" or params["clear_broken"]:
            result["actions"] = settle_stuck(
                queue, jobs, params["stuck_policy"], params["fail_reason"], params["force"], params["clear_broken"], state
            )
            drained, counts, why = look(queue, state, queues)
            drained_at = time.time() if drained else None
    completed, failed = queue.finished_since(state["started"])
    seen_records = queue.records(state["seen"])
    cancelled = sum(1 for r in seen_records.values() if isinstance(r, dict) and r.get("status") == "cancelled")
    result.update(
        started=state["started"],
        ended=time.time(),
        drained=drained,
        drained_at=drained_at,
        timed_out=timed_out,
        counts=counts,
        totals=dict(completed=completed, failed=failed, cancelled=cancelled + len(state["deleted"])),
        why=why,
        resume=state,
    )
    return result


def report(module, outcome):
    """The module's result from a drain outcome."""
    params = module.params
    elapsed = round(outcome["ended"] - outcome["started"], 3)
    changed = any(
        not action["action"].startswith("left") and action["action"] != "finished meanwhile" for action in outcome["actions"]
    )
    forced = [
        action["id"]
        for action in outcome["actions"]
        if action["action"] in ("requeued", "failed") and action["kind"] in (ALIVE, NO_QUEUE)
    ]
    if forced:
        module.warn(
            f"force: {len(forced)} job(s) requeued or failed although their worker may still be working on them "
            f"({', '.join(forced)}); if that worker reports later, the platform records its outcome too, and the "
            "job can then be in two queues"
        )
    result = dict(
        changed=changed,
        drained=outcome["drained"],
        timed_out=outcome["timed_out"],
        started_at=utc_iso(outcome["started"]),
        ended_at=utc_iso(outcome["ended"]),
        drained_at=utc_iso(outcome["drained_at"]) if outcome["drained_at"] else None,
        duration_seconds=elapsed,
        counts_at_start=outcome["counts_at_start"],
        counts=outcome["counts"],
        totals=outcome["totals"],
        stuck_jobs=outcome["stuck_jobs"],
        pending_jobs=outcome["pending_jobs"],
        actions=outcome["actions"],
        summary=f"drained after {elapsed:.0f}s" if outcome["drained"] else f"{outcome['why']} after {elapsed:.0f}s",
        forced=forced,
        resume=outcome["resume"],
    )
    if only_look(module):
        result["would_wait_for"] = (
            f"{' and '.join(params['queues'])} to be empty, now {outcome['why']}; up to {params['timeout']}s"
        )
    return result


def main():
    argument_spec = connection_argument_spec(
        project_dir_required=False,
        state=dict(type="str", choices=["drained", "read"], default="drained"),
        source=dict(type="str", choices=["redis", "http"], default="redis"),
        queues=dict(type="list", elements="str", choices=["pending", "running"], default=["pending", "running"]),
        timeout=dict(type="int", default=3600),
        slice_seconds=dict(type="float"),
        poll_interval=dict(type="float", default=0.5),
        on_timeout=dict(type="str", choices=["fail", "return"], default="fail"),
        stuck_policy=dict(type="str", choices=["leave", "requeue", "fail"], default="leave"),
        force=dict(type="bool", default=False),
        clear_broken=dict(type="bool", default=False),
        fail_reason=dict(type="str", default="Workshop ended: the job did not finish before the drain timeout"),
        resume=dict(type="dict"),
        status_url=dict(type="str", default="http://127.0.0.1:3000/api/queue/status"),
        depth_query=dict(type="str"),
        validate_certs=dict(type="bool", default=True),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=CONNECTION_MUTUALLY_EXCLUSIVE,
        supports_check_mode=True,
    )
    params = module.params
    if params["source"] != "redis" and (params["stuck_policy"] != "leave" or params["force"] or params["clear_broken"]):
        module.fail_json(
            msg=f"stuck_policy={params['stuck_policy']}, force and clear_broken need source=redis: only Redis holds the jobs"
        )
    queue = None
    try:
        queue = open_queue(module)
        now = time.time()
        resume = params["resume"] or {}
        if params["source"] == "http":
            outcome = drain_http(module, queue, now, resume)
        else:
            outcome = drain_redis(module, queue, now, resume)
    except WorkshopError as exc:
        module.fail_json(msg=f"While draining the queue: {exc.msg}", **exc.context)
    finally:
        if queue is not None:
            queue.close()
    result = report(module, outcome)
    if outcome["timed_out"] and params["on_timeout"] == "fail" and not outcome["drained"]:
        if params["source"] == "http":
            msg = http_stuck_message(params["timeout"], outcome["counts"], params["status_url"])
        else:
            msg = stuck_message(params["timeout"], outcome["stuck_jobs"] + outcome["pending_jobs"])
        module.fail_json(msg=msg, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
