"""workshop_metrics: every figure against values worked out here by hand or by brute force, and the
readers against a real redis-server and the dump.rdb it saves."""

import contextlib
import json
import math
import os
import random
import signal
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import redis
from ansible.module_utils.workshop_errors import WorkshopError, WorkshopUnreachable
from ansible.module_utils.workshop_metrics import (
    NO_ERROR,
    JobRecords,
    _parse_records,
    compute_metrics,
    drain,
    jobs_from_rdb,
    jobs_from_redis,
    percentile,
    queue_depth,
    redis_metrics,
    side_by_side,
    workflow_facts,
)
from ansible.module_utils.workshop_redis import WorkshopRedis
from scratch_redis import free_port, port_of, running_redis

T0 = datetime(2025, 11, 20, 10, 0, tzinfo=timezone.utc)
SDXL = "sd_xl_base_1.0.safetensors"
FLUX = "flux-2-klein-4b.safetensors"
QWEN = "qwen_3_4b.safetensors"
FLUX_VAE = "flux2-vae.safetensors"
LTX = "ltx-2-19b-dev-fp8.safetensors"
DETAIL_LORA = "detail-lora.safetensors"


# --- building job histories ---------------------------------------------------------------------


def at(seconds, style="offset"):
    """The timestamp `seconds` after T0, written the ways a record may write it."""
    when = T0 + timedelta(seconds=seconds)
    if style == "z":
        return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if style == "naive":
        return when.replace(tzinfo=None).isoformat()
    return when.isoformat()


def out(seconds):
    """How the metrics write that time back."""
    return (T0 + timedelta(seconds=seconds)).isoformat()


def sdxl(width=1024, height=1024, batch=1, lora=None):
    workflow = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SDXL}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 1, "model": ["4", 0], "latent_image": ["5", 0]}},
    }
    if lora:
        workflow["10"] = {"class_type": "LoraLoader", "inputs": {"lora_name": lora, "model": ["4", 0], "clip": ["4", 1]}}
    return workflow


def flux(width=1024, height=1024, batch=1):
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": FLUX, "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": QWEN, "type": "flux2"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": FLUX_VAE}},
        "4": {"class_type": "EmptyFlux2LatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}},
    }


def ltx(width=768, height=512, batch=1):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": LTX}},
        "2": {
            "class_type": "EmptyLTXVLatentVideo",
            "inputs": {"width": width, "height": height, "length": 97, "batch_size": batch},
        },
    }


def job(job_id, user, status, created, started=None, completed=None, workflow=None, error=None, style="offset"):
    """A record as the queue manager writes it; times in seconds after T0."""
    return {
        "id": job_id,
        "user_id": user,
        "workflow": workflow if workflow is not None else sdxl(),
        "status": status,
        "priority": 2,
        "created_at": at(created, style) if created is not None else None,
        "started_at": at(started, style) if started is not None else None,
        "completed_at": at(completed, style) if completed is not None else None,
        "worker_id": "worker-1" if started is not None else None,
        "result": {"images": []} if status == "completed" else None,
        "error": error,
        "metadata": {},
    }


OOM = "CUDA out of memory"
TIMEOUT = "Job timeout exceeded"
REGISTERED = ["alice", "bob", "carol", "dave", "erin"]

# One afternoon: (id, user, status, created, started, completed, workflow, error).
HISTORY = [
    job("j01", "alice", "completed", 0, 5, 35, sdxl(lora=DETAIL_LORA)),
    job("j02", "bob", "completed", 10, 35, 95, flux(1024, 768), style="z"),
    job("j03", "alice", "failed", 20, 95, 100, flux(2048, 2048, 4), OOM),
    job("j04", "carol", "completed", 20, 100, 190, sdxl(batch=2)),
    job("j05", "instructor", "completed", 30, 190, 202.5, sdxl(), style="naive"),
    job("j06", "bob", "failed", 40, 202.5, 3802.5, ltx(), TIMEOUT),
    job("j07", "carol", "cancelled", 50, None, 60, sdxl()),  # cancelled while pending
    job("j08", "zed", "failed", 60, 210, 215, sdxl(512, 512), OOM),
    job("j09", "alice", "completed", 300, 300, 400, sdxl()),
    job("j10", "bob", "running", 400, 410, None, flux()),
    job("j11", "carol", "pending", 500, None, None, sdxl(768, 768)),
    job("j12", "alice", "completed", 3700, 3802.5, 3900, flux(1024, 768)),
    job("j13", "alice", "failed", 3750, 3900, 3901, {}, None),  # no workflow, no error text
]
# Hand-measured from the table above.
DURATIONS = {"j01": 30, "j02": 60, "j04": 90, "j05": 12.5, "j09": 100, "j12": 97.5}
WAITS = {
    "j01": 5,
    "j02": 25,
    "j03": 75,
    "j04": 80,
    "j05": 160,
    "j06": 162.5,
    "j08": 150,
    "j09": 0,
    "j10": 10,
    "j12": 102.5,
    "j13": 150,
}


