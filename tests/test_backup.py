"""Short-term phase: back up, verify, and only then allow shutdown."""

import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest
import redis

from conftest import PROJECT_DIR, REPO, run_playbook, staging, submit, wait_for, wait_for_status

BACKUP_ROOT = Path("/var/lib/comfy-wrapup/backups")


def tree(root):
    """{relative path: bytes} of every file under root."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def backups(workshop_id):
    folder = BACKUP_ROOT / workshop_id
    return sorted(p for p in folder.glob("backup-*") if (p / "MANIFEST.json").exists()) if folder.exists() else []


@pytest.fixture(scope="module")
def played(staging_workshop):
    """A small workshop played to its end: outputs, failures, logs, a queue history."""
    staging(
        "play", staging_workshop_play_jobs_per_user="1-3", staging_workshop_play_burst_gap=0.5, staging_workshop_play_bursts=2
    )
    return staging_workshop


@pytest.fixture
def workshop_id(played):
    """A workshop id of its own, so each test has its own backup folder; removed afterwards."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield name
    shutil.rmtree(BACKUP_ROOT / name, ignore_errors=True)


def backup(workshop_id, *args, **kwargs):
    return run_playbook(
        "playbooks/backup.yml", *args, extra_vars={"workshop_id": workshop_id, **kwargs.pop("extra", {})}, **kwargs
    )


def test_the_backup_restores_byte_for_byte(workshop_id, tmp_path):
    backup(workshop_id)

    [folder] = backups(workshop_id)
    with tarfile.open(folder / "outputs.tar") as archive:
        archive.extractall(tmp_path, filter="data")
    with tarfile.open(folder / "user-files.tar") as archive:
        archive.extractall(tmp_path, filter="data")

    assert tree(tmp_path / "outputs") == tree(PROJECT_DIR / "data" / "outputs")
    assert tree(tmp_path / "outputs")  # the workshop played produced outputs
    for name in ("inputs", "user_data", "workflows"):
        assert tree(tmp_path / name) == tree(PROJECT_DIR / "data" / name)
    assert (folder / "config" / ".env").read_bytes() == (PROJECT_DIR / ".env").read_bytes()
    assert oct((folder / "config" / ".env").stat().st_mode & 0o777) == "0o600"
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    assert set(manifest["files"]) == {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {"MANIFEST.json"}


def test_the_snapshot_loads_into_a_scratch_redis_with_the_same_keys(workshop_id, rdb, tmp_path):
    backup(workshop_id)
    [folder] = backups(workshop_id)
    facts = json.loads((folder / "MANIFEST.json").read_text())["redis"]
    shutil.copy(folder / "redis" / "dump.rdb", tmp_path / "dump.rdb")

    port = _free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--dir",
            str(tmp_path),
            "--dbfilename",
            "dump.rdb",
            "--appendonly",
            "no",
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        scratch = redis.Redis(port=port, decode_responses=True)
        wait_for(lambda: _loaded(scratch), what="the scratch redis to load the snapshot")
        assert scratch.dbsize() == facts["keys"]
        for queue in ("pending", "running", "completed", "failed"):
            assert scratch.zcard(f"queue:{queue}") == facts["queues"][f"queue:{queue}"] == rdb.zcard(f"queue:{queue}")
        some_job = scratch.zrange("queue:completed", 0, 0)[0]
        assert scratch.get(f"job:{some_job}") == rdb.get(f"job:{some_job}")
    finally:
        server.terminate()
        server.wait(timeout=10)


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _loaded(client):
    try:
        return client.info("persistence")["loading"] == 0
    except redis.ConnectionError:
        return False


def test_a_second_run_changes_nothing_and_changed_data_makes_a_new_backup(workshop_id, rdb):
    backup(workshop_id)
    again = backup(workshop_id)
    assert again.changed() == 0, again.output
    assert len(backups(workshop_id)) == 1

    job = submit("user002", metadata={"staging": {"duration": 0.1, "succeed": True}})
    wait_for_status(rdb, job, {"completed"})
    time.sleep(1)  # backup names have a resolution of one second
    backup(workshop_id)

    first, second = backups(workshop_id)
    assert first.name < second.name  # a new folder; the first is untouched
    assert json.loads((first / "MANIFEST.json").read_text())["name"] == first.name


def test_check_mode_writes_nothing(workshop_id):
    preview = backup(workshop_id, check=True)
    assert preview.changed() > 0
    assert backups(workshop_id) == []
    assert not list((BACKUP_ROOT / workshop_id).glob(".partial-*"))


def test_killed_mid_backup_then_rerun_ends_with_a_correct_backup(workshop_id, tmp_path):
    bulk = PROJECT_DIR / "data" / "outputs" / "user001" / "bulk"
    subprocess.run(
        ["python3", str(REPO / "roles/staging_workshop/files/extra_outputs.py"), str(bulk), "--megabytes", "600", "--users", "1"],
        check=True,
        capture_output=True,
    )
    try:
        env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
        run = subprocess.Popen(
            ["ansible-playbook", "playbooks/backup.yml", "-e", f"workshop_id={workshop_id}"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(
            lambda: list((BACKUP_ROOT / workshop_id).glob(".partial-*/outputs.tar.partial")),
            timeout=120,
            interval=0.05,
            what="the backup to be writing its outputs archive",
        )
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        assert backups(workshop_id) == []  # nothing sealed: the interrupted backup is no backup

        backup(workshop_id)

        [folder] = backups(workshop_id)
        assert not list((BACKUP_ROOT / workshop_id).glob(".partial-*"))
        with tarfile.open(folder / "outputs.tar") as archive:
            archive.extractall(tmp_path, filter="data")
        assert tree(tmp_path / "outputs") == tree(PROJECT_DIR / "data" / "outputs")
    finally:
        shutil.rmtree(bulk)


def test_a_full_disk_fails_clearly_and_leaves_nothing_partial(played, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)], check=True)
    try:
        earlier = small / "staging-full" / "backup-20200101T000000Z"
        earlier.mkdir(parents=True)
        (earlier / "MANIFEST.json").write_text('{"files": {}}')

        run = run_playbook(
            "playbooks/backup.yml",
            extra_vars={"workshop_id": "staging-full", "workshop_backup_root": str(small)},
            expect_ok=False,
        )

        assert run.returncode != 0
        assert "Not enough space for the backup" in run.output and "nothing was written" in run.output
        assert sorted(p.name for p in (small / "staging-full").iterdir()) == ["backup-20200101T000000Z"]
        assert (earlier / "MANIFEST.json").read_text() == '{"files": {}}'
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_an_archive_filling_the_disk_mid_way_leaves_no_partial_file(tmp_path):
    from ansible.module_utils.workshop_backup import write_archive
    from ansible.module_utils.workshop_errors import WorkshopError

    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=True)
    try:
        source = tmp_path / "src"
        source.mkdir()
        (source / "big.png").write_bytes(os.urandom(6 << 20))
        with pytest.raises(WorkshopError, match="is full"):
            write_archive(str(small / "outputs.tar"), {"outputs": str(source)})
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


