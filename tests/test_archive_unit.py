"""The archive module against real servers on loopback: rclone serve s3 (SigV4) and sshd; no Docker."""

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from ansible.module_utils import workshop_archive
from ansible.module_utils.workshop_archive import (
    MANIFEST,
    Progress,
    backup_entries,
    copy_backup,
    make_target,
    record_archive,
    remote_key,
)
from ansible.module_utils.workshop_backup import backup_name, seal
from ansible.module_utils.workshop_errors import WorkshopError, WorkshopUnreachable
from ansible.module_utils.workshop_record import read_record, record_backup, record_verify
from ansible.module_utils.workshop_shutdown import offsite_problem
from s3server import s3server  # noqa: F401 - a fixture

from conftest import REPO, SSH_PORT, load_module, run_playbook

WORKSHOP = "berlin"


def make_backup(root, big=12 << 20, when=1_790_000_000, seed=b"a"):
    """A sealed backup (a big outputs.tar, a snapshot, a log) recorded as verified in the run record."""
    backup_dir = root / WORKSHOP
    partial = backup_dir / f".partial-backup-{when}"
    (partial / "redis").mkdir(parents=True)
    (partial / "logs").mkdir()
    block = hashlib.sha256(seed).digest() * 32  # 1 KiB, different per seed
    (partial / "outputs.tar").write_bytes(os.urandom(big - 1024) + block)
    (partial / "redis" / "dump.rdb").write_bytes(b"REDIS0012" + os.urandom(3000))
    (partial / "logs" / "redis.log.gz").write_bytes(os.urandom(700) + seed)
    name = backup_name(when)
    manifest = seal(str(partial), str(backup_dir / name), {"workshop_id": WORKSHOP}).manifest
    record = backup_dir / "run-record.json"
    record_backup(str(record), name, str(backup_dir / name), len(manifest["files"]), {})
    return backup_dir, name, record


def files_of(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def modes_of(folder):
    """The permission bits of every file under `folder`."""
    return {path.stat().st_mode & 0o777 for path in folder.rglob("*") if path.is_file()}


def descendants(pid):
    """Every process started under `pid` (Ansible's workers call setsid: a process group misses them)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *descendants(child)]
    return found


def kill_tree(pid):
    """SIGKILL `pid` and everything it started, at once: a run dying as a host loses power.

    Give the killed run TMPDIR=<the test's folder>: a killed module leaves its payload folder
    (/tmp/ansible_<module>_payload_*) behind, as on any host, and the test's folder is removed."""
    for each in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGKILL)


def run_main(args, capsys, check=False):
    from ansible.module_utils.testing import patch_module_args

    module = load_module("archive_copy")
    if check:
        args = dict(args, _ansible_check_mode=True)
    with patch_module_args(args), pytest.raises(SystemExit):
        module.main()
    return json.loads(capsys.readouterr().out)


def s3_args(server, backup_dir, record, **extra):
    args = dict(
        target=server.target(),
        workshop_id=WORKSHOP,
        backup_dir=str(backup_dir),
        record=str(record),
        part_size_mb=5,
        multipart_threshold_mb=5,
    )
    args.update(extra)
    return args


def bucket_files(server, backup):
    client = server.client()
    prefix = remote_key("comfy", WORKSHOP, backup) + "/"
    listed = client.list_objects_v2(Bucket="workshops", Prefix=prefix).get("Contents") or []
    return {o["Key"][len(prefix) :]: client.get_object(Bucket="workshops", Key=o["Key"])["Body"].read() for o in listed}


