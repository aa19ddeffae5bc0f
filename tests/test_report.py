"""Medium-term phase: metrics.json equals what the test computes itself, the report fills every field."""

import importlib.util
import json
import math
import shutil
import statistics
import subprocess
from collections import Counter
from datetime import datetime

import pytest

from conftest import (
    BACKUP_ROOT,
    PROJECT_DIR,
    QUEUE_MANAGER,
    REDIS_PORT,
    REPO,
    container,
    dotenv,
    empty_staging,
    http,
    job_record,
    redis_answers,
    run_playbook,
    submit,
    wait_for,
    wait_for_status,
)

REPORTS = BACKUP_ROOT / "staging"
# Inputs naming a model: the platform's loader fields (README) in any node, and LTX-2's generic
# text_encoder / model_name only in loader nodes.
MODEL_INPUTS = {"ckpt_name", "unet_name", "clip_name", "clip_name1", "clip_name2", "clip_name3", "vae_name", "lora_name"}
LOADER_ONLY_INPUTS = {"text_encoder", "model_name"}
# (participant, workflow file, what the worker does with the job)
PLAN = [
    ("user001", "example_workflow", {"duration": 0.3, "succeed": True}),
    ("user001", "flux2_klein_4b_text_to_image", {"duration": 0.6, "succeed": True}),
    ("user002", "ltx2_text_to_video", {"duration": 0.4, "fail": "CUDA out of memory. Tried to allocate 2.50 GiB"}),
    ("user002", "example_workflow", {"duration": 0.2, "succeed": True}),
    ("user003", "flux2_klein_9b_text_to_image", {"duration": 0.7, "fail": "Model file not found"}),
    ("user003", "ltx2_text_to_video_distilled", {"duration": 0.3, "succeed": True}),
    ("user004", "example_workflow", {"duration": 0.2, "fail": "CUDA out of memory. Tried to allocate 2.50 GiB"}),
    ("user004", "flux2_klein_4b_text_to_image", {"duration": 0.5, "succeed": True}),
    ("user001", "example_workflow", {"duration": 0.4, "succeed": True}),
]


