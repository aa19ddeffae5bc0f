"""Issue 14's speed work: the faster paths compute exactly what the plain ones did, and are faster.

Speed is asserted as a ratio measured side by side in this process (best of a few alternated runs),
never as seconds: the machine is shared and its speed moves."""

import json
import math
import random
import time
from datetime import datetime, timedelta, timezone

import pytest
from ansible.module_utils import workshop_metrics
from ansible.module_utils.workshop_metrics import (
    _parse_records,
    batch_sizes,
    compute_metrics,
    drain,
    durations,
    failures,
    job_counts,
    job_facts,
    job_times,
    models,
    participants,
    queue_depth,
    records,
    resolutions,
    timeline,
    waits,
)
from ansible.module_utils.workshop_time import parse_time

T0 = datetime(2026, 1, 28, 13, 0, tzinfo=timezone.utc)
USERS = [f"user{n:03d}" for n in range(1, 9)]
LOADERS = [
    {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}}},
    {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux-2-klein-4b.safetensors"}},
        "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "a.safetensors", "clip_name2": "a.safetensors"}},
    },
    {"1": {"class_type": "LTXAVTextEncoderLoader", "inputs": {"text_encoder": "gemma.safetensors"}}},
    {"1": {"class_type": "KSampler", "inputs": {"ckpt_name": "odd-place.safetensors", "model_name": "not-a-loader"}}},
    "not a workflow",
    None,
]


def stamp(rng, seconds):
    """A time the ways records write it: the platform's Z, an offset, naive, 3 or 9 digits, or unreadable."""
    when = T0 + timedelta(seconds=seconds, microseconds=rng.choice([0, rng.randrange(10**6)]))
    return rng.choice(
        [
            when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            when.isoformat(),
            when.astimezone(timezone(timedelta(hours=2))).isoformat(),
            when.replace(tzinfo=None).isoformat(),
            when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z",
            "not a time",
        ]
    )


def history(seed, count):
    """Random platform-shaped job records, ties and odd values included."""
    rng = random.Random(seed)
    jobs = []
    for number in range(count):
        created = rng.randrange(0, 3600)
        status = rng.choice(["completed"] * 5 + ["failed", "cancelled", "pending", "running"])
        started = None if status == "pending" or rng.random() < 0.05 else created + rng.choice([0, rng.randrange(600)])
        completed = None if status in ("pending", "running") else (started or created) + rng.randrange(-5, 300)
        workflow = json.loads(json.dumps(rng.choice(LOADERS)))
        if isinstance(workflow, dict):
            latent = rng.choice(["EmptyLatentImage", "EmptyFlux2LatentImage", "NotALatent"])
            width = rng.choice([512, 1024, 1024.0, "1024", ["4", 0]])
            workflow["5"] = {"class_type": latent, "inputs": {"width": width, "height": 768, "batch_size": rng.choice([1, 2, 4])}}
        jobs.append(
            {
                "id": f"j{number:05d}",
                "user_id": rng.choice([*USERS, "guest"]),
                "workflow": workflow,
                "status": status,
                "created_at": stamp(rng, created) if rng.random() > 0.02 else None,
                "started_at": stamp(rng, started) if started is not None else None,
                "completed_at": stamp(rng, completed) if completed is not None else None,
                "error": rng.choice(["CUDA out of memory", "CUDA  out of\nmemory", None, {"code": 7}])
                if status == "failed"
                else None,
            }
        )
    jobs.append({"id": "bad", "status": "completed"})  # no user_id: counted as invalid
    return jobs