def test_s3_copy_is_byte_exact_recorded_and_a_second_run_changes_nothing(tmp_path, s3server, capsys):  # noqa: F811
    backup_dir, name, record = make_backup(tmp_path)
    local = files_of(backup_dir / name)

    preview = run_main(s3_args(s3server, backup_dir, record), capsys, check=True)
    assert preview["changed"] is True and preview["uploaded"] == sorted(local, key=lambda f: f == MANIFEST)
    assert bucket_files(s3server, name) == {}  # check mode wrote nothing

    first = run_main(s3_args(s3server, backup_dir, record), capsys)
    assert "failed" not in first, first["msg"]
    assert first["changed"] is True and first["done"] is True
    assert first["uploaded"][-1] == MANIFEST and sorted(first["uploaded"]) == sorted(local)
    assert bucket_files(s3server, name) == local
    head = s3server.client().head_object(Bucket="workshops", Key=remote_key("comfy", WORKSHOP, name, "outputs.tar"))
    assert {k.lower(): v for k, v in head["Metadata"].items()}["sha256"] == hashlib.sha256(local["outputs.tar"]).hexdigest()
    entry = read_record(record)["archive"]["targets"]["s3test"]
    assert entry["backup"] == name and entry["verified"] is True and entry["files"] == len(local)
    assert entry["bytes"] == sum(map(len, local.values())) and entry["where"] == f"s3://workshops/comfy/{WORKSHOP}/{name}/"
    record_text = record.read_text()

    second = run_main(s3_args(s3server, backup_dir, record), capsys)
    assert second["changed"] is False and second["uploaded"] == [] and sorted(second["unchanged"]) == sorted(local)
    assert record.read_text() == record_text  # nothing rewritten, times kept
    assert run_main(s3_args(s3server, backup_dir, record), capsys, check=True)["changed"] is False


def test_s3_never_overwrites_a_different_object(tmp_path, s3server, capsys):  # noqa: F811
    backup_dir, name, record = make_backup(tmp_path)
    key = remote_key("comfy", WORKSHOP, name, "redis/dump.rdb")
    s3server.client().put_object(Bucket="workshops", Key=key, Body=b"someone else's file")

    failed = run_main(s3_args(s3server, backup_dir, record), capsys)
    assert failed["failed"] is True and failed["key"] == key and "never overwritten" in failed["msg"]
    assert "Either the backup on this host changed since it was copied" in failed["msg"]
    assert s3server.client().get_object(Bucket="workshops", Key=key)["Body"].read() == b"someone else's file"
    assert "archive" not in read_record(record)


def test_only_a_verified_newest_backup_leaves_the_host(tmp_path, s3server, capsys):  # noqa: F811
    backup_dir, name, record = make_backup(tmp_path)
    record_verify(str(record), name, [{"file": "outputs.tar", "member": None, "reason": "content differs"}])
    failed = run_main(s3_args(s3server, backup_dir, record), capsys)
    assert failed["failed"] is True and name in failed["msg"] and "tag verify" in failed["msg"]
    assert bucket_files(s3server, name) == {}


@pytest.mark.fault
def test_s3_upload_killed_mid_file_resumes_with_the_parts_already_sent(tmp_path, s3server, fault_case):  # noqa: F811
    """A real kill: ansible and its module die after the first parts are on the server."""
    fault_case(
        "archive_copy killed (SIGKILL, with ansible) mid-file, then re-run",
        expected="no object half-visible; the re-run sends only the missing parts; bucket == backup, verified",
    )
    backup_dir, name, record = make_backup(tmp_path, big=80 << 20)
    args = json.dumps(s3_args(s3server, backup_dir, record))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), TMPDIR=str(tmp_path))
    command = ["ansible", "workshop", "-i", str(REPO / "inventory" / "local"), "-m", "archive_copy", "-a", args]
    client = s3server.client()
    key = remote_key("comfy", WORKSHOP, name, "outputs.tar")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    parts = []
    while time.monotonic() < deadline and len(parts) < 3:
        try:
            uploads = client.list_multipart_uploads(Bucket="workshops", Prefix=key).get("Uploads") or []
        except client.exceptions.NoSuchUpload:  # rclone's answer while none is open
            uploads = []
        if uploads:
            parts = client.list_parts(Bucket="workshops", Key=key, UploadId=uploads[0]["UploadId"]).get("Parts") or []
        time.sleep(0.02)
    kill_tree(process.pid)
    process.wait()
    assert 3 <= len(parts) < 16, "the kill must land mid-file"
    time.sleep(0.5)
    uploads = client.list_multipart_uploads(Bucket="workshops", Prefix=key)["Uploads"]
    sent = client.list_parts(Bucket="workshops", Key=key, UploadId=uploads[0]["UploadId"])["Parts"]
    assert "Contents" not in client.list_objects_v2(Bucket="workshops", Prefix=key)  # nothing half-visible
    before = bucket_files(s3server, name)  # files completed before the kill

    env["ANSIBLE_CALLBACK_RESULT_FORMAT"] = "json"
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    result = json.loads(rerun.stdout.partition(" => ")[2])
    assert bucket_files(s3server, name) == files_of(backup_dir / name)
    with contextlib.suppress(client.exceptions.NoSuchUpload):  # rclone's answer when none is open
        assert not client.list_multipart_uploads(Bucket="workshops", Prefix=key).get("Uploads")
    # The parts sent before the kill were kept: the re-run sent the rest only.
    total = sum(len(b) for b in files_of(backup_dir / name).values())
    assert result["progress"]["bytes_sent"] == total - sum(part["Size"] for part in sent) - sum(map(len, before.values()))
    assert result["changed"] is True and result["done"] is True
    entry = read_record(record)["archive"]["targets"]["s3test"]
    assert entry["verified"] is True and entry["backup"] == name
    fault_case.observed(f"killed after {len(parts)} parts; re-run sent {result['progress']['bytes_sent']} B; bucket == backup")