def numpy_p95(values):
    """numpy.percentile(values, 95) written out: the rank (n-1)*0.95, interpolated between its neighbours."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * 0.95
    below = int(rank)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (rank - below) * (ordered[above] - ordered[below])


def brute_depth(jobs_times):
    """Queue depth the slow way: at every instant, created so far minus left so far; keep the instants it changes."""
    instants = sorted({t for created, left in jobs_times for t in (created, left) if t is not None})
    series, last = [], 0
    for t in instants:
        arrived = sum(1 for created, _ in jobs_times if created <= t)
        depth = arrived - sum(1 for _, left in jobs_times if left is not None and left <= t)
        if depth != last:
            series.append([out(t), depth])
            last = depth
    return series


def ranked(*pairs):
    """A ranked figure as metrics.json holds it: [{name, count}] in this order."""
    return [{"name": name, "count": count} for name, count in pairs]


@pytest.fixture(scope="module")
def metrics():
    return compute_metrics(HISTORY, REGISTERED, cutoff=at(3600), final_time=at(3901, "z"))


# --- the figures of the hand-made afternoon -----------------------------------------------------


def test_job_counts(metrics):
    assert metrics["jobs"] == {
        "submitted": 13,
        "completed": 6,
        "failed": 4,
        "cancelled": 1,
        "pending": 1,
        "running": 1,
        "success_rate": round(100 * 6 / 10, 1),
    }


def test_durations_of_completed_jobs(metrics):
    values = sorted(DURATIONS.values())  # 12.5 30 60 90 97.5 100
    assert metrics["durations"] == {
        "count": 6,
        "mean": round(sum(values) / 6, 3),
        "median": (60 + 90) / 2,
        "p95": round(numpy_p95(values), 3),
        "max": 100,
        "max_job_id": "j09",
    }
    # (6-1)*0.95 = 4.75: three quarters of the way from 97.5 to 100.
    assert metrics["durations"]["p95"] == 99.375
    # Every one of them, shortest first, for the report's histogram.
    assert metrics["duration_seconds"] == [12.5, 30, 60, 90, 97.5, 100]


def test_wait_of_every_job_that_started(metrics):
    assert metrics["wait"] == {
        "count": len(WAITS),
        "mean": round(sum(WAITS.values()) / len(WAITS), 3),
        "max": 162.5,
        "max_job_id": "j06",
    }


def test_queue_depth_by_hand(metrics):
    # created +1 / started (or, never started, completed_at) -1, in seconds after T0:
    # 0:+1 5:-1 10:+1 20:+2 30:+1 35:-1 40:+1 50:+1 60:+1-1 95:-1 100:-1 190:-1 202.5:-1 210:-1
    # 300:+1-1 400:+1 410:-1 500:+1 3700:+1 3750:+1 3802.5:-1 3900:-1
    expected = [
        [out(0), 1],
        [out(5), 0],
        [out(10), 1],
        [out(20), 3],
        [out(30), 4],
        [out(35), 3],
        [out(40), 4],
        [out(50), 5],
        [out(95), 4],
        [out(100), 3],
        [out(190), 2],
        [out(202.5), 1],
        [out(210), 0],
        [out(400), 1],
        [out(410), 0],
        [out(500), 1],
        [out(3700), 2],
        [out(3750), 3],
        [out(3802.5), 2],
        [out(3900), 1],
    ]
    assert metrics["queue_depth"] == {"series": expected, "peak": 5, "peak_at": out(50)}


def test_queue_depth_by_brute_force(metrics):
    times = [
        (created, started if started is not None else completed)
        for created, started, completed in [
            (0, 5, 35),
            (10, 35, 95),
            (20, 95, 100),
            (20, 100, 190),
            (30, 190, 202.5),
            (40, 202.5, 3802.5),
            (50, None, 60),
            (60, 210, 215),
            (300, 300, 400),
            (400, 410, None),
            (500, None, None),
            (3700, 3802.5, 3900),
            (3750, 3900, 3901),
        ]
    ]
    assert metrics["queue_depth"]["series"] == brute_depth(times)


def test_timeline(metrics):
    assert metrics["timeline"] == {"first_job_at": out(0), "last_activity_at": out(3901), "duration_seconds": 3901}


def test_drain_of_the_afternoon(metrics):
    assert metrics["drain"] == {"cutoff": out(3600), "final_time": out(3901), "time_to_clear_seconds": 301}


def test_participants(metrics):
    assert metrics["participants"] == {
        "registered": REGISTERED,
        "attended": ["alice", "bob", "carol"],
        "dropouts": ["dave", "erin"],
        "attendance_rate": 60.0,
        "jobs_per_participant": ranked(
            ("alice", 5), ("bob", 3), ("carol", 3), ("instructor", 1), ("zed", 1), ("dave", 0), ("erin", 0)
        ),
        "unregistered": ["instructor", "zed"],
    }


def test_failures_by_error_most_frequent_first(metrics):
    assert metrics["failures"] == {"by_error": ranked((OOM, 2), (NO_ERROR, 1), (TIMEOUT, 1))}


def test_models_once_per_job(metrics):
    # SDXL: j01 j04 j05 j07 j08 j09 j11; flux trio: j02 j03 j10 j12; LTX: j06; the LoRA: j01.
    assert metrics["models"]["used"] == ranked((SDXL, 7), (FLUX, 4), (FLUX_VAE, 4), (QWEN, 4), (DETAIL_LORA, 1), (LTX, 1))
    assert metrics["models"]["succeeded"] == ranked((SDXL, 4), (FLUX, 2), (FLUX_VAE, 2), (QWEN, 2), (DETAIL_LORA, 1))
    assert metrics["models"]["failed"] == ranked((FLUX, 1), (FLUX_VAE, 1), (LTX, 1), (QWEN, 1), (SDXL, 1))


def test_resolutions_and_batch_sizes(metrics):
    assert metrics["resolutions"] == ranked(
        ("1024x1024", 6), ("1024x768", 2), ("2048x2048", 1), ("512x512", 1), ("768x512", 1), ("768x768", 1)
    )
    assert metrics["batch_sizes"] == ranked(("1", 10), ("2", 1), ("4", 1))


def test_ranked_figures_keep_their_order_through_metrics_json(metrics):
    """metrics.json is written with sorted keys: a ranking must come back in rank order, not alphabetical."""
    errors = [error_job(f"e{n}", f"error {letter}") for n, letter in enumerate("abcde")]
    errors += [error_job(f"z{n}", "zz most common") for n in range(8)]
    written = json.loads(json.dumps(compute_metrics(errors, []), sort_keys=True))
    assert [entry["name"] for entry in written["failures"]["by_error"]][:3] == ["zz most common", "error a", "error b"]
    assert written["failures"]["by_error"][0] == {"name": "zz most common", "count": 8}
    again = json.loads(json.dumps(metrics, sort_keys=True))
    assert [entry["name"] for entry in again["participants"]["jobs_per_participant"]] == [
        "alice",
        "bob",
        "carol",
        "instructor",
        "zed",
        "dave",
        "erin",
    ]
    assert [entry["name"] for entry in again["models"]["used"]] == [SDXL, FLUX, FLUX_VAE, QWEN, DETAIL_LORA, LTX]


def test_batch_sizes_tie_by_size_not_by_text():
    jobs = [job(f"b{size}", "amy", "completed", 0, 1, 2, sdxl(batch=size)) for size in (10, 2, 1)]
    assert [entry["name"] for entry in compute_metrics(jobs, [])["batch_sizes"]] == ["1", "2", "10"]


def error_job(job_id, error):
    return job(job_id, "amy", "failed", 0, 1, 2, sdxl(), error)


def test_the_same_error_written_differently_counts_once():
    jobs = [error_job("a", "CUDA out of memory.\n"), error_job("b", "CUDA  out of memory. "), error_job("c", {"code": 7})]
    assert compute_metrics(jobs, [])["failures"]["by_error"] == [
        {"name": "CUDA out of memory.", "count": 2},
        {"name": '{"code": 7}', "count": 1},
    ]


def test_records_without_the_needed_fields_are_counted_as_invalid_never_a_crash():
    good = job("ok", "amy", "completed", 0, 1, 2)
    no_user = {**job("nouser", "amy", "completed", 0, 1, 2), "user_id": None}
    del no_user["user_id"]
    number_user = {**job("numuser", "amy", "completed", 0, 1, 2), "user_id": 7}
    no_status = {key: value for key, value in job("nostatus", "amy", "failed", 0).items() if key != "status"}
    listed_status = {**job("liststatus", "amy", "failed", 0), "status": ["failed"]}
    odd_keys = {**job("oddkeys", "amy", "completed", 0, 1, 2), 5: "x"}
    result = compute_metrics([good, no_user, number_user, no_status, listed_status, odd_keys, "text", None], ["amy"])
    assert result["records"] == {
        "read": 8,
        "valid": 1,
        "invalid": 7,
        "invalid_keys": sorted(["job:nouser", "job:numuser", "job:nostatus", "job:liststatus", "job:oddkeys", "#6", "#7"]),
    }
    assert result["jobs"]["submitted"] == 1
    assert result["participants"]["jobs_per_participant"] == [{"name": "amy", "count": 1}]
    json.dumps(result, sort_keys=True)  # no None or int among the keys


def test_times_that_go_backwards_are_left_out_of_the_averages_and_counted():
    jobs = [
        job("a", "amy", "completed", 0, 10, 40),  # waited 10 s, ran 30 s
        job("b", "amy", "completed", 0, 20, 80),  # waited 20 s, ran 60 s
        job("late", "bob", "completed", 0, 100, 10),  # completed 90 s before it started
        job("early", "bob", "completed", 50, 20, 30),  # started 30 s before it was created
    ]
    metrics = compute_metrics(jobs, ["amy", "bob"])
    assert metrics["durations"] == {
        "count": 3, "mean": 33.333, "median": 30.0, "p95": 57.0, "max": 60.0, "max_job_id": "b", "backwards": 1,
    }  # fmt: skip
    assert metrics["wait"] == {"count": 3, "mean": 43.333, "max": 100.0, "max_job_id": "late", "backwards": 1}
    assert min(metrics["duration_seconds"]) >= 0


def test_a_status_the_platform_does_not_have_is_counted_as_other_with_its_name():
    jobs = [job("a", "amy", "completed", 0, 1, 2), job("b", "amy", "Completed", 0, 1, 2), job("c", "bob", "timeout", 0)]
    counts = compute_metrics(jobs, ["amy", "bob"])["jobs"]
    assert counts["submitted"] == 3 and counts["completed"] == 1
    assert (counts["other"], counts["other_statuses"]) == (2, {"Completed": 1, "timeout": 1})


@pytest.mark.parametrize("created", [1769594591000, "0001-01-01T00:00:00+01:00", float("nan"), 1e300])
def test_a_time_out_of_range_is_unset_never_a_crash(created):
    odd = {**job("odd", "amy", "completed", 0, 1, 2), "created_at": created}
    metrics = compute_metrics([odd, job("ok", "amy", "completed", 0, 1, 2)], ["amy"])
    assert metrics["jobs"]["submitted"] == 2 and metrics["wait"]["count"] == 1


def test_the_readers_skip_records_without_user_id_or_status():
    pairs = [
        ("job:a", json.dumps(job("a", "amy", "pending", 0))),
        ("job:b", json.dumps({"id": "b", "status": "pending"})),
        ("job:c", json.dumps({"id": "c", "user_id": "amy"})),
        ("job:d", "[1, 2]"),
    ]
    assert _parse_records(pairs) == JobRecords([job("a", "amy", "pending", 0)], ["job:b", "job:c", "job:d"])
    result = compute_metrics(*_parse_records(pairs)[:1], [], invalid=_parse_records(pairs).invalid)
    assert result["records"] == {"read": 4, "valid": 1, "invalid": 3, "invalid_keys": ["job:b", "job:c", "job:d"]}
    # A reader's JobRecords as they come: its jobs are not checked again, its invalid keys counted once.
    assert compute_metrics(_parse_records(pairs), []) == result
    assert compute_metrics(_parse_records(pairs), [], invalid=_parse_records(pairs).invalid) == result


def test_the_result_is_plain_json():
    result = compute_metrics(HISTORY, REGISTERED)
    assert json.loads(json.dumps(result)) == result


def test_nothing_to_measure():
    assert compute_metrics([], []) == {
        "records": {"read": 0, "valid": 0, "invalid": 0, "invalid_keys": []},
        "jobs": {"submitted": 0, "completed": 0, "failed": 0, "cancelled": 0, "pending": 0, "running": 0, "success_rate": None},
        "durations": {"count": 0, "mean": None, "median": None, "p95": None, "max": None, "max_job_id": None},
        "duration_seconds": [],
        "wait": {"count": 0, "mean": None, "max": None, "max_job_id": None},
        "queue_depth": {"series": [], "peak": None, "peak_at": None},
        "timeline": {"first_job_at": None, "last_activity_at": None, "duration_seconds": None},
        "drain": {"cutoff": None, "final_time": None, "time_to_clear_seconds": None},
        "participants": {
            "registered": [],
            "attended": [],
            "dropouts": [],
            "attendance_rate": None,
            "jobs_per_participant": [],
            "unregistered": [],
        },
        "failures": {"by_error": []},
        "models": {"used": [], "succeeded": [], "failed": []},
        "resolutions": [],
        "batch_sizes": [],
    }


# --- the pieces ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([7], 7),
        ([1, 2], 1.95),
        ([1, 2, 3, 4], 3.85),
        ([15, 20, 35, 40, 50], 48.0),
        ([50, 40, 35, 20, 15], 48.0),
        (list(range(1, 101)), 95.05),
        (list(range(1, 21)), 19.05),
    ],
)
def test_p95_is_numpys_linear_interpolation(values, expected):
    assert percentile(values, 95) == pytest.approx(expected)
    assert percentile(values, 95) == pytest.approx(numpy_p95(values))


def test_percentile_of_nothing():
    assert percentile([], 95) is None


@pytest.mark.parametrize(
    ("workflow", "models", "resolutions", "batch_sizes"),
    [
        (sdxl(), [("ckpt_name", SDXL)], ["1024x1024"], [1]),
        (sdxl(832, 1216, 3, lora=DETAIL_LORA), [("ckpt_name", SDXL), ("lora_name", DETAIL_LORA)], ["832x1216"], [3]),
        (flux(), [("unet_name", FLUX), ("clip_name", QWEN), ("vae_name", FLUX_VAE)], ["1024x1024"], [1]),
        (ltx(), [("ckpt_name", LTX)], ["768x512"], [1]),
        (
            {
                "1": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 2}},
                "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 2}},
                "3": {"class_type": "EmptyLatentImage", "inputs": {"width": ["9", 0], "height": 512, "batch_size": ["9", 1]}},
                "4": {"class_type": "LatentUpscale", "inputs": {"width": 2048, "height": 2048}},
            },
            [],
            ["1024x1024", "512x512"],
            [2],
        ),
        (
            {
                "1": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "a.safetensors", "clip_name2": "b.safetensors"}},
                "2": {"class_type": "LatentUpscaleModelLoader", "inputs": {"model_name": "up.safetensors"}},
                "3": {"class_type": "SomeApiNode", "inputs": {"model_name": "gpt-image-1"}},
                "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SDXL}},
                "5": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SDXL}},
            },
            [
                ("clip_name1", "a.safetensors"),
                ("clip_name2", "b.safetensors"),
                ("model_name", "up.safetensors"),
                ("ckpt_name", SDXL),
            ],
            [],
            [],
        ),
        (json.dumps(sdxl(640, 480)), [("ckpt_name", SDXL)], ["640x480"], [1]),
        (  # sizes given as digits count; zero, fractions, other text and huge digit runs do not
            {
                "1": {"class_type": "EmptyLatentImage", "inputs": {"width": "768", "height": "512", "batch_size": "4"}},
                "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64.0, "height": 64, "batch_size": 0}},
                "3": {"class_type": "EmptyLatentImage", "inputs": {"width": "७६८", "height": 1.5, "batch_size": "9" * 5000}},
            },
            [],
            ["768x512", "64x64"],
            [4],
        ),
        (None, [], [], []),
        ({}, [], [], []),
        ("not json", [], [], []),
        ({"1": "garbage", "2": {"class_type": "EmptyLatentImage"}, "3": {"inputs": {"ckpt_name": 5}}}, [], [], []),
    ],
)
def test_workflow_facts(workflow, models, resolutions, batch_sizes):
    facts = workflow_facts(workflow)
    assert (facts.models, facts.resolutions, facts.batch_sizes) == (models, resolutions, batch_sizes)


@pytest.mark.parametrize(
    ("jobs", "expected"),
    [
        # Two jobs arrive at once and one leaves as another arrives: one point per instant, after all its events.
        (
            [job("a", "u", "completed", 0, 10, 20), job("b", "u", "completed", 0, 5, 20), job("c", "u", "running", 5, 30)],
            [[out(0), 2], [out(10), 1], [out(30), 0]],
        ),
        # A start and an arrival cancelling out at 10 record no point.
        ([job("a", "u", "completed", 0, 10, 20), job("b", "u", "pending", 10)], [[out(0), 1]]),
        # A job cancelled while pending leaves at its completed_at; one still pending never leaves.
        ([job("a", "u", "cancelled", 0, None, 7), job("b", "u", "pending", 3)], [[out(0), 1], [out(3), 2], [out(7), 1]]),
        # Started and created at the same instant: never waited.
        ([job("a", "u", "completed", 4, 4, 9)], []),
        # A terminal job with no leaving time cannot be placed; a job without created_at neither.
        ([job("a", "u", "cancelled", 0), job("b", "u", "completed", None, 1, 2), job("c", "u", "pending", 1)], [[out(1), 1]]),
    ],
)
def test_queue_depth_ties_and_leavings(jobs, expected):
    assert queue_depth(jobs)["series"] == expected


@pytest.mark.parametrize(
    ("cutoff", "final_time", "expected"),
    [
        (at(0), at(90), {"cutoff": out(0), "final_time": out(90), "time_to_clear_seconds": 90}),
        (at(0, "z"), at(100, "naive"), {"cutoff": out(0), "final_time": out(100), "time_to_clear_seconds": 100}),
        (
            "2025-11-20T11:00:00+01:00",
            at(60),
            {"cutoff": out(0), "final_time": out(60), "time_to_clear_seconds": 60},
        ),
        (T0.timestamp(), T0 + timedelta(minutes=3), {"cutoff": out(0), "final_time": out(180), "time_to_clear_seconds": 180}),
        (at(0), None, {"cutoff": out(0), "final_time": None, "time_to_clear_seconds": None}),
        (None, at(0), {"cutoff": None, "final_time": out(0), "time_to_clear_seconds": None}),
    ],
)
def test_drain_from_cutoff_and_final_time(cutoff, final_time, expected):
    assert drain(cutoff, final_time) == expected


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_histories_against_brute_force(seed):
    """Durations, waits, queue depth, timeline and counts of a random afternoon, each recomputed the slow way."""
    rng = random.Random(seed)
    jobs, times = [], []
    for number in range(rng.randrange(40, 120)):
        created = rng.randrange(0, 4 * 3600)
        status = rng.choice(["completed", "completed", "completed", "failed", "cancelled", "pending", "running"])
        started = completed = None
        if status in ("completed", "failed", "running") or (status == "cancelled" and rng.random() < 0.5):
            started = created + rng.choice([0, rng.randrange(1, 900)])
        if status in ("completed", "failed", "cancelled"):
            completed = (started if started is not None else created) + rng.randrange(1, 600)
        jobs.append(job(f"r{number:03d}", rng.choice(REGISTERED), status, created, started, completed))
        times.append((created, started if started is not None else completed))
    metrics = compute_metrics(jobs, REGISTERED)

    runs = sorted((_seconds(j["completed_at"]) - _seconds(j["started_at"]), j["id"]) for j in jobs if j["status"] == "completed")
    values = [value for value, _ in runs]
    n = len(values)
    assert metrics["durations"]["count"] == n
    assert metrics["durations"]["mean"] == pytest.approx(sum(values) / n, abs=1e-3)
    median = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
    assert metrics["durations"]["median"] == pytest.approx(median, abs=1e-3)
    assert metrics["durations"]["p95"] == pytest.approx(numpy_p95(values), abs=1e-3)
    assert metrics["durations"]["max"] == values[-1]
    assert [v for v, i in runs if i == metrics["durations"]["max_job_id"]] == [values[-1]]

    waits = [_seconds(j["started_at"]) - _seconds(j["created_at"]) for j in jobs if j["started_at"]]
    assert metrics["wait"]["count"] == len(waits)
    assert metrics["wait"]["mean"] == pytest.approx(sum(waits) / len(waits), abs=1e-3)
    assert metrics["wait"]["max"] == max(waits)

    series = brute_depth(times)
    assert metrics["queue_depth"]["series"] == series
    peak = max(depth for _, depth in series)
    assert metrics["queue_depth"]["peak"] == peak
    assert metrics["queue_depth"]["peak_at"] == next(when for when, depth in series if depth == peak)

    every = [s for created, started in times for s in (created, started) if s is not None]
    every += [_seconds(j["completed_at"]) for j in jobs if j["completed_at"]]
    assert metrics["timeline"]["first_job_at"] == out(min(c for c, _ in times))
    assert metrics["timeline"]["last_activity_at"] == out(max(every))

    for status in ("completed", "failed", "cancelled", "pending", "running"):
        assert metrics["jobs"][status] == sum(1 for j in jobs if j["status"] == status)
    assert sum(entry["count"] for entry in metrics["participants"]["jobs_per_participant"]) == len(jobs)


def _seconds(text):
    return (datetime.fromisoformat(text) - T0).total_seconds()


def test_registered_users_none_and_repeated():
    result = compute_metrics([job("a", "bob", "completed", 0, 1, 2)], ["bob", "bob", "amy"])["participants"]
    assert result["registered"] == ["bob", "amy"]
    assert result["attendance_rate"] == 50.0
    assert compute_metrics([job("a", "bob", "pending", 0)], None)["participants"]["unregistered"] == ["bob"]


# --- reading the records from a real redis-server and its dump.rdb ------------------------------


@contextlib.contextmanager
def scratch_redis(folder):
    """The scratch redis-server (tests/scratch_redis.py), reached through the modules' own client."""
    with running_redis(folder) as client:
        conn = WorkshopRedis("127.0.0.1", port_of(client), password=None)
        try:
            yield conn
        finally:
            conn.client.close()


