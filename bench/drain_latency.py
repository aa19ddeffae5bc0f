#!/usr/bin/env python3
"""How soon is an empty queue noticed? queue_drain against the checklist's `watch -n 10` poll.

On the staging workshop (which must be up: `make staging-up`), each trial submits a burst of
jobs and, side by side on the same run, starts:
  - the queue_drain module, run by ansible as the drain role runs it;
  - the checklist's command, `watch -n 10 'curl -s .../api/queue/status | jq ".queue_depth"'`,
    as a shell loop that notes when it first prints 0;
  - the same loop watching pending + running (what "drained" really means).
Latency is measured from the last job's completed_at (read from Redis afterwards). A negative
latency is a premature "drained": queue_depth counts pending jobs only, so it reaches 0 while
the last jobs are still running.

    python bench/drain_latency.py [--trials 3] [--jobs 12]
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parent.parent
PROJECT_DIR = Path("/var/lib/comfy-wrapup/staging/comfyui")
STATUS_URL = "http://127.0.0.1:3000/api/queue/status"


def password():
    for line in (PROJECT_DIR / ".env").read_text().splitlines():
        if line.startswith("REDIS_PASSWORD="):
            return line.split("=", 1)[1]
    sys.exit("no REDIS_PASSWORD in the staging .env: run `make staging-up` first")


def submit(user, duration):
    body = {"user_id": user, "workflow": {}, "metadata": {"staging": {"duration": duration, "succeed": True}}}
    request = urllib.request.Request(
        "http://127.0.0.1:3000/api/jobs", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["id"]


def watch_loop(jq_filter, interval, found):
    """The checklist's watch: every `interval` s, curl | jq; note when it first prints 0."""
    command = f"curl -s {STATUS_URL} | jq '{jq_filter}'"
    while True:
        out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False).stdout.strip()
        if out == "0":
            found.append(time.time())
            return
        time.sleep(interval)


def queue_drain(found):
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}
    args = json.dumps({"env_file": str(PROJECT_DIR / ".env"), "timeout": 600})
    out = subprocess.run(
        ["ansible", "workshop", "-m", "queue_drain", "-a", args], cwd=REPO, capture_output=True, text=True, env=env, check=True
    ).stdout
    found.append(datetime.fromisoformat(json.loads(out.partition(" => ")[2])["drained_at"]).timestamp())


def trial(client, jobs, interval):
    ids = [submit(f"user{1 + i % 6:03d}", 0.3 + 0.1 * (i % 5)) for i in range(jobs)]
    found = {"queue_drain": [], "watch queue_depth": [], "watch pending+running": []}
    threads = [
        threading.Thread(target=queue_drain, args=(found["queue_drain"],)),
        threading.Thread(target=watch_loop, args=(".queue_depth", interval, found["watch queue_depth"])),
        threading.Thread(target=watch_loop, args=(".pending_jobs + .running_jobs", interval, found["watch pending+running"])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    last = max(datetime.fromisoformat(json.loads(client.get(f"job:{i}"))["completed_at"]).timestamp() for i in ids)
    return {name: times[0] - last for name, times in found.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--interval", type=float, default=10.0, help="the checklist's watch -n")
    args = parser.parse_args()
    client = redis.Redis(port=6379, password=password(), decode_responses=True)
    # A different amount of work each trial, so the queue empties at a different point of the watch's 10 s cycle.
    rows = [trial(client, args.jobs + 3 * number, args.interval) for number in range(args.trials)]
    names = list(rows[0])
    print(f"Seconds from the last job's completion to 'drained' ({args.jobs}+3n jobs in trial n; negative = too early)")
    print(f"{'trial':>5}  " + "  ".join(f"{name:>22}" for name in names))
    for number, row in enumerate(rows, 1):
        print(f"{number:>5}  " + "  ".join(f"{row[name]:>22.2f}" for name in names))
    print(f"{'mean':>5}  " + "  ".join(f"{sum(r[n] for r in rows) / len(rows):>22.2f}" for n in names))


if __name__ == "__main__":
    main()