@pytest.mark.parametrize("damage", ["archive", "rdb", "missing"])
def test_verify_catches_a_damaged_backup(workshop_id, damage):
    backup(workshop_id)
    [folder] = backups(workshop_id)
    if damage == "archive":
        _flip_byte(folder / "outputs.tar", 1024 + 100)  # inside the first member's content
    elif damage == "rdb":
        _flip_byte(folder / "redis" / "dump.rdb", 40)
    else:
        (folder / "logs" / "worker-1.log.gz").unlink()

    run = backup(workshop_id, "--tags", "verify", expect_ok=False)

    assert run.returncode != 0
    assert f"Backup {folder} is damaged" in run.output
    expected = {"archive": "outputs.tar", "rdb": "redis/dump.rdb", "missing": "logs/worker-1.log.gz: missing"}[damage]
    assert expected in run.output


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_configuration_can_be_kept_encrypted_with_ansible_vault(workshop_id, tmp_path):
    secret = "vault-pass-for-the-test-6f1c"
    run = backup(workshop_id, extra={"backup_config_vault_password": secret})

    [folder] = backups(workshop_id)
    assert not (folder / "config" / ".env").exists()
    vaulted = folder / "config" / ".env.vault"
    assert vaulted.read_text().startswith("$ANSIBLE_VAULT;1.")
    (tmp_path / "pass").write_text(secret)
    decrypted = subprocess.run(
        ["ansible-vault", "view", "--vault-password-file", str(tmp_path / "pass"), str(vaulted)], capture_output=True, check=True
    ).stdout
    assert decrypted == (PROJECT_DIR / ".env").read_bytes()
    assert secret not in run.output


def test_compose_logs_exports_every_line_of_every_service_in_time_order(played, rdb, tmp_path):
    from conftest import run_module

    job = submit("user004", metadata={"staging": {"duration": 0.1, "succeed": True}})
    wait_for_status(rdb, job, {"completed"})
    ok, result = run_module("compose_logs", {"project_dir": str(PROJECT_DIR), "dest": str(tmp_path)})

    assert ok and result["changed"]
    docker_lines = subprocess.run(
        ["docker", "logs", "--timestamps", "comfy-worker-1"], capture_output=True, text=True, check=True
    )
    expected = (docker_lines.stdout + docker_lines.stderr).count("\n")
    worker = next(entry for entry in result["services"] if entry["service"] == "worker-1")
    assert worker["lines"] == expected > 0
    with gzip.open(tmp_path / "worker-1.log.gz", "rt") as exported:
        lines = exported.read().splitlines()
    assert len(lines) == expected and "Processing job" in "\n".join(lines)
    with gzip.open(tmp_path / "workshop-logs.txt.gz", "rt") as combined:
        merged = combined.read().splitlines()
    assert len(merged) == result["combined"]["lines"] == sum(entry["lines"] for entry in result["services"])
    stamps = [line.split(" | ", 1)[1][:30] for line in merged]
    assert stamps == sorted(stamps)
    assert {line.split(" | ", 1)[0].strip() for line in merged} >= {"worker-1", "queue-manager", "redis"}

    again_ok, again = run_module("compose_logs", {"project_dir": str(PROJECT_DIR), "dest": str(tmp_path), "services": ["admin"]})
    assert again_ok and [entry["service"] for entry in again["services"]] == ["admin"]
