"""Docker tier: the emergency recovery test (playbooks/restore_test.yml) and the real recovery
(playbooks/restore.yml) on the staging workshop: a backup restores byte for byte, its Redis
snapshot loads into the workshop's own Redis image, and an altered backup is caught."""

import hashlib
import io
import json
import os
import shutil
import tarfile
import time
import uuid
from pathlib import Path

import pytest
from test_backup import backup, backups, elsewhere, played, sealed, tree  # noqa: F401 - elsewhere, played and sealed are fixtures used here
from test_rdb import build_rdb

from conftest import BACKUP_ROOT, COMPOSE_PROJECT, PROJECT_DIR, run_playbook

RESTORE_LABEL = "comfy-wrapup.role=restore"
# The staging workshop's Redis container (other compose projects may run a redis service too).
STAGING_REDIS = [f"com.docker.compose.project={COMPOSE_PROJECT}", "com.docker.compose.service=redis"]
QUEUES = ("queue:pending", "queue:running", "queue:completed", "queue:failed")


@pytest.fixture
def workshop_id(played):  # noqa: F811 - the fixture of test_backup
    name = f"restore-{uuid.uuid4().hex[:8]}"
    yield name
    shutil.rmtree(BACKUP_ROOT / name, ignore_errors=True)


def restore_test(workshop_id, expect_ok=True, **extra):
    return run_playbook("playbooks/restore_test.yml", extra_vars={"workshop_id": workshop_id, **extra}, expect_ok=expect_ok)


def record_of(workshop_id):
    return json.loads((BACKUP_ROOT / workshop_id / "run-record.json").read_text())


@pytest.fixture
def sealed_copy(sealed, workshop_id):  # noqa: F811 - the fixture of test_backup
    """The module's sealed backup, copied as workshop_id's: for the tests that alter or refuse it."""
    shutil.copytree(sealed, BACKUP_ROOT / workshop_id, symlinks=True)


def left_behind(engine, workshop_id):
    """Scratch folders and throwaway containers a restore test left (none, whatever happened)."""
    folders = [p.name for p in (BACKUP_ROOT / workshop_id).glob(".restore-*")]
    containers = [c.name for c in engine.containers.list(all=True, filters={"label": RESTORE_LABEL})]
    return folders, containers


def manifest_of(folder):
    return json.loads((folder / "MANIFEST.json").read_text())


def rewrite_manifest(folder, relpath):
    """Make the manifest match an altered file, as someone altering a stored backup would."""
    manifest = manifest_of(folder)
    data = (folder / relpath).read_bytes()
    import hashlib

    manifest["files"][relpath] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))


def restored_file_count(folder):
    """Files the restore test must compare, counted from the backup itself: every archive member, every other file."""
    count = 0
    for relpath in manifest_of(folder)["files"]:
        if relpath.endswith(".tar"):
            count += len(json.loads((folder / f"{relpath}.members.json").read_text()))
        else:
            count += 1
    return count


def test_the_restore_test_passes_on_a_fresh_backup_and_records_what_it_measured(workshop_id, rdb, engine):
    backup(workshop_id)
    [folder] = backups(workshop_id)
    facts = manifest_of(folder)["redis"]

    run = restore_test(workshop_id)

    result = record_of(workshop_id)["restore_test"]
    assert result["ok"] is True and result["failures"] == []
    assert record_of(workshop_id)["restore_tests"] == {folder.name: result}  # by backup too
    assert (result["backup"], result["source"]) == (folder.name, "local")
    assert result["files_compared"] == restored_file_count(folder) > 10
    assert 0 < result["seconds"] < 120
    # The snapshot loaded into the workshop's own Redis image holds what the backup recorded and the workshop has.
    assert result["keys"]["loaded"] == facts["keys"] == sum(1 for key in rdb.scan_iter(count=1000) if rdb.ttl(key) == -1)
    assert result["queues"] == {queue: rdb.zcard(queue) for queue in QUEUES} == {q: facts["queues"][q] for q in QUEUES}
    [redis] = engine.containers.list(filters={"label": STAGING_REDIS})
    assert f"({redis.attrs['Config']['Image']})" in run.text
    assert "PASSED" in run.text
    assert left_behind(engine, workshop_id) == ([], [])

    again = restore_test(workshop_id)
    assert again.changed() == 0, again.output
    assert record_of(workshop_id)["restore_test"]["at"] >= result["at"]


