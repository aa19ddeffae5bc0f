"""The retention schedule against real files (dated with os.utime), a real sshd and a real S3 server; no Docker.

Every backup is sealed by the backup phase's own code; ages are exact because the module takes `now`.
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from ansible.module_utils import workshop_retention
from ansible.module_utils.workshop_archive import Progress, backup_entries, copy_backup, make_target, record_archive
from ansible.module_utils.workshop_backup import backup_name, seal, write_archive, write_members
from ansible.module_utils.workshop_cleanup import write_yearly
from ansible.module_utils.workshop_lock import this_host
from ansible.module_utils.workshop_record import read_record, record_backup, save_record
from ansible.module_utils.workshop_retention import DEFAULT_SCHEDULE, check_schedule
from ansible.module_utils.workshop_time import epoch_of, utc_iso
from s3server import s3, s3server  # noqa: F401 - fixtures

from conftest import SSH_PORT, load_module

DAY = 86400
NOW = epoch_of("2027-06-01T12:00:00Z")
END = epoch_of("2026-01-28T18:00:00Z")  # the workshop's end (drain final_time)
W = "berlin"


def days_ago(days):
    return NOW - days * DAY


def make_outputs(project):
    outputs = project / "data" / "outputs"
    for user, count in (("user001", 2), ("user002", 1)):
        (outputs / user).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            (outputs / user / f"img{index}.png").write_bytes(f"{user}-{index}".encode() * 100)
    return outputs


def seal_backup(folder, when, outputs, config=b"REDIS_PASSWORD=secret\n"):
    """A sealed backup named for `when`, holding outputs.tar (+ members), a log and config/.env."""
    name = backup_name(when)
    partial = folder / f".partial-{name}"
    (partial / "logs").mkdir(parents=True)
    (partial / "config").mkdir()
    members, _dummy = write_archive(str(partial / "outputs.tar"), {"outputs": str(outputs)})
    write_members(str(partial / "outputs.tar"), members)
    (partial / "logs" / "workshop-logs.txt.gz").write_bytes(b"\x1f\x8b" + name.encode())
    (partial / "config" / ".env").write_bytes(config)
    seal(str(partial), str(folder / name), {"workshop_id": folder.name})
    return name


@pytest.fixture
def nas(s3, tmp_path):  # noqa: F811
    """The off-host target "nas" of this test: the module's S3 server, under a prefix of the test's own."""
    return dict(s3, name="nas", prefix=tmp_path.name)


def copy_off_host(target, folder, backup):
    """The archive phase's own copy of a sealed backup to `target`."""
    store = make_target(target)
    outcome = copy_backup(store, str(folder / backup), W, backup, Progress(backup_entries(str(folder / backup))))
    assert outcome["done"]


def workshop(tmp_path, backups, verified, offsite, failed=None, end=END, target=None):
    """A workshop folder with sealed backups at the given days ago, and its run record.

    verified: the backup the record says verified ok (index), failed: the one whose verify failed,
    offsite: {target name: (backup index, verified)}; a verified one named as `target` is copied there.
    """
    root = tmp_path / "backups"
    folder = root / W
    folder.mkdir(parents=True)
    project = tmp_path / "project"
    outputs = make_outputs(project)
    names = [seal_backup(folder, days_ago(age), outputs) for age in backups]
    record = folder / "run-record.json"
    if verified is not None:
        record_backup(str(record), names[verified], str(folder / names[verified]), 5, {})
    if failed is not None:
        data = read_record(str(record))
        data["backup"] = {
            "name": names[failed],
            "verify": {"ok": False, "at": utc_iso(NOW), "backup": names[failed], "failures": [{"file": "outputs.tar"}]},
        }
        save_record(str(record), data)
    for name, (index, ok) in offsite.items():
        if ok and target is not None and name == target["name"]:
            copy_off_host(target, folder, names[index])
        record_archive(str(record), name, {"where": "x", "backup": names[index], "files": 5, "bytes": 1, "verified": ok})
    data = read_record(str(record))
    data["drain"] = {"final_time": utc_iso(end)}
    save_record(str(record), data)
    (folder / "report").mkdir()
    (folder / "report" / "report.md").write_text("# Workshop report\n")
    for path in (folder / "report" / "report.md", record):
        os.utime(path, (days_ago(2000), days_ago(2000)))
    return root, folder, project, outputs, names, record


def run_main(name, args, capsys, check=False, diff=False):
    from ansible.module_utils.testing import patch_module_args

    module = load_module(name)
    args = dict(args, _ansible_check_mode=check, _ansible_diff=diff)
    with patch_module_args(args), pytest.raises(SystemExit):
        module.main()
    return json.loads(capsys.readouterr().out)


def args_for(root, folder, project, outputs, record, **extra):
    args = dict(
        state="applied",
        now=str(NOW),
        backup_root=str(root),
        backup_dir=str(folder),
        record=str(record),
        project_dir=str(project),
    )
    args.update(extra)
    return args


def paths(items):
    return sorted((item["where"], item["path"]) for item in items)


