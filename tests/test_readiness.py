"""Next-workshop readiness on the staging workshop: the playbook as an admin runs it, against the real
Docker Engine, Redis and the staging .env's certificate (SSL_CERT_PATH, relative to the project)."""

import json
import shutil
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from scratch_redis import running_redis
from test_readiness_unit import make_backup

from conftest import BACKUP_ROOT, COMPOSE_PROJECT, PROJECT_DIR, REDIS_PORT, dotenv, empty_staging, run_playbook


@pytest.fixture
def workshop_id(staging_workshop):
    name = f"ready-{uuid.uuid4().hex[:8]}"
    yield name
    shutil.rmtree(BACKUP_ROOT / name, ignore_errors=True)


def test_readiness_runs_a_missing_restore_test_then_keeps_its_lines_and_a_second_run_changes_nothing(workshop_id, rdb, tmp_path):
    if rdb.zcard("queue:pending") or rdb.zcard("queue:running"):  # left by an earlier test of this worker
        empty_staging(rdb)
    folder = BACKUP_ROOT / workshop_id
    folder.mkdir(mode=0o700, parents=True)  # the backup root too, in a session whose other tests made none
    with running_redis(tmp_path) as client:  # the snapshot: a few keys, saved by a real redis-server
        client.set("job:j1", json.dumps({"id": "j1", "status": "completed"}))
        client.zadd("queue:completed", {"j1": 1.0})
        client.save()
    backup = make_backup(tmp_path, backup_dir=folder, snapshot=(tmp_path / "dump.rdb", 2))
    next_day = (datetime.now(timezone.utc) + timedelta(days=10)).date().isoformat()
    extra = {"workshop_id": workshop_id, "readiness_next_workshop": next_day}

    # A preview: the restore test is due and would run, which is no reason to fail the preview.
    preview = run_playbook("playbooks/readiness.yml", extra_vars=extra, check=True)
    assert "NOT READY" in preview.text and not (folder / "readiness.json").exists()
    first = run_playbook("playbooks/readiness.yml", "--tags", "readiness", extra_vars=extra)
    kept = json.loads((folder / "readiness.json").read_text())
    record = json.loads((folder / "run-record.json").read_text())
    lines = {line["check"]: line for line in kept["lines"]}

    assert first.changed() >= 2  # the restore test recorded, the readiness kept
    assert record["readiness"] == kept and kept["next_workshop"] == next_day
    # The restore role's test ran on the newest backup and recorded its pass; the line says so.
    assert record["restore_test"]["ok"] is True and record["restore_test"]["backup"] == backup.name
    assert lines["restore_test"]["ok"] is True
    assert lines["restore_test"]["evidence"].startswith(f"Passed: {backup.name} at ")
    assert lines["backup"]["ok"] is True and lines["backup"]["evidence"].startswith(f"{backup}: MANIFEST and 4 files")
    # The certificate of the staging .env (SSL_CERT_PATH=./ssl/fullchain.pem, 90 days), its domain not served here.
    assert dotenv("SSL_CERT_PATH") == "./ssl/fullchain.pem"
    assert lines["certificate"]["ok"] is True
    assert lines["certificate"]["evidence"].startswith(f"{PROJECT_DIR}/ssl/fullchain.pem for {dotenv('DOMAIN')} valid until ")
    assert f"beyond the next workshop on {next_day}" in lines["certificate"]["evidence"]
    assert lines["images"]["ok"] is True and f"of project '{COMPOSE_PROJECT}'" in lines["images"]["evidence"]
    assert lines["queues"]["ok"] is True
    assert lines["queues"]["evidence"] == f"No pending or running job in Redis at 127.0.0.1:{REDIS_PORT}"
    assert lines["gpu_host"]["ok"] is None
    assert kept["ok"] is True  # every other line holds
    assert "✓ TLS certificate valid" in first.text and f"Next-workshop readiness for {next_day}: READY" in first.text

    stamps = {path.name: path.stat().st_mtime_ns for path in folder.iterdir() if path.is_file()}
    again = run_playbook("playbooks/readiness.yml", extra_vars=extra, check=True)
    assert again.changed() == 0
    assert "✓ Restore test passed recently" in again.text and "not written: check mode" in again.text
    assert stamps == {path.name: path.stat().st_mtime_ns for path in folder.iterdir() if path.is_file()}

    # A next workshop past the certificate's end: not ready, and the run says so by its exit status.
    late = dict(extra, readiness_next_workshop=(datetime.now(timezone.utc) + timedelta(days=200)).date().isoformat())
    refused = run_playbook("playbooks/readiness.yml", extra_vars=late, expect_ok=False)
    assert refused.returncode == 2, refused.output[-3000:]
    assert "is not ready for the next workshop: TLS certificate valid failed" in refused.text
    assert json.loads((folder / "readiness.json").read_text())["ok"] is False  # written before the failure
    reported = run_playbook("playbooks/readiness.yml", "-e", "readiness_fail_when_not_ready=false", extra_vars=late)
    assert "NOT READY" in reported.text
