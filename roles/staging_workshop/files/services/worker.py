"""Staging GPU worker: takes jobs from the queue manager, takes as long as a render would, and writes
ComfyUI-named, incompressible PNG/MP4 outputs (or fails the job as a GPU would, now and then).

metadata.staging of a job overrides what happens to it, so tests decide the history: duration (seconds),
fail (an error to fail with), succeed (never fail), hang (leave it running forever), output_bytes,
outputs (number of files), kind ("video" for MP4 outputs).
"""

import hashlib
import os
import re
import tempfile
import time

from common import env, on_sigterm, request_json, setup_logging

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MP4_HEADER = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"
OUTPUT_NAME = re.compile(r"ComfyUI_(\d{5,})_\.\w+")
LOADER_INPUTS = ("ckpt_name", "unet_name", "clip_name", "vae_name", "lora_name")
CHUNK = 1 << 20


def latent_node(workflow):
    """The inputs and class of the workflow's empty latent (EmptyLatentImage, EmptyLTXVLatentVideo, ...)."""
    for node in workflow.values():
        kind = (isinstance(node, dict) and node.get("class_type")) or ""
        if kind.startswith("Empty") and "Latent" in kind:
            return node.get("inputs") or {}, kind
    return {}, ""


def model_name(workflow):
    """The first model a loader of the workflow names, for a realistic 'Model file not found'."""
    for node in workflow.values():
        inputs = (isinstance(node, dict) and node.get("inputs")) or {}
        for name in LOADER_INPUTS:
            if isinstance(inputs.get(name), str):
                return inputs[name]
    return "sd_xl_base_1.0.safetensors"


def number(inputs, name, default):
    # A widget linked to another node (["12", 0]) has no value of its own here.
    value = inputs.get(name)
    return value if isinstance(value, int | float) and value > 0 else default


