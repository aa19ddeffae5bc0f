#!/usr/bin/env python3
"""Play a workshop through the queue manager's HTTP API: participants submit ComfyUI jobs in bursts.

Each job's workflow is an API-format prompt made from the workflow files of --workflows (API format as
it is, UI format converted), with its resolution and batch size varied. Everything but the job ids
follows from --seed. metadata.staging tells the staging worker which jobs hang or fail (--hang, --fail-rate).
"""

import argparse
import copy
import json
import random
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

# Widget order of the UI format, per node class: the names of its widgets_values, in order.
LOADER_WIDGETS = {
    "CheckpointLoaderSimple": ("ckpt_name",),
    "UNETLoader": ("unet_name", "weight_dtype"),
    "CLIPLoader": ("clip_name", "type", "device"),
    "VAELoader": ("vae_name",),
    "LoraLoader": ("lora_name", "strength_model", "strength_clip"),
    "LoraLoaderModelOnly": ("lora_name", "strength_model"),
    "LTXAVTextEncoderLoader": ("text_encoder", "ckpt_name"),
    "LTXVAudioVAELoader": ("ckpt_name",),
    "LatentUpscaleModelLoader": ("model_name",),
}
LATENT_WIDGETS = {
    "EmptyLatentImage": ("width", "height", "batch_size"),
    "EmptySD3LatentImage": ("width", "height", "batch_size"),
    "EmptyFlux2LatentImage": ("width", "height", "batch_size"),
    "EmptyLTXVLatentVideo": ("width", "height", "length", "batch_size"),
    "EmptyHunyuanLatentVideo": ("width", "height", "length", "batch_size"),
}
OUTPUT_WIDGETS = {"SaveImage": ("filename_prefix",), "SaveVideo": ("filename_prefix", "format", "codec")}
WIDGETS = {**LOADER_WIDGETS, **LATENT_WIDGETS, **OUTPUT_WIDGETS}
DEFAULT_PROMPT = "a beautiful landscape with mountains and a lake at sunset"
IMAGE_SIZES = (512, 768, 1024)
VIDEO_SIZES = ((768, 512), (512, 768))
ERRORS = (
    "CUDA out of memory. Tried to allocate 2.50 GiB",
    "Invalid prompt: Required input is missing: clip",
    "Sampler produced NaN values in the latent",
)