def files_under(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def protected(result, path):
    return [item["why"] for item in result["protected"] if item["path"].rstrip("/") == str(path).rstrip("/")]


# --- the schedule ---------------------------------------------------------------------------------


def test_schedule_defaults_to_the_checklists_table_and_refuses_nonsense():
    assert DEFAULT_SCHEDULE == {"logs": 7, "outputs": 30, "snapshots": 90, "backups": 365}
    assert check_schedule({"reports": 1, "configuration": 0, "logs": "3"})["logs"] == 3
    for wrong in ({"backup": 3}, {"logs": -1}, {"logs": "a week"}, {"logs": 2.5}):
        with pytest.raises(Exception, match="retention_schedule"):
            check_schedule(wrong)


def test_an_old_backup_verified_off_host_goes_check_lists_exactly_that_and_a_second_run_does_nothing(tmp_path, nas, capsys):
    # 577 days (verified on nas) and 489 days (only an unverified copy) old, and the newest (12 days).
    root, folder, project, outputs, names, record = workshop(
        tmp_path, [577, 489, 12], verified=2, offsite={"nas": (0, True), "r2": (1, False)}, target=nas
    )
    old_config = (folder / names[0] / "config" / ".env").read_bytes()
    old_manifest = (folder / names[0] / "MANIFEST.json").read_bytes()
    kept_before = {name: files_under(folder / name) for name in names[1:]}
    args = args_for(root, folder, project, outputs, record, outputs_dir=str(outputs), targets=[nas])

    preview = run_main("retention_enforce", args, capsys, check=True, diff=True)
    expected = sorted(
        ("host", str(folder / names[0] / rel))
        for rel in ("MANIFEST.json", "logs/workshop-logs.txt.gz", "outputs.tar", "outputs.tar.members.json")
    )
    assert preview["changed"] is True
    backups = [item for item in preview["deleted"] if item["path"].startswith(str(folder))]
    assert paths(backups) == expected
    assert {item["rule"] for item in backups} == {"full backups: 365 days"}
    assert {item["age_days"] for item in backups} == {577.0}
    # The outputs too (the workshop ended 489 days ago; each file is in the backup verified on nas).
    assert sorted(i["path"] for i in preview["deleted"] if i not in backups) == sorted(map(str, outputs.rglob("*.png")))
    assert preview["diff"]["before"] == "".join(f"host: {i['path']}\n" for i in preview["deleted"])
    assert (folder / names[0] / "outputs.tar").exists() and "retention" not in read_record(str(record))

    applied = run_main("retention_enforce", args, capsys)
    assert applied["changed"] is True
    assert applied["deleted"] == preview["deleted"]  # the plan, applied exactly, in the same order
    assert not (folder / names[0]).exists()
    # Kept forever: the configuration snapshot (moved out whole) and the manifest that names it.
    assert (folder / "config-snapshots" / names[0] / "config" / ".env").read_bytes() == old_config
    assert (folder / "config-snapshots" / names[0] / "MANIFEST.json").read_bytes() == old_manifest
    assert {name: files_under(folder / name) for name in names[1:]} == kept_before
    section = read_record(str(record))["retention"]
    assert section["deleted"] == applied["deleted"] and section["schedule"]["backups"] == 365
    assert section["schedule"]["reports"] == "forever"
    assert protected(applied, folder / names[1]) == [
        "not verified off-host on any target (run record archive.targets.*): the host copy stays"
    ]
    assert protected(applied, folder / names[2]) == ["the newest verified backup of the workshop"]

    record_bytes = record.read_bytes()
    again = run_main("retention_enforce", args, capsys)
    assert again.get("msg") is None
    assert again["changed"] is False and again["deleted"] == []
    assert record.read_bytes() == record_bytes
    assert run_main("retention_enforce", args, capsys, check=True)["changed"] is False


def test_a_deletion_a_crash_interrupted_is_finished_and_its_configuration_kept(tmp_path, capsys):
    root, folder, project, outputs, names, record = workshop(tmp_path, [500, 10], verified=1, offsite={"nas": (0, True)})
    config = (folder / names[0] / "config" / ".env").read_bytes()
    # The crash came right after the rename aside: the backup is no longer sealed, nothing was moved yet.
    aside = folder / f".retention-deleting-{names[0]}"
    (folder / names[0]).rename(aside)
    args = args_for(root, folder, project, outputs, record)
    preview = run_main("retention_enforce", args, capsys, check=True)
    assert sorted(i["path"] for i in preview["deleted"]) == sorted(
        str(p) for p in aside.rglob("*") if p.is_file() and "/config/" not in str(p)
    )
    assert {i["rule"] for i in preview["deleted"]} == {"full backups: finishing an interrupted deletion"}
    done = run_main("retention_enforce", args, capsys)
    assert done["deleted"] == preview["deleted"] and not aside.exists()
    assert (folder / "config-snapshots" / names[0] / "config" / ".env").read_bytes() == config


def test_ages_count_from_now_not_from_the_newest_backup(tmp_path, nas, capsys):
    # Two old backups and no newer one: restic's --keep-within would keep both (they are "recent" relative to each
    # other); counted from now, the older is past 365 days and goes.
    root, folder, project, outputs, names, record = workshop(
        tmp_path, [400, 399], verified=1, offsite={"nas": (0, True)}, target=nas
    )
    result = run_main(
        "retention_enforce", args_for(root, folder, project, outputs, record, state="planned", targets=[nas]), capsys
    )
    assert result["changed"] is False
    assert {item["path"][len(str(folder)) + 1 :].split("/")[0] for item in result["deleted"]} == {names[0]}
    assert {item["age_days"] for item in result["deleted"]} == {400.0}


def test_the_newest_verified_backup_is_kept_however_old(tmp_path, capsys):
    root, folder, project, outputs, names, record = workshop(tmp_path, [900, 800], verified=1, offsite={"nas": (1, True)})
    result = run_main("retention_enforce", args_for(root, folder, project, outputs, record, schedule={"backups": 0}), capsys)
    assert (folder / names[1] / "MANIFEST.json").exists()
    assert protected(result, folder / names[1]) == ["the newest verified backup of the workshop"]
    # The other is not verified off-host: kept too, and said so.
    assert result["deleted"] == [] and (folder / names[0] / "MANIFEST.json").exists()


def test_a_failed_backup_is_kept_named_and_never_counted_as_the_newest_verified(tmp_path, capsys):
    # The newest backup failed its verify (restic #4251): it is kept and named, and the older backup, verified
    # off-host and past its year, is not deleted either (no verified backup of the workshop is known).
    root, folder, project, outputs, names, record = workshop(
        tmp_path, [500, 10], verified=None, failed=1, offsite={"nas": (0, True)}
    )
    result = run_main("retention_enforce", args_for(root, folder, project, outputs, record), capsys)
    assert result["deleted"] == []
    assert "verification failed" in protected(result, folder / names[1])[0]
    assert "no verified backup of the workshop is known" in protected(result, folder / names[0])[0]
    assert (folder / names[0] / "MANIFEST.json").exists() and (folder / names[1] / "MANIFEST.json").exists()


def test_another_workshop_whose_lock_another_run_holds_is_left_alone(tmp_path, nas, capsys):
    root, folder, project, outputs, names, _record = workshop(
        tmp_path, [500, 10], verified=1, offsite={"nas": (0, True)}, target=nas
    )
    copy_off_host(nas, folder, names[1])  # nas holds both: its old copy would go, but for the lock
    (folder / ".lock").write_text(json.dumps({"run_id": "ctl-4242-backup", "host": "ctl", "pid": 4242}))
    other = root / "paris"
    other.mkdir()
    args = args_for(root, other, project, outputs, other / "run-record.json", state="planned", targets=[nas])
    result = run_main("retention_enforce", args, capsys)
    assert result["deleted"] == []
    assert protected(result, folder) == ["another run holds the workshop's lock (ctl-4242-backup)"]
    assert [item["why"] for item in result["protected"] if item["where"] == "nas" and names[0] in item["path"]] == [
        "another run holds the workshop's lock (ctl-4242-backup) on the host: not now"
    ]
    # A lock its run left behind (its process on this host is gone) holds nothing: the plan goes on.
    dead = subprocess.Popen(["true"])
    dead.wait()
    (folder / ".lock").write_text(json.dumps({"run_id": "crashed-run-backup", "host": this_host(), "pid": dead.pid}))
    assert {i["path"].split("/")[-2] for i in run_main("retention_enforce", args, capsys)["deleted"]} >= {names[0]}
    # Without the lock, the same plan deletes the old backup.
    (folder / ".lock").unlink()
    assert {i["path"].split("/")[-2] for i in run_main("retention_enforce", args, capsys)["deleted"]} >= {names[0]}


def test_a_backup_not_verified_off_host_stays_on_the_host(tmp_path, capsys):
    root, folder, project, outputs, names, record = workshop(tmp_path, [500, 10], verified=1, offsite={"nas": (0, False)})
    result = run_main("retention_enforce", args_for(root, folder, project, outputs, record), capsys)
    assert result["deleted"] == [] and (folder / names[0] / "outputs.tar").exists()
    assert "not verified off-host" in protected(result, folder / names[0])[0]


def test_reports_run_records_and_configuration_snapshots_are_never_deleted(tmp_path, nas, capsys):
    root, folder, project, outputs, names, record = workshop(
        tmp_path, [500, 10], verified=1, offsite={"nas": (0, True)}, target=nas
    )
    zero = {"logs": 0, "outputs": 0, "snapshots": 0, "backups": 0, "reports": 0, "configuration": 0}
    report = (folder / "report" / "report.md").read_bytes()
    result = run_main("retention_enforce", args_for(root, folder, project, outputs, record, schedule=zero, targets=[nas]), capsys)
    assert result["deleted"]  # the schedule did run: the old backup's files went
    assert not any("/report/" in i["path"] or i["path"].endswith("run-record.json") for i in result["deleted"])
    assert not any("/config/" in i["path"] for i in result["deleted"])
    assert (folder / "report" / "report.md").read_bytes() == report
    assert protected(result, folder / "report") == ["reports are kept forever"]
    assert protected(result, record) == ["run records are kept forever"]
    # A second run finds the kept configuration snapshot and keeps it.
    again = run_main("retention_enforce", args_for(root, folder, project, outputs, record, schedule=zero, targets=[nas]), capsys)
    assert protected(again, folder / "config-snapshots") == ["configuration snapshots are kept forever"]
    assert (folder / "config-snapshots" / names[0] / "config" / ".env").exists()


def test_outputs_go_30_days_after_the_workshops_end_only_when_held_identically_off_host(tmp_path, nas, capsys):
    root, folder, project, outputs, _names, record = workshop(tmp_path, [20], verified=0, offsite={"nas": (0, True)}, target=nas)
    # Dated today by their files, but the workshop ended 489 days ago: age counts from the end.
    for path in outputs.rglob("*.png"):
        os.utime(path, (NOW, NOW))
    (outputs / "user002" / "img0.png").write_bytes(b"changed after the backup")
    (outputs / "user003").mkdir()
    (outputs / "user003" / "late.png").write_bytes(b"never backed up")
    result = run_main(
        "retention_enforce", args_for(root, folder, project, outputs, record, outputs_dir=str(outputs), targets=[nas]), capsys
    )
    outputs_deleted = [i for i in result["deleted"] if i["path"].startswith(str(outputs))]
    assert sorted(i["path"] for i in outputs_deleted) == [
        str(outputs / "user001" / "img0.png"),
        str(outputs / "user001" / "img1.png"),
    ]
    assert {i["rule"] for i in outputs_deleted} == {"output files: 30 days from the workshop's end"}
    assert {i["age_days"] for i in outputs_deleted} == {round((NOW - END) / DAY, 2)}
    assert protected(result, outputs / "user002" / "img0.png") == ["changed since the backup verified off-host"]
    assert protected(result, outputs / "user003" / "late.png") == ["not in a backup verified off-host"]
    assert (outputs / "user002" / "img0.png").exists() and not (outputs / "user001" / "img0.png").exists()


def test_no_output_goes_while_the_newest_backup_fails_verification(tmp_path, nas, capsys):
    """The outputs are held off-host all the same, but a workshop whose newest backup does not verify is one
    for the admin to look at before anything of it goes (an admin's trial: retention would delete them)."""
    root, folder, project, outputs, _names, record = workshop(
        tmp_path, [40, 20], verified=0, failed=1, offsite={"nas": (0, True)}, target=nas
    )
    before = files_under(outputs)
    args = args_for(root, folder, project, outputs, record, outputs_dir=str(outputs), targets=[nas], state="planned")

    result = run_main("retention_enforce", args, capsys)

    assert not [i for i in result["deleted"] if i["path"].startswith(str(outputs))]
    assert protected(result, outputs) == [
        "its newest backup failed verification (run record backup.verify): no output is removed"
    ]
    assert files_under(outputs) == before


def test_host_data_goes_only_while_a_target_still_holds_its_copy(tmp_path, nas, sshd, capsys):
    # The run record says the 577-day-old backup was verified on nas; what nas holds now decides.
    root, folder, project, outputs, names, record = workshop(
        tmp_path, [577, 12], verified=1, offsite={"nas": (0, True)}, target=nas
    )
    before = files_under(folder / names[0])
    outputs_before = files_under(outputs)
    store = make_target(nas)
    key = store.key(W, names[0], "outputs.tar")
    copy = store.client.get_object(Bucket=nas["bucket"], Key=key)["Body"].read()

    def planned(**extra):
        args = args_for(root, folder, project, outputs, record, outputs_dir=str(outputs), state="planned", **extra)
        result = run_main("retention_enforce", args, capsys)
        assert result.get("failed") is not True, result.get("msg")
        return result

    def kept_because(result):
        return protected(result, folder / names[0])[0], protected(result, outputs / "user001" / "img0.png")[0]

    # nas not among this run's targets: nothing can be checked, nothing goes.
    result = planned()
    assert result["deleted"] == []
    held, output = kept_because(result)
    assert "nas is not among this run's targets" in held and "the host copy stays" in held
    assert f"{names[0]}: nas is not among this run's targets" in output
    # The copy lost a file (a lifecycle rule, a hand): its key is named, nothing goes.
    store.client.delete_object(Bucket=nas["bucket"], Key=key)
    result = planned(targets=[nas])
    assert result["deleted"] == []
    assert f"outputs.tar: missing on the target ({key})" in kept_because(result)[0]
    assert f"missing on the target ({key})" in kept_because(result)[1]
    # Other bytes of the same size, put without the sha256 the archive keeps with its objects: not taken on
    # their size (the server's ETag is the MD5 of what it holds).
    store.client.put_object(Bucket=nas["bucket"], Key=key, Body=b"\0" * len(copy))
    assert "on nas, outputs.tar: no sha256 kept with it, and its ETag " in kept_because(planned(targets=[nas]))[0]
    # A different object of another size under the key: named too.
    store.client.put_object(Bucket=nas["bucket"], Key=key, Body=b"truncated")
    assert f"size 9 on the target, {len(copy)} in the manifest" in kept_because(planned(targets=[nas]))[0]
    # Another target that holds the copy (over SSH) is enough.
    nas_ssh = dict(
        name="nas-ssh", type="ssh", host="127.0.0.1", port=SSH_PORT, user="root", path=str(tmp_path / "ssh"), key_file=str(sshd)
    )
    known_hosts = str(tmp_path / "known_hosts")
    ssh_store = make_target(nas_ssh, known_hosts=known_hosts)
    try:
        assert copy_backup(ssh_store, str(folder / names[0]), W, names[0], Progress(backup_entries(str(folder / names[0]))))[
            "done"
        ]
    finally:
        ssh_store.close()
    record_archive(str(record), "nas-ssh", {"where": "x", "backup": names[0], "files": 5, "bytes": 1, "verified": True})
    (tmp_path / "ssh" / W / names[0] / "outputs.tar").unlink()
    held = kept_because(planned(targets=[nas, nas_ssh], known_hosts=known_hosts))[0]
    assert "on nas, outputs.tar: size 9 on the target" in held
    assert f"on nas-ssh, outputs.tar: missing on the target ({tmp_path}/ssh/{W}/{names[0]}/outputs.tar)" in held
    assert files_under(folder / names[0]) == before and files_under(outputs) == outputs_before
    # The copy on nas-ssh whole again (nas still holds another object): one target holding it is enough.
    shutil.copy(folder / names[0] / "outputs.tar", tmp_path / "ssh" / W / names[0] / "outputs.tar")
    args = args_for(
        root, folder, project, outputs, record, outputs_dir=str(outputs), targets=[nas, nas_ssh], known_hosts=known_hosts
    )
    applied = run_main("retention_enforce", args, capsys)
    assert not (folder / names[0]).exists() and not list(outputs.rglob("*.png"))
    assert {item["where"] for item in applied["deleted"]} == {"host"}


def test_a_backup_holding_outputs_the_newest_lacks_stays_on_the_host_and_the_targets(tmp_path, nas, capsys):
    """Outputs removed (after the share period), then a backup made because something else changed: past its
    year, the older backup is those outputs' last copy. It stays, on the host and on nas, until a newest
    verified backup holds them again; a changed file is not a lacking one."""
    root, folder, project, outputs, names, record = workshop(tmp_path, [577], verified=0, offsite={"nas": (0, True)}, target=nas)
    removed = {rel: (outputs / rel).read_bytes() for rel in ("user001/img1.png", "user002/img0.png")}
    for rel in removed:
        (outputs / rel).unlink()
    (outputs / "user001" / "img0.png").write_bytes(b"redrawn")  # in both, with other bytes: not lacking

    def newest(age):
        name = seal_backup(folder, days_ago(age), outputs)
        record_backup(str(record), name, str(folder / name), 5, {})
        copy_off_host(nas, folder, name)
        record_archive(str(record), "nas", {"where": "x", "backup": name, "files": 5, "bytes": 1, "verified": True})
        return name

    lacking = newest(12)
    old_copy = files_under(folder / names[0])
    store = make_target(nas)
    args = args_for(root, folder, project, outputs, record, targets=[nas])

    def why(where="the host", files=2):
        return (
            f"the newest backup on {where} to hold {files} output files that {lacking}, the newest verified backup, "
            f"lacks: their last copy there, kept while {lacking} is the newest"
        )

    # The newest's member list edited to list the removed files too: not the list its MANIFEST.json names,
    # so it holds nothing to go by, and every file of the old backup counts as lacking.
    listing = folder / lacking / "outputs.tar.members.json"
    genuine = listing.read_bytes()
    held = {member["path"] for member in json.loads(genuine)}
    claimed = [m for m in json.loads((folder / names[0] / "outputs.tar.members.json").read_text()) if m["path"] not in held]
    listing.write_text(json.dumps(json.loads(genuine) + claimed))
    planned = run_main("retention_enforce", dict(args, state="planned"), capsys)
    assert planned["deleted"] == [] and protected(planned, folder / names[0]) == [why(files=3)]
    listing.write_bytes(genuine)

    applied = run_main("retention_enforce", args, capsys)
    assert applied["deleted"] == []
    assert protected(applied, folder / names[0]) == [why()]
    assert [item["why"] for item in applied["protected"] if item["where"] == "nas" and names[0] in item["path"]] == [why("nas")]
    assert files_under(folder / names[0]) == old_copy and store.backups(W) == [names[0], lacking]

    # The files back (a participant's re-upload, a restore): the newest holds them again, the old copy goes
    # on nas (on the host the record no longer names it verified off-host, so it stays there).
    for rel, content in removed.items():
        (outputs / rel).write_bytes(content)
    whole = newest(5)
    applied = run_main("retention_enforce", args, capsys)
    assert {item["where"] for item in applied["deleted"]} == {"nas"}
    assert store.backups(W) == [lacking, whole]
    assert protected(applied, folder / names[0]) == [
        "not verified off-host on any target (run record archive.targets.*): the host copy stays"
    ]


def test_each_target_keeps_its_own_last_holder_and_the_last_good_backup_when_the_newest_failed(tmp_path, nas, capsys):
    """The newest holder of a removed file on the host is not on nas: nas keeps its own. Then the newest
    backup fails its verification: nas keeps what is left of the workshop's last good state there."""
    root, folder, project, outputs, names, record = workshop(
        tmp_path, [600, 500], verified=1, offsite={"nas": (0, True)}, target=nas
    )
    (outputs / "user002" / "img0.png").unlink()
    newest = seal_backup(folder, days_ago(12), outputs)
    record_backup(str(record), newest, str(folder / newest), 5, {})
    copy_off_host(nas, folder, newest)
    record_archive(str(record), "nas", {"where": "x", "backup": newest, "files": 5, "bytes": 1, "verified": True})
    args = args_for(root, folder, project, outputs, record, targets=[nas], state="planned")

    def kept_on_nas(result):
        return [item["why"] for item in result["protected"] if item["where"] == "nas" and names[0] in item["path"]]

    result = run_main("retention_enforce", args, capsys)
    assert result["deleted"] == []
    assert protected(result, folder / names[1]) == [
        f"the newest backup on the host to hold 1 output files that {newest}, the newest verified backup, lacks: "
        f"their last copy there, kept while {newest} is the newest"
    ]
    assert kept_on_nas(result) == [
        f"the newest backup on nas to hold 1 output files that {newest}, the newest verified backup, lacks: "
        f"their last copy there, kept while {newest} is the newest"
    ]
    # The newest fails its verification: the newest good backup is names[1], on the host only.
    data = read_record(str(record))
    data["backup"]["verify"] = {"ok": False, "at": utc_iso(NOW), "backup": newest, "failures": [{"file": "outputs.tar"}]}
    save_record(str(record), data)
    result = run_main("retention_enforce", args, capsys)
    assert result["deleted"] == []
    assert kept_on_nas(result) == [
        f"the newest backup on nas to hold 3 output files ({names[1]}, the newest backup whose verification did "
        "not fail, is not there): their last copy there"
    ]


def test_trusted_members_are_those_the_manifest_vouches_for(tmp_path):
    from ansible.module_utils.workshop_backup import read_manifest, trusted_members

    folder = tmp_path / "backups" / W
    folder.mkdir(parents=True)
    backup = folder / seal_backup(folder, days_ago(1), make_outputs(tmp_path / "project"))
    manifest = read_manifest(str(backup))
    listed = trusted_members(str(backup), manifest)
    assert sorted(member["path"] for member in listed) == [
        "outputs/user001/img0.png",
        "outputs/user001/img1.png",
        "outputs/user002/img0.png",
    ]
    for odd_manifest in ({"files": []}, {"files": {"outputs.tar.members.json": "x"}}, {}, []):
        with pytest.raises(ValueError):
            trusted_members(str(backup), odd_manifest)
    listing = backup / "outputs.tar.members.json"
    listing.write_text(json.dumps(listed[:1]))
    with pytest.raises(ValueError, match=r"differs from the backup's MANIFEST\.json"):
        trusted_members(str(backup), manifest)


@pytest.mark.parametrize(
    ("lists", "verified", "failed", "holders"),
    [
        # Each removed file's newest holder, one per file: b1 holds c, b2 holds b (b1's b is covered by b2).
        ({"b1": "abc", "b2": "ab", "b3": "a", "b4": "a"}, "b4", None, {"b2": 1, "b1": 1}),
        ({"b1": "ab", "b2": "ab", "b3": "a"}, "b3", None, {"b2": 1}),
        ({"b1": "ab", "b2": "ab", "b3": "ab"}, "b3", None, {}),
        # A newer backup whose verification failed: the newest sealed one that did not fail is the reference.
        ({"b1": "ab", "b2": "a", "b3": ""}, None, "b3", {"b1": 1}),
        # A failed older backup is never the holder; the next older one is (the newest is the reference).
        ({"b1": "ab", "b2": "ab", "b3": "a"}, None, "b2", {"b1": 1}),
        # The reference's list unreadable: it holds nothing to go by, so the older ones hold what they hold.
        ({"b1": "ab", "b2": None}, "b2", None, {"b1": 2}),
        # An older one's unreadable: it holds nothing (it goes with the schedule), the next one is the holder.
        ({"b1": "ab", "b2": None, "b3": "a"}, "b3", None, {"b1": 1}),
        ({"b1": "ab"}, None, "b1", {}),
    ],
)
def test_the_last_holder_of_each_output_the_newest_lacks_is_kept(lists, verified, failed, holders):
    facts = {"sealed": sorted(lists), "newest_verified": verified, "failed": failed}

    def members(_facts, backup):
        return {} if lists[backup] is None else {f"outputs/{name}.png": (1, name) for name in lists[backup]}

    assert workshop_retention.last_output_holders(facts, members) == holders


def test_outputs_are_not_aged_before_30_days_from_the_end_however_old_their_files(tmp_path, capsys):
    root, folder, project, outputs, _names, record = workshop(
        tmp_path, [20], verified=0, offsite={"nas": (0, True)}, end=days_ago(29)
    )
    for path in outputs.rglob("*.png"):
        os.utime(path, (days_ago(900), days_ago(900)))
    result = run_main("retention_enforce", args_for(root, folder, project, outputs, record, outputs_dir=str(outputs)), capsys)
    assert not [i for i in result["deleted"] if i["path"].startswith(str(outputs))]


def test_loose_snapshots_and_logs_by_their_file_time_logs_only_once_in_the_yearly_archive(tmp_path, capsys):
    root, folder, project, outputs, _names, record = workshop(tmp_path, [20], verified=0, offsite={})
    snapshots = {91: project / "redis-snapshot-20260128-180000.rdb", 89: project / "redis-snapshot-20260301-120000.rdb"}
    logs = {8: project / "workshop-logs-20260128-180000.txt.gz", 9: project / "workshop-logs-20260128-190000.txt"}
    for age, path in {**snapshots, **logs}.items():
        path.write_bytes(path.name.encode() * 10)
        os.utime(path, (days_ago(age), days_ago(age)))
    young = project / "workshop-logs-20270530-120000.txt.gz"
    young.write_bytes(b"young")
    os.utime(young, (days_ago(6), days_ago(6)))
    # Only the first log is in a yearly archive (byte for byte).
    write_yearly(
        str(root / "logs" / "workshop-logs-2026.tar.gz"),
        [
            {
                "member": f"{W}/{logs[8].name}",
                "path": str(logs[8]),
                "gzip": False,
                "sha256": hashlib.sha256(logs[8].read_bytes()).hexdigest(),
            }
        ],
    )
    result = run_main("retention_enforce", args_for(root, folder, project, outputs, record), capsys)
    got = {i["path"]: (i["rule"], i["age_days"]) for i in result["deleted"]}
    assert got == {
        str(snapshots[91]): ("database snapshots: 90 days", 91.0),
        str(logs[8]): ("active logs: 7 days", 8.0),
    }
    assert protected(result, logs[9]) == ["not in a yearly log archive yet (run the cleanup phase): the only copy"]
    assert snapshots[89].exists() and young.exists() and logs[9].exists() and not logs[8].exists()


def test_share_archives_go_once_the_share_period_ended(tmp_path, capsys):
    root, folder, project, outputs, _names, record = workshop(tmp_path, [20], verified=0, offsite={})
    share_folder = tmp_path / "www" / W
    archives = [folder / "share" / "archives" / f"{W}-user001-outputs.zip", share_folder / "tok123" / f"{W}-user001-outputs.zip"]
    for path in archives:
        path.parent.mkdir(parents=True)
        path.write_bytes(b"PK zip")
    data = read_record(str(record))
    data["share"] = {"period_ends": utc_iso(days_ago(1))}
    save_record(str(record), data)
    args = args_for(root, folder, project, outputs, record, share_folder=str(share_folder), state="planned")
    result = run_main("retention_enforce", args, capsys)
    assert sorted(i["path"] for i in result["deleted"]) == sorted(map(str, archives))
    # One more day of sharing: nothing of it goes.
    data["share"] = {"period_ends": utc_iso(days_ago(-1))}
    save_record(str(record), data)
    assert run_main("retention_enforce", args, capsys)["deleted"] == []


# --- off-host targets -----------------------------------------------------------------------------


def remote_backup(base, when, files=(("outputs.tar", b"T" * 100), ("config/.env", b"A=1\n"))):
    """A copy on an SSH target's folder: `files` and the MANIFEST.json that lists them."""
    name = backup_name(when)
    listed = {relpath: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for relpath, data in files}
    for relpath, data in (*files, ("MANIFEST.json", json.dumps({"files": listed}).encode())):
        path = base / W / name / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return name


def test_ssh_target_old_copies_go_the_newest_and_configuration_stay(tmp_path, sshd, capsys):
    root, folder, project, outputs, _names, record = workshop(tmp_path, [20], verified=0, offsite={})
    nas = tmp_path / "nas"
    # Files on the storage host dated today: the date that counts is the backup's (its name).
    old, older, newest = (remote_backup(nas, days_ago(age)) for age in (400, 700, 300))
    target = dict(name="nas", type="ssh", host="127.0.0.1", port=SSH_PORT, user="root", path=str(nas), key_file=str(sshd))
    args = args_for(root, folder, project, outputs, record, targets=[target], known_hosts=str(tmp_path / "known_hosts"))

    preview = run_main("retention_enforce", args, capsys, check=True)
    remote = [i for i in preview["deleted"] if i["where"] == "nas"]
    expected = []
    for name in (old, older):
        expected += [f"{nas}/{W}/{name}/MANIFEST.json", f"{nas}/{W}/{name}/outputs.tar"]
    assert sorted(i["path"] for i in remote) == sorted(expected)
    assert [i["path"].endswith("MANIFEST.json") for i in remote] == [True, False, True, False]  # manifest first
    assert all((nas / W / name / "outputs.tar").exists() for name in (old, older))

    applied = run_main("retention_enforce", args, capsys)
    assert [i for i in applied["deleted"] if i["where"] == "nas"] == remote
    assert sorted(p.relative_to(nas / W).as_posix() for p in nas.rglob("*") if p.is_file()) == sorted(
        [
            f"{old}/config/.env",
            f"{older}/config/.env",
            f"{newest}/MANIFEST.json",
            f"{newest}/outputs.tar",
            f"{newest}/config/.env",
        ]
    )
    assert (
        "newest backup of the workshop on this target"
        in protected(applied, f"ssh://root@127.0.0.1:{SSH_PORT}{nas}/{W}/{newest}")[0]
    )
    again = run_main("retention_enforce", args, capsys)
    assert again["changed"] is False and again["deleted"] == []


def test_a_target_that_does_not_answer_is_named_and_the_others_are_done(tmp_path, sshd, capsys):
    root, folder, project, outputs, _names, record = workshop(tmp_path, [20], verified=0, offsite={})
    nas = tmp_path / "nas"
    old, newest = (remote_backup(nas, days_ago(age)) for age in (700, 300))
    target = dict(name="nas", type="ssh", host="127.0.0.1", port=SSH_PORT, user="root", path=str(nas), key_file=str(sshd))
    offline = dict(name="attic", type="ssh", host="127.0.0.1", port=1, user="root", path="/srv/attic", key_file=str(sshd))
    args = args_for(root, folder, project, outputs, record, targets=[offline, target], known_hosts=str(tmp_path / "known_hosts"))

    applied = run_main("retention_enforce", args, capsys)
    assert "failed" not in applied, applied.get("msg")
    assert sorted(i["path"] for i in applied["deleted"] if i["where"] == "nas") == [
        f"{nas}/{W}/{old}/MANIFEST.json",
        f"{nas}/{W}/{old}/outputs.tar",
    ]
    assert not (nas / W / old / "outputs.tar").exists() and (nas / W / newest / "outputs.tar").exists()
    [unreached] = applied["unreached"]
    assert unreached["target"] == "attic" and "attic" in unreached["error"]
    assert "not reached" in protected(applied, "ssh://root@127.0.0.1:1/srv/attic")[0]
    assert "Connection refused" in unreached["error"]  # the warning's text (in-process, Ansible may print it instead)
    recorded = read_record(str(record))["retention"]
    assert [entry["target"] for entry in recorded["unreached"]] == ["attic"] and recorded["deleted"] == applied["deleted"]

    # Still down: nothing to do, and the record stays as it is.
    again = run_main("retention_enforce", args, capsys)
    assert again["changed"] is False and again["deleted"] == [] and read_record(str(record))["retention"] == recorded
    # Answering again (here: no longer among the targets) clears the follow-up: the section is this run's.
    cleared = run_main("retention_enforce", dict(args, targets=[target]), capsys)
    assert cleared["changed"] is True and cleared["deleted"] == []
    section = read_record(str(record))["retention"]
    assert section["unreached"] == [] and section["deleted"] == [] and section["protected"] == cleared["protected"]
    assert not any("not reached" in entry["why"] for entry in section["protected"])

    # A target that answers but refuses the login is a mistake to mend, not an outage: the phase fails.
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", tmp_path / "stranger"], check=True)
    refused = run_main("retention_enforce", dict(args, targets=[dict(target, key_file=str(tmp_path / "stranger"))]), capsys)
    assert refused["failed"] is True and "'nas'" in refused["msg"] and "Permission denied" in refused["msg"], refused


def test_a_target_that_does_not_answer_is_asked_once_per_run(tmp_path, capsys):
    """The backup it holds (as the record says) is checked, then the target listed: one connection in all,
    since a silent target costs a 30-second timeout each time."""
    root, folder, project, outputs, names, record = workshop(tmp_path, [400, 20], verified=1, offsite={"attic": (0, True)})
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def hang_up():  # answers every connection by closing it, as a dying storage host does
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            accepted.append(connection.close())

    threading.Thread(target=hang_up, daemon=True).start()
    attic = dict(name="attic", type="ssh", host="127.0.0.1", port=listener.getsockname()[1], user="root", path="/srv/attic")
    try:
        result = run_main("retention_enforce", args_for(root, folder, project, outputs, record, targets=[attic]), capsys)
    finally:
        listener.close()
    assert "failed" not in result, result.get("msg")
    assert len(accepted) == 1
    assert [entry["target"] for entry in result["unreached"]] == ["attic"]
    assert (folder / names[0]).is_dir()  # its copy could not be checked: the host's stays
    assert "attic could not be asked" in protected(result, f"{folder / names[0]}/")[0]


def test_a_target_that_stops_answering_between_plan_and_deletion_is_left_where_it_stopped(tmp_path, sshd, capsys, monkeypatch):
    root, folder, project, outputs, _names, record = workshop(tmp_path, [20], verified=0, offsite={})
    nas = tmp_path / "nas"
    old, older, newest = (remote_backup(nas, days_ago(age)) for age in (400, 700, 300))
    target = dict(name="nas", type="ssh", host="127.0.0.1", port=SSH_PORT, user="root", path=str(nas), key_file=str(sshd))
    args = args_for(root, folder, project, outputs, record, targets=[target], known_hosts=str(tmp_path / "known_hosts"))
    planned = workshop_retention.apply_plan

    def storage_host_goes_down(plan, done):
        os.kill(int((sshd.parent / "sshd.pid").read_text()), signal.SIGTERM)
        for _where, kind, handle, _items in plan.units:  # and the connection the plan was made over
            if kind == "target":
                subprocess.run(["ssh", *handle[0].options, "-O", "exit", handle[0].destination], capture_output=True)
        return planned(plan, done)

    monkeypatch.setattr(workshop_retention, "apply_plan", storage_host_goes_down)
    result = run_main("retention_enforce", args, capsys)
    assert "failed" not in result, result.get("msg")
    assert result["deleted"] == [] and [e["target"] for e in result["unreached"]] == ["nas"]
    assert "Connection refused" in result["unreached"][0]["error"]
    assert all((nas / W / name / "outputs.tar").exists() for name in (old, older, newest))
    assert read_record(str(record))["retention"]["deleted"] == []


def test_older_copies_on_a_target_stay_while_its_newest_copy_is_not_whole(tmp_path, sshd, capsys):
    root, folder, project, outputs, _names, record = workshop(tmp_path, [20], verified=0, offsite={})
    nas = tmp_path / "nas"
    old, newest = (remote_backup(nas, days_ago(age), (("outputs.tar", b"T" * 100),)) for age in (700, 400))
    (nas / W / newest / "outputs.tar").write_bytes(b"T" * 40)  # the newest copy lost most of a file
    target = dict(name="nas", type="ssh", host="127.0.0.1", port=SSH_PORT, user="root", path=str(nas), key_file=str(sshd))
    args = args_for(root, folder, project, outputs, record, targets=[target], known_hosts=str(tmp_path / "known_hosts"))

    result = run_main("retention_enforce", args, capsys)
    assert [i for i in result["deleted"] if i["where"] == "nas"] == [] and (nas / W / old / "outputs.tar").exists()
    assert protected(result, f"ssh://root@127.0.0.1:{SSH_PORT}{nas}/{W}/{old}") == [
        f"the newest copy on this target, {newest}, is not whole (outputs.tar: size 40 on the target, 100 in the manifest): "
        "older copies stay"
    ]
    (nas / W / newest / "outputs.tar").write_bytes(b"T" * 100)
    manifest = (nas / W / newest / "MANIFEST.json").read_bytes()
    (nas / W / newest / "MANIFEST.json").write_bytes(b"{}")  # a manifest that lists nothing vouches for nothing
    assert (
        "its MANIFEST.json lists no file of a backup"
        in protected(run_main("retention_enforce", args, capsys), f"ssh://root@127.0.0.1:{SSH_PORT}{nas}/{W}/{old}")[0]
    )
    (nas / W / newest / "MANIFEST.json").write_bytes(manifest)
    again = run_main("retention_enforce", args, capsys)
    assert sorted(i["path"] for i in again["deleted"] if i["where"] == "nas") == sorted(
        f"{nas}/{W}/{old}/{name}" for name in ("MANIFEST.json", "outputs.tar")
    )


def test_s3_target_old_objects_go_dated_by_the_backup_in_their_key(tmp_path, s3server, capsys):  # noqa: F811
    root, folder, project, outputs, _names, record = workshop(tmp_path, [20], verified=0, offsite={})
    client = s3server.client()
    keys = {}
    for age in (400, 100):
        name = backup_name(days_ago(age))
        bodies = {relpath: relpath.encode() * 3 for relpath in ("outputs.tar", "config/.env")}
        listed = {relpath: {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()} for relpath, body in bodies.items()}
        for relpath, body in (*bodies.items(), ("MANIFEST.json", json.dumps({"files": listed}).encode())):
            key = f"comfy/{W}/{name}/{relpath}"
            client.put_object(Bucket="workshops", Key=key, Body=body)
            keys.setdefault(age, []).append(key)
    # A share archive of this workshop, whose period ended.
    share_key = f"comfy/share/{W}/tok/{W}-user001-outputs.zip"
    client.put_object(Bucket="workshops", Key=share_key, Body=b"PK")
    data = read_record(str(record))
    data["share"] = {"period_ends": utc_iso(days_ago(3))}
    save_record(str(record), data)
    args = args_for(root, folder, project, outputs, record, targets=[s3server.target()])

    preview = run_main("retention_enforce", args, capsys, check=True)
    remote = [i for i in preview["deleted"] if i["where"] == "s3test"]
    old = sorted(k for k in keys[400] if "/config/" not in k)
    assert [i["path"] for i in remote] == [k for k in old if k.endswith("MANIFEST.json")] + [
        k for k in old if not k.endswith("MANIFEST.json")
    ] + [share_key]
    assert {i["age_days"] for i in remote[:2]} == {400.0}
    applied = run_main("retention_enforce", args, capsys)
    assert [i for i in applied["deleted"] if i["where"] == "s3test"] == remote
    left = sorted(o["Key"] for o in client.list_objects_v2(Bucket="workshops").get("Contents", []))
    assert left == sorted(keys[100] + [k for k in keys[400] if "/config/" in k])
    assert run_main("retention_enforce", args, capsys)["changed"] is False
