"""The cleanup phase on real files: temporary files, the yearly log archive, outputs after the share; no Docker."""

import gzip
import hashlib
import io
import os
import tarfile

import pytest
from ansible.module_utils.workshop_archive import make_target, record_archive
from ansible.module_utils.workshop_lock import Busy
from ansible.module_utils.workshop_record import read_record, save_record
from ansible.module_utils.workshop_time import utc_iso
from s3server import s3  # noqa: F401 - a fixture
from test_retention_unit import NOW, W, days_ago, files_under, nas, run_main, workshop  # noqa: F401 - nas: a fixture


def cleanup_args(root, folder, project, record, **extra):
    args = dict(
        workshop_id=W,
        backup_dir=str(folder),
        backup_root=str(root),
        record=str(record),
        project_dir=str(project),
        now=str(NOW),
    )
    args.update(extra)
    return args


def members_of(archive):
    with tarfile.open(archive, "r:gz") as tar:
        return {info.name: tar.extractfile(info).read() for info in tar if info.isfile()}


def test_temporary_files_go_a_folder_still_written_stays_sealed_backups_untouched(tmp_path, capsys):
    root, folder, project, _outputs, names, record = workshop(tmp_path, [20], verified=0, offsite={})
    sealed = files_under(folder / names[0])
    dead = folder / ".partial-backup-20270601T110000Z"
    live = folder / ".partial-backup-20270601T115900Z"
    scratch = folder / ".restore-test-abc123"
    for path in (dead, live, scratch):
        (path / "logs").mkdir(parents=True)
        (path / "logs" / "redis.log.gz").write_bytes(b"x" * 10)
    (folder / "share" / "archives").mkdir(parents=True)
    half = folder / "share" / "archives" / f"{W}-user001-outputs.zip.partial"
    half.write_bytes(b"PK" * 5)
    extract = project / "errors-found.txt"
    extract.write_text("error\n")
    (folder / "announcement.txt").write_text("No new jobs after 17:00\n")
    args = cleanup_args(root, folder, project, record)
    with Busy(str(live)):
        preview = run_main("cleanup_workshop", args, capsys, check=True)
        expected = sorted([str(dead) + "/", str(scratch) + "/", str(half), str(extract)])
        assert preview["changed"] is True
        assert sorted(r["path"] for r in preview["removed"]) == expected
        assert {r["path"]: r["bytes"] for r in preview["removed"]}[str(half)] == 10
        assert dead.exists() and half.exists()
        done = run_main("cleanup_workshop", args, capsys)
    assert done["removed"] == preview["removed"]
    assert not dead.exists() and not scratch.exists() and not half.exists() and not extract.exists()
    assert (live / "logs" / "redis.log.gz").exists()  # a process held it: the next run removes it
    assert (folder / "announcement.txt").exists()  # the drain's evidence, not a temporary file
    assert files_under(folder / names[0]) == sealed
    section = read_record(str(record))["cleanup"]
    assert section["removed"] == done["removed"] and section["done"] is True
    # Nobody holds the last one now: it goes, then nothing is left to do.
    assert [r["path"] for r in run_main("cleanup_workshop", args, capsys)["removed"]] == [str(live) + "/"]
    before = record.read_bytes()
    again = run_main("cleanup_workshop", args, capsys)
    assert again["changed"] is False and again["removed"] == [] and record.read_bytes() == before