def api_prompt_from_file(path):
    """The ComfyUI API-format prompt {node_id: {class_type, inputs}} of a workflow file, API or UI format.

    UI format: the loaders, latents, text encoders and save nodes at the top level and inside
    definitions.subgraphs (ids "<subgraph instance>:<node>", as ComfyUI flattens them), with their
    widgets_values named. Links between nodes are left out: the staging worker never follows them.
    """
    data = json.loads(Path(path).read_text())
    if "nodes" not in data:
        return data
    subgraphs = data.get("definitions", {}).get("subgraphs", [])
    subgraph_ids = {graph["id"] for graph in subgraphs}
    instances = {node["type"]: node["id"] for node in data["nodes"]}
    # The participant's prompt: a top-level text primitive, or the first widget of a subgraph instance.
    texts = (
        (node.get("widgets_values") or [None])[0]
        for node in data["nodes"]
        if node["type"] == "PrimitiveStringMultiline" or node["type"] in subgraph_ids
    )
    prompt_text = next((text.strip() for text in texts if isinstance(text, str) and text.strip()), DEFAULT_PROMPT)
    graphs = [("", data["nodes"])] + [(f"{instances.get(graph['id'], graph['id'])}:", graph["nodes"]) for graph in subgraphs]
    prompt = {}
    for prefix, nodes in graphs:
        for node in nodes:
            values = node.get("widgets_values") or []
            if node["type"] in WIDGETS:
                inputs = dict(zip(WIDGETS[node["type"]], values, strict=False))
            elif node["type"] == "CLIPTextEncode":
                # An empty text fed by a link is the participant's prompt (a primitive or the subgraph's input).
                linked = any(entry["name"] == "text" and entry.get("link") for entry in node.get("inputs", []))
                inputs = {"text": (values[0] if values else "") or (prompt_text if linked else "")}
            else:
                continue
            prompt[f"{prefix}{node['id']}"] = {"class_type": node["type"], "inputs": inputs}
    if not any(node["class_type"] in OUTPUT_WIDGETS for node in prompt.values()):
        prompt["save"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI"}}
    return prompt


def vary_prompt(prompt, rng):
    """A copy of `prompt` with another resolution and batch size in its latent nodes (video: 1 clip)."""
    varied = copy.deepcopy(prompt)
    size = rng.choice(IMAGE_SIZES)
    batch = rng.randint(1, 4)
    width, height = rng.choice(VIDEO_SIZES)
    for node in varied.values():
        if node.get("class_type") not in LATENT_WIDGETS:
            continue
        if "length" in LATENT_WIDGETS[node["class_type"]]:
            node["inputs"].update(width=width, height=height, batch_size=1)
        else:
            node["inputs"].update(width=size, height=size, batch_size=batch)
    return varied


def load_workflows(folder):
    """{file stem: API-format prompt} of the folder's *.json workflows."""
    workflows = {path.stem: api_prompt_from_file(path) for path in sorted(Path(folder).glob("*.json"))}
    if not workflows:
        raise SystemExit(f"loadgen: no *.json workflow in {folder}")
    return workflows


def plan_workshop(workflows, users, attendance, jobs_per_user, bursts, hang, fail_rate, seed):
    """The jobs to submit, in submission order: dicts of user, burst, workflow and metadata."""
    rng = random.Random(seed)
    everyone = [f"user{number:03d}" for number in range(1, users + 1)]
    attending = sorted(rng.sample(everyone, round(users * attendance)))
    low, high = jobs_per_user
    jobs = []
    for user in attending:
        for _ in range(rng.randint(low, high)):
            name = rng.choice(sorted(workflows))
            metadata = {"workflow_name": name}
            if fail_rate is not None:
                failing = rng.random() < fail_rate
                metadata["staging"] = {"fail": rng.choice(ERRORS)} if failing else {"succeed": True}
            jobs.append(
                {
                    "user_id": user,
                    "burst": rng.randrange(bursts),
                    "workflow": vary_prompt(workflows[name], rng),
                    "metadata": metadata,
                }
            )
    for job in rng.sample(jobs, min(hang, len(jobs))):
        job["metadata"]["staging"] = {"hang": True}
    rng.shuffle(jobs)
    return sorted(jobs, key=lambda job: job["burst"])


def call(url, method, body=None):
    """(status, decoded JSON or None) of one request; HTTP errors are answers."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    except OSError as error:
        raise SystemExit(f"loadgen: cannot reach the queue manager at {url}: {error}") from error
    return status, json.loads(raw) if raw else None


def submit(base, job, retries, pause):
    """Submit one job, retrying while the queue is full; returns (job id or None, number of 429 answers)."""
    body = {"user_id": job["user_id"], "workflow": job["workflow"], "priority": 2, "metadata": job["metadata"]}
    for attempt in range(retries + 1):
        status, answer = call(f"{base}/api/jobs", "POST", body)
        if status == 201:
            return answer["id"], attempt
        if status != 429:
            raise SystemExit(f"loadgen: submitting a job of {job['user_id']} got {status}: {answer}")
        time.sleep(pause)
    return None, retries + 1


def wait_until_done(base, job_ids, timeout):
    """Wait until every job of `job_ids` has finished (completed, failed or cancelled); returns (done, queue status).

    Each job is asked after; the queue's counts alone cannot tell, since jobs hung by an earlier play
    stay running forever.
    """
    deadline = time.monotonic() + timeout
    open_ids = list(job_ids)
    while True:
        open_ids = [
            job_id
            for job_id in open_ids
            if (call(f"{base}/api/jobs/{job_id}", "GET")[1] or {}).get("status") in ("pending", "running")
        ]
        _, status = call(f"{base}/api/queue/status", "GET")
        if not open_ids:
            return True, status
        if time.monotonic() >= deadline:
            return False, status
        time.sleep(0.5)


def job_range(text):
    low, _, high = text.partition("-")
    low, high = int(low), int(high or low)
    if not 0 <= low <= high:
        raise argparse.ArgumentTypeError(f"expected N or LOW-HIGH, got {text!r}")
    return low, high


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the queue manager")
    parser.add_argument("--users", type=int, default=20, help="participants user001..userNNN")
    parser.add_argument("--attendance", type=float, default=0.8, help="share of participants who submit at all")
    parser.add_argument("--jobs-per-user", type=job_range, default=(2, 5), help="N or LOW-HIGH jobs per attending participant")
    parser.add_argument("--bursts", type=int, default=3, help="submissions come in this many bursts")
    parser.add_argument("--burst-gap", type=float, default=2.0, help="seconds between bursts")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--workflows", default=str(Path(__file__).resolve().parent / "workflows"), help="folder of workflow JSON files"
    )
    parser.add_argument("--hang", type=int, default=0, help="jobs the worker leaves running forever")
    parser.add_argument("--fail-rate", type=float, help="share of jobs made to fail (default: the worker's FAIL_RATE decides)")
    parser.add_argument("--retries", type=int, default=10, help="resubmissions of a job refused with 429")
    parser.add_argument("--retry-pause", type=float, default=1.0, help="seconds before resubmitting after 429")
    parser.add_argument(
        "--wait", action=argparse.BooleanOptionalAction, default=False, help="wait until every job that can finish has"
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds --wait waits at most")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    args = parser.parse_args(argv)
    if args.users < 0 or args.bursts < 1 or not 0 <= args.attendance <= 1:
        parser.error("--users must be >= 0, --bursts >= 1, --attendance within 0..1")
    return args


def utc_now():
    return datetime.now(timezone.utc).isoformat()


def main(argv=None):
    args = parse_args(argv)
    base = args.url.rstrip("/")
    jobs = plan_workshop(
        load_workflows(args.workflows),
        args.users,
        args.attendance,
        args.jobs_per_user,
        args.bursts,
        args.hang,
        args.fail_rate,
        args.seed,
    )
    started_at = utc_now()
    users = {job["user_id"]: {"submitted": [], "rejected": 0, "given_up": 0} for job in jobs}
    finishing = []  # the submitted jobs that are not meant to hang
    for burst in range(args.bursts):
        if burst:
            time.sleep(args.burst_gap)
        for job in (job for job in jobs if job["burst"] == burst):
            job_id, rejections = submit(base, job, args.retries, args.retry_pause)
            record = users[job["user_id"]]
            record["rejected"] += rejections
            if job_id:
                record["submitted"].append(job_id)
                if not job["metadata"].get("staging", {}).get("hang"):
                    finishing.append(job_id)
            else:
                record["given_up"] += 1
    submitted = sum(len(record["submitted"]) for record in users.values())
    done, status = wait_until_done(base, finishing, args.timeout) if args.wait else (None, None)
    summary = {
        "url": base,
        "seed": args.seed,
        "started_at": started_at,
        "ended_at": utc_now(),
        "users": users,
        "totals": {
            "users": args.users,
            "attending": len(users),
            "submitted": submitted,
            "rejected": sum(record["rejected"] for record in users.values()),
            "given_up": sum(record["given_up"] for record in users.values()),
            "hung": submitted - len(finishing),
        },
        "drained": done,
        "queue": status,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(", ".join(f"{key} {value}" for key, value in summary["totals"].items()))
    if done is False:
        print(f"loadgen: jobs still open after {args.timeout:g}s: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