def test_slices_report_progress_until_done(tmp_path, s3server, capsys):  # noqa: F811
    backup_dir, name, record = make_backup(tmp_path, big=40 << 20)
    total = sum(len(b) for b in files_of(backup_dir / name).values())
    resume, slices, lines = None, 0, []
    while True:
        result = run_main(s3_args(s3server, backup_dir, record, slice_seconds=1, resume=resume), capsys)
        slices += 1
        lines.append(result["summary"])
        resume = result["resume"]
        if result["done"]:
            break
        assert slices < 100
    assert result["progress"]["bytes_done"] == total and result["progress"]["files_done"] == result["progress"]["files"]
    assert result["progress"]["bytes_sent"] == total  # every byte sent once, whatever the slices
    assert bucket_files(s3server, name) == files_of(backup_dir / name)
    assert read_record(record)["archive"]["targets"]["s3test"]["verified"] is True


@pytest.mark.parametrize("kind", ["s3", "ssh"])
def test_every_slice_sends_something_even_when_its_time_is_gone_before_its_first_part(kind, tmp_path, request):
    """A slice can spend its slice_seconds before its first part (a resumed upload reads again what was
    sent, a busy host): it still sends, so a copy in slices always ends, every byte sent once."""
    backup_dir, name, _record = make_backup(tmp_path)
    folder = str(backup_dir / name)
    if kind == "s3":
        server = request.getfixturevalue("s3server")
        store = make_target(server.target(), part_size=5 << 20, threshold=5 << 20)
        copied = lambda: bucket_files(server, name)  # noqa: E731
    else:
        client_key = request.getfixturevalue("sshd")
        store = make_target(ssh_args(client_key, tmp_path, backup_dir, None)["target"], known_hosts=str(tmp_path / "known_hosts"))
        copied = lambda: files_of(tmp_path / "nas" / WORKSHOP / name)  # noqa: E731
    entries = backup_entries(folder)
    resume, slices = None, 0
    try:
        while True:
            progress = Progress(entries, resume, owner=kind)
            before = progress.sent
            outcome = copy_backup(store, folder, WORKSHOP, name, progress, deadline=time.time() - 1)
            slices += 1
            assert progress.sent > before or outcome["done"], f"slice {slices} sent nothing"
            resume = progress.state()
            if outcome["done"]:
                break
            assert slices < 40
    finally:
        store.close()
    assert copied() == files_of(backup_dir / name)
    assert progress.sent == sum(entry[1] for entry in entries)  # every byte once