INVALID_KEYS = ["job:broken-1", "job:broken-2", "job:number"]


def platform_jobs(count, rng):
    """`count` job records shaped like the platform's, over a 4-hour afternoon."""
    shapes = [sdxl(), sdxl(832, 1216, 2, lora=DETAIL_LORA), flux(), flux(1024, 768), ltx()]
    records = []
    for number in range(count):
        created = rng.randrange(0, 4 * 3600)
        status = rng.choice(["completed"] * 6 + ["failed", "cancelled", "pending", "running"])
        started = None if status in ("pending", "cancelled") else created + rng.randrange(0, 600)
        completed = None if status in ("pending", "running") else (started or created) + rng.randrange(1, 300)
        error = rng.choice([OOM, TIMEOUT]) if status == "failed" else None
        user = f"user{rng.randrange(1, 23):03d}"
        job_id = f"{number:05d}-{rng.getrandbits(32):08x}"
        records.append(job(job_id, user, status, created, started, completed, rng.choice(shapes), error))
    return records


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """A scratch redis-server holding ~2,000 job records among the platform's other keys, and its saved dump."""
    folder = tmp_path_factory.mktemp("metrics-redis")
    records = platform_jobs(2000, random.Random(20251120))
    with scratch_redis(folder) as conn:
        pipe = conn.client.pipeline(transaction=False)
        for record in records:
            pipe.set(f"job:{record['id']}", json.dumps(record))
            pipe.sadd(f"user:{record['user_id']}:jobs", record["id"])
            if record["status"] in ("pending", "running", "completed", "failed"):
                pipe.zadd(f"queue:{record['status']}", {record["id"]: 1})
        pipe.set("job:broken-1", "{not json")
        pipe.set("job:broken-2", "")
        pipe.set("job:number", "42")
        pipe.hset("job:a-hash", mapping={"id": "not a string key"})  # not a record: skipped, by MGET and by type
        pipe.set("jobs:total", "2000")  # starts with "job" but not "job:"
        pipe.set("worker:worker-1:heartbeat", at(0), ex=60)
        pipe.execute()
        conn.client.save()
        yield conn, records, folder / "dump.rdb"


