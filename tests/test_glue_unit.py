"""The glue's read-only answers and errors, in-process: run_record and queue_drain read without
changing anything; gpu_facts and rdb_location fail inside their error boundary, naming the culprit."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import redis
from ansible.module_utils.testing import patch_module_args
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_redis import WorkshopRedis
from scratch_redis import port_of, running_redis

from conftest import REPO, load_module


def run_main(name, args, capsys, check_mode=False):
    """A module's main() in-process; returns its JSON result."""
    module = load_module(name)
    with patch_module_args({**args, "_ansible_check_mode": check_mode}), pytest.raises(SystemExit):
        module.main()
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_redis(tmp_path_factory.mktemp("glue")) as client:
        yield client


@pytest.mark.parametrize("check_mode", [False, True])
def test_run_record_reads_the_record_and_changes_nothing(tmp_path, capsys, check_mode):
    path = tmp_path / "run-record.json"
    record = {"announcement": {"cutoff": "4:45 PM"}, "drain": {"total_jobs": 242, "drained": True}}
    path.write_text(json.dumps(record))
    before = path.stat()

    result = run_main("run_record", {"path": str(path), "state": "read"}, capsys, check_mode)

    assert result["changed"] is False and result["record"] == record
    assert (path.stat().st_mtime_ns, path.read_text()) == (before.st_mtime_ns, json.dumps(record))


def test_run_record_reads_no_record_as_empty_and_creates_nothing(tmp_path, capsys):
    path = tmp_path / "workshop" / "run-record.json"
    result = run_main("run_record", {"path": str(path), "state": "read"}, capsys)
    assert result["changed"] is False and result["record"] == {}
    assert not path.parent.exists()


def test_queue_drain_read_answers_at_once_and_moves_no_job(server, capsys):
    server.flushall()
    job = {"id": "j1", "user_id": "user001", "status": "pending", "created_at": "2026-11-29T16:00:00Z"}
    server.set("job:j1", json.dumps(job))
    server.zadd("queue:pending", {"j1": 1})
    before = {key: server.dump(key) for key in server.keys("*")}

    result = run_main("queue_drain", {"redis_port": port_of(server), "state": "read", "timeout": 600}, capsys)

    assert result["changed"] is False and result["drained"] is False and result["timed_out"] is False
    assert (result["counts"]["pending"], result["counts"]["running"]) == (1, 0)
    assert result["duration_seconds"] < 5  # it did not wait for the queue
    assert {key: server.dump(key) for key in server.keys("*")} == before


def test_queue_drain_read_of_an_empty_queue_says_drained(server, capsys):
    server.flushall()
    result = run_main("queue_drain", {"redis_port": port_of(server), "state": "read"}, capsys)
    assert result["changed"] is False and result["drained"] is True


def test_queue_drain_read_fails_on_a_missing_env_naming_it(tmp_path, server, capsys):
    missing = tmp_path / ".env"
    result = run_main("queue_drain", {"redis_port": port_of(server), "state": "read", "env_file": str(missing)}, capsys)
    assert result["failed"] is True and str(missing) in result["msg"]


def test_gpu_facts_names_a_missing_saved_xml(tmp_path, capsys):
    missing = tmp_path / "nvidia-smi.xml"
    result = run_main("gpu_facts", {"xml_file": str(missing)}, capsys)
    assert result["failed"] is True and result["path"] == str(missing)
    assert result["msg"] == (
        f"Cannot read a saved `nvidia-smi -q -x` output (report_gpu_xml_file) at {missing} on this host "
        "(No such file or directory): fix xml_file or leave it empty"
    )


def test_gpu_facts_names_an_unreadable_kernel_log(tmp_path, capsys):
    xml = REPO / "tests" / "fixtures" / "nvidia-smi-h100.xml"
    folder = tmp_path / "kern.log"
    folder.mkdir()  # a folder where the log should be: open() fails
    result = run_main("gpu_facts", {"xml_file": str(xml), "kernel_log": str(folder)}, capsys)
    assert result["failed"] is True and result["path"] == str(folder) and "fix kernel_log" in result["msg"]