@pytest.mark.fault
def test_a_corrupted_file_in_the_backup_fails_the_restore_test_naming_it(sealed_copy, workshop_id, engine, fault_case):
    fault_case(
        "Corrupted file in a backup (restore test, staging)",
        expected="restore_test fails naming the member; recorded ok false; no scratch container or volume left",
    )
    [folder] = backups(workshop_id)
    members = json.loads((folder / "outputs.tar.members.json").read_text())
    victim = next(m for m in members if "sha256" in m and m["size"] > 1000)
    with tarfile.open(folder / "outputs.tar") as archive:
        offset = archive.getmember(victim["path"]).offset_data
    with open(folder / "outputs.tar", "r+b") as stream:
        stream.seek(offset + 100)
        byte = stream.read(1)
        stream.seek(offset + 100)
        stream.write(bytes([byte[0] ^ 0xFF]))

    run = restore_test(workshop_id, expect_ok=False)

    assert run.returncode != 0
    assert f"outputs.tar member {victim['path']}: restored content differs from the manifest" in run.text
    result = record_of(workshop_id)["restore_test"]
    assert result["ok"] is False
    assert {"file": "outputs.tar", "member": victim["path"], "reason": "restored content differs from the manifest"} in result[
        "failures"
    ]
    assert left_behind(engine, workshop_id) == ([], [])
    fault_case.observed(f"named {victim['path']}; restore_test.ok false; nothing left behind")


def _add_member(folder, info, payload=None):
    """Rewrite outputs.tar with one more member, and its manifest to match (an altered stored copy)."""
    path = folder / "outputs.tar"
    with tarfile.open(path, "a") as archive:
        archive.addfile(info, io.BytesIO(payload) if payload is not None else None)
    rewrite_manifest(folder, "outputs.tar")


@pytest.mark.parametrize(
    ("name", "kind", "target"),
    [
        ("outputs/../../../../tmp/restore-escaped", tarfile.REGTYPE, ""),
        ("outputs/user001/escape", tarfile.SYMTYPE, "../../../../etc"),
    ],
    ids=["dotdot", "outward-symlink"],
)
@pytest.mark.fault
def test_a_backup_with_an_escaping_member_is_refused_naming_it(sealed_copy, workshop_id, engine, name, kind, target, fault_case):
    fault_case(
        "Unsafe member in a backup being restored (restore test, staging)",
        expected="refused naming the member; nothing escapes; no scratch container or volume left",
    )
    [folder] = backups(workshop_id)
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    payload = b"escaped" if kind == tarfile.REGTYPE else None
    info.size = len(payload or b"")
    _add_member(folder, info, payload)

    run = restore_test(workshop_id, expect_ok=False)

    assert f"outputs.tar member {name}:" in run.text
    assert ("path with '..'" if kind == tarfile.REGTYPE else "link to ../../../../etc, which points outside") in run.text
    assert not Path("/tmp/restore-escaped").exists()
    failures = record_of(workshop_id)["restore_test"]["failures"]
    assert failures[0]["file"] == "outputs.tar" and failures[0]["member"] == name
    assert left_behind(engine, workshop_id) == ([], [])
    fault_case.observed(f"{name} refused; nothing escaped or left behind")


def test_an_rdb_written_by_a_newer_redis_than_the_image_gets_a_clear_message(sealed_copy, workshop_id, engine):
    """The staging Redis is 7.0 (RDB 10); a snapshot of Redis 7.4 (RDB 12) cannot load into it."""
    [folder] = backups(workshop_id)
    (folder / "redis" / "dump.rdb").write_bytes(bytes(build_rdb(12)))
    rewrite_manifest(folder, "redis/dump.rdb")

    run = restore_test(workshop_id, expect_ok=False)

    assert "redis/dump.rdb is RDB format version 12 (written by Redis 7.4 or newer), newer than Redis 7.0" in run.text, (
        run.output[-4000:]
    )
    assert "set restore_redis_image" in run.text
    assert record_of(workshop_id)["restore_test"]["ok"] is False
    assert left_behind(engine, workshop_id) == ([], [])


