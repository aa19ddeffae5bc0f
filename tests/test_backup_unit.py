"""Fast tier: the workshop lock, symlinks in participants' folders, files that change while read,
verification down to the archive member, and snapshot completion read from Redis's own counters."""

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time

import pytest
from ansible.module_utils import workshop_backup
from ansible.module_utils.workshop_backup import (
    check_outputs_dir,
    free_space,
    only_removed_since,
    read_manifest,
    seal,
    tree_fingerprint,
    verify_folder,
    write_archive,
    write_members,
)
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import human_bytes, tree_usage, walk_tree
from ansible.module_utils.workshop_lock import Busy, acquire, held_while_running, is_busy, new_owner, read_owner, release
from ansible.module_utils.workshop_record import read_record, record_backup, record_verify
from ansible.module_utils.workshop_redis import WorkshopRedis
from scratch_redis import running_redis

from conftest import load_module

# --- the lock -----------------------------------------------------------------------------------


def test_a_second_run_cannot_take_a_live_lock_and_the_message_names_its_owner(tmp_path):
    first = new_owner("run-1", purpose="backup of berlin")
    acquire(str(tmp_path), first)

    with pytest.raises(WorkshopError, match=r"Another run holds the lock .*run run-1 \(backup of berlin\) of pid") as caught:
        acquire(str(tmp_path), new_owner("run-2"))

    assert caught.value.context["lock_owner"]["run_id"] == "run-1"
    assert read_owner(str(tmp_path / ".lock"))["run_id"] == "run-1"


def test_the_same_run_holds_its_lock_again_and_only_the_owner_releases_it(tmp_path):
    acquire(str(tmp_path), new_owner("run-1"))
    assert acquire(str(tmp_path), new_owner("run-1"))["held_already"]

    other = release(str(tmp_path), "run-2")
    assert not other["released"] and "not to run run-2" in other["warning"]
    assert (tmp_path / ".lock").exists()

    assert release(str(tmp_path), "run-1")["released"]
    assert not (tmp_path / ".lock").exists()