def test_logs_roll_into_one_archive_per_year_verified_before_the_originals_go(tmp_path, capsys):
    root, folder, project, _outputs, names, record = workshop(tmp_path, [20], verified=0, offsite={})
    merged = (folder / names[0] / "logs" / "workshop-logs.txt.gz").read_bytes()
    plain = project / "workshop-logs-20260128-180000.txt"
    plain.write_bytes(b"2026-01-28 queue-manager - INFO - Job 1 submitted by user user001\n" * 50)
    packed = project / "workshop-logs-20251130-090000.txt.gz"
    packed.write_bytes(gzip.compress(b"older workshop log\n"))
    sources = {"plain": plain.read_bytes(), "packed": packed.read_bytes()}
    args = cleanup_args(root, folder, project, record)

    preview = run_main("cleanup_workshop", args, capsys, check=True)
    assert sorted(r["archive"] for r in preview["logs_rolled"]) == [
        str(root / "logs" / "workshop-logs-2025.tar.gz"),
        str(root / "logs" / "workshop-logs-2026.tar.gz"),
    ]
    assert not (root / "logs").exists() and plain.exists()
    done = run_main("cleanup_workshop", args, capsys)
    assert done["changed"] is True and all(r["verified"] for r in done["logs_rolled"])
    y2026 = members_of(root / "logs" / "workshop-logs-2026.tar.gz")
    stamp = names[0][len("backup-") :]
    assert sorted(y2026) == sorted([f"{W}/workshop-logs-{stamp}.txt.gz", f"{W}/{plain.name}.gz"])
    assert y2026[f"{W}/workshop-logs-{stamp}.txt.gz"] == merged
    assert gzip.decompress(y2026[f"{W}/{plain.name}.gz"]) == sources["plain"]
    assert members_of(root / "logs" / "workshop-logs-2025.tar.gz") == {f"{W}/{packed.name}": sources["packed"]}
    assert oct(os.stat(root / "logs").st_mode & 0o777) == "0o700"
    # The originals went only after the archive read back; the sealed backup keeps its own copy.
    assert not plain.exists() and not packed.exists()
    assert (folder / names[0] / "logs" / "workshop-logs.txt.gz").read_bytes() == merged
    assert sorted(r["path"] for r in done["removed"]) == sorted([str(plain), str(packed)])
    rolled = read_record(str(record))["cleanup"]["logs_rolled"]
    assert {r["archive"]: r["verified"] for r in rolled} == {r["archive"]: True for r in done["logs_rolled"]}

    archive_bytes = (root / "logs" / "workshop-logs-2026.tar.gz").read_bytes()
    again = run_main("cleanup_workshop", args, capsys)
    assert again["changed"] is False
    assert (root / "logs" / "workshop-logs-2026.tar.gz").read_bytes() == archive_bytes

    # Another workshop's export later in the year: added to the same archive, the members already there byte-exact.
    late = project / "workshop-logs-20260915-170000.txt"
    late.write_bytes(b"september\n")
    run_main("cleanup_workshop", args, capsys)
    after = members_of(root / "logs" / "workshop-logs-2026.tar.gz")
    assert {k: v for k, v in after.items() if k in y2026} == y2026
    assert gzip.decompress(after[f"{W}/{late.name}.gz"]) == b"september\n"
    assert not list((root / "logs").glob("*.partial"))


