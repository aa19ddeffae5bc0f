#!/usr/bin/env python3
"""Reading a workshop's job records and computing the metrics: today's code against the code before the speed work.

Part 1, side by side (the speed target, issue 14): in fresh processes on the workshop host's Python
(COMFY_WRAPUP_HOST_PYTHON, else this one), alternated, --rounds times, medians reported:
  - before:   module_utils as of --baseline (the commit before the speed work), without hiredis/orjson
  - now, stdlib only: today's module_utils, hiredis and orjson hidden (what a bare host runs)
  - now:      today's module_utils with whatever requirements-host.txt installed (hiredis, orjson)
each timing jobs_from_redis + compute_metrics + the run times (the 100k-job metrics of the target: what
the workshop_metrics module computes; before, the module worked the run times out itself) and checking
that every contender computed the same metrics.json, byte for byte.

Part 2, how the reading compares with naive ways:

Starts a scratch redis-server (no password, no persistence, its own temporary folder, a free
loopback port), loads synthetic platform-shaped job records into it (pipelined), then times on
the same data:
  - jobs_from_redis:          SCAN MATCH job:* COUNT 10000, then MGETs of 1000 keys, 20 to a round trip
                              (and, apart, its transport and its JSON parsing)
  - naive, redis-py:          KEYS job:*, then one GET (one round trip) per job
  - naive, shell loop:        `redis-cli --scan --pattern 'job:*' | while read k; do redis-cli GET "$k"; done`,
                              as a checklist would, on a sample of keys, extrapolated to all of them
  - jobs_from_rdb:            SAVE, then the dump.rdb read without a server
  - compute_metrics:          every figure of the report, on the records read
and prints seconds and jobs/s for each, then stops the server and removes its folder.

    .venv/bin/python bench/metrics_speed.py [--jobs 100000] [--shell-sample 500] [--rounds 3] [--json out.json]
"""

import argparse
import gc
import hashlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

if "--stdlib-only" in sys.argv:  # a worker without the optional libraries: their imports fail, the fallbacks run
    sys.modules["hiredis"] = sys.modules["orjson"] = None

import redis

try:
    import ansible.module_utils
except ImportError:  # a worker on the workshop host's Python, which has no ansible: the modules' helpers alone
    import types

    ansible = types.ModuleType("ansible")
    ansible.__path__, ansible.module_utils = [], types.ModuleType("ansible.module_utils")
    ansible.module_utils.__path__ = []
    sys.modules.update({"ansible": ansible, "ansible.module_utils": ansible.module_utils})

REPO = Path(__file__).resolve().parent.parent
# The code before the speed work (issue 14): what "today 4.5 s" was measured on.
BASELINE = "8314252"
# Import the helpers as the modules do, as ansible.module_utils.<name> (a worker may put another folder first).
if "--worker" in sys.argv:
    ansible.module_utils.__path__.insert(0, sys.argv[sys.argv.index("--worker") + 1])
ansible.module_utils.__path__.append(str(REPO / "module_utils"))

from ansible.module_utils import workshop_metrics
from ansible.module_utils.workshop_metrics import compute_metrics, job_keys, job_times, jobs_from_rdb, jobs_from_redis
from ansible.module_utils.workshop_redis import WorkshopRedis

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"
# Ports a staging workshop or a test run may hold: never ours.
RESERVED_PORTS = {6379, 3000, 8080, 22022, *range(8188, 8211)}
T0 = datetime(2025, 11, 20, 13, 0, tzinfo=timezone.utc)
MODELS = [
    {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}}},
    {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux-2-klein-4b.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "flux2"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "flux2-vae.safetensors"}},
    },
    {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "ltx-2-19b-dev-fp8.safetensors"}}},
]
LATENTS = ["EmptyLatentImage", "EmptySD3LatentImage", "EmptyFlux2LatentImage", "EmptyLTXVLatentVideo"]
SIZES = [(1024, 1024), (1024, 768), (768, 1024), (512, 512), (1280, 720)]


def free_port():
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port