def by_id(records):
    return sorted(records, key=lambda record: record["id"])


def test_jobs_from_redis_returns_exactly_the_records(loaded):
    conn, records, _ = loaded
    result = jobs_from_redis(conn)
    assert isinstance(result, JobRecords)
    assert result.jobs == by_id(records)
    assert result.invalid == INVALID_KEYS


def test_jobs_from_redis_takes_a_few_round_trips(loaded):
    """SCAN plus batched MGETs, never a GET per job: counted at the server and at the client."""
    conn, records, _ = loaded
    round_trips = []
    counting = WorkshopRedis("127.0.0.1", conn.port, password=None)
    plain_call = counting.call
    counting.call = lambda function, *args, **kwargs: round_trips.append(function) or plain_call(function, *args, **kwargs)
    conn.client.config_resetstat()
    jobs, _ = jobs_from_redis(counting, batch=500, per_round_trip=2)
    stats = conn.client.info("commandstats")
    keys = len(records) + len(INVALID_KEYS) + 1  # and the hash
    assert len(jobs) == len(records)
    assert "cmdstat_get" not in stats
    assert stats["cmdstat_mget"]["calls"] == math.ceil(keys / 500)
    assert len(round_trips) == stats["cmdstat_scan"]["calls"] + math.ceil(keys / 1000)
    assert len(round_trips) <= 6
    counting.client.close()


