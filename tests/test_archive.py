"""Archive phase on the staging workshop: the backup leaves the host (S3 server, SSH host), verified."""

import json
import os
import subprocess
import time

import pytest
import test_backup
from s3server import ACCESS_KEY, BUCKET, SECRET_KEY, s3server  # noqa: F401 - a fixture
from test_archive_unit import kill_tree
from test_backup import backup, backups, tree

from conftest import BACKUP_ROOT, PROJECT_DIR, REPO, SSH_PORT, run_playbook

played = test_backup.played
workshop_id = test_backup.workshop_id
# Credentials the way an admin without a vault gives them: the host's environment (local connection).
S3_ENV = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}


def settings(tmp_path, server, client_key=None):
    """A vars file (never -e on the command line) with the S3 server and, given a key, the SSH host."""
    targets = [dict(name="s3test", type="s3", endpoint_url=server.endpoint_url, bucket=BUCKET, prefix="comfy")]
    if client_key:
        targets.append(
            dict(
                name="nas",
                type="ssh",
                host="127.0.0.1",
                port=SSH_PORT,
                user="root",
                path=str(tmp_path / "nas"),
                key_file=str(client_key),
            )
        )
    path = tmp_path / "archive-vars.json"
    path.write_text(
        json.dumps(
            dict(
                archive_targets=targets,
                archive_progress_seconds=1,
                archive_part_size_mb=5,
                archive_multipart_threshold_mb=5,
                archive_ssh_known_hosts=str(tmp_path / "known_hosts"),
            )
        )
    )
    return path


def archive(workshop_id, vars_file, *args, **kwargs):
    return run_playbook(
        "playbooks/archive.yml", "-e", f"@{vars_file}", *args, extra_vars={"workshop_id": workshop_id}, env=S3_ENV, **kwargs
    )


def bucket_tree(server, workshop_id, name):
    return tree(server.path_of(f"comfy/{workshop_id}/{name}"))


def record_of(workshop_id):
    return json.loads((BACKUP_ROOT / workshop_id / "run-record.json").read_text())


def test_post_workshop_archives_to_s3_and_ssh_and_a_second_run_changes_nothing(played_workshop_id, s3server, sshd, tmp_path):  # noqa: F811
    vars_file = settings(tmp_path, s3server, sshd)
    run = run_playbook("post_workshop.yml", "-e", f"@{vars_file}", extra_vars={"workshop_id": played_workshop_id}, env=S3_ENV)

    [folder] = backups(played_workshop_id)
    local = tree(folder)
    assert bucket_tree(s3server, played_workshop_id, folder.name) == local
    assert tree(tmp_path / "nas" / played_workshop_id / folder.name) == local
    targets = record_of(played_workshop_id)["archive"]["targets"]
    assert {name: (t["backup"], t["verified"], t["files"]) for name, t in targets.items()} == {
        "s3test": (folder.name, True, len(local)),
        "nas": (folder.name, True, len(local)),
    }
    assert SECRET_KEY not in run.output
    assert "files," in run.text and "MiB/s" in run.text  # progress lines

    check = archive(played_workshop_id, vars_file, check=True)
    assert check.changed() == 0, check.output
    again = archive(played_workshop_id, vars_file)
    assert again.changed() == 0, again.output
    assert "0 sent this run" in again.text

    # The emergency recovery test from the off-host copy; the local backup is set aside meanwhile, so
    # what is restored can only have come from the target. The role hands either kind of target to
    # archive_copy state=fetched, whose SSH fetch test_archive_unit proves byte for byte.
    aside = folder.with_name(f".aside-{folder.name}")
    folder.rename(aside)
    try:
        restored = run_playbook(
            "playbooks/restore_test.yml",
            "-e",
            f"@{vars_file}",
            extra_vars={"workshop_id": played_workshop_id, "restore_source": "s3test"},
            env=S3_ENV,
        )
        assert f"Restore test of {folder.name} (from s3test) PASSED" in restored.text, restored.output[-3000:]
        outcome = record_of(played_workshop_id)["restore_test"]
        assert (outcome["ok"], outcome["source"], outcome["backup"]) == (True, "s3test", folder.name)
        assert outcome["files_compared"] >= len(local) - 1  # every file the MANIFEST lists
    finally:
        aside.rename(folder)