def test_rdb_location_says_wrong_password_and_names_the_env_key_but_none_where_config_is_denied(tmp_path):
    with running_redis(tmp_path, "--rename-command", "CONFIG", '""') as client:
        assert WorkshopRedis("127.0.0.1", port_of(client)).rdb_location() is None  # the one case it may skip
    with running_redis(tmp_path) as client:
        client.config_set("requirepass", "right")
        conn = WorkshopRedis("127.0.0.1", port_of(client), password="wrong", password_source="REDIS_PASSWORD in /srv/.env")
        with pytest.raises(WorkshopError) as raised:
            conn.rdb_location()
    assert raised.value.msg == (
        f"Redis at 127.0.0.1:{port_of(client)} refused the password: check REDIS_PASSWORD in /srv/.env (wrong password)"
    )


def test_a_wrong_or_missing_password_is_named_after_one_try_not_after_retries(tmp_path):
    """redis-py 6 and later tried a refused password four times, with backoff (3.4 s): counted by Redis itself."""
    with running_redis(tmp_path) as client:
        client.config_set("requirepass", "right")
        admin = redis.Redis(host="127.0.0.1", port=port_of(client), password="right", decode_responses=True)
        for password, expected in (("wrong", "refused the password"), (None, "requires a password and none was given")):
            conn = WorkshopRedis("127.0.0.1", port_of(client), password=password, password_source="REDIS_PASSWORD in /srv/.env")
            before = admin.info("stats")["total_connections_received"]
            with pytest.raises(WorkshopError) as raised:
                conn.queue_counts()
            assert admin.info("stats")["total_connections_received"] - before == 1
            assert raised.value.msg.startswith(f"Redis at 127.0.0.1:{port_of(client)} {expected}")
            assert "REDIS_PASSWORD in /srv/.env" in raised.value.msg
        admin.close()


def test_rdb_location_raises_when_redis_does_not_answer(tmp_path):
    with running_redis(tmp_path) as client:
        port = port_of(client)
    with pytest.raises(WorkshopError) as raised:
        WorkshopRedis("127.0.0.1", port, timeout=1).rdb_location()
    assert f"Cannot reach Redis at 127.0.0.1:{port}" in raised.value.msg


# --- one atomic writer ---------------------------------------------------------------------------


def test_atomic_file_renames_on_success_and_leaves_the_old_file_on_error_or_discard(tmp_path):
    from ansible.module_utils.workshop_files import atomic_file

    path = tmp_path / "outputs.tar"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(str(path)) as target:
        (tmp_path / "outputs.tar.partial").write_bytes(b"half")
        assert target.tmp == str(tmp_path / "outputs.tar.partial")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["outputs.tar"]

    with atomic_file(str(path)) as target:
        (tmp_path / "outputs.tar.partial").write_bytes(b"same")
        target.discard()
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["outputs.tar"]

    with atomic_file(str(path)) as target:
        (tmp_path / "outputs.tar.partial").write_bytes(b"new")
    assert path.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["outputs.tar"]


@pytest.mark.skipif(
    not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tempfile.gettempdir()).st_dev,
    reason="needs /dev/shm on another filesystem than the temporary folder",
)
def test_moving_into_place_across_filesystems_copies_through_a_temporary_name(tmp_path):
    from ansible.module_utils.workshop_files import move_into_place

    other = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        (tmp_path / "img.png").write_bytes(b"participant's image")
        (tmp_path / "latest.png").symlink_to("img.png")
        (other / "img.png").write_bytes(b"older")

        move_into_place(str(tmp_path / "img.png"), str(other / "img.png"))
        move_into_place(str(tmp_path / "latest.png"), str(other / "latest.png"))

        assert (other / "img.png").read_bytes() == b"participant's image"
        assert os.readlink(other / "latest.png") == "img.png"
        assert sorted(p.name for p in other.iterdir()) == ["img.png", "latest.png"]  # no temporary name left
        assert list(tmp_path.iterdir()) == []
    finally:
        shutil.rmtree(other)