def test_jobs_from_rdb_gives_the_same_records(loaded):
    conn, records, dump = loaded
    from_rdb = jobs_from_rdb(dump)
    assert [record["id"] for record in from_rdb.jobs] == sorted(record["id"] for record in records)
    assert from_rdb == jobs_from_redis(conn)


def test_metrics_from_redis_and_from_rdb_are_equal(loaded):
    conn, records, dump = loaded
    users = [f"user{n:03d}" for n in range(1, 21)]
    from_redis = compute_metrics(jobs_from_redis(conn).jobs, users, cutoff=at(4 * 3600))
    from_rdb = compute_metrics(jobs_from_rdb(dump).jobs, users, cutoff=at(4 * 3600))
    assert from_redis == from_rdb
    assert from_redis == compute_metrics(by_id(records), users, cutoff=at(4 * 3600))
    assert from_redis["jobs"]["submitted"] == 2000
    assert set(from_redis["participants"]["unregistered"]) <= {"user021", "user022"}


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_redis_metrics_in_processes_side_by_side_equal_the_plain_reading(loaded, processes):
    conn, _records, _ = loaded
    users = [f"user{n:03d}" for n in range(1, 21)]
    metrics, invalid = redis_metrics(conn, users, at(0), at(4 * 3600), processes=processes)
    plain = jobs_from_redis(conn)
    assert metrics == compute_metrics(plain, users, at(0), at(4 * 3600))
    assert invalid == plain.invalid == INVALID_KEYS