# --- the real recovery --------------------------------------------------------------------------------


@pytest.fixture
def target(engine, workshop_id, tmp_path):
    """A new project directory and compose project name to restore into; removed afterwards with its volume."""
    name = f"restored{uuid.uuid4().hex[:6]}"
    dest = tmp_path / name
    yield dest, name
    shutil.rmtree(dest, ignore_errors=True)
    for volume in engine.volumes.list(filters={"label": f"com.docker.compose.project={name}"}):
        volume.remove(force=True)


def restore(workshop_id, dest, name, check=False, expect_ok=True, **extra):
    return run_playbook(
        "playbooks/restore.yml",
        extra_vars={"workshop_id": workshop_id, "restore_project_dir": str(dest), "restore_project_name": name, **extra},
        check=check,
        expect_ok=expect_ok,
    )


# Every key without a time to live, with its type and value, as JSON: the same script reads the
# workshop's Redis and the restored one.
DUMP_KEYS = """
local out = {}
for _, k in ipairs(redis.call('KEYS', '*')) do
  if redis.call('TTL', k) == -1 then
    local t = redis.call('TYPE', k)['ok']
    local v
    if t == 'string' then v = {redis.call('GET', k)}
    elseif t == 'zset' then v = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')
    elseif t == 'set' then v = redis.call('SMEMBERS', k); table.sort(v)
    elseif t == 'hash' then v = redis.call('HGETALL', k)
    else v = redis.call('LRANGE', k, 0, -1) end
    out[k] = {t, v}
  end
end
return cjson.encode(out)
"""


def _volume_keys(engine, image, volume, *commands):
    """The keys a Redis with AOF on (as the workshop runs it) loads from `volume`, after `commands` (redis-cli's)."""
    server = engine.containers.run(
        image,
        ["redis-server", "--dir", "/data", "--appendonly", "yes", "--save", ""],
        volumes={volume: {"bind": "/data", "mode": "rw"}},
        network_mode="none",
        detach=True,
    )
    try:
        deadline = time.monotonic() + 30
        while server.exec_run(["redis-cli", "PING"]).output.strip() != b"PONG":
            assert time.monotonic() < deadline, server.logs().decode()
            time.sleep(0.2)
        for command in commands:
            server.exec_run(["redis-cli", *command])
        return json.loads(server.exec_run(["redis-cli", "EVAL", DUMP_KEYS, "0"]).output)
    finally:
        server.remove(force=True, v=True)


def test_restore_into_a_new_project_restores_the_bytes_and_the_redis_keys(workshop_id, rdb, engine, target):
    dest, name = target
    backup(workshop_id)
    volume = f"{name}_redis-data"

    preview = restore(workshop_id, dest, name, check=True)
    assert preview.changed() == 1
    assert str(dest / "data" / "outputs") in preview.output and f"docker volume {volume}" in preview.output
    assert not dest.exists() and not engine.volumes.list(filters={"name": volume})

    first = restore(workshop_id, dest, name)
    # Restored under another project name than its .env's: compose there would use the other volume.
    assert f"The restored .env says COMPOSE_PROJECT_NAME={COMPOSE_PROJECT}" in first.text
    assert f"set COMPOSE_PROJECT_NAME={name} in {dest}/.env" in first.text

    assert tree(dest / "data" / "outputs") == tree(PROJECT_DIR / "data" / "outputs")
    assert tree(dest / "data" / "outputs")  # the workshop played produced outputs
    for folder in ("inputs", "user_data", "workflows"):
        assert tree(dest / "data" / folder) == tree(PROJECT_DIR / "data" / folder)
    assert (dest / ".env").read_bytes() == (PROJECT_DIR / ".env").read_bytes()
    assert oct((dest / ".env").stat().st_mode & 0o777) == "0o600"
    assert (dest / "docker-compose.yml").read_bytes() == (PROJECT_DIR / "docker-compose.yml").read_bytes()
    [redis] = engine.containers.list(filters={"label": STAGING_REDIS})
    # The workshop's Redis (AOF on) started on the restored volume has every key the workshop has.
    restored = _volume_keys(engine, redis.attrs["Image"], volume)
    assert restored == json.loads(rdb.eval(DUMP_KEYS, 0))
    assert restored["queue:completed"][0] == "zset" and restored["queue:completed"][1]  # the finished jobs came back

    # Nothing left to write: no confirmation asked, nothing changed. A file the backup does not hold is
    # named and left as it is.
    (dest / "data" / "outputs" / "user001" / "kept-by-the-admin.png").write_bytes(b"not in the backup")
    again = restore(workshop_id, dest, name)
    assert again.changed() == 0, again.output
    assert "1 files are not in backup-" in again.text and "kept-by-the-admin.png" in again.text
    assert (dest / "data" / "outputs" / "user001" / "kept-by-the-admin.png").read_bytes() == b"not in the backup"

    # The workshop's Redis ran on the volume and wrote (into its AOF; dump.rdb stays as restored): the
    # volume no longer holds the backup's data, and the next restore puts it back.
    written = _volume_keys(engine, redis.attrs["Image"], volume, ["SET", "written-since", "1"], ["DEL", "queue:completed"])
    assert "written-since" in written and "queue:completed" not in written
    fixed = restore(workshop_id, dest, name, restore_confirm=workshop_id)
    assert fixed.changed() == 1 and f"docker volume {volume}" in fixed.output, fixed.output
    assert _volume_keys(engine, redis.attrs["Image"], volume) == restored
    assert restore(workshop_id, dest, name, restore_confirm=workshop_id).changed() == 0