def _s3_slices(server, folder, name, entries, alter_after=None):
    """copy_backup in slices that are all out of time from the start, as on a busy host; the number of
    slices and the bytes read from outputs.tar. With alter_after=N, a byte of the file's first part
    (sent by then) is changed after slice N."""
    store = make_target(server.target(), part_size=5 << 20, threshold=5 << 20)
    resume, slices = None, 0
    while True:
        progress = Progress(entries, resume, owner="s3")
        outcome = copy_backup(store, folder, WORKSHOP, name, progress, deadline=time.time() - 1)
        slices += 1
        resume = progress.state()
        if outcome["done"]:
            return slices
        if slices == alter_after:
            with open(os.path.join(folder, "outputs.tar"), "r+b") as stream:
                stream.write(b"\xff" if stream.read(1) != b"\xff" else b"\x00")
        assert slices < 40


def test_slices_of_a_resumed_upload_do_not_read_again_the_parts_already_sent(tmp_path, s3server, monkeypatch):  # noqa: F811
    """Each slice read the file from its start to find where the upload stood: 20 GB would be read
    dozens of times. The parts sent by the run's earlier slices are taken on the server's MD5; the
    slice that completes reads the file once more to check it against the manifest."""
    backup_dir, name, _record = make_backup(tmp_path, big=100 << 20)
    folder = str(backup_dir / name)
    size = (backup_dir / name / "outputs.tar").stat().st_size
    read = []

    class Counting(io.FileIO):
        def readinto(self, buffer):
            count = super().readinto(buffer)
            if self.name.endswith("outputs.tar"):
                read.append(count)
            return count

    monkeypatch.setattr(workshop_archive, "open", lambda path, mode="r": io.BufferedReader(Counting(path, mode)), raising=False)
    slices = _s3_slices(s3server, folder, name, backup_entries(folder))

    assert slices > 3  # a few parts a slice
    # Once to send, once to check; and a slice that stops has read the part it stops before.
    assert sum(read) <= 2 * size + slices * (5 << 20), (
        f"{sum(read) >> 20} MiB read for a {size >> 20} MiB file in {slices} slices"
    )
    assert bucket_files(s3server, name) == files_of(backup_dir / name)


def test_a_file_changed_under_the_parts_already_sent_is_not_completed(tmp_path, s3server):  # noqa: F811
    backup_dir, name, _record = make_backup(tmp_path, big=30 << 20)
    folder = str(backup_dir / name)
    entries = backup_entries(folder)

    with pytest.raises(WorkshopError, match="no longer matches its backup's manifest"):
        _s3_slices(s3server, folder, name, entries, alter_after=1)

    key = remote_key("comfy", WORKSHOP, name, "outputs.tar")
    assert not s3server.path_of(key).exists()  # nothing under the final name
    with contextlib.suppress(s3server.client().exceptions.NoSuchUpload):  # rclone's answer when none is open
        assert not s3server.client().list_multipart_uploads(Bucket="workshops", Prefix=key).get("Uploads")


@pytest.mark.fault
def test_verify_remote_catches_an_object_altered_on_the_target(tmp_path, s3server, capsys, fault_case):  # noqa: F811
    fault_case(
        "Corrupted file in the off-host copy (S3)",
        expected="verify_remote names logs/redis.log.gz; recorded not verified; a new archive run never overwrites it",
    )
    backup_dir, name, record = make_backup(tmp_path)
    run_main(s3_args(s3server, backup_dir, record), capsys)
    assert run_main(s3_args(s3server, backup_dir, record, state="verified", verify="all"), capsys)["failures"] == []

    stored = s3server.path_of(remote_key("comfy", WORKSHOP, name, "logs/redis.log.gz"))
    data = bytearray(stored.read_bytes())
    data[10] ^= 0xFF  # same size, other content
    stored.write_bytes(bytes(data))

    failed = run_main(s3_args(s3server, backup_dir, record, state="verified", verify="all"), capsys)
    assert failed["failed"] is True and [f["file"] for f in failed["failures"]] == ["logs/redis.log.gz"]
    entry = read_record(record)["archive"]["targets"]["s3test"]
    assert entry["verified"] is False and entry["failures"][0]["file"] == "logs/redis.log.gz"
    assert offsite_problem(str(record), name) is not None
    # The altered object is never taken for the backup's: a new archive run refuses it.
    again = run_main(s3_args(s3server, backup_dir, record), capsys)
    assert again["failed"] is True and "logs/redis.log.gz" in again["key"]
    fault_case.observed("named logs/redis.log.gz; verified false in the record; the next run refused to overwrite")