@pytest.mark.parametrize(("cpus", "per_process", "shares"), [(2, 10000, 1), (2, 1000, 2), (8, 500, 4), (1, 500, 1)])
def test_redis_metrics_takes_one_process_per_cpu_and_per_share_of_keys(loaded, monkeypatch, cpus, per_process, shares):
    """At most MAX_PROCESSES (4), one per usable CPU, one per KEYS_PER_PROCESS keys (2,004 here), at least one."""
    from ansible.module_utils import workshop_metrics

    conn, _records, _ = loaded
    counted, shared_out = [], workshop_metrics.side_by_side

    def counting(work, parts):
        counted.append([len(part) for part in parts])
        return shared_out(work, parts)

    monkeypatch.setattr(workshop_metrics, "side_by_side", counting)
    monkeypatch.setattr(workshop_metrics, "_usable_cpus", lambda: cpus)
    monkeypatch.setattr(workshop_metrics, "KEYS_PER_PROCESS", per_process)
    metrics, _invalid = redis_metrics(conn, [])
    [sizes] = counted
    assert len(sizes) == shares and sum(sizes) == 2004 and max(sizes) - min(sizes) < shares
    assert metrics == compute_metrics(jobs_from_redis(conn), [])


def test_side_by_side_runs_each_part_in_a_child_and_reaps_them_all():
    parent = os.getpid()
    results = side_by_side(lambda part: (part * 2, os.getpid()), [1, 2, 3])
    assert [value for value, _pid in results] == [2, 4, 6]
    pids = {pid for _value, pid in results}
    assert len(pids) == 3 and parent not in pids
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    assert side_by_side(lambda part: (part, os.getpid()), ["alone"]) == [("alone", parent)]