def test_a_member_name_holding_other_content_is_refused_and_nothing_goes(tmp_path, capsys):
    root, folder, project, _outputs, _names, record = workshop(tmp_path, [20], verified=0, offsite={})
    (root / "logs").mkdir(mode=0o700)
    export = project / "workshop-logs-20260128-180000.txt.gz"
    export.write_bytes(gzip.compress(b"the real log\n"))
    other = gzip.compress(b"something else\n")
    with tarfile.open(root / "logs" / "workshop-logs-2026.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo(f"{W}/{export.name}")
        info.size = len(other)
        tar.addfile(info, io.BytesIO(other))
    archive = (root / "logs" / "workshop-logs-2026.tar.gz").read_bytes()
    from ansible.module_utils.testing import patch_module_args

    from conftest import load_module

    module = load_module("cleanup_workshop")
    with patch_module_args(cleanup_args(root, folder, project, record)), pytest.raises(SystemExit):
        module.main()
    result = capsys.readouterr().out
    assert '"failed": true' in result and "never rewritten" in result
    assert export.exists() and (root / "logs" / "workshop-logs-2026.tar.gz").read_bytes() == archive


def shared(record, ends):
    data = read_record(str(record))
    data["share"] = {"period_ends": utc_iso(ends)}
    save_record(str(record), data)


def test_outputs_need_the_confirmation_the_end_of_the_share_and_a_verified_off_host_copy(tmp_path, nas, capsys):  # noqa: F811
    root, folder, project, outputs, _names, record = workshop(tmp_path, [20], verified=0, offsite={"nas": (0, True)}, target=nas)
    (outputs / "user003").mkdir()
    (outputs / "user003" / "late.png").write_bytes(b"never backed up")
    base = cleanup_args(root, folder, project, record, outputs_dir=str(outputs), remove_outputs=True, targets=[nas])
    files = sorted(str(p) for p in outputs.rglob("*.png"))

    unconfirmed = run_main("cleanup_workshop", base, capsys)
    assert unconfirmed["failed"] is True and f"cleanup_confirm={W}" in unconfirmed["msg"]
    shared(record, days_ago(-2))  # two more days of sharing
    early = run_main("cleanup_workshop", dict(base, confirm=W), capsys)
    assert early["outputs_removed"] is None and "has not ended" in early["outputs_kept"][0]["why"]
    assert early["done"] is False
    assert sorted(str(p) for p in outputs.rglob("*.png")) == files

    shared(record, days_ago(1))
    backed = sorted(f for f in files if "user003" not in f)
    # The run record says the backup is verified on nas, but its copy there lost a file: nothing goes.
    store = make_target(nas)
    key = store.key(W, _names[0], "outputs.tar")
    copy = store.client.get_object(Bucket=nas["bucket"], Key=key)
    store.client.delete_object(Bucket=nas["bucket"], Key=key)
    # Also recorded on a target that does not answer now: asked, named, and the others still asked.
    offline = dict(name="a-offline", type="ssh", host="127.0.0.1", port=1, user="root", path="/nonexistent")
    record_archive(str(record), "a-offline", {"where": "x", "backup": _names[0], "files": 5, "bytes": 1, "verified": True})
    base["targets"] = [offline, nas]
    lost = run_main("cleanup_workshop", dict(base, confirm=W), capsys)
    assert lost["outputs_removed"] is None and sorted(str(p) for p in outputs.rglob("*.png")) == files
    kept = {entry["path"]: entry["why"] for entry in lost["outputs_kept"]}
    assert kept.pop(str(outputs / "user003" / "late.png")) == "not in a backup verified off-host"
    assert set(kept) == set(backed)
    (why,) = set(kept.values())
    assert why.startswith(f"its backup verified off-host is on no target now ({_names[0]}: a-offline could not be asked (")
    assert f"on nas, outputs.tar: missing on the target ({key})" in why
    store.client.put_object(Bucket=nas["bucket"], Key=key, Body=copy["Body"].read(), Metadata=copy["Metadata"])
    # A target that answers but refuses the keys is a mistake to mend, not an outage: the run fails naming it.
    refused = run_main("cleanup_workshop", dict(base, confirm=W, targets=[dict(nas, secret_key="not-the-secret")]), capsys)
    assert refused["failed"] is True and "'nas'" in refused["msg"], refused
    assert sorted(str(p) for p in outputs.rglob("*.png")) == files
    preview = run_main("cleanup_workshop", dict(base, confirm=W), capsys, check=True)
    assert sorted(r["path"] for r in preview["removed"]) == backed
    assert preview["outputs_removed"] == {"files": 3, "bytes": sum(os.path.getsize(f) for f in backed)}
    assert preview["outputs_kept"] == [
        {"path": str(outputs / "user003" / "late.png"), "why": "not in a backup verified off-host"}
    ]
    done = run_main("cleanup_workshop", dict(base, confirm=W), capsys)
    assert done["removed"] == preview["removed"]
    assert sorted(str(p) for p in outputs.rglob("*.png")) == [str(outputs / "user003" / "late.png")]
    assert read_record(str(record))["cleanup"]["outputs_removed"] == preview["outputs_removed"]
    assert hashlib.sha256((outputs / "user003" / "late.png").read_bytes()).hexdigest()