def test_fetch_from_s3_returns_the_newest_backup_byte_exact(tmp_path, s3server, capsys):  # noqa: F811
    backup_dir, old, record = make_backup(tmp_path, when=1_790_000_000, seed=b"old")
    run_main(s3_args(s3server, backup_dir, record), capsys)
    _dummy, new, _dummy = make_backup(tmp_path / "second", when=1_790_000_100, seed=b"new")
    run_main(s3_args(s3server, tmp_path / "second" / WORKSHOP, tmp_path / "second" / WORKSHOP / "run-record.json"), capsys)

    args = dict(state="fetched", target=s3server.target(), workshop_id=WORKSHOP, dest=str(tmp_path / "restore"))
    preview = run_main(args, capsys, check=True)
    assert preview["changed"] is True and preview["backup"] == new and not (tmp_path / "restore" / new).exists()
    fetched = run_main(args, capsys)
    expected = files_of(tmp_path / "second" / WORKSHOP / new)
    assert fetched["backup"] == new and fetched["path"] == str(tmp_path / "restore" / new)
    assert fetched["files"] == len(expected) and fetched["bytes"] == sum(map(len, expected.values()))
    assert files_of(tmp_path / "restore" / new) == expected
    assert modes_of(tmp_path / "restore" / new) == {0o600}  # the configuration holds the workshop's secrets
    assert run_main(args, capsys)["changed"] is False
    named = run_main(dict(args, backup=old), capsys)
    assert files_of(named["path"]) == files_of(backup_dir / old)


@pytest.mark.fault
def test_fetch_refuses_a_damaged_copy(tmp_path, s3server, capsys, fault_case):  # noqa: F811
    fault_case("Corrupted object fetched back from S3", expected="fetch fails naming redis/dump.rdb; nothing placed at dest")
    backup_dir, name, record = make_backup(tmp_path)
    run_main(s3_args(s3server, backup_dir, record), capsys)
    stored = s3server.path_of(remote_key("comfy", WORKSHOP, name, "redis/dump.rdb"))
    stored.write_bytes(stored.read_bytes()[:-1] + b"!")
    failed = run_main(dict(state="fetched", target=s3server.target(), workshop_id=WORKSHOP, dest=str(tmp_path / "r")), capsys)
    assert failed["failed"] is True and failed["file"] == "redis/dump.rdb"
    assert not (tmp_path / "r" / name).exists()
    fault_case.observed(f"failed on {failed['file']}; nothing at dest")


def test_fetch_names_a_damaged_manifest_on_the_target_not_its_local_copy(tmp_path, s3server, capsys):  # noqa: F811
    backup_dir, name, record = make_backup(tmp_path)
    run_main(s3_args(s3server, backup_dir, record), capsys)
    key = remote_key("comfy", WORKSHOP, name, "MANIFEST.json")
    s3server.client().put_object(Bucket="workshops", Key=key, Body=b'{"files": {"outputs.tar')
    failed = run_main(dict(state="fetched", target=s3server.target(), workshop_id=WORKSHOP, dest=str(tmp_path / "r")), capsys)
    assert failed["failed"] is True and (failed["file"], failed["key"], failed["backup"]) == ("MANIFEST.json", key, name)
    assert f"The manifest s3://workshops/{key} on archive target 's3test' cannot be read" in failed["msg"], failed["msg"]


def test_fetch_names_an_object_missing_from_the_copy(tmp_path, s3server, capsys):  # noqa: F811
    """botocore 1.36+ could not read a GET's error with response checksums on ("'StreamingChecksumBody' object
    has no attribute 'strip'", a bare Module failed): the target and the key are named instead."""
    backup_dir, name, record = make_backup(tmp_path)
    run_main(s3_args(s3server, backup_dir, record), capsys)
    key = remote_key("comfy", WORKSHOP, name, "redis/dump.rdb")
    s3server.path_of(key).unlink()  # a copy someone thinned out by hand, its MANIFEST still there
    failed = run_main(dict(state="fetched", target=s3server.target(), workshop_id=WORKSHOP, dest=str(tmp_path / "r")), capsys)
    # (rclone answers InternalError for a file gone from under its cache; S3 itself NoSuchKey.)
    assert failed["failed"] is True and f"Archive target 's3test' ({s3server.endpoint_url}): reading s3://" in failed["msg"]
    assert key in failed["msg"] and failed["key"] == key
    assert not (tmp_path / "r" / name).exists()


