"""The yearly roll-up over staged workshops: three metrics.json made by the real metrics code over three
scratch-redis datasets (different figures), one workshop of another year; every figure of the roll-up
equals one computed here independently from the job records, and the other year is left out."""

import json
import os
import random
import subprocess
from datetime import datetime, timedelta, timezone

import pytest
from ansible.module_utils.workshop_metrics import compute_metrics, jobs_from_redis
from ansible.module_utils.workshop_record import save_record
from ansible.module_utils.workshop_redis import WorkshopRedis
from ansible.module_utils.workshop_rollup import build_rollup
from scratch_redis import port_of, running_redis

from conftest import REPO, load_module

YEAR = 2026


def stamp(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def staged_jobs(seed, start, users, count, failed_share):
    """`count` job records of `users` from `start`: most finish, some fail, a few never start."""
    rng = random.Random(seed)
    jobs = []
    for number in range(count):
        created = start + timedelta(seconds=rng.randrange(0, 1800))
        roll = rng.random()
        status = "pending" if roll < 0.05 else "failed" if roll < 0.05 + failed_share else "completed"
        started = None if status == "pending" else created + timedelta(seconds=rng.randrange(0, 400))
        done = None if started is None else started + timedelta(seconds=rng.randrange(5, 240), milliseconds=rng.randrange(1000))
        jobs.append(
            {
                "id": f"{seed}-{number:04d}",
                "user_id": f"user{rng.randrange(1, users + 1):03d}",
                "workflow": {},
                "status": status,
                "priority": 2,
                "created_at": stamp(created),
                "started_at": stamp(started) if started else None,
                "completed_at": stamp(done) if done else None,
                "worker_id": "worker-1" if started else None,
                "result": None,
                "error": "CUDA out of memory" if status == "failed" else None,
                "metadata": {},
            }
        )
    return jobs


def expected_row(jobs, registered):
    """The roll-up's figures of one workshop, computed here from the records, not by the metrics code."""
    parse = lambda text: datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")  # noqa: E731
    completed = [j for j in jobs if j["status"] == "completed"]
    failed = [j for j in jobs if j["status"] == "failed"]
    # Queue depth at every instant: created and not yet started (all events of an instant applied).
    intervals = [(parse(j["created_at"]), parse(j["started_at"]) if j["started_at"] else None) for j in jobs]
    instants = sorted({t for interval in intervals for t in interval if t is not None})
    peak = max(sum(1 for c, s in intervals if c <= t and (s is None or s > t)) for t in instants)
    seconds = sum((parse(j["completed_at"]) - parse(j["started_at"])).total_seconds() for j in completed)
    return {
        "participants": len({j["user_id"] for j in jobs} & set(registered)),
        "jobs": len(jobs),
        "completed": len(completed),
        "failed": len(failed),
        "success_rate": round(100 * len(completed) / (len(completed) + len(failed)), 1),
        "peak_queue": peak,
        "gpu_hours": seconds / 3600,
    }


# (workshop, start, registered users, jobs, failed share, final time recorded by the drain or None)
WORKSHOPS = [
    ("berlin-spring", datetime(2026, 3, 14, 14, 0), 12, 90, 0.10, datetime(2026, 3, 14, 15, 5)),
    ("lisbon", datetime(2026, 6, 20, 9, 30), 20, 160, 0.25, datetime(2026, 6, 20, 10, 45)),
    # No run record: dated by its first job.
    ("online-nov", datetime(2026, 11, 29, 18, 0), 6, 40, 0.0, None),
    # Another year: left out.
    ("berlin-2025", datetime(2025, 12, 6, 14, 0), 10, 30, 0.1, datetime(2025, 12, 6, 15, 0)),
]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A backup root with the four workshops' folders: report/metrics.json written from a scratch Redis, run records."""
    root = tmp_path_factory.mktemp("rollup") / "backups"
    expected = {}
    for seed, (name, start, users, count, failed_share, final) in enumerate(WORKSHOPS, 1):
        jobs = staged_jobs(seed, start, users, count, failed_share)
        registered = [f"user{n:03d}" for n in range(1, users + 1)]
        with running_redis(tmp_path_factory.mktemp(f"redis-{name}")) as client:
            for job in jobs:
                client.set(f"job:{job['id']}", json.dumps(job))
            conn = WorkshopRedis("127.0.0.1", port_of(client), password=None)
            try:
                records = jobs_from_redis(conn)
            finally:
                conn.client.close()
        # As the workshop_metrics module writes it.
        cutoff = stamp(final - timedelta(minutes=30)) if final else None
        metrics = compute_metrics(records, registered, cutoff, stamp(final) if final else None)
        folder = root / name
        (folder / "report").mkdir(parents=True)
        (folder / "report" / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        if final:
            save_record(
                str(folder / "run-record.json"), {"drain": {"final_time": final.replace(tzinfo=timezone.utc).isoformat()}}
            )
        expected[name] = dict(expected_row(jobs, registered), date=(final or start).strftime("%Y-%m-%d"))
    # A workshop whose report never got its metrics, and one whose metrics.json is broken.
    (root / "half-done" / "report").mkdir(parents=True)
    save_record(str(root / "half-done" / "run-record.json"), {"drain": {"final_time": "2026-08-01T12:00:00+00:00"}})
    (root / "broken" / "report").mkdir(parents=True)
    (root / "broken" / "report" / "metrics.json").write_text("{not json")
    return root, expected


def run_rollup_module(capsys, args, check=False):
    from ansible.module_utils.testing import patch_module_args

    with patch_module_args({**args, "_ansible_check_mode": check}), pytest.raises(SystemExit):
        load_module("workshop_rollup").main()
    result = json.loads(capsys.readouterr().out)
    assert result.get("failed") is not True, result
    return result


def test_the_rollup_shows_the_three_workshops_of_the_year_with_their_figures(archive, tmp_path, capsys):
    root, expected = archive
    collected = run_rollup_module(capsys, {"state": "collected", "backup_root": str(root), "year": YEAR, "host": "vps1"})
    assert collected["changed"] is False
    left_out = {entry["workshop_id"]: entry for entry in collected["left_out"]}
    assert sorted(left_out) == ["berlin-2025", "broken", "half-done"]
    assert left_out["half-done"]["reason"].startswith("no report/metrics.json (run the report phase for it")
    assert left_out["berlin-2025"] == {"workshop_id": "berlin-2025", "host": "vps1", "reason": "of 2025"}
    assert left_out["broken"]["reason"].startswith(f"{root}/broken/report/metrics.json is unreadable (")
    dest = tmp_path / "reports" / str(YEAR)
    args = {
        "state": "written",
        "year": YEAR,
        "entries": collected["entries"],
        "left_out": collected["left_out"],
        "dest": str(dest),
    }

    preview = run_rollup_module(capsys, args, check=True)
    assert preview["changed"] is True and not dest.exists()

    result = run_rollup_module(capsys, args)
    rollup = result["rollup"]
    # Date order; each figure equal to the independent one.
    assert [row["workshop_id"] for row in rollup["workshops"]] == ["berlin-spring", "lisbon", "online-nov"]
    for row in rollup["workshops"]:
        want = expected[row["workshop_id"]]
        assert row["date"] == want["date"] and row["host"] == "vps1"
        for key in ("participants", "jobs", "completed", "failed", "success_rate", "peak_queue"):
            assert row[key] == want[key], (row["workshop_id"], key)
        assert row["gpu_hours"] == pytest.approx(want["gpu_hours"], abs=1e-3)
    assert rollup["workshops"][2]["dated_by"] == "first job"
    year = [expected[name] for name in ("berlin-spring", "lisbon", "online-nov")]
    completed, failed = sum(w["completed"] for w in year), sum(w["failed"] for w in year)
    totals = rollup["totals"]
    assert totals["workshops"] == 3
    assert totals["participants"] == sum(w["participants"] for w in year)
    assert totals["jobs"] == sum(w["jobs"] for w in year)
    assert (totals["completed"], totals["failed"]) == (completed, failed)
    assert totals["success_rate"] == round(100 * completed / (completed + failed), 1)
    assert totals["peak_queue"] == max(w["peak_queue"] for w in year)
    assert totals["gpu_hours"] == pytest.approx(sum(w["gpu_hours"] for w in year), abs=3e-3)

    markdown = (dest / f"rollup-{YEAR}.md").read_text()
    assert markdown == result["markdown"]
    lisbon = expected["lisbon"]
    assert (
        f"| 2026-06-20 | lisbon | vps1 | {lisbon['participants']} | {lisbon['jobs']} | {lisbon['completed']} | "
        f"{lisbon['failed']} | {lisbon['success_rate']:.1f}% | {lisbon['peak_queue']} | {lisbon['gpu_hours']:.2f} |"
    ) in markdown
    assert "berlin-2025" in markdown.split("## Not in this roll-up")[1]
    assert "berlin-2025 |" not in markdown
    page = (dest / f"rollup-{YEAR}.html").read_text()
    assert '<figure id="chart-jobs-per-workshop">' in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "<script" not in page
    assert page.count("<tr>") == 1 + 3 and page.count('<tr class="total">') == 1
    assert oct((dest / f"rollup-{YEAR}.md").stat().st_mode & 0o777) == "0o640"

    # The same archive again: nothing is rewritten.
    assert run_rollup_module(capsys, args)["changed"] is False


def test_totals_of_no_workshop_are_empty_not_zero():
    rollup = build_rollup([], YEAR)
    assert rollup["totals"]["workshops"] == 0
    assert rollup["totals"]["success_rate"] is None and rollup["totals"]["gpu_hours"] is None


@pytest.mark.playbook
def test_the_playbook_in_check_mode_collects_on_the_host_and_writes_nothing(archive, tmp_path):
    """The role's wiring (collected on each workshop host, written once on the control node), in one
    check-mode run; the module test above proves what the real write writes."""
    root, _expected = archive
    dest = tmp_path / "out"
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    command = ["ansible-playbook", "--check", "-i", str(REPO / "inventory" / "local"), str(REPO / "playbooks" / "rollup.yml")]
    command += ["-e", json.dumps({"workshop_backup_root": str(root), "rollup_year": YEAR, "rollup_dest": str(dest)})]
    preview = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    assert preview.returncode == 0, preview.stdout + preview.stderr
    said = " ".join(preview.stdout.split())
    assert "3 workshops of 2026: berlin-spring, lisbon, online-nov" in said
    assert "Left out: berlin-2025, broken, half-done" in said
    assert f"Would write: {dest}/rollup-{YEAR}.md, {dest}/rollup-{YEAR}.html" in said
    assert not dest.exists()