def test_every_writer_goes_through_the_one_atomic_writer():
    """No module or helper renames a temporary file into place by itself: atomic_file does it, once."""
    # Read as text, not through ast: CPython 3.11's ast.parse can fail at random in a long pytest-xdist
    # worker ("AST constructor recursion depth mismatch").
    renames = [
        path.name
        for path in sorted([*(REPO / "library").glob("*.py"), *(REPO / "module_utils").glob("*.py")])
        if re.search(r"\bos\.replace\(", path.read_text())
    ]
    assert set(renames) == {"workshop_files.py"}  # atomic_file and move_into_place


def test_the_project_name_comes_from_the_one_env_file_the_modules_read(tmp_path):
    """workshop_env_file outside the project directory: its COMPOSE_PROJECT_NAME names the project."""
    from ansible.module_utils.workshop_compose import resolve_project_name

    (tmp_path / "project").mkdir()
    (tmp_path / "project" / ".env").write_text("COMPOSE_PROJECT_NAME=stale\n")
    (tmp_path / "site.env").write_text("COMPOSE_PROJECT_NAME=Workshop7\n")
    assert resolve_project_name(str(tmp_path / "project"), None, str(tmp_path / "site.env")) == "workshop7"
    assert resolve_project_name(str(tmp_path / "project")) == "stale"


def test_a_workshop_folder_that_cannot_be_made_fails_naming_it(tmp_path, capsys):
    (tmp_path / "backups").write_text("a file where the backup root should be")
    folder = tmp_path / "backups" / "berlin"
    result = run_main("workshop_lock", {"path": str(folder), "run_id": "r1", "purpose": "backup"}, capsys)
    assert result["failed"] is True and result["path"] == str(folder)
    assert result["msg"] == (
        f"Cannot create the workshop's folder {folder} on this host (Not a directory): "
        "check workshop_backup_root (a folder this user may write to)"
    )

    record = folder / "run-record.json"
    result = run_main("run_record", {"path": str(record), "section": "drain", "data": {"total_jobs": 1}}, capsys)
    assert result["failed"] is True and result["path"] == str(record)
    assert result["msg"] == f"Cannot read the run record {record} on this host (Not a directory): check workshop_backup_root"


# The client libraries each module imports when loaded: only those it talks to (each costs a module
# run 0.06-0.2 s of CPU to import); boto3 waits until an S3 target is used.
LIBRARIES_LOADED = {
    "queue_drain": ["redis"],
    "workshop_metrics": ["redis"],
    "compose_services": ["docker"],
    "compose_logs": ["docker"],
    "workshop_state": ["docker", "redis"],
    "archive_copy": [],
    "retention_enforce": [],
    "share_archives": [],
}


@pytest.mark.parametrize(("name", "expected"), LIBRARIES_LOADED.items())
def test_a_module_loads_only_the_client_libraries_it_talks_to(name, expected):
    script = (
        "import importlib.util, sys, ansible.module_utils\n"
        f"ansible.module_utils.__path__.append({str(REPO / 'module_utils')!r})\n"
        f"spec = importlib.util.spec_from_file_location('m', {str(REPO / 'library' / (name + '.py'))!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(' '.join(n for n in ('boto3', 'botocore', 'docker', 'redis') if n in sys.modules))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == expected


def test_an_s3_target_without_boto3_fails_naming_the_library(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # what a host without boto3 has: its import fails
    target = {"name": "offsite", "type": "s3", "bucket": "workshops", "endpoint_url": "http://127.0.0.1:9"}
    result = run_main("archive_copy", {"target": target, "workshop_id": "w", "backup_dir": str(tmp_path)}, capsys)
    assert result["failed"] and "boto3" in result["msg"]