def _fails_on(bad, error):
    def work(part):
        if part == bad:
            raise error
        time.sleep(0.5)  # the other child: still at work when the first one's failure is read
        return part

    work.bad = bad
    return work


def _killed(part):
    if part == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return part


def _unpicklable(part):
    return lambda: part


@pytest.mark.parametrize(
    ("work", "message", "context"),
    [
        (_fails_on(2, WorkshopUnreachable("Redis at h:1 went away", redis="h:1")), "Redis at h:1 went away", {"redis": "h:1"}),
        (_fails_on(1, KeyError("status")), "KeyError: 'status'", {}),
        (_fails_on(1, SystemExit(3)), "SystemExit: 3", {}),
        (_fails_on(2, WorkshopError("odd context", lock=threading.Lock())), "could not send its result back (TypeError: ", {}),
        (_unpicklable, "could not send its result back (", {}),
        (_killed, "ended without sending its result (killed by signal 9, 0 bytes sent)", {}),
    ],
)
def test_a_child_that_fails_or_dies_fails_the_caller_naming_why_and_every_child_is_reaped(work, message, context, monkeypatch):
    """As the error was raised in the child: its kind too (read-only phases go on after WorkshopUnreachable).
    A child still at work when the first one's failure is read is killed, not waited for."""
    from ansible.module_utils import workshop_metrics

    children, start, endings, wait = [], workshop_metrics._start_child, {}, os.waitpid
    monkeypatch.setattr(workshop_metrics, "_start_child", lambda *args: children.append(start(*args)) or children[-1])

    def noted_wait(pid, options):
        reaped, status = wait(pid, options)
        endings[pid] = status
        return reaped, status

    monkeypatch.setattr(workshop_metrics.os, "waitpid", noted_wait)
    with pytest.raises(WorkshopError) as failed:
        side_by_side(work, [1, 2])
    monkeypatch.undo()
    assert message in failed.value.msg and failed.value.context == context
    assert isinstance(failed.value, WorkshopUnreachable) == ("went away" in message)
    assert len(children) == 2
    if getattr(work, "bad", None) == 1:
        other = children[1][0]
        assert os.WIFSIGNALED(endings[other]) and os.WTERMSIG(endings[other]) == signal.SIGKILL
    for pid, _reader in children:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_a_redis_error_in_a_reader_process_fails_naming_the_server(tmp_path, monkeypatch):
    """Each process reads on a connection of its own: a password set after the SCAN refuses theirs."""
    from ansible.module_utils import workshop_metrics

    listed = workshop_metrics.job_keys

    def keys_then_a_password(conn, prefix):
        keys = listed(conn, prefix)
        conn.client.config_set("requirepass", "set-after-the-scan")
        return keys

    with scratch_redis(tmp_path) as conn:
        conn.client.mset({f"job:{n}": json.dumps(job(str(n), "u", "pending", 0)) for n in range(4)})
        monkeypatch.setattr(workshop_metrics, "job_keys", keys_then_a_password)
        with pytest.raises(WorkshopError) as failed:
            redis_metrics(conn, [], processes=2)
    assert failed.value.msg.startswith(f"Redis at 127.0.0.1:{conn.port} requires a password and none was given")
    assert failed.value.context == {"redis": f"127.0.0.1:{conn.port}"}