def start_redis(folder):
    port = free_port()
    command = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    conn = WorkshopRedis("127.0.0.1", port, password=None, timeout=60)
    deadline = time.monotonic() + 10
    while True:
        try:
            conn.client.ping()
            return process, conn
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                sys.exit(f"redis-server on port {port} did not start")
            time.sleep(0.05)


def iso(seconds):
    """The platform's own form of a time (JavaScript's toISOString, ending in Z)."""
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def workflow(rng):
    """An API-format prompt the size of the platform's example: a loader or three, prompts, sampler, latent, save."""
    nodes = json.loads(json.dumps(rng.choice(MODELS)))
    width, height = rng.choice(SIZES)
    prompt = " ".join(rng.choice(["a", "quiet", "lake", "mountain", "sunset", "city", "neon", "portrait"]) for _ in range(12))
    nodes.update(
        {
            "5": {
                "class_type": rng.choice(LATENTS),
                "inputs": {"width": width, "height": height, "batch_size": rng.choice([1, 1, 1, 2, 4])},
            },
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["1", 1]}},
            "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, low quality", "clip": ["1", 1]}},
            "8": {
                "class_type": "KSampler",
                "inputs": {"seed": rng.randrange(2**32), "steps": 20, "cfg": 7.0, "sampler_name": "euler", "model": ["1", 0]},
            },
            "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
        }
    )
    return nodes


def record(number, rng, span):
    created = rng.uniform(0, span)
    status = rng.choice(["completed"] * 7 + ["failed", "cancelled", "pending", "running"])
    started = None if status in ("pending", "cancelled") else created + rng.uniform(0, 900)
    completed = None if status in ("pending", "running") else (started or created) + rng.uniform(2, 240)
    job_id = f"{rng.getrandbits(128):032x}"
    return {
        "id": job_id,
        "user_id": f"user{rng.randrange(1, 21):03d}",
        "workflow": workflow(rng),
        "status": status,
        "priority": rng.choice([0, 1, 2, 2, 2, 3]),
        "created_at": iso(created),
        "started_at": iso(started) if started is not None else None,
        "completed_at": iso(completed) if completed is not None else None,
        "worker_id": f"worker-{rng.randrange(1, 5)}" if started is not None else None,
        "result": {"images": [f"ComfyUI_{number:05d}_.png"]} if status == "completed" else None,
        "error": rng.choice(["CUDA out of memory", "Job timeout exceeded", "Invalid workflow"]) if status == "failed" else None,
        "metadata": {},
    }


def load(conn, count, rng):
    """`count` records, 5,000 to a pipeline; returns the bytes stored."""
    stored = 0
    for start in range(0, count, 5000):
        pipe = conn.client.pipeline(transaction=False)
        for number in range(start, min(start + 5000, count)):
            job = record(number, rng, span=6 * 3600)
            text = json.dumps(job)
            stored += len(text)
            pipe.set(f"job:{job['id']}", text)
            pipe.sadd(f"user:{job['user_id']}:jobs", job["id"])
        pipe.execute()
    return stored


def raw_values(conn):
    """jobs_from_redis's transport alone: the same SCAN and pipelined MGETs, no JSON parsing."""
    keys, values = job_keys(conn), []
    for start in range(0, len(keys), 20000):
        pipe = conn.client.pipeline(transaction=False)
        for offset in range(start, min(start + 20000, len(keys)), 1000):
            pipe.mget(keys[offset : offset + 1000])
        for reply in pipe.execute():
            values.extend(reply)
    return values


def parse_all(values):
    """Parsing alone, with the cyclic GC paused as jobs_from_redis pauses it."""
    gc.disable()
    try:
        return [json.loads(value) for value in values]
    finally:
        gc.enable()


def naive_redis_py(conn):
    """What a loop over the keys does: KEYS, then one GET per job. The GC is paused as in
    jobs_from_redis, so the difference is the round trips alone."""
    jobs = []
    gc.disable()
    try:
        for key in sorted(conn.client.keys("job:*")):
            raw = conn.client.get(key)
            if raw is not None:
                jobs.append(json.loads(raw))
    finally:
        gc.enable()
    return jobs