def test_restore_refuses_a_non_empty_target_without_the_confirmation(sealed_copy, workshop_id, engine, target):
    dest, name = target
    dest.mkdir()
    (dest / "notes.txt").write_text("the admin's own notes")

    run = restore(workshop_id, dest, name, expect_ok=False)

    assert run.returncode != 0
    assert f"{dest} is not empty" in run.text and f"To confirm, set restore_confirm={workshop_id}" in run.text
    assert sorted(os.listdir(dest)) == ["notes.txt"]
    assert not engine.volumes.list(filters={"name": f"{name}_redis-data"})

    # An empty project folder, but the outputs placed on another disk where files already are.
    (dest / "notes.txt").unlink()
    other_disk = dest.parent / f"{name}-outputs"
    other_disk.mkdir()
    (other_disk / "kept.png").write_bytes(b"an earlier workshop's")
    try:
        moved = {"outputs": str(other_disk), **{top: str(dest / "data" / top) for top in ("inputs", "user_data", "workflows")}}
        run = restore(workshop_id, dest, name, expect_ok=False, restore_dest_dirs=moved)
        assert run.returncode != 0 and f"{other_disk} is not empty" in run.text, run.output[-3000:]
        assert os.listdir(dest) == [] and os.listdir(other_disk) == ["kept.png"]
    finally:
        shutil.rmtree(other_disk)


def test_outputs_placed_on_another_disk_are_checked_for_space_then_copied_there_byte_for_byte(
    sealed_copy, workshop_id, engine, target
):
    """A restore_dest_dirs folder on another filesystem: its own space check (in a dry run too), then its
    files copied across (a rename cannot cross filesystems) through a temporary name each."""
    from test_faults import grow, small_disk

    dest, name = target
    [folder] = backups(workshop_id)
    members = [m for m in json.loads((folder / "outputs.tar.members.json").read_text()) if "sha256" in m]
    assert members  # the played workshop's outputs
    with small_disk(dest.parent / f"{name}-outputs", "64k") as other_disk:
        moved = {"outputs": str(other_disk), **{top: str(dest / "data" / top) for top in ("inputs", "user_data", "workflows")}}

        preview = restore(workshop_id, dest, name, check=True, expect_ok=False, restore_dest_dirs=moved)
        assert preview.returncode != 0 and f"Not enough space to restore into {other_disk}: about " in preview.text, (
            preview.output
        )
        assert not dest.exists() and os.listdir(other_disk) == []

        grow(other_disk, "256m")
        restore(workshop_id, dest, name, restore_dest_dirs=moved)
        restored = {str(p.relative_to(other_disk)): p for p in other_disk.rglob("*") if p.is_file() and not p.is_symlink()}
        for member in members:
            path = restored[member["path"].split("/", 1)[1]]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == member["sha256"], member["path"]
        assert not [p for p in other_disk.rglob(".*") if p.name.startswith(".")]  # no temporary name left