@pytest.mark.fault
def test_killed_upload_resumes_altered_object_is_caught_and_down_volumes_needs_the_offsite_copy(
    workshop_id,
    s3server,  # noqa: F811
    tmp_path,
    fault_case,
):
    fault_case(
        "ansible-playbook killed mid-archive (S3 upload), then re-run; a corrupted object in the off-host copy",
        expected="nothing under the final key; the re-run completes, bucket == backup; "
        "verify_remote names redis/dump.rdb; down_volumes refused",
    )
    bulk = PROJECT_DIR / "data" / "outputs" / "user001" / "bulk"
    subprocess.run(
        ["python3", str(REPO / "roles/staging_workshop/files/extra_outputs.py"), str(bulk), "--megabytes", "150", "--users", "1"],
        check=True,
        capture_output=True,
    )
    try:
        backup(workshop_id)
    finally:
        subprocess.run(["rm", "-rf", str(bulk)], check=True)
    [folder] = backups(workshop_id)
    vars_file = settings(tmp_path, s3server)
    down = dict(workshop_id=workshop_id, shutdown_mode="down_volumes", shutdown_confirm=workshop_id)

    # No off-host copy yet: down_volumes is refused before anything stops.
    refused = run_playbook("playbooks/shutdown.yml", "-e", f"@{vars_file}", extra_vars=down, expect_ok=False)
    assert refused.returncode != 0 and "no verified off-host copy" in refused.text and folder.name in refused.text

    # Kill ansible-playbook and its module mid-upload, then run again.
    client = s3server.client()
    key = f"comfy/{workshop_id}/{folder.name}/outputs.tar"
    process = subprocess.Popen(
        ["ansible-playbook", "playbooks/archive.yml", "-e", f"@{vars_file}", "-e", f"workshop_id={workshop_id}"],
        cwd=REPO,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "TMPDIR": str(tmp_path), **S3_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    parts, deadline = [], time.monotonic() + 120
    while len(parts) < 3 and time.monotonic() < deadline and process.poll() is None:
        try:
            uploads = client.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads") or []
        except client.exceptions.NoSuchUpload:
            uploads = []
        if uploads:
            parts = client.list_parts(Bucket=BUCKET, Key=key, UploadId=uploads[0]["UploadId"]).get("Parts") or []
        time.sleep(0.02)
    kill_tree(process.pid)
    process.wait()
    assert len(parts) >= 3 and (folder / "outputs.tar").stat().st_size > 5 * (len(parts) + 2) << 20, "killed mid-file"
    assert not s3server.path_of(key).exists()  # nothing half-written under the final name

    archive(workshop_id, vars_file)
    assert bucket_tree(s3server, workshop_id, folder.name) == tree(folder)
    assert archive(workshop_id, vars_file, "--tags", "verify_remote", "-e", "archive_verify=all").returncode == 0
    assert record_of(workshop_id)["archive"]["targets"]["s3test"]["verified"] is True

    # Damage one object on the target: verify_remote reads it back and says which.
    stored = s3server.path_of(f"comfy/{workshop_id}/{folder.name}/redis/dump.rdb")
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    caught = archive(workshop_id, vars_file, "--tags", "verify_remote", "-e", "archive_verify=all", expect_ok=False)
    assert caught.returncode != 0 and "redis/dump.rdb: sha256" in caught.text
    entry = record_of(workshop_id)["archive"]["targets"]["s3test"]
    assert entry["verified"] is False and [f["file"] for f in entry["failures"]] == ["redis/dump.rdb"]

    # A restore test from the damaged copy fails naming the file, and the run record says so.
    restore_test = ("playbooks/restore_test.yml", "-e", f"@{vars_file}")
    test_vars = {"workshop_id": workshop_id, "restore_source": "s3test"}
    failed = run_playbook(*restore_test, extra_vars=test_vars, env=S3_ENV, expect_ok=False)
    assert failed.returncode != 0 and "redis/dump.rdb" in failed.text, failed.output[-3000:]
    outcome = record_of(workshop_id)["restore_test"]
    failed_files = [f["file"] for f in outcome["failures"]]
    assert (outcome["ok"], outcome["backup"], failed_files) == (False, folder.name, ["redis/dump.rdb"])
    # What that test fetched before it failed (outputs.tar) never stands in for the target's copy: repaired
    # dump.rdb, truncated outputs.tar, the next test reads outputs.tar from the target and fails on it.
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    with open(s3server.path_of(key), "r+b") as tar_object:
        tar_object.truncate(1000)
    failed = run_playbook(*restore_test, extra_vars=test_vars, env=S3_ENV, expect_ok=False)
    assert failed.returncode != 0 and "outputs.tar" in failed.text, failed.output[-3000:]
    assert [f["file"] for f in record_of(workshop_id)["restore_test"]["failures"]] == ["outputs.tar"]

    # The only off-host copy is damaged: down_volumes is refused, nothing stopped.
    refused = run_playbook("playbooks/shutdown.yml", "-e", f"@{vars_file}", extra_vars=down, expect_ok=False)
    assert refused.returncode != 0 and "s3test: " + folder.name + " NOT verified" in refused.text
    fault_case.observed(
        f"killed after {len(parts)} parts; re-run: bucket == backup; corrupted redis/dump.rdb named; down_volumes refused"
    )