def naive_shell(port, sample):
    """The checklist's shell loop over the first `sample` keys: one redis-cli process per job."""
    script = (
        f"{REDIS_CLI} -p {port} --scan --pattern 'job:*' | head -n {sample} | "
        f'while read -r key; do {REDIS_CLI} -p {port} GET "$key"; done | wc -l'
    )
    return int(subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout)


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def worker(port):
    """One contender's run in a fresh process: read every record, compute the metrics; prints seconds and a digest."""
    conn = WorkshopRedis("127.0.0.1", port, password=None, timeout=60)
    users = [f"user{n:03d}" for n in range(1, 21)]
    gc.collect()
    start = time.perf_counter()
    if hasattr(workshop_metrics, "redis_metrics"):  # today's: reads and tallies in processes side by side
        metrics, _invalid = workshop_metrics.redis_metrics(conn, users, iso(6 * 3600), iso(7 * 3600))
        return _report(metrics, start, None, time.perf_counter())
    records = jobs_from_redis(conn)
    read = time.perf_counter()
    if "duration_seconds" in compute_metrics([], []):  # takes the reader's records, gives the run times too
        metrics = compute_metrics(records, users, iso(6 * 3600), iso(7 * 3600))
    else:  # the code before: the module worked the run times out after compute_metrics, parsing every time again
        metrics = compute_metrics(records.jobs, users, iso(6 * 3600), iso(7 * 3600), invalid=records.invalid)
        metrics["duration_seconds"] = sorted(
            round((t.completed - t.started).total_seconds(), 3)
            for job, t in zip(records.jobs, job_times(records.jobs), strict=True)
            if job.get("status") == "completed" and t.started and t.completed
        )
    end = time.perf_counter()
    return _report(metrics, start, read, end)


def _report(metrics, start, read, end):
    digest = hashlib.sha256(json.dumps(metrics, indent=1, sort_keys=True, default=str).encode()).hexdigest()
    from redis.utils import HIREDIS_AVAILABLE

    libs = f"{'hiredis' if HIREDIS_AVAILABLE else 'redis-py parser'}, {'orjson' if sys.modules.get('orjson') else 'json'}"
    # Today's code reads and tallies in one go (in processes side by side): no separate read time.
    parts = {"read": None, "figures": None} if read is None else {"read": read - start, "figures": end - read}
    print(json.dumps({**parts, "total": end - start, "digest": digest, "libs": libs}))


def side_by_side(port, rounds, baseline):
    """Medians of the three contenders, alternated in fresh processes; every one must compute the same metrics."""
    python = os.environ.get("COMFY_WRAPUP_HOST_PYTHON") or sys.executable
    if not Path(python).is_file():
        python = sys.executable
    old = Path(tempfile.mkdtemp(prefix="comfy-wrapup-baseline-"))
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", baseline, "module_utils"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        contenders = [
            ("before (" + baseline + ")", [str(old / "module_utils"), "--stdlib-only"]),
            ("now, stdlib only", [str(REPO / "module_utils"), "--stdlib-only"]),
            ("now (requirements-host.txt)", [str(REPO / "module_utils")]),
        ]
        runs = {name: [] for name, _dummy in contenders}
        for number in range(rounds):
            order = contenders if number % 2 == 0 else contenders[::-1]
            for name, extra in order:
                command = [python, __file__, "--port", str(port), "--worker", *extra]
                done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
                if done.returncode:
                    sys.exit(f"{name} failed: {done.stderr[-2000:]}")
                runs[name].append(json.loads(done.stdout.splitlines()[-1]))
    finally:
        shutil.rmtree(old, ignore_errors=True)
    digests = {run["digest"] for name in runs for run in runs[name]}
    assert len(digests) == 1, f"the contenders computed different metrics: {digests}"
    table = {}
    for name, measured in runs.items():
        table[name] = {
            part: None if measured[0][part] is None else statistics.median(run[part] for run in measured)
            for part in ("read", "figures", "total")
        }
        table[name]["libs"] = measured[0]["libs"]
    return python, table


