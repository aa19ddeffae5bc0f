"""Fast tier: safe extraction of backup archives and comparison of what was restored with the MANIFEST."""

import io
import json
import os
import tarfile

import pytest
from ansible.module_utils.workshop_backup import seal, write_archive, write_members
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_restore import compare_redis, restore_files, safe_extract


def make_tar(path, members):
    """A tar at `path` of (name, kind, payload): kind file (payload bytes), dir, sym or lnk (payload target), chr, fifo."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "lnk": tarfile.LNKTYPE}.get(kind)
            if kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            if kind == "fifo":
                info.type = tarfile.FIFOTYPE
            if kind in ("sym", "lnk"):
                info.linkname = payload
            tar.addfile(info)
    return path


GOOD = [("outputs/user001/a.png", "file", b"png bytes")]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (("outputs/../../etc/cron.d/evil", "file", b"* * * * * root sh"), "path with '..'"),
        (("/etc/cron.d/evil", "file", b"x"), "absolute path"),
        (("outputs/user001/escape", "sym", "../../../../etc"), "link to ../../../../etc, which points outside"),
        (("outputs/user001/abs", "sym", "/etc/passwd"), "link to the absolute path /etc/passwd"),
        (("outputs/user001/hard", "lnk", "../../etc/passwd"), "hard link to ../../etc/passwd, outside"),
        (("outputs/user001/hard", "lnk", "/etc/passwd"), "hard link to /etc/passwd, outside"),
        (("outputs/user001/null", "chr", None), "a character device"),
        (("outputs/user001/pipe", "fifo", None), "a named pipe"),
    ],
    ids=["dotdot", "absolute", "outward-symlink", "absolute-symlink", "hardlink-dotdot", "hardlink-absolute", "device", "fifo"],
)
@pytest.mark.fault
def test_an_unsafe_member_refuses_the_archive_naming_it_and_writes_nothing(tmp_path, bad, reason, fault_case):
    fault_case(
        "Unsafe member in a backup being restored (safe_extract)",
        expected="the archive refused naming the member and why; nothing written, not even its good members",
    )
    archive = make_tar(tmp_path / "outputs.tar", [*GOOD, bad])
    dest = tmp_path / "scratch" / "inner"

    with pytest.raises(WorkshopError) as caught:
        safe_extract(str(archive), str(dest))

    assert caught.value.context["member"] == bad[0]
    assert reason in caught.value.context["reason"]
    assert f"member {bad[0]} refused" in caught.value.msg
    assert not dest.exists()  # nothing of the archive, not even its good members
    assert sorted(os.listdir(tmp_path)) == ["outputs.tar"]
    fault_case.observed(f"{bad[0]} refused: {reason}; nothing written")


def test_a_link_that_only_leads_outside_through_another_link_is_refused(tmp_path):
    # "here" points at the extraction folder itself, so "up" = here/.. looks inside but is its parent.
    archive = make_tar(tmp_path / "a.tar", [("here", "sym", "."), ("up", "sym", "here/.."), ("up/evil", "file", b"x")])
    dest = tmp_path / "scratch"

    with pytest.raises(WorkshopError) as caught:
        safe_extract(str(archive), str(dest))

    assert caught.value.context["member"] == "up"
    assert not (tmp_path / "evil").exists()


def test_a_file_written_through_a_link_to_a_folder_outside_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "scratch"
    dest.mkdir()
    (dest / "outputs").symlink_to(outside)  # left by something else in the target folder
    archive = make_tar(tmp_path / "a.tar", [("outputs/evil", "file", b"x")])

    with pytest.raises(WorkshopError) as caught:
        safe_extract(str(archive), str(dest))

    assert caught.value.context["member"] == "outputs/evil"
    assert list(outside.iterdir()) == []


def test_a_safe_archive_extracts_byte_for_byte_with_inside_links(tmp_path):
    archive = make_tar(
        tmp_path / "a.tar",
        [
            ("outputs/user001", "dir", None),
            ("outputs/user001/a.png", "file", b"\x89PNG" + bytes(range(256)) * 10),
            ("outputs/user002/same.png", "sym", "../user001/a.png"),
            ("outputs/user002/hard.png", "lnk", "outputs/user001/a.png"),
        ],
    )
    written = safe_extract(str(archive), str(tmp_path / "x"))

    restored = tmp_path / "x" / "outputs"
    assert (restored / "user001" / "a.png").read_bytes() == b"\x89PNG" + bytes(range(256)) * 10
    assert os.readlink(restored / "user002" / "same.png") == "../user001/a.png"
    assert (restored / "user002" / "hard.png").read_bytes() == (restored / "user001" / "a.png").read_bytes()
    assert [entry["path"] for entry in written] == [
        "outputs/user001/a.png",
        "outputs/user002/same.png",
        "outputs/user002/hard.png",
    ]
    assert not [name for name in os.listdir(restored / "user001") if "partial" in name]


# --- comparison with the MANIFEST -------------------------------------------------------------------


def make_backup(tmp_path):
    """A sealed backup folder of the real format: outputs.tar with its member list, a config file, a log."""
    source = tmp_path / "data" / "outputs"
    for user, count in (("user001", 3), ("user002", 2)):
        (source / user).mkdir(parents=True)
        for n in range(count):
            (source / user / f"img{n}.png").write_bytes(os.urandom(1000 + n))
    (source / "user002" / "again.png").symlink_to("img0.png")
    partial = tmp_path / "backups" / ".partial-backup-1"
    (partial / "config").mkdir(parents=True)
    (partial / "logs").mkdir()
    members, _vanished = write_archive(str(partial / "outputs.tar"), {"outputs": str(source)})
    write_members(str(partial / "outputs.tar"), members)
    (partial / "config" / ".env").write_text("REDIS_PASSWORD=not-shown\n")
    (partial / "logs" / "worker-1.log.gz").write_bytes(b"\x1f\x8b logs")
    final = tmp_path / "backups" / "backup-20261129T170000Z"
    seal(str(partial), str(final), {"name": final.name})
    return final, members


def test_every_restored_file_is_compared_with_the_manifest(tmp_path):
    folder, members = make_backup(tmp_path)
    scratch = tmp_path / "scratch"

    failures, compared = restore_files(str(folder), str(scratch))

    assert failures == []
    # 5 images and a link from the archive; the member list, the .env and the log copied.
    assert compared == len(members) + 3 == 9
    assert (scratch / "outputs" / "outputs" / "user001" / "img2.png").read_bytes() == (
        tmp_path / "data" / "outputs" / "user001" / "img2.png"
    ).read_bytes()


@pytest.mark.fault
def test_a_corrupted_member_is_named_with_its_archive(tmp_path, fault_case):
    fault_case(
        "Corrupted member in a backup being restored",
        expected="restore names outputs.tar and the member whose restored bytes differ from the MANIFEST",
    )
    folder, members = make_backup(tmp_path)
    victim = next(m for m in members if m["path"] == "outputs/user001/img1.png")
    data = bytearray((folder / "outputs.tar").read_bytes())
    original = (tmp_path / "data" / "outputs" / "user001" / "img1.png").read_bytes()
    at = bytes(data).index(original) + 10
    data[at] ^= 0xFF
    os.chmod(folder / "outputs.tar", 0o600)
    (folder / "outputs.tar").write_bytes(bytes(data))

    failures, _compared = restore_files(str(folder), str(tmp_path / "scratch"))

    assert {"file": "outputs.tar", "member": None, "reason": "content differs from the manifest"} in failures
    assert {"file": "outputs.tar", "member": victim["path"], "reason": "restored content differs from the manifest"} in failures
    assert len(failures) == 2
    fault_case.observed(f"named outputs.tar and {victim['path']}")


@pytest.mark.fault
def test_a_backup_rewritten_with_a_dotdot_member_and_a_matching_manifest_is_refused(tmp_path, fault_case):
    """An altered copy (e.g. on the off-host target) whose manifest was rewritten to match: still refused."""
    fault_case("Unsafe member with a MANIFEST rewritten to match", expected="refused naming the '..' member; nothing escapes")
    folder, _members = make_backup(tmp_path)
    evil = make_tar(tmp_path / "evil.tar", [*GOOD, ("outputs/../../../escaped", "file", b"x")])
    os.replace(evil, folder / "outputs.tar")
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    from ansible.module_utils.workshop_backup import sha256_file

    manifest["files"]["outputs.tar"] = {
        "size": os.path.getsize(folder / "outputs.tar"),
        "sha256": sha256_file(folder / "outputs.tar"),
    }
    os.chmod(folder / "MANIFEST.json", 0o600)
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))

    failures, _compared = restore_files(str(folder), str(tmp_path / "scratch"))

    assert failures[0]["file"] == "outputs.tar"
    assert failures[0]["member"] == "outputs/../../../escaped"
    assert "path with '..'" in failures[0]["reason"]
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "scratch" / "escaped").exists()
    fault_case.observed("outputs/../../../escaped refused: path with '..'; nothing escaped")


def test_a_missing_file_and_an_extra_file_are_named(tmp_path):
    folder, _members = make_backup(tmp_path)
    os.unlink(folder / "logs" / "worker-1.log.gz")
    (folder / "logs" / "intruder.log.gz").write_bytes(b"?")

    failures, _compared = restore_files(str(folder), str(tmp_path / "scratch"))

    assert failures == [
        {"file": "logs/worker-1.log.gz", "member": None, "reason": "missing from the backup"},
        {"file": "logs/intruder.log.gz", "member": None, "reason": "in the backup but not in the manifest"},
    ]


def test_redis_counts_are_compared_with_what_the_backup_recorded():
    recorded = {"keys": 10, "volatile_keys": 1, "queues": {"queue:pending": 0, "queue:completed": 7, "queue:failed": 1}}
    queues = {"queue:pending": 0, "queue:running": 0, "queue:completed": 7, "queue:failed": 1}
    assert compare_redis((10, 0, queues), recorded) == []  # the heartbeat expired: volatile keys apart

    short = compare_redis((9, 1, {**queues, "queue:completed": 6}), recorded)
    assert [(f["member"], f["reason"]) for f in short] == [
        (None, "9 keys without a time to live loaded, the backup recorded 10"),
        ("queue:completed", "holds 6 jobs after loading, the backup recorded 7"),
    ]


def test_check_mode_names_the_backup_and_touches_nothing(tmp_path, capsys):
    from ansible.module_utils.testing import patch_module_args

    from conftest import load_module

    folder, _members = make_backup(tmp_path)
    record = tmp_path / "run-record.json"
    module = load_module("backup_restore")
    args = {"state": "tested", "backup_dir": str(folder.parent), "record": str(record), "_ansible_check_mode": True}
    with patch_module_args(args), pytest.raises(SystemExit):
        module.main()
    result = json.loads(capsys.readouterr().out)

    assert result["changed"] is True and result["backup"] == folder.name
    assert not record.exists()
    assert sorted(os.listdir(folder.parent)) == [folder.name]


@pytest.mark.parametrize(
    ("target", "word"),
    [("backups/ws/backup-20261201T000000Z", "inside"), ("backups/ws/project", "inside"), ("backups", "around"), ("/", "around")],
)
def test_a_restore_into_the_workshops_backups_or_around_them_is_refused(tmp_path, target, word):
    """Restored into its own backup folder, a restore wrote the project's files into the sealed backup."""
    from conftest import load_module

    folder = tmp_path / "backups" / "ws" / "backup-20261201T000000Z"
    folder.mkdir(parents=True)
    dest = target if target == "/" else str(tmp_path / target)
    refuse = load_module("backup_restore")._refuse_overlap
    with pytest.raises(WorkshopError) as refused:
        refuse([str(tmp_path / "project"), dest], [str(folder.parent)])
    assert refused.value.msg.startswith(f"{dest} is {word} the workshop's backups ({tmp_path / 'backups' / 'ws'})")
    refuse([str(tmp_path / "project"), str(tmp_path / "backups-elsewhere")], [str(folder.parent)])
    # A copy fetched from a target sits in a scratch folder of its own: the workshop's backups still count.
    fetched = tmp_path / "backups" / "ws" / ".restore-fetched-nas" / "backup-20261201T000000Z"
    with pytest.raises(WorkshopError, match="is inside the workshop's backups"):
        refuse([str(tmp_path / "backups" / "ws" / "restored")], [str(fetched.parent), str(folder.parent)])