def load_loadgen():
    spec = importlib.util.spec_from_file_location("loadgen", REPO / "roles/staging_workshop/files/loadgen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def history(staging_workshop, rdb):
    """An empty workshop, then a job history this test controls, played to its end and backed up.

    The workshop's folder goes first: what an earlier run left in it (`make demo` plays slot 0's
    workshop "staging" through readiness) would be read back into the report as this history's."""
    empty_staging(rdb)
    shutil.rmtree(REPORTS, ignore_errors=True)
    workflows = load_loadgen().load_workflows(REPO / "roles/staging_workshop/files/workflows")
    submitted = {}
    for user, name, behaviour in PLAN:
        submitted[submit(user, metadata={"staging": behaviour}, workflow=workflows[name])] = workflows[name]
    # A job cancelled while it runs: the platform only marks it and keeps it in queue:running (its
    # worker, made to hang here, never reports), until the drain's stuck-job policy finishes it as cancelled.
    cancelled = submit("user002", metadata={"staging": {"hang": True}}, workflow=workflows["example_workflow"])
    submitted[cancelled] = workflows["example_workflow"]
    wait_for_status(rdb, cancelled, {"running"})
    assert http("DELETE", f"/api/jobs/{cancelled}")[0] == 204
    wait_for(
        lambda: rdb.zcard("queue:pending") == 0 and rdb.zrange("queue:running", 0, -1) == [cancelled],
        timeout=60,
        what="the history to finish",
    )
    run_playbook("playbooks/drain.yml", extra_vars={"drain_timeout": 1, "drain_stuck_policy": "fail"})
    assert job_record(rdb, cancelled)["status"] == "cancelled"
    run_playbook("playbooks/backup.yml")
    run_playbook("playbooks/drain.yml", extra_vars={"drain_reopen": True})
    return submitted


@pytest.fixture(scope="module")
def report(history):
    """The report of the history, written once: the tests that change it write it again as it was."""
    return run_playbook("playbooks/report.yml")


def epoch(iso):
    return datetime.fromisoformat(iso).timestamp()


def expected_figures(rdb, submitted):
    """Every figure, computed here from the records in Redis and the workflows this test submitted."""
    jobs = [json.loads(rdb.get(key)) for key in rdb.scan_iter("job:*")]
    status = Counter(job["status"] for job in jobs)
    done = [job for job in jobs if job["status"] == "completed"]
    lengths = sorted(epoch(job["completed_at"]) - epoch(job["started_at"]) for job in done)
    rank = (len(lengths) - 1) * 0.95
    p95 = lengths[math.floor(rank)] + (lengths[math.ceil(rank)] - lengths[math.floor(rank)]) * (rank - math.floor(rank))
    waits = [epoch(job["started_at"]) - epoch(job["created_at"]) for job in jobs if job["started_at"]]
    events = []
    for job in jobs:
        events.append((epoch(job["created_at"]), +1))
        leaves = job["started_at"] or job["completed_at"]
        events.append((epoch(leaves), -1))
    depth = peak = 0
    for moment in sorted({when for when, _ in events}):
        depth += sum(change for when, change in events if when == moment)
        peak = max(peak, depth)
    models_used, resolutions, batches = Counter(), Counter(), Counter()
    for workflow in submitted.values():
        names = set()
        for node in workflow.values():
            fields = MODEL_INPUTS | (LOADER_ONLY_INPUTS if "Loader" in node["class_type"] else set())
            names |= {value for field, value in node["inputs"].items() if field in fields and isinstance(value, str) and value}
        models_used.update(names)
        latents = [
            node["inputs"]
            for node in workflow.values()
            if node["class_type"].startswith("Empty") and "Latent" in node["class_type"]
        ]
        resolutions.update({f"{n['width']}x{n['height']}" for n in latents})
        batches.update({str(n["batch_size"]) for n in latents})
    return dict(
        status=status,
        lengths=lengths,
        p95=p95,
        waits=waits,
        peak=peak,
        jobs=jobs,
        models=models_used,
        resolutions=resolutions,
        batches=batches,
    )


def ranked(counter, tie=str):
    """A Counter as metrics.json ranks it: most first, ties by name (or by tie(name))."""
    ordered = sorted(counter.items(), key=lambda item: (-item[1], tie(item[0])))
    return [{"name": name, "count": count} for name, count in ordered]


def metrics_of(folder):
    return json.loads((folder / "metrics.json").read_text())


def test_every_figure_equals_the_independently_computed_one(history, report, rdb):
    metrics = metrics_of(REPORTS / "report")
    want = expected_figures(rdb, history)

    jobs = metrics["jobs"]
    assert jobs["submitted"] == len(PLAN) + 1 == len(want["jobs"])
    assert (jobs["completed"], jobs["failed"], jobs["cancelled"]) == (want["status"]["completed"], want["status"]["failed"], 1)
    assert (jobs["completed"], jobs["failed"]) == (6, 3)
    assert jobs["success_rate"] == pytest.approx(round(100 * 6 / 9, 1))
    durations = metrics["durations"]
    assert durations["count"] == len(want["lengths"])
    assert durations["mean"] == pytest.approx(statistics.mean(want["lengths"]), abs=1e-3)
    assert durations["median"] == pytest.approx(statistics.median(want["lengths"]), abs=1e-3)
    assert durations["p95"] == pytest.approx(want["p95"], abs=1e-3)
    assert durations["max"] == pytest.approx(max(want["lengths"]), abs=1e-3)
    assert metrics["wait"]["max"] == pytest.approx(max(want["waits"]), abs=1e-3)
    assert metrics["queue_depth"]["peak"] == want["peak"] >= 3
    participants = metrics["participants"]
    assert participants["attended"] == ["user001", "user002", "user003", "user004"]
    assert participants["dropouts"] == ["user005", "user006"]
    assert participants["jobs_per_participant"][0] == {"name": "user001", "count": 3}
    assert metrics["failures"]["by_error"] == [
        {"name": "CUDA out of memory. Tried to allocate 2.50 GiB", "count": 2},
        {"name": "Model file not found", "count": 1},
    ]
    assert metrics["models"]["used"] == ranked(want["models"])
    assert "flux-2-klein-4b.safetensors" in [entry["name"] for entry in metrics["models"]["succeeded"]]
    assert metrics["resolutions"] == ranked(want["resolutions"])
    assert metrics["batch_sizes"] == ranked(want["batches"], tie=int)
    assert metrics["records"] == {"read": 10, "valid": 10, "invalid": 0, "invalid_keys": []}
    assert metrics["drain"]["time_to_clear_seconds"] is not None
    assert metrics["logs"]["worker_jobs"]["failed"] >= 3  # from the exported logs of the backup


def test_the_report_fills_every_field_and_says_why_when_not_measured(report):
    report = (REPORTS / "report" / "report.md").read_text()

    assert "[X]" not in report
    for heading in (
        "Participants",
        "System Performance Metrics",
        "Timing Analysis",
        "GPU Performance",
        "Network Performance",
        "Issues Encountered",
        "Successful Workflows",
        "System Stability Log",
        "Files Generated",
    ):
        assert f"## {heading}" in report
    assert "Total jobs submitted: 10" in report
    assert "not measured: no host in the inventory group gpu" in report
    assert "Failed jobs: `CUDA out of memory. Tried to allocate 2.50 GiB` (2 jobs)" in report
    assert report.index("CUDA out of memory") < report.index("Model file not found")
    assert "Log lines about crashes" not in report  # the jobs' out-of-memory is a job failure, not a crash
    assert "- Job records: 10 read, all counted" in report
    assert "Workshop Report - None" not in report and "hours" not in report


def test_an_rdb_only_run_gives_the_same_figures(report):
    run_playbook("playbooks/report.yml", extra_vars={"report_source": "rdb", "report_dir": str(REPORTS / "report-rdb")})
    try:
        assert metrics_of(REPORTS / "report-rdb") == metrics_of(REPORTS / "report")
    finally:
        shutil.rmtree(REPORTS / "report-rdb")


def test_a_second_run_changes_nothing(report):
    again = run_playbook("playbooks/report.yml")
    assert again.changed() == 0, again.output


def test_the_gpu_host_is_read_from_a_recorded_nvidia_smi(history, tmp_path):
    inventory = tmp_path / "inventory"
    python = shutil.which("python")
    inventory.write_text(
        "[workshop]\n"
        f"localhost ansible_connection=local ansible_python_interpreter={python} workshop_id=staging "
        f"workshop_project_dir={PROJECT_DIR} workshop_backup_root={BACKUP_ROOT} workshop_redis_port={REDIS_PORT} "
        f"workshop_queue_manager_url={QUEUE_MANAGER}\n"
        "[gpu]\n"
        f"gpu-h100 ansible_connection=local ansible_host=127.0.0.1 ansible_python_interpreter={python}\n"
    )
    run_playbook(
        "playbooks/report.yml",
        "-i",
        str(inventory),
        extra_vars={
            "report_gpu_xml_file": str(REPO / "tests/fixtures/nvidia-smi-h100.xml"),
            "report_latency_port": REDIS_PORT,
            "report_dir": str(tmp_path / "report"),
        },
    )
    report = (tmp_path / "report" / "report.md").read_text()
    assert "NVIDIA H100 80GB HBM3" in report
    assert "Latency VPS ↔ GPU: not measured" not in report


def test_the_html_report_opens_in_chromium_with_its_charts(report, tmp_path):
    page = REPORTS / "report" / "report.html"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
    ]
    dom = subprocess.run(["chromium", *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    shot = tmp_path / "report.png"
    taken = subprocess.run(
        ["chromium", *flags, "--window-size=1100,4200", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )

    for run in (dom, taken):
        console = [line for line in run.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
        assert console == []
    for figure in ("chart-queue-depth", "chart-jobs-per-participant", "chart-duration-histogram"):
        assert f'id="{figure}"' in dom.stdout
    assert dom.stdout.count("<svg") >= 3
    from PIL import Image

    colors = dict((color, count) for count, color in Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 24))
    chart_blue = colors.get((37, 99, 235), 0)
    assert chart_blue > 500  # the bars and the queue-depth line are drawn
    artifacts = REPO / "tests" / ".artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copy(shot, artifacts / "report.png")  # for a person to look at


def redis_client():
    import redis

    return redis.Redis(host="127.0.0.1", port=REDIS_PORT, password=dotenv("REDIS_PASSWORD"), socket_timeout=2)


def report_files():
    return {name: (REPORTS / "report" / name).read_bytes() for name in ("metrics.json", "report.md", "report.html")}


def test_check_mode_renders_a_preview_and_writes_nothing(report):
    before = report_files()
    (REPORTS / "report" / "report.md").unlink()
    preview = run_playbook("playbooks/report.yml", check=True)
    assert "Total jobs submitted: 10" in preview.output  # the rendered report, shown
    assert "# Workshop Report - " in preview.output
    assert not (REPORTS / "report" / "report.md").exists()
    assert (REPORTS / "report" / "metrics.json").read_bytes() == before["metrics.json"]
    run_playbook("playbooks/report.yml")


def test_a_failed_verify_in_the_run_record_reads_failed_in_the_report(history):
    record_path = REPORTS / "run-record.json"
    original = record_path.read_text()
    record = json.loads(original)
    name = record["backup"]["name"]
    failure = {"file": "outputs.tar", "member": "user003/img.png", "reason": "sha256 differs from the manifest"}
    record["backup"]["verify"] = {"ok": False, "at": "2026-11-29T17:10:02+00:00", "backup": name, "failures": [failure]}
    record.setdefault("verify", {})["ok"] = True  # an earlier, passed verification left at the top
    record_path.write_text(json.dumps(record))
    try:
        run_playbook("playbooks/report.yml")
        report = (REPORTS / "report" / "report.md").read_text()
    finally:
        record_path.write_text(original)
        run_playbook("playbooks/report.yml")
    assert "FAILED verification at 2026-11-29 17:10 UTC: `outputs.tar member user003/img.png`" in report
    assert ", verified" not in report


def test_the_report_reads_the_snapshot_with_the_redis_container_stopped(report):
    """report_source=rdb needs neither the live Redis nor Docker: it reads the newest backup's snapshot."""
    live = metrics_of(REPORTS / "report")
    subprocess.run(["docker", "stop", container("redis")], check=True, capture_output=True, timeout=120)
    try:
        run = run_playbook(  # the whole checklist's report phase: its always-on state phase must not stop it
            "post_workshop.yml",
            "--tags",
            "report",
            "-e",
            "report_source=rdb",
            "-e",
            "report_show_preview=false",  # a boolean given as a string
            "-e",
            f"report_dir={REPORTS / 'report-rdb'}",
        )
        from_snapshot = metrics_of(REPORTS / "report-rdb")
        assert "Total jobs submitted: 10" not in run.output  # the preview is off: "false" is false
        assert from_snapshot == live
        shown = run_playbook(
            "playbooks/report.yml",
            "-e",
            "report_source=rdb",
            "-e",
            "report_show_preview=true",
            "-e",
            f"report_dir={REPORTS / 'report-rdb'}",
        )
        assert "Total jobs submitted: 10" in shown.output
    finally:
        subprocess.run(["docker", "start", container("redis")], check=True, capture_output=True, timeout=120)
        shutil.rmtree(REPORTS / "report-rdb", ignore_errors=True)
        wait_for(lambda: redis_answers(redis_client()), timeout=60, what="Redis to answer again")