def main():
    if "--worker" in sys.argv:
        worker(int(sys.argv[sys.argv.index("--port") + 1]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--shell-sample", type=int, default=500, help="keys the redis-cli loop reads (0: skip it)")
    parser.add_argument("--seed", type=int, default=20251120)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each contender, side by side (medians)")
    parser.add_argument("--baseline", default=BASELINE, help="the commit whose module_utils is 'before'")
    parser.add_argument("--only-side-by-side", action="store_true", help="skip part 2")
    parser.add_argument("--json", help="write the side-by-side medians here (for make bench's table)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="comfy-wrapup-metrics-"))
    process, conn = start_redis(folder)
    try:
        seconds, size = timed(load, conn, args.jobs, random.Random(args.seed))
        print(f"{args.jobs} job records, {size / 2**20:.0f} MiB of JSON, loaded pipelined in {seconds:.1f}s (port {conn.port})")
        python, table = side_by_side(conn.port, args.rounds, args.baseline)
        print(f"\nSide by side on {python}, fresh processes alternated, medians of {args.rounds} (same metrics.json each):")
        print(f"{'contender':<34} {'read':>7} {'figures':>8} {'total':>7}  libraries (redis parser, JSON)")
        for name, row in table.items():
            read, figures = (f"{row[part]:.2f}" if row[part] is not None else "(fused)" for part in ("read", "figures"))
            print(f"{name:<34} {read:>7} {figures:>8} {row['total']:>7.2f}  {row['libs']}")
        before, now = next(iter(table.values()))["total"], list(table.values())[-1]["total"]
        print(f"now / before: {now / before:.2f} (the target, 2 s where before took 4.5 s, is a ratio of {2 / 4.5:.2f})")
        if args.json:
            Path(args.json).write_text(json.dumps({"jobs": args.jobs, "rounds": args.rounds, "table": table}, indent=1))
        if args.only_side_by_side:
            return
        rows = []

        seconds, fast = timed(jobs_from_redis, conn)
        assert len(fast.jobs) == args.jobs and not fast.invalid
        rows.append(("jobs_from_redis (SCAN + pipelined MGET)", seconds, args.jobs, ""))

        seconds, values = timed(raw_values, conn)
        rows.append(("  of which SCAN + MGET transport", seconds, args.jobs, "no JSON parsing"))
        seconds, _ = timed(parse_all, values)
        rows.append(("  of which json.loads of every record", seconds, args.jobs, "GC paused"))

        seconds, slow = timed(naive_redis_py, conn)
        assert slow == fast.jobs, "the naive read differs from jobs_from_redis"
        rows.append(("naive: KEYS + one GET per job (redis-py)", seconds, args.jobs, "same parsing, GC paused"))

        if args.shell_sample:
            sample = min(args.shell_sample, args.jobs)
            seconds, lines = timed(naive_shell, conn.port, sample)
            assert lines == sample
            rows.append(
                ("naive: redis-cli GET loop (shell)", seconds * args.jobs / sample, args.jobs, f"extrapolated from {sample}")
            )

        seconds, _ = timed(conn.client.save)
        rows.append(("SAVE (server writes dump.rdb)", seconds, args.jobs, ""))
        seconds, offline = timed(jobs_from_rdb, folder / "dump.rdb")
        assert offline == fast, "jobs_from_rdb differs from jobs_from_redis"
        rows.append(("jobs_from_rdb (dump.rdb, no server)", seconds, args.jobs, ""))

        users = [f"user{n:03d}" for n in range(1, 21)]
        seconds, metrics = timed(compute_metrics, fast, users, iso(6 * 3600), iso(7 * 3600))
        rows.append(("compute_metrics", seconds, args.jobs, ""))

        print(f"\n{'step':<44} {'seconds':>9} {'jobs/s':>10}  note")
        for name, seconds, count, note in rows:
            print(f"{name:<44} {seconds:>9.2f} {count / seconds:>10,.0f}  {note}")
        fast_seconds, slow_seconds = rows[0][1], rows[3][1]
        print(f"\njobs_from_redis is {slow_seconds / fast_seconds:.1f}x the speed of one GET per job (redis-py).")
        print(
            f"metrics: {metrics['jobs']['completed']} completed, {metrics['jobs']['failed']} failed, "
            f"p95 {metrics['durations']['p95']}s, peak queue {metrics['queue_depth']['peak']}"
        )
    finally:
        conn.client.close()
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