def test_a_wrong_secret_key_is_named_as_refused_credentials(tmp_path, s3server, capsys):  # noqa: F811
    """The first call is a HEAD, whose refusal is a bare 403 with no body to say why."""
    backup_dir, _name, record = make_backup(tmp_path, big=1 << 20)
    wrong = "WRONG-" + "x" * 34
    failed = run_main(s3_args(s3server, backup_dir, record, target={**s3server.target(), "secret_key": wrong}), capsys)
    assert failed["failed"] is True and "403" in failed["msg"], failed["msg"]
    assert "Check access_key/secret_key" in failed["msg"] and wrong not in json.dumps(failed)


def test_secrets_never_show_in_the_output(tmp_path, s3server):  # noqa: F811
    backup_dir, _name, record = make_backup(tmp_path, big=1 << 20)
    args = s3_args(s3server, backup_dir, record)
    completed = subprocess.run(
        ["ansible", "workshop", "-i", str(REPO / "inventory" / "local"), "-vvv", "-m", "archive_copy", "-a", json.dumps(args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert args["target"]["secret_key"] not in completed.stdout + completed.stderr
    assert args["target"]["secret_key"] not in record.read_text()


# --- SSH ------------------------------------------------------------------------------------------


def ssh_args(client_key, tmp_path, backup_dir, record, **extra):
    args = dict(
        target=dict(
            name="nas",
            type="ssh",
            host="127.0.0.1",
            port=SSH_PORT,
            user="root",
            path=str(tmp_path / "nas"),
            key_file=str(client_key),
        ),
        workshop_id=WORKSHOP,
        backup_dir=str(backup_dir),
        record=str(record),
        known_hosts=str(tmp_path / "known_hosts"),
    )
    args.update(extra)
    return args


@pytest.mark.fault
def test_ssh_copy_resumes_a_part_is_exact_and_idempotent(tmp_path, sshd, capsys, fault_case):
    fault_case(
        "Corrupted file in the off-host copy (SSH), after a killed run's .part",
        expected="the .part resumed; verify names redis/dump.rdb; the altered copy never overwritten",
    )
    backup_dir, name, record = make_backup(tmp_path)
    local = files_of(backup_dir / name)
    remote = tmp_path / "nas" / WORKSHOP / name
    # A killed run's leftover: the first 3 MiB of outputs.tar in its .part file, made as that run made it (umask 077).
    umask = os.umask(0o077)
    try:
        remote.mkdir(parents=True)
        (remote / ".outputs.tar.part").write_bytes(local["outputs.tar"][: 3 << 20])
    finally:
        os.umask(umask)

    preview = run_main(ssh_args(sshd, tmp_path, backup_dir, record), capsys, check=True)
    assert preview["changed"] is True and sorted(preview["uploaded"]) == sorted(local)
    first = run_main(ssh_args(sshd, tmp_path, backup_dir, record), capsys)
    assert first["changed"] is True and first["done"] is True
    assert first["progress"]["bytes_sent"] == sum(map(len, local.values())) - (3 << 20)  # resumed, not resent
    assert files_of(remote) == local  # no .part left
    # Only the storage user reads the copy (the workshop's .env is in it): folders 700, files 600.
    copied = tmp_path / "nas" / WORKSHOP
    assert {path.stat().st_mode & 0o077 for path in [copied, *copied.rglob("*")]} == {0}
    entry = read_record(record)["archive"]["targets"]["nas"]
    assert entry["verified"] is True and entry["where"] == f"ssh://root@127.0.0.1:{SSH_PORT}{tmp_path}/nas/{WORKSHOP}/{name}/"

    second = run_main(ssh_args(sshd, tmp_path, backup_dir, record), capsys)
    assert second["changed"] is False and second["uploaded"] == []

    (remote / "redis" / "dump.rdb").write_bytes(b"X" + local["redis/dump.rdb"][1:])
    failed = run_main(ssh_args(sshd, tmp_path, backup_dir, record, state="verified", verify="all"), capsys)
    assert failed["failed"] is True and [f["file"] for f in failed["failures"]] == ["redis/dump.rdb"]
    assert read_record(record)["archive"]["targets"]["nas"]["verified"] is False
    refused = run_main(ssh_args(sshd, tmp_path, backup_dir, record), capsys)
    assert refused["failed"] is True and "never overwritten" in refused["msg"]
    assert (remote / "redis" / "dump.rdb").read_bytes()[:1] == b"X"
    fault_case.observed("resumed from 3 MiB; named redis/dump.rdb; refused to overwrite")


def test_check_mode_stores_no_host_key_and_still_refuses_a_changed_one(tmp_path, sshd, capsys):
    backup_dir, _, record = make_backup(tmp_path)
    # A folder name that ssh would split at its space or expand at its % if it were not quoted.
    known_hosts = tmp_path / "pinned keys 100%h" / "known_hosts"
    known_hosts.parent.mkdir()
    args = ssh_args(sshd, tmp_path, backup_dir, record, known_hosts=str(known_hosts))
    preview = run_main(args, capsys, check=True)
    assert preview["changed"] is True, preview
    assert not known_hosts.exists()  # the first connection's key went into the preview's own file
    run_main(args, capsys)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("pinned")) == ["pinned keys 100%h"]
    [line] = known_hosts.read_text().splitlines()
    assert line.split()[1:] == (sshd.parent / "host_key.pub").read_text().split()[:2]  # the server's own key

    # Another key for the same host (a man in the middle, or a reinstalled server): refused in check mode too.
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", tmp_path / "other"], check=True)
    other = (tmp_path / "other.pub").read_text().split()[1]
    known_hosts.write_text(" ".join([*line.split()[:2], other]) + "\n")
    refused = run_main(args, capsys, check=True)
    assert refused["failed"] is True and "nas" in refused["msg"], refused
    assert known_hosts.read_text().split()[2] == other


def test_check_mode_without_known_hosts_still_reads_the_files_ssh_config_names():
    """ssh -G says which known_hosts files ssh reads for a host (ssh_config's UserKnownHostsFile, else
    its defaults): check mode puts its own file first and keeps every one of those after it."""
    target = dict(name="nas", type="ssh", host="nas.invalid", port=2222, user="backup", path="/srv")
    said = subprocess.run(["ssh", "-G", "-p", "2222", "backup@nas.invalid"], capture_output=True, text=True, check=True).stdout
    [configured] = [line.split()[1:] for line in said.splitlines() if line.startswith("userknownhostsfile ")]
    store = make_target(target, check_mode=True)
    try:
        [option] = [o for o in store.options if o.startswith("UserKnownHostsFile=")]
    finally:
        store.close()
    files = [name.strip('"') for name in option.partition("=")[2].split()]
    assert files[0] == os.path.join(store.control_dir, "known_hosts") and files[1:] == configured


@pytest.mark.parametrize(
    ("stderr", "unreached"),
    [
        (b"ssh: connect to host nas port 22: Connection refused\r\n", True),
        (b"Timeout, server nas not responding.\r\n", True),
        (b"", True),  # the call's shared connection dropped under a command
        (b"Host key verification failed.\r\n", False),
        (b"root@nas: Permission denied (publickey).\r\n", False),
        (b"ssh: Could not resolve hostname nas.invalid: Name or service not known\r\n", False),  # a typo
    ],
)
def test_only_a_host_that_does_not_answer_is_unreached(stderr, unreached):
    store = make_target(dict(name="nas", type="ssh", host="nas", path="/srv"))
    try:
        error = store.error("listing /srv", 255, stderr)
    finally:
        store.close()
    assert isinstance(error, WorkshopUnreachable) is unreached
    assert ".." not in error.msg


def test_ssh_fetch_brings_the_backup_back(tmp_path, sshd, capsys):
    backup_dir, name, record = make_backup(tmp_path)
    run_main(ssh_args(sshd, tmp_path, backup_dir, record), capsys)
    args = ssh_args(sshd, tmp_path, backup_dir, record, state="fetched", dest=str(tmp_path / "back"))
    fetched = run_main(args, capsys)
    assert fetched["backup"] == name and files_of(fetched["path"]) == files_of(backup_dir / name)
    assert modes_of(Path(fetched["path"])) == {0o600}
    assert run_main(args, capsys)["changed"] is False


# --- plain helpers --------------------------------------------------------------------------------


def test_record_keeps_its_times_when_nothing_changed(tmp_path):
    record = str(tmp_path / "w" / "run-record.json")
    entry = dict(where="s3://b/p/", backup="backup-1", files=3, bytes=10, verified=True)
    assert record_archive(record, "r2", entry, now=100) is True
    assert record_archive(record, "r2", entry, now=200) is False
    saved = read_record(record)["archive"]["targets"]["r2"]
    assert saved["at"] == saved["verified_at"] == "1970-01-01T00:01:40+00:00"
    assert record_archive(record, "r2", dict(entry, verified=False), now=300) is True
    saved = read_record(record)["archive"]["targets"]["r2"]
    assert saved["at"] == "1970-01-01T00:01:40+00:00" and saved["verified_at"] == "1970-01-01T00:05:00+00:00"
    assert oct(os.stat(os.path.dirname(record)).st_mode & 0o777) == "0o700"


@pytest.mark.parametrize(
    ("targets", "ok"),
    [
        ({}, False),
        ({"r2": {"backup": "backup-2", "verified": True}}, True),
        ({"r2": {"backup": "backup-1", "verified": True}}, False),  # an older backup
        ({"r2": {"backup": "backup-2", "verified": False}}, False),
        ({"r2": {"backup": "backup-2", "verified": False}, "nas": {"backup": "backup-2", "verified": True}}, True),
    ],
)
def test_offsite_problem(tmp_path, targets, ok):
    record = tmp_path / "run-record.json"
    record.write_text(json.dumps({"archive": {"targets": targets}}))
    assert (offsite_problem(str(record), "backup-2") is None) is ok


def test_check_mode_before_any_backup_says_so_and_fails_nothing(tmp_path, s3server, capsys):  # noqa: F811
    (tmp_path / WORKSHOP).mkdir()
    args = s3_args(s3server, tmp_path / WORKSHOP, tmp_path / WORKSHOP / "run-record.json")
    preview = run_main(args, capsys, check=True)
    assert "failed" not in preview and preview["done"] is False and "No sealed backup" in preview["summary"]
    assert run_main(args, capsys)["failed"] is True  # a real run does fail


@pytest.mark.playbook
def test_the_targets_keys_never_show_when_the_preflight_refuses_a_target(tmp_path):
    """A loop's item is part of the task's result, printed whole on failure or with -v: the archive
    role's loops over archive_targets go by position, so no entry (with its keys) is ever printed."""
    secrets = ["AKIAPREFLIGHTKEY0001", "PreflightSecretKey0001", "AKIAPREFLIGHTKEY0002", "PreflightSecretKey0002"]
    targets = [
        {"name": "good", "type": "s3", "bucket": "b", "access_key": secrets[0], "secret_key": secrets[1]},
        {"name": "r2", "type": "s3", "endpoint_url": "http://127.0.0.1:9", "access_key": secrets[2], "secret_key": secrets[3]},
    ]
    run = run_playbook(
        "playbooks/archive.yml",
        "-vv",
        extra_vars={"workshop_id": "keys", "workshop_backup_root": str(tmp_path), "archive_targets": targets},
        expect_ok=False,
    )
    assert run.returncode != 0 and "archive_targets entry r2: give name, type (s3 or ssh)" in run.output, run.output[-3000:]
    assert [secret for secret in secrets if secret in run.output] == []