def planned_error(job, fail_rate):
    """The error the job fails with, or None; chosen from its id, so the same job always fares the same."""
    digest = int(hashlib.sha256(job["id"].encode()).hexdigest(), 16)
    if digest % 1000 >= fail_rate * 1000:
        return None
    errors = (
        "CUDA out of memory. Tried to allocate 2.50 GiB (GPU 0; 79.10 GiB total capacity; 74.32 GiB already allocated)",
        f"Model file not found: {model_name(job['workflow'])}",
        "Invalid prompt: Required input is missing: clip",
        "Sampler produced NaN values in the latent; try another seed or a lower cfg",
    )
    return errors[digest // 1000 % len(errors)]


def next_counter(folder):
    """The counter after the highest ComfyUI_NNNNN_ file of the folder, as ComfyUI continues its numbering."""
    numbers = [int(match[1]) for name in os.listdir(folder) if (match := OUTPUT_NAME.fullmatch(name))]
    return max(numbers, default=0) + 1


def write_output(folder, extension, header, size):
    """Write header + random bytes (incompressible, like real PNG/MP4) to the next free ComfyUI_NNNNN_ name.

    The bytes go to a temporary file first, so no partial output is ever visible; os.link then takes
    a name only if it is free, so workers sharing the outputs folder never overwrite each other.
    """
    descriptor, tmp = tempfile.mkstemp(dir=folder, prefix=".ComfyUI_", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(header)
            left = size - len(header)
            while left > 0:
                out.write(os.urandom(min(CHUNK, left)))
                left -= CHUNK
        counter = next_counter(folder)
        while True:
            name = f"ComfyUI_{counter:05d}_.{extension}"
            try:
                os.link(tmp, os.path.join(folder, name))
                return name
            except FileExistsError:
                counter += 1
    finally:
        os.unlink(tmp)


class Worker:
    def __init__(self, logger):
        self.logger = logger
        self.worker_id = env("WORKER_ID", "worker-1")
        self.url = env("QUEUE_MANAGER_URL", "http://queue-manager:3000").rstrip("/")
        self.poll_interval = env("POLL_INTERVAL", 0.2, float)
        self.outputs_dir = env("OUTPUTS_DIR", "/outputs")
        self.fail_rate = env("FAIL_RATE", 0.1, float)
        self.job_seconds = env("JOB_SECONDS", 0.5, float)
        self.output_bytes = env("OUTPUT_BYTES", 262144, int)
        self.completed = self.failed = 0
        self.started = time.monotonic()

    def run(self):
        self.logger.info("Worker %s polling %s", self.worker_id, self.url)
        while True:
            status, job = self.call("GET", f"/api/workers/next-job?worker_id={self.worker_id}")
            if status == 200 and isinstance(job, dict):
                self.process(job)
            else:
                time.sleep(self.poll_interval)

    def call(self, method, path, body=None):
        """Call the queue manager until it answers (anything but a 5xx): it may be restarting."""
        delay = 0.5
        while True:
            try:
                status, answer = request_json(method, self.url + path, body)
            except OSError as error:
                self.logger.warning(
                    "Connection refused or lost: queue manager at %s (%s); retrying in %gs", self.url, error, delay
                )
            else:
                if status < 500:
                    return status, answer
                self.logger.warning(
                    "Queue manager answered %d to %s %s (%s); retrying in %gs", status, method, path, answer, delay
                )
            time.sleep(delay)
            delay = min(delay * 2, 5)

    def process(self, job):
        job_id, user, workflow = job["id"], job["user_id"], job.get("workflow") or {}
        staging = (job.get("metadata") or {}).get("staging")
        staging = staging if isinstance(staging, dict) else {}
        self.logger.info("Processing job %s for user %s", job_id, user)
        if staging.get("hang"):
            self.logger.warning("Leaving job %s unfinished (metadata.staging.hang)", job_id)
            return
        inputs, latent = latent_node(workflow)
        batch = int(number(inputs, "batch_size", 1))
        pixels = number(inputs, "width", 1024) * number(inputs, "height", 1024) * batch
        if "fail" in staging:
            error = str(staging["fail"])
        else:
            error = None if staging.get("succeed") else planned_error(job, self.fail_rate)
        try:
            duration = float(staging.get("duration", self.job_seconds * min(pixels / (1024 * 1024), 10)))
            count, size = int(staging.get("outputs", batch)), int(staging.get("output_bytes", self.output_bytes))
        except (TypeError, ValueError) as bad:
            duration, error = 0, f"Invalid prompt: metadata.staging: {bad}"
        started = time.monotonic()
        time.sleep(max(0, duration))

        if error is None:
            video = "Video" in latent or staging.get("kind") == "video"
            try:
                outputs = self.write_outputs(user, count, size, video)
            except OSError as failure:
                error = f"Failed to save outputs: {failure}"

        # Log before reporting: once the queue manager records the outcome, the log already says it.
        if error is None:
            self.logger.info("Job %s completed successfully", job_id)
            result = {"outputs": outputs, "duration_seconds": round(time.monotonic() - started, 3)}
            status, answer = self.call("POST", f"/api/workers/complete-job?job_id={job_id}", {"result": result})
        else:
            self.logger.error("Job %s failed: %s", job_id, error)
            status, answer = self.call("POST", f"/api/workers/fail-job?job_id={job_id}", {"error": error})
        if status != 200:  # its record is gone (as on the platform, a cancelled job is still recorded as finished)
            self.logger.warning("Queue manager kept job %s as it was (%d: %s)", job_id, status, answer)
        elif error is None:
            self.completed += 1
        else:
            self.failed += 1

    def write_outputs(self, user, count, size, video):
        folder = os.path.join(self.outputs_dir, user)
        os.makedirs(folder, exist_ok=True)
        header, extension = (MP4_HEADER, "mp4") if video else (PNG_SIGNATURE, "png")
        return [f"{user}/{write_output(folder, extension, header, max(size, len(header)))}" for _ in range(max(count, 1))]

    def log_totals(self):
        self.logger.info("Shutting down worker %s", self.worker_id)
        self.logger.info("Total jobs completed: %d", self.completed)
        self.logger.info("Total jobs failed: %d", self.failed)
        self.logger.info("Uptime: %ds", round(time.monotonic() - self.started))


def main():
    worker = Worker(setup_logging("worker"))
    on_sigterm(worker.log_totals)
    worker.run()


if __name__ == "__main__":
    main()