def one_by_one(jobs, users, cutoff, final_time):
    """The figures as each function defines them, one function after another (what compute_metrics was)."""
    jobs, read = records(jobs)
    times, facts = job_times(jobs), job_facts(jobs)
    return {
        "records": read,
        "jobs": job_counts(jobs),
        "durations": durations(jobs, times),
        "wait": waits(jobs, times),
        "queue_depth": queue_depth(jobs, times),
        "timeline": timeline(jobs, times),
        "drain": drain(cutoff, final_time),
        "participants": participants(jobs, users),
        "failures": failures(jobs),
        "models": models(jobs, facts),
        "resolutions": resolutions(jobs, facts),
        "batch_sizes": batch_sizes(jobs, facts),
    }


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_one_pass_metrics_equal_the_figures_one_by_one(seed):
    jobs = history(seed, 600)
    fused = compute_metrics(jobs, USERS, "2026-01-28T13:30:00Z", "2026-01-28T14:10:00.5Z")
    assert json.dumps(fused, sort_keys=True) == json.dumps(
        one_by_one(jobs, USERS, "2026-01-28T13:30:00Z", "2026-01-28T14:10:00.5Z"), sort_keys=True
    )
    assert fused["records"]["invalid"] == 1 and fused["jobs"]["submitted"] == 600


def test_the_one_pass_metrics_are_much_faster_than_the_figures_one_by_one():
    jobs = [job for job in history(7, 4000) if "workflow" in job]
    best = {"fused": math.inf, "one by one": math.inf}
    for _round in range(5):
        for name, compute in (("fused", compute_metrics), ("one by one", one_by_one)):
            start = time.perf_counter()
            compute(jobs, USERS, None, None)
            best[name] = min(best[name], time.perf_counter() - start)
    assert best["fused"] < 0.85 * best["one by one"], best


def test_the_platform_times_take_the_fast_path_and_read_the_same():
    rng = random.Random(3)
    for _dummy in range(2000):
        text = stamp(rng, rng.randrange(86400))
        moment = parse_time(text)
        if text == "not a time":
            assert moment is None
            continue
        fixed = text[:-1] + "+00:00" if text.endswith("Z") else text
        if "." in fixed and len(fixed.split(".")[1].split("+")[0]) == 9:
            fixed = fixed.replace("123+", "+")  # 9 digits: Python reads 6
        expected = datetime.fromisoformat(fixed)
        expected = expected.replace(tzinfo=timezone.utc) if expected.tzinfo is None else expected.astimezone(timezone.utc)
        assert moment == expected and moment.tzinfo is timezone.utc, text


class CountingLoads:
    def __init__(self, loads):
        self.loads, self.calls = loads, 0

    def __call__(self, raw):
        self.calls += 1
        return self.loads(raw)


def test_records_parse_with_the_fast_parser_and_fall_back_to_json_for_what_it_refuses():
    """orjson (when installed) reads the records; what it refuses and json reads (NaN, huge integers) still counts."""
    pairs = [
        (b"job:a", b'{"user_id": "user001", "status": "completed", "n": 1}'),
        (b"job:b", b'{"user_id": "user002", "status": "failed", "score": NaN}'),
        (b"job:c", b'{"user_id": "user003", "status": "running", "big": 123456789012345678901234567890}'),
        (b"job:d", b"not json"),
        (b"job:e", None),
    ]
    strict = CountingLoads(lambda raw: json.loads(raw, parse_constant=_refuse, parse_int=_small_int))
    fast = _parse_records(pairs, fast=strict)
    plain = _parse_records(pairs, fast=None)
    assert strict.calls == 4
    assert json.dumps(fast.jobs) == json.dumps(plain.jobs)
    assert [job["user_id"] for job in fast.jobs] == ["user001", "user002", "user003"]
    assert fast.jobs[2]["big"] == 123456789012345678901234567890
    assert fast.invalid == plain.invalid == [b"job:d"]


def _refuse(name):
    raise ValueError(f"{name} refused")


def _small_int(text):
    if abs(int(text)) >= 2**63:
        raise ValueError("beyond 64 bits")
    return int(text)


def test_records_read_by_orjson_where_it_is_installed():
    orjson = pytest.importorskip("orjson")
    assert workshop_metrics._fast_loads is orjson.loads