def test_a_lock_whose_process_died_on_this_host_is_taken_over_with_a_warning(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    acquire(str(tmp_path), new_owner("dead-run", pid=gone.pid))

    taken = acquire(str(tmp_path), new_owner("run-2"))

    assert taken["taken_over"] and taken["previous"]["run_id"] == "dead-run"
    assert f"its process {gone.pid}" in taken["warning"] and "is not running any more" in taken["warning"]
    assert read_owner(str(tmp_path / ".lock"))["run_id"] == "run-2"


def test_a_lock_of_another_machine_is_taken_over_only_once_stale(tmp_path):
    long_ago = time.time() - 7200
    acquire(str(tmp_path), new_owner("far-run", host="controller-elsewhere", pid=1, now=long_ago))

    with pytest.raises(WorkshopError, match="Another run holds the lock"):
        acquire(str(tmp_path), new_owner("run-2"), stale_after=3 * 3600)
    taken = acquire(str(tmp_path), new_owner("run-2"), stale_after=3600)

    assert taken["taken_over"] and "older than 3600s" in taken["warning"]


def test_a_run_from_a_remote_controller_is_never_taken_over_for_its_pid(tmp_path):
    # Two runs from one controller (a laptop) on a workshop host: the first one's pid means nothing on the
    # host, even when no process there has it.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    acquire(str(tmp_path), new_owner("laptop-run-1", host="admins-laptop", pid=gone.pid, purpose="backup of berlin"))

    with pytest.raises(WorkshopError) as refused:
        acquire(str(tmp_path), new_owner("laptop-run-2", host="admins-laptop", pid=os.getpid()))

    assert "started from this same controller" in refused.value.msg
    assert (
        f"if that ansible-playbook is no longer running (stopped with Ctrl-C, killed), remove {tmp_path}/.lock"
        in refused.value.msg
    )
    assert read_owner(str(tmp_path / ".lock"))["run_id"] == "laptop-run-1"


def test_a_lock_on_a_full_disk_fails_saying_so_and_leaves_no_empty_lock(tmp_path):
    from test_faults import small_disk

    with small_disk(tmp_path / "disk", "64k") as disk:
        (disk / "berlin").mkdir()
        with open(disk / "filler", "wb", buffering=0) as filler, contextlib.suppress(OSError):
            while True:
                filler.write(b"x" * 4096)

        with pytest.raises(WorkshopError) as refused:
            acquire(str(disk / "berlin"), new_owner("run-1"))

        assert f"Cannot take the lock {disk}/berlin/.lock on " in refused.value.msg
        assert "the disk that holds it is full; free space on it" in refused.value.msg
        assert os.listdir(disk / "berlin") == []  # no empty lock for the next run to take for a stranger's


def test_the_module_returns_its_owner_and_takes_no_part_in_changed(tmp_path, capsys):
    from ansible.module_utils.testing import patch_module_args

    from conftest import load_module

    workshop_lock = load_module("workshop_lock")
    folder = tmp_path / "berlin"
    with patch_module_args({"path": str(folder), "run_id": "run-7", "purpose": "backup"}), pytest.raises(SystemExit):
        workshop_lock.main()
    taken = json.loads(capsys.readouterr().out)
    with patch_module_args({"path": str(folder), "run_id": "run-7", "state": "released"}), pytest.raises(SystemExit):
        workshop_lock.main()
    released = json.loads(capsys.readouterr().out)

    # Ansible adds file facts (owner: a user name) to results with a `path`: the owner record must survive.
    assert taken["owner"]["run_id"] == "run-7" and taken["owner"]["pid"] == os.getppid()  # the module's parent by default
    assert taken["changed"] is False and released["changed"] is False and released["released"] is True
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    assert not (folder / ".lock").exists()


def test_check_mode_takes_no_lock(tmp_path):
    acquire(str(tmp_path), new_owner("run-1"), check_mode=True)
    assert not (tmp_path / ".lock").exists()


def test_a_lock_held_while_running_is_this_process_s_and_goes_when_the_work_ends_or_fails(tmp_path):
    folder = tmp_path / "berlin"
    with held_while_running(str(folder), "cleanup of berlin") as warning:
        owner = read_owner(str(folder / ".lock"))
        assert warning == "" and owner["pid"] == os.getpid() and owner["purpose"] == "cleanup of berlin"
        with pytest.raises(WorkshopError, match=r"Another run holds the lock .*\(cleanup of berlin\)"):
            acquire(str(folder), new_owner("a-backup"))
    assert not (folder / ".lock").exists() and oct(folder.stat().st_mode & 0o777) == "0o700"
    with pytest.raises(RuntimeError, match="the work failed"), held_while_running(str(folder), "retention of berlin"):
        raise RuntimeError("the work failed")
    assert not (folder / ".lock").exists()


def test_a_lock_held_while_running_takes_over_a_dead_run_s_leaves_a_live_one_s_and_check_mode_writes_nothing(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    acquire(str(tmp_path), new_owner("killed-cleanup", pid=gone.pid))
    with held_while_running(str(tmp_path), "cleanup of berlin") as warning:
        assert "killed-cleanup" in warning and "is not running any more" in warning
    assert not (tmp_path / ".lock").exists()
    acquire(str(tmp_path), new_owner("a-backup", purpose="backup of berlin"))
    for check_mode in (True, False):
        refused = pytest.raises(WorkshopError, match=r"Another run holds the lock .*\(backup of berlin\)")
        with refused, held_while_running(str(tmp_path), "cleanup of berlin", check_mode):
            pytest.fail("the work ran without the lock")
    assert read_owner(str(tmp_path / ".lock"))["run_id"] == "a-backup"
    release(str(tmp_path), "a-backup")
    with held_while_running(str(tmp_path / "new"), "cleanup of new", check_mode=True) as warning:
        assert warning == ""
    assert not (tmp_path / "new").exists()


def test_a_relative_folder_is_refused_at_once():
    with pytest.raises(WorkshopError, match="relative path"):
        acquire("backups/berlin", new_owner("run-1"))
    with pytest.raises(WorkshopError, match="relative path"):
        free_space("backups/berlin")  # looped forever before


def test_a_folder_held_busy_by_a_live_process_is_busy_until_it_ends(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl,os,sys,time; fd=os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_SH); "
            "print('held', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == b"held"
        assert is_busy(str(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    assert not is_busy(str(tmp_path))
    with Busy(str(tmp_path)):
        assert is_busy(str(tmp_path))


# --- symlinks -----------------------------------------------------------------------------------


@pytest.fixture
def outputs(tmp_path):
    """data/outputs with two participants, one of them a link to another disk, and a link inside."""
    root = tmp_path / "outputs"
    (root / "user001").mkdir(parents=True)
    (root / "user001" / "a.png").write_bytes(b"A" * 3000)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "b.png").write_bytes(b"B" * 5000)
    (elsewhere / "sub").mkdir()
    (elsewhere / "sub" / "c.mp4").write_bytes(b"C" * 700)
    os.symlink(elsewhere, root / "user099")
    os.symlink("a.png", root / "user001" / "latest.png")
    return root


def test_a_participant_folder_that_is_a_link_elsewhere_is_archived_with_its_files(outputs, tmp_path):
    dest = tmp_path / "outputs.tar"
    members, vanished = write_archive(str(dest), {"outputs": str(outputs)})

    with tarfile.open(dest) as tar:
        names = {info.name: info for info in tar}
        assert tar.extractfile("outputs/user099/b.png").read() == b"B" * 5000
        assert tar.extractfile("outputs/user099/sub/c.mp4").read() == b"C" * 700
    assert names["outputs/user001/latest.png"].issym() and names["outputs/user001/latest.png"].linkname == "a.png"
    assert vanished == []
    by_path = {m["path"]: m for m in members}
    assert by_path["outputs/user099/b.png"]["via"] == str(tmp_path / "elsewhere")
    assert by_path["outputs/user001/latest.png"] == {"path": "outputs/user001/latest.png", "link": "a.png"}


def test_the_state_counts_what_the_archive_holds(outputs, tmp_path):
    members, _ = write_archive(str(tmp_path / "outputs.tar"), {"outputs": str(outputs)})
    usage = tree_usage(str(outputs))

    files = [m for m in members if "sha256" in m]
    assert usage["files"] == len(files) == 3
    assert usage["bytes"] == sum(m["size"] for m in files) == 3000 + 5000 + 700
    assert usage["links"] == 1
    assert usage["folders"]["user099"] == {"files": 2, "bytes": 5700}


def test_a_dangling_link_fails_naming_it(outputs):
    os.symlink("/nonexistent/place", outputs / "user002")
    with pytest.raises(WorkshopError, match=r"user002 is a link to /nonexistent/place, which does not exist"):
        walk_tree(str(outputs))


def test_a_link_loop_fails_naming_it(outputs, tmp_path):
    os.symlink(tmp_path / "elsewhere", tmp_path / "elsewhere" / "again")
    with pytest.raises(WorkshopError, match="again links back to"):
        walk_tree(str(outputs))


# --- files that change while read ---------------------------------------------------------------


@pytest.mark.parametrize("cut_to", [1 << 20, (1 << 20) + 5000], ids=["at a block's end", "inside a block"])
def test_a_file_truncated_while_read_is_read_again_not_recorded_truncated(tmp_path, cut_to):
    source = tmp_path / "src"
    (source / "user001").mkdir(parents=True)
    path = source / "user001" / "video.mp4"
    path.write_bytes(os.urandom(4 << 20))
    dest = tmp_path / "outputs.tar"
    real_read = workshop_backup._HashingReader.read
    calls = {"n": 0}

    def truncating_read(self, size=-1):
        calls["n"] += 1
        if calls["n"] == 2:  # while the first copy is under way: the writer cuts the file short
            with open(path, "r+b") as cut:
                cut.truncate(cut_to)
        return real_read(self, size)

    workshop_backup._HashingReader.read = truncating_read
    try:
        members, _ = write_archive(str(dest), {"outputs": str(source)})
    finally:
        workshop_backup._HashingReader.read = real_read

    [member] = members
    assert member["size"] == cut_to  # the file as it is now, read whole, not 4 MiB claimed with 1 MiB inside
    with tarfile.open(dest) as tar:
        [info] = tar.getmembers()
        assert tar.extractfile(info).read() == path.read_bytes()


def test_a_file_rewritten_while_read_with_its_time_put_back_is_read_again(tmp_path, monkeypatch):
    """Same size, modification time put back (as rsync -t or a restore tool does): the change time still tells."""
    source = tmp_path / "src" / "user001"
    source.mkdir(parents=True)
    path = source / "img.png"
    path.write_bytes(os.urandom(3 << 20))
    times = path.stat()
    real_read = workshop_backup._HashingReader.read
    calls = {"n": 0}

    def rewriting_read(self, size=-1):
        calls["n"] += 1
        if calls["n"] == 3:  # the last of its three blocks: the first two are read already
            path.write_bytes(os.urandom(3 << 20))
            os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
        return real_read(self, size)

    monkeypatch.setattr(workshop_backup._HashingReader, "read", rewriting_read)
    members, _ = write_archive(str(tmp_path / "outputs.tar"), {"outputs": str(source.parent)})

    [member] = members
    assert member["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    with tarfile.open(tmp_path / "outputs.tar") as tar:
        assert tar.extractfile(tar.getmembers()[0]).read() == path.read_bytes()


def test_a_file_that_never_stops_changing_fails_naming_it(tmp_path, monkeypatch):
    source = tmp_path / "src"
    source.mkdir()
    path = source / "growing.log"
    path.write_bytes(b"x" * (8 << 20))
    # A service appending to its log while every read happens. Appended from the read itself, not from a
    # process of its own: on a loaded machine such a writer can sleep through a whole read (a flaky test).
    read = workshop_backup._HashingReader.read

    def read_while_appended(self, size=-1):
        with open(path, "ab") as out:
            out.write(b"y" * 4096)
        return read(self, size)

    monkeypatch.setattr(workshop_backup._HashingReader, "read", read_while_appended)
    with pytest.raises(WorkshopError, match=r"growing.log changed every time it was read \(3 tries\)"):
        write_archive(str(tmp_path / "outputs.tar"), {"outputs": str(source)})
    assert not (tmp_path / "outputs.tar").exists() and not (tmp_path / "outputs.tar.partial").exists()


def test_a_vanished_file_is_reported_as_vanished_not_as_a_write_failure(tmp_path, monkeypatch):
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.png").write_bytes(b"a")
    (source / "b.png").write_bytes(b"b")
    real_walk = workshop_backup.walk_tree

    def walk_then_delete(root):
        entries = real_walk(root)
        (source / "b.png").unlink()
        return entries

    monkeypatch.setattr(workshop_backup, "walk_tree", walk_then_delete)
    members, vanished = write_archive(str(tmp_path / "outputs.tar"), {"outputs": str(source)})
    assert [m["path"] for m in members] == ["outputs/a.png"]
    assert vanished == [str(source / "b.png")]


def test_an_archive_far_smaller_than_expected_is_refused(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.png").write_bytes(b"a")
    with pytest.raises(WorkshopError, match="would hold 1 files, far fewer than the 10 expected"):
        write_archive(str(tmp_path / "outputs.tar"), {"outputs": str(source)}, min_files=10)
    assert list(tmp_path.glob("outputs.tar*")) == []


# --- the outputs folder -------------------------------------------------------------------------


class _Container:
    def __init__(self, name, mounts):
        self.name, self.attrs = name, {"Mounts": mounts}


def test_a_typo_in_the_outputs_folder_fails_naming_both_paths(tmp_path):
    project = tmp_path / "comfyui"
    (project / "data" / "outputs").mkdir(parents=True)
    (project / "data" / "output").mkdir()
    (project / ".env").write_text("OUTPUTS_PATH=./data/outputs\n")
    worker = _Container(
        "comfy-worker-1", [{"Type": "bind", "Source": str(project / "data" / "outputs"), "Destination": "/outputs"}]
    )

    with pytest.raises(WorkshopError) as caught:
        check_outputs_dir(str(project / "data" / "output"), str(project), str(project / ".env"), [worker])

    message = caught.value.msg
    assert f"workshop_outputs_dir is {project}/data/output," in message
    assert f"writes its outputs to {project}/data/outputs (OUTPUTS_PATH in {project}/.env" in message
    assert "comfy-worker-1:/outputs" in message
    check_outputs_dir(str(project / "data" / "outputs"), str(project), str(project / ".env"), [worker])


# --- opening a backup's folder, with the configuration in it -------------------------------------


def _open(tmp_path, capsys, monkeypatch, check=False, **options):
    """workshop_backup state=opened run in-process on <tmp>/ws/.partial-backup-1, project <tmp>/project; (rc, result)."""
    import ansible.module_utils._internal
    from ansible.module_utils.testing import patch_module_args

    from conftest import load_module

    # As on a host: a test of this process that imported controller code turns the module's warnings into
    # controller display messages, which no result carries (test_metrics_unit says the same).
    monkeypatch.setattr(ansible.module_utils._internal, "is_controller", False)

    args = {
        "state": "opened",
        "backup_dir": str(tmp_path / "ws"),
        "partial": str(tmp_path / "ws" / ".partial-backup-1"),
        "project_dir": str(tmp_path / "project"),
        "config_files": [".env", "docker-compose.yml", "docker-compose.users.yml"],
        "config_required_files": [".env", "docker-compose.yml"],
        "_ansible_check_mode": check,
        **options,
    }
    with patch_module_args(args), pytest.raises(SystemExit) as ended:
        load_module("workshop_backup").main()
    return ended.value.code, json.loads(capsys.readouterr().out)


@pytest.fixture
def project(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / ".env").write_text("REDIS_PASSWORD=s3cret\n")
    (folder / "docker-compose.yml").write_text("services: {}\n")
    (tmp_path / "ws").mkdir(mode=0o700)
    return folder


def test_opening_creates_the_owner_only_folders_and_keeps_the_configuration_byte_for_byte(tmp_path, project, capsys, monkeypatch):
    rc, result = _open(tmp_path, capsys, monkeypatch)

    partial = tmp_path / "ws" / ".partial-backup-1"
    assert rc == 0 and result["changed"] is True
    assert sorted(p.name for p in partial.iterdir()) == ["config", "logs", "redis"]
    assert {oct(p.stat().st_mode & 0o777) for p in (partial, *partial.iterdir())} == {"0o700"}
    for name in (".env", "docker-compose.yml"):
        assert (partial / "config" / name).read_bytes() == (project / name).read_bytes()
        assert oct((partial / "config" / name).stat().st_mode & 0o777) == "0o600"
    assert result["config_present"] == [".env", "docker-compose.yml"]
    assert result["config_missing"] == ["docker-compose.users.yml"]
    assert "so not in the backup: docker-compose.users.yml" in json.dumps(result["warnings"])
    assert "s3cret" not in json.dumps(result)


def test_a_missing_required_file_fails_naming_it_before_anything_is_written(tmp_path, project, capsys, monkeypatch):
    (project / "docker-compose.yml").unlink()

    rc, result = _open(tmp_path, capsys, monkeypatch)

    assert rc == 1 and "Required configuration missing in " + str(project) + ": docker-compose.yml" in result["msg"]
    assert not (tmp_path / "ws" / ".partial-backup-1").exists()


def test_check_mode_and_encrypted_configuration_write_no_configuration(tmp_path, project, capsys, monkeypatch):
    rc, previewed = _open(tmp_path, capsys, monkeypatch, check=True)
    assert rc == 0 and previewed["changed"] is True and previewed["config_present"] == [".env", "docker-compose.yml"]
    assert not (tmp_path / "ws" / ".partial-backup-1").exists()

    rc, opened = _open(tmp_path, capsys, monkeypatch, config_encrypted=True)
    assert rc == 0 and opened["config_present"] == [".env", "docker-compose.yml"]
    assert list((tmp_path / "ws" / ".partial-backup-1" / "config").iterdir()) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"config_files": ["../other/.env"]}, "'../other/.env' is not a path inside the project directory"),
        ({"config_files": ["/etc/passwd"]}, "'/etc/passwd' is not a path inside the project directory"),
        ({"partial": "/tmp/elsewhere"}, "/tmp/elsewhere is not a partial backup folder of"),
    ],
)
def test_a_path_outside_the_project_or_the_backup_folder_is_refused(tmp_path, project, capsys, monkeypatch, options, message):
    rc, result = _open(tmp_path, capsys, monkeypatch, **options)

    assert rc == 1 and message in result["msg"]
    assert not (tmp_path / "ws" / ".partial-backup-1").exists()


# --- verification, recorded ---------------------------------------------------------------------


def _archived_outputs(source, folder, user="user003"):
    """`folder` holding outputs.tar of `source` (one participant's image, made here) with its member list."""
    (source / user).mkdir(parents=True)
    (source / user / "img.png").write_bytes(os.urandom(5000))
    folder.mkdir(parents=True)
    members, _ = write_archive(str(folder / "outputs.tar"), {"outputs": str(source)})
    write_members(str(folder / "outputs.tar"), members)
    return folder


def _partial_backup(tmp_path):
    """<tmp>/ws/.partial-backup-1 holding one participant's image archived, with its member list."""
    return _archived_outputs(tmp_path / "src", tmp_path / "ws" / ".partial-backup-1")


def _sealed_backup(tmp_path):
    final = tmp_path / "ws" / "backup-1"
    seal(str(_partial_backup(tmp_path)), str(final), {"name": "backup-1"})
    return final


def _seal_params(partial, record):
    """workshop_backup's parameters for sealing _partial_backup's folder as backup-1, recorded in `record`."""
    return dict(
        backup_dir=str(partial.parent), name="backup-1", partial=str(partial), facts={}, record=str(record), record_data={}
    )


def test_a_backup_copied_under_another_name_fails_verification_and_one_named_in_the_future_is_refused(tmp_path):
    """A backup is named when it is sealed: a copy renamed by hand into the future would stay "the newest"
    whatever is sealed after it, verified, archived and trusted by the shutdown guard in its place."""
    folder = _sealed_backup(tmp_path)
    copy = folder.with_name("backup-20991231T000000Z")
    shutil.copytree(folder, copy)

    assert verify_folder(str(folder)) == []
    assert verify_folder(str(copy)) == [
        {"file": "MANIFEST.json", "member": None, "reason": "names the backup backup-1: copied or renamed by hand"}
    ]
    with pytest.raises(WorkshopError, match=r"backup-20991231T000000Z is named after this host's clock") as refused:
        workshop_backup.sealed_backups(str(folder.parent))
    assert refused.value.context["path"] == str(copy)
    # Within the hour after the clock (two hosts' clocks a little apart) a name is taken as it is.
    soon = copy.with_name(workshop_backup.backup_name(time.time() + 600))
    copy.rename(soon)
    assert workshop_backup.sealed_backups(str(folder.parent)) == ["backup-1", soon.name]


def test_a_flipped_byte_is_named_down_to_the_member_and_recorded_as_failed(tmp_path):
    folder = _sealed_backup(tmp_path)
    record = tmp_path / "ws" / "run-record.json"
    record_backup(str(record), "backup-1", str(folder), 2, {"outputs": {"files": 1}})
    assert read_record(str(record))["backup"]["verify"]["ok"] is True
    with tarfile.open(folder / "outputs.tar") as tar:
        offset = tar.getmember("outputs/user003/img.png").offset_data
    data = bytearray((folder / "outputs.tar").read_bytes())
    data[offset + 100] ^= 0xFF
    (folder / "outputs.tar").write_bytes(bytes(data))

    failures = verify_folder(str(folder))
    record_verify(str(record), "backup-1", failures)

    assert failures == [
        {"file": "outputs.tar", "member": "outputs/user003/img.png", "reason": "content differs from the manifest"}
    ]
    verify = read_record(str(record))["backup"]["verify"]
    assert verify["ok"] is False and verify["backup"] == "backup-1" and verify["failures"] == failures
    assert verify["at"].endswith("+00:00")


def test_an_unchanged_verification_keeps_its_record_untouched(tmp_path):
    folder = _sealed_backup(tmp_path)
    record = tmp_path / "ws" / "run-record.json"
    record_backup(str(record), "backup-1", str(folder), 2, {})
    before = record.read_bytes()
    assert record_verify(str(record), "backup-1", []) is False
    assert record.read_bytes() == before


@pytest.mark.parametrize(
    ("record", "named"),
    [
        ({"backup": {"name": "backup-1", "verify": "failed"}}, "backup.verify is text, not a JSON object"),
        ({"backup": ["backup-1"]}, "backup is a list, not a JSON object"),
        ({"archive": {"targets": {"nas": True}}}, "archive.targets.nas is true/false, not a JSON object"),
        ({"drain": None}, "drain is null, not a JSON object"),
        ({"archive": {"targets": {"nas": {"backup": ["x"]}}}}, "archive.targets.nas.backup is a list, not text"),
        ({"backup": {"name": "backup-1", "verify": {"ok": True, "backup": 1}}}, "backup.verify.backup is a number, not text"),
        ([{"backup": {}}], "its top level is a list, not a JSON object"),
        # Values the phases read: the text "false" would pass for a verification, a number crash the summary.
        ({"backup": {"verify": {"ok": "false", "backup": "backup-1"}}}, "backup.verify.ok is text, not true or false"),
        ({"drain": {"final_time": 12345}}, "drain.final_time is a number, not text"),
        ({"drain": {"total_jobs": "lots"}}, "drain.total_jobs is text, not a whole number"),
        ({"drain": {"total_jobs": True}}, "drain.total_jobs is true/false, not a whole number"),
        ({"drain": {"counts_at_end": [1, 2]}}, "drain.counts_at_end is a list, not a JSON object"),
        ({"share": {"participants": "x"}}, "share.participants is text, not a JSON object"),
        ({"archive": {"targets": {"nas": {"verified": "yes"}}}}, "archive.targets.nas.verified is text, not true or false"),
        ({"archive": {"targets": {"nas": None}}}, "archive.targets.nas is null, not a JSON object"),
        ({"backup": {"verify": None}}, "backup.verify is null, not a JSON object"),
    ],
)
def test_a_hand_edited_run_record_of_another_shape_is_named_and_left_as_it_is(tmp_path, record, named):
    """Before, the verification failed with a traceback ("Module failed") on `verify: "failed"`."""
    from conftest import load_module

    folder = _sealed_backup(tmp_path)
    path = tmp_path / "ws" / "run-record.json"
    path.write_text(json.dumps(record))
    before = path.read_bytes()
    params = dict(backup_dir=str(folder.parent), name="backup-1", record=str(path), reuse_unchanged=True)
    with pytest.raises(WorkshopError) as failed:
        load_module("workshop_backup").verify(params, check_mode=False)
    assert failed.value.msg == (
        f"The run record {path} is not as the phases write it: {named} (edited by hand?): fix that key, or move the record aside"
    )
    assert path.read_bytes() == before


def test_an_unchanged_backup_verified_before_is_not_read_again_and_any_write_makes_it_read(tmp_path):
    from conftest import load_module

    verify = load_module("workshop_backup").verify
    folder = _sealed_backup(tmp_path)
    record = tmp_path / "ws" / "run-record.json"
    record_backup(str(record), "backup-1", str(folder), 2, {})
    params = dict(backup_dir=str(folder.parent), name=None, record=str(record), reuse_unchanged=True)

    first = verify(params, check_mode=False)  # recorded without a signature (as before the seals kept one): read
    again = verify(params, check_mode=False)
    asked = verify(dict(params, reuse_unchanged=False), check_mode=False)

    assert (first["reused"], again["reused"], asked["reused"]) == (False, True, False)
    assert again["verified_at"] == read_record(str(record))["backup"]["verify"]["at"] and again["problems"] == []
    # A byte changed in place, size and modification time put back: the change time still tells.
    stat = (folder / "outputs.tar").stat()
    with tarfile.open(folder / "outputs.tar") as tar:
        offset = tar.getmember("outputs/user003/img.png").offset_data
    with open(folder / "outputs.tar", "r+b") as archive:
        archive.seek(offset + 100)
        byte = archive.read(1)
        archive.seek(offset + 100)
        archive.write(bytes([byte[0] ^ 0xFF]))
    os.utime(folder / "outputs.tar", ns=(stat.st_atime_ns, stat.st_mtime_ns))

    damaged = verify(params, check_mode=False)

    assert damaged["reused"] is False
    assert damaged["problems"] == ["outputs.tar member outputs/user003/img.png: content differs from the manifest"]
    assert read_record(str(record))["backup"]["verify"]["ok"] is False


def test_the_verification_right_after_the_seal_takes_the_seals_and_a_write_since_makes_it_read(tmp_path):
    """The seal read every file from disk: the phase's verification just after it reads nothing again."""
    from conftest import load_module

    module = load_module("workshop_backup")
    partial = _partial_backup(tmp_path)
    backup_dir, record = partial.parent, partial.parent / "run-record.json"
    module.seal_backup(_seal_params(partial, record), check_mode=False)
    sealed_at = read_record(str(record))["backup"]["verify"]["at"]
    params = dict(backup_dir=str(backup_dir), name=None, record=str(record), reuse_unchanged=True)

    after_the_seal = module.verify(params, check_mode=False)
    os.utime(backup_dir / "backup-1" / "outputs.tar")  # a change time moved, no byte changed
    after_a_write = module.verify(params, check_mode=False)

    assert (after_the_seal["reused"], after_the_seal["verified_at"], after_the_seal["problems"]) == (True, sealed_at, [])
    assert after_a_write["reused"] is False and after_a_write["problems"] == []


@pytest.mark.parametrize("late", ["a file after the seal read it", "the manifest after its read-back"])
def test_a_write_while_sealing_makes_the_verification_after_it_read_everything(tmp_path, monkeypatch, late):
    """The seal's read stands for a verification only if nothing was written to the folder since it began."""
    from conftest import load_module

    module = load_module("workshop_backup")
    partial = _partial_backup(tmp_path)
    backup_dir, record = partial.parent, partial.parent / "run-record.json"
    (partial / "redis.log").write_bytes(b"line\n" * 100)
    if late == "a file after the seal read it":
        real, target, reader = workshop_backup.read_folder, partial / "redis.log", "read_folder"
    else:
        real, target, reader = workshop_backup.read_manifest, partial / "MANIFEST.json", "read_manifest"

    def read_then_write(*args, **kwargs):
        found = real(*args, **kwargs)
        with open(target, "ab") as late_writer:
            late_writer.write(b"\n")
        return found

    monkeypatch.setattr(workshop_backup, reader, read_then_write)
    module.seal_backup(_seal_params(partial, record), check_mode=False)
    monkeypatch.undo()
    after = module.verify(dict(backup_dir=str(backup_dir), name=None, record=str(record), reuse_unchanged=True), check_mode=False)

    assert after["reused"] is False
    # The manifest with a blank line added still says the same (it is not listed in itself).
    assert after["problems"] == ([] if target.name == "MANIFEST.json" else ["redis.log: content differs from the manifest"])


def test_an_archive_cut_inside_a_member_is_one_failure_naming_it(tmp_path):
    source = tmp_path / "src" / "user001"
    source.mkdir(parents=True)
    (source / "a.png").write_bytes(os.urandom(300_000))
    members, _ = write_archive(str(tmp_path / "outputs.tar"), {"outputs": str(source.parent)})
    os.truncate(tmp_path / "outputs.tar", 3 * 512 + 1000)

    failures = workshop_backup.archive_failures(str(tmp_path / "outputs.tar"), members)

    assert failures == [{"member": "outputs/user001/a.png", "reason": "not a readable tar archive (unexpected end of data)"}]


def test_seal_fsyncs_and_leaves_no_partial(tmp_path):
    folder = _sealed_backup(tmp_path)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["backup-1"]
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    assert set(manifest["files"]) == {"outputs.tar", "outputs.tar.members.json"}


# --- snapshot completion ------------------------------------------------------------------------


def test_snapshot_completion_is_read_from_rdb_saves_not_lastsave(tmp_path):
    """Two saves within one second: LASTSAVE cannot tell them apart, rdb_saves does."""
    with running_redis(tmp_path) as client:
        conn = WorkshopRedis("127.0.0.1", client.connection_pool.connection_kwargs["port"])
        client.set("a", "1")
        first = conn.snapshot()
        client.set("b", "2")
        second = conn.snapshot()
        assert second["rdb_saves"] == first["rdb_saves"] + 1
        assert second["changes_since_save"] == 0  # the second save holds "b": it was not the first one seen again


# --- a Docker stream cut mid-snapshot -----------------------------------------------------------


class _CutStream:
    """What docker-py's get_archive hands back when the engine's HTTP stream breaks midway: the
    first chunks of a real tar of the RDB file, then urllib3's ProtocolError."""

    def __init__(self, tar_bytes, cut_at):
        self.tar_bytes, self.cut_at = tar_bytes, cut_at

    def __iter__(self):
        import urllib3.exceptions

        yield self.tar_bytes[: self.cut_at]
        raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead(4096 bytes read, 61440 more expected)")


class _StreamingContainer:
    name = "comfy-redis"

    def __init__(self, stream):
        self.stream = stream

    def get_archive(self, path):
        return self.stream, {}


def test_a_docker_stream_cut_mid_snapshot_says_so(tmp_path):
    import io

    from ansible.module_utils.workshop_compose import ComposeProject

    from conftest import load_module

    rdb = tmp_path / "dump.rdb"
    rdb.write_bytes(os.urandom(64 << 10))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(rdb, arcname="dump.rdb")
    project = ComposeProject(client=None, name="comfyui", engine="unix:///run/docker.sock")
    container = _StreamingContainer(_CutStream(buffer.getvalue(), 4096 + 512))

    redis_snapshot = load_module("redis_snapshot")
    with pytest.raises(WorkshopError) as caught:
        redis_snapshot._copy_from_container(project, container, "/data/dump.rdb", str(tmp_path / "copy.partial"))

    message = caught.value.msg
    assert "The Docker Engine at unix:///run/docker.sock stopped streaming /data/dump.rdb out of comfy-redis mid-copy" in message
    assert "ProtocolError" in message and "None" not in message


# --- what a re-run compares -----------------------------------------------------------------------


def test_outputs_that_only_went_are_told_apart_from_added_or_changed_ones(tmp_path):
    outputs = tmp_path / "outputs"
    for user in ("user001", "user002"):
        (outputs / user).mkdir(parents=True)
        (outputs / user / "a.png").write_bytes(os.urandom(5000))
    (tmp_path / "inputs").mkdir()
    members, _vanished = write_archive(str(tmp_path / "outputs.tar"), {"outputs": str(outputs)})
    before, per_source, _size = tree_fingerprint({"outputs": str(outputs), "inputs": str(tmp_path / "inputs")})

    shutil.rmtree(outputs / "user002")
    after, per_source_after, _size = tree_fingerprint({"outputs": str(outputs), "inputs": str(tmp_path / "inputs")})
    assert after != before and per_source_after["outputs"] != per_source["outputs"]
    assert per_source_after["inputs"] == per_source["inputs"]  # which source changed
    assert only_removed_since(str(outputs), members, "outputs")
    shutil.rmtree(outputs / "user001")
    assert only_removed_since(str(outputs), members, "outputs")  # all gone

    (outputs / "user003").mkdir()
    (outputs / "user003" / "new.png").write_bytes(b"new")
    assert not only_removed_since(str(outputs), members, "outputs")  # one came
    shutil.rmtree(outputs / "user003")
    (outputs / "user001").mkdir()
    (outputs / "user001" / "a.png").write_bytes(b"\0" * 5000)
    assert not only_removed_since(str(outputs), members, "outputs")  # same path and size, other bytes


def test_a_link_kept_as_a_link_counts_by_its_target(tmp_path):
    outputs = tmp_path / "outputs"
    (outputs / "user001").mkdir(parents=True)
    for name in ("a.png", "c.png", "d.png"):
        (outputs / "user001" / name).write_bytes(os.urandom(5000))
    os.symlink("a.png", outputs / "user001" / "latest.png")
    members, _vanished = write_archive(str(tmp_path / "outputs.tar"), {"outputs": str(outputs)})
    (outputs / "user001" / "d.png").unlink()
    assert only_removed_since(str(outputs), members, "outputs")

    (outputs / "user001" / "latest.png").unlink()
    os.symlink("c.png", outputs / "user001" / "latest.png")  # the same name, another target
    assert not only_removed_since(str(outputs), members, "outputs")


@pytest.fixture
def planner(tmp_path):
    """The backup module's plan helpers, a newest backup with its outputs' member list, and the sources."""
    module = load_module("workshop_backup")
    outputs = tmp_path / "outputs"
    latest = _archived_outputs(outputs, tmp_path / "backups" / "backup-20261201T000000Z", "user001")
    listing = (latest / "outputs.tar.members.json").read_bytes()
    files = {"outputs.tar.members.json": {"size": len(listing), "sha256": hashlib.sha256(listing).hexdigest()}}
    (latest / "MANIFEST.json").write_text(json.dumps({"name": latest.name, "files": files}))
    sources = {"outputs": str(outputs), "inputs": str(tmp_path / "inputs")}
    (tmp_path / "inputs").mkdir()
    digest, per_source, _size = tree_fingerprint(sources)
    stored = {
        "files": digest,
        "sources": per_source,
        "config": {".env": "e" * 64},
        "redis": {"keys": 95},
        "containers": {"redis": ["id", 0, "running"]},
    }
    return module, dict(sources=sources), stored, latest, outputs, tmp_path


def manifest_of(latest, stored):
    """The newest backup's MANIFEST.json as the plan reads it, with `stored` as its fingerprint."""
    return dict(json.loads((latest / "MANIFEST.json").read_text()), fingerprint=stored)


def now_fingerprint(stored, sources, **parts):
    digest, per_source, _size = tree_fingerprint(sources)
    return dict(stored, files=digest, sources=per_source, **parts)


def test_outputs_gone_with_nothing_else_changed_is_no_change(planner):
    module, params, stored, latest, outputs, _tmp = planner
    shutil.rmtree(outputs / "user001")
    fingerprint = now_fingerprint(stored, params["sources"])
    assert not module._same_data(stored, fingerprint)
    warnings = []
    assert module._only_outputs_removed(manifest_of(latest, stored), fingerprint, params, str(latest), warnings)
    assert warnings == []


@pytest.mark.parametrize(
    "change",
    [
        "another source",
        "the configuration",
        "redis",
        "containers",
        "a part added later",
        "an old manifest",
        "no member list",
        "a garbled list",
        "a list edited to match",
    ],
)
def test_outputs_gone_with_anything_else_changed_makes_a_backup(planner, change):
    module, params, stored, latest, outputs, tmp_path = planner
    shutil.rmtree(outputs / "user001")
    parts = {}
    if change == "another source":
        (tmp_path / "inputs" / "photo.jpg").write_bytes(b"a participant's upload")
    elif change == "the configuration":
        parts["config"] = {".env": "f" * 64}
    elif change == "redis":
        parts["redis"] = {"keys": 96}
    elif change == "containers":
        parts["containers"] = {"redis": ["id", 1, "running"]}  # restarted
    elif change == "a part added later":
        parts["config"] = "a digest of the configuration"
    elif change == "an old manifest":
        stored = {key: value for key, value in stored.items() if key != "sources"}
    elif change == "no member list":
        os.unlink(latest / "outputs.tar.members.json")
    elif change == "a garbled list":
        (latest / "outputs.tar.members.json").write_text("[{")
    else:  # valid JSON listing a file the archive does not hold: checked against the MANIFEST first
        (outputs / "user001").mkdir()
        (outputs / "user001" / "extra.png").write_bytes(b"extra")
        listed = json.loads((latest / "outputs.tar.members.json").read_text())
        listed.append({"path": "outputs/user001/extra.png", "size": 5, "sha256": hashlib.sha256(b"extra").hexdigest()})
        (latest / "outputs.tar.members.json").write_text(json.dumps(listed))
    fingerprint = now_fingerprint(stored, params["sources"], **parts)
    warnings = []
    assert not module._only_outputs_removed(manifest_of(latest, stored), fingerprint, params, str(latest), warnings)
    if change in ("no member list", "a garbled list", "a list edited to match"):
        [warning] = warnings
        assert "outputs.tar.members.json cannot be relied on" in warning and "--tags verify" in warning


def test_old_manifests_without_per_source_digests_still_compare_equal(planner):
    module, params, stored, _latest, _outputs, _tmp = planner
    old = {key: value for key, value in stored.items() if key != "sources"}
    assert module._same_data(old, now_fingerprint(stored, params["sources"]))
    assert not module._same_data(None, stored)


def test_a_newest_backup_whose_verification_or_restore_test_failed_is_never_relied_on(planner):
    module = planner[0]
    name, older = "backup-20261201T000000Z", "backup-20261101T000000Z"
    assert module._failed_checks({"backup": {"name": name, "verify": {"backup": name, "ok": False}}}, name)
    assert module._failed_checks({"restore_test": {"backup": name, "ok": False}}, name)
    assert not module._failed_checks({"backup": {"verify": {"backup": name, "ok": True}}}, name)
    assert not module._failed_checks({"backup": {"verify": {"backup": older, "ok": False}}}, name)
    assert not module._failed_checks({"restore_test": {"backup": older, "ok": False}}, name)
    assert not module._failed_checks({}, name) and not module._failed_checks({"backup": "?"}, None)


@pytest.mark.parametrize("content", ['{"name": "backup-2026', "[]", '"text"'], ids=["cut short", "a list", "a string"])
def test_a_newest_manifest_that_cannot_be_read_makes_a_new_backup_with_a_warning_naming_it(planner, content):
    module, _params, _stored, latest, _outputs, _tmp = planner
    (latest / "MANIFEST.json").write_text(content)
    with pytest.raises(WorkshopError, match=re.escape(f"Cannot read {latest / 'MANIFEST.json'}")):
        read_manifest(str(latest))
    warnings = []
    assert module._latest_manifest(str(latest), warnings) == {}
    [warning] = warnings
    assert str(latest / "MANIFEST.json") in warning and "a new one is made" in warning
    assert (latest / "MANIFEST.json").read_text() == content


def test_a_backup_refused_for_space_says_what_the_estimate_is_made_of(tmp_path):
    # An estimate a GiB beyond this disk's free space (other tests free space meanwhile, never that much).
    needed = shutil.disk_usage(tmp_path).free + (1 << 30)
    with pytest.raises(WorkshopError) as refused:
        workshop_backup.check_space(str(tmp_path / "backup"), needed)
    files_and_redis = human_bytes(needed - workshop_backup.LOGS_ALLOWANCE)
    assert f"about {human_bytes(needed)} needed ({files_and_redis} of files and Redis, " in str(refused.value)
    assert "64.0 MiB set aside for the logs) and a 64.0 MiB margin" in str(refused.value)
    assert "nothing was written" in str(refused.value) and not (tmp_path / "backup").exists()


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (512, "512 B"), (100 << 10, "100.0 KiB"), (5 << 20, "5.0 MiB"), (3 << 30, "3.0 GiB"), (2 << 40, "2.0 TiB")],
)
def test_sizes_in_messages_read_as_df_h_gives_them(size, text):
    assert human_bytes(size) == text