def test_jobs_from_rdb_leaves_out_expired_keys(tmp_path):
    with scratch_redis(tmp_path) as conn:
        conn.client.set("job:kept", json.dumps(job("kept", "u", "pending", 0)))
        conn.client.set("job:expiring", json.dumps(job("expiring", "u", "pending", 0)), ex=3600)
        conn.client.save()
        expires_ms = conn.client.pexpiretime("job:expiring")
    dump = tmp_path / "dump.rdb"
    assert [record["id"] for record in jobs_from_rdb(dump).jobs] == ["expiring", "kept"]
    assert [record["id"] for record in jobs_from_rdb(dump, now_ms=expires_ms + 1).jobs] == ["kept"]


def test_jobs_from_rdb_reads_db_0_only(tmp_path):
    with scratch_redis(tmp_path) as conn:
        other = redis.Redis(host="127.0.0.1", port=conn.port, db=1, decode_responses=True)
        other.set("job:elsewhere", json.dumps(job("elsewhere", "u", "pending", 0)))
        other.close()
        conn.client.set("job:here", json.dumps(job("here", "u", "pending", 0)))
        conn.client.save()
    assert [record["id"] for record in jobs_from_rdb(tmp_path / "dump.rdb").jobs] == ["here"]
    assert [record["id"] for record in jobs_from_rdb(tmp_path / "dump.rdb", db=1).jobs] == ["elsewhere"]


def test_an_empty_server_has_no_jobs(tmp_path):
    with scratch_redis(tmp_path) as conn:
        assert jobs_from_redis(conn) == JobRecords([], [])


# --- the module on a snapshot alone: no Redis, no .env -------------------------------------------------


def test_the_module_reads_a_version_12_snapshot_with_no_redis_and_no_env(tmp_path, capsys, monkeypatch):
    """report_source=rdb is for a workshop that is gone: the snapshot is enough, a missing .env a warning."""
    import ansible.module_utils._internal
    from ansible.module_utils.testing import patch_module_args
    from test_rdb import build_rdb

    from conftest import load_module

    dump = tmp_path / "dump.rdb"
    dump.write_bytes(bytes(build_rdb(12)))
    args = {
        "dest": str(tmp_path / "report" / "metrics.json"),
        "source": "rdb",
        "rdb_path": str(dump),
        "env_file": str(tmp_path / "gone" / ".env"),
        "redis_port": free_port(),  # nothing listens there
    }
    # As on a host: a test of this process that imported controller code (test_fleet_unit) turns
    # module_utils' warnings into controller display messages, which no result carries.
    monkeypatch.setattr(ansible.module_utils._internal, "is_controller", False)
    with patch_module_args(args), pytest.raises(SystemExit):
        load_module("workshop_metrics").main()
    result = json.loads(capsys.readouterr().out)
    assert result.get("failed") is not True, result
    assert result["metrics"]["jobs"]["submitted"] == 3
    assert result["metrics"]["records"] == {"read": 3, "valid": 3, "invalid": 0, "invalid_keys": []}
    assert "No .env at" in json.dumps(result["warnings"])
    assert json.loads((tmp_path / "report" / "metrics.json").read_text()) == result["metrics"]


def test_the_module_reads_the_live_redis_in_processes_side_by_side(loaded, tmp_path, capfd, monkeypatch):
    """The module's own reading (redis_metrics, here in two processes): the plain reading's figures, one
    result on its standard output (the file, which the children share) however many processes read."""
    import ansible.module_utils._internal
    from ansible.module_utils import workshop_metrics
    from ansible.module_utils.testing import patch_module_args

    from conftest import load_module

    conn, _records, _ = loaded
    users = [f"user{n:03d}" for n in range(1, 21)]
    args = {"dest": str(tmp_path / "metrics.json"), "redis_port": conn.port, "registered_users": users}
    monkeypatch.setattr(ansible.module_utils._internal, "is_controller", False)
    monkeypatch.setattr(workshop_metrics, "KEYS_PER_PROCESS", 1000)
    monkeypatch.setattr(workshop_metrics, "_usable_cpus", lambda: 2)
    shares, shared_out = [], workshop_metrics.side_by_side

    def counted(work, parts):
        shares.append(len(parts))
        return shared_out(work, parts)

    monkeypatch.setattr(workshop_metrics, "side_by_side", counted)
    with patch_module_args(args), pytest.raises(SystemExit):
        load_module("workshop_metrics").main()
    assert shares == [2]
    result = json.loads(capfd.readouterr().out)
    assert result.get("failed") is not True, result
    expected = json.loads(json.dumps(compute_metrics(jobs_from_redis(conn), users), default=str))
    assert result["metrics"] == {**expected, "logs": None}
    assert result["invalid_records"] == INVALID_KEYS
