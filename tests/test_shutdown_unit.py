"""The shutdown guard's comparisons, against snapshots a real redis-server saved, and real folders."""

import json
import shutil

import pytest
from scratch_redis import running_redis

from conftest import REPO  # noqa: F401 - makes ansible.module_utils find the project's helpers


def save(client, folder, name):
    client.save()
    target = folder / name
    shutil.copy(folder / "dump.rdb", target)
    return target


@pytest.fixture
def redis_dir(tmp_path):
    folder = tmp_path / "redis"
    folder.mkdir()
    return folder


def platform_keys(client):
    client.set("job:a", json.dumps({"id": "a", "status": "completed"}))
    client.zadd("queue:completed", {"a": 1764400000.5, "b": 1764400001.25})
    client.sadd("user:user001:jobs", "a", "b")
    client.set("user:user001:completed", 2)
    client.hset("h", mapping={"f": "1", "g": "2"})
    client.rpush("l", "x", "y")
    client.set("worker:worker-1:heartbeat", "2026-11-29T15:00:00+00:00", ex=60)


def test_an_incr_after_the_backup_is_named_and_heartbeats_are_left_out(redis_dir):
    from ansible.module_utils.workshop_shutdown import compare_rdb

    with running_redis(redis_dir) as client:
        platform_keys(client)
        backup = save(client, redis_dir, "backup.rdb")
        client.incr("user:user001:completed")
        client.set("worker:worker-1:heartbeat", "2026-11-29T15:00:05+00:00", ex=60)
        final = save(client, redis_dir, "final.rdb")

    differences, compared, ttl_keys = compare_rdb(backup, final)

    assert differences == ["user:user001:completed: value changed after the backup"]
    assert compared == 6
    assert ttl_keys == ["worker:worker-1:heartbeat"]


def test_same_content_saved_in_another_order_compares_equal(redis_dir):
    from ansible.module_utils.workshop_shutdown import compare_rdb

    with running_redis(redis_dir) as client:
        platform_keys(client)
        backup = save(client, redis_dir, "backup.rdb")
        client.flushall()
        client.set("worker:worker-1:heartbeat", "later", ex=60)
        client.rpush("l", "x", "y")
        client.hset("h", mapping={"g": "2", "f": "1"})
        client.set("user:user001:completed", 2)
        client.sadd("user:user001:jobs", "b", "a")
        client.zadd("queue:completed", {"b": 1764400001.25, "a": 1764400000.5})
        client.set("job:a", json.dumps({"id": "a", "status": "completed"}))
        final = save(client, redis_dir, "final.rdb")

    assert compare_rdb(backup, final)[0] == []


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda c: c.zadd("queue:completed", {"c": 1764400002}), "queue:completed: value changed after the backup"),
        (lambda c: c.zadd("queue:completed", {"a": 2}), "queue:completed: value changed after the backup"),
        (lambda c: c.set("job:b", "{}"), "job:b: written after the backup (not in it)"),
        (lambda c: c.delete("job:a"), "job:a: in the backup, gone from the final snapshot"),
        (lambda c: c.rpush("l", "z"), "l: value changed after the backup"),
        (lambda c: (c.delete("h"), c.set("h", "1")), "h: a hash in the backup, a string now"),
        (lambda c: c.persist("worker:worker-1:heartbeat"), "worker:worker-1:heartbeat: written after the backup (not in it)"),
    ],
)
def test_every_kind_of_change_is_named(redis_dir, change, expected):
    from ansible.module_utils.workshop_shutdown import compare_rdb

    with running_redis(redis_dir) as client:
        platform_keys(client)
        backup = save(client, redis_dir, "backup.rdb")
        change(client)
        final = save(client, redis_dir, "final.rdb")

    assert compare_rdb(backup, final)[0] == [expected]


def backup_folder(tmp_path, sources):
    """A sealed-looking backup folder whose archives list the files of `sources` as they are now."""
    from ansible.module_utils.workshop_backup import list_tree, sha256_file, write_members

    folder = tmp_path / "backup-20261129T150000Z"
    folder.mkdir()
    for archive, names in {"outputs.tar": ["outputs"], "user-files.tar": ["inputs"]}.items():
        members = [
            {"path": f"{name}/{rel}", "size": size, "sha256": sha256_file(sources[name] / rel)}
            for name in names
            for rel, size, _ in list_tree(str(sources[name]))
        ]
        write_members(str(folder / archive), members)
    return folder


def test_participants_files_are_compared_by_content(tmp_path):
    from ansible.module_utils.workshop_shutdown import compare_files

    sources = {"outputs": tmp_path / "outputs", "inputs": tmp_path / "inputs"}
    (sources["outputs"] / "user001").mkdir(parents=True)
    (sources["outputs"] / "user001" / "a.png").write_bytes(b"A" * 100)
    (sources["outputs"] / "user001" / "b.png").write_bytes(b"B" * 100)
    sources["inputs"].mkdir()
    (sources["inputs"] / "in.png").write_bytes(b"I")
    folder = backup_folder(tmp_path, sources)
    roots = {name: str(path) for name, path in sources.items()}

    assert compare_files(str(folder), roots) == ([], 3)

    (sources["outputs"] / "user001" / "a.png").write_bytes(b"a" * 100)  # same size, other bytes
    (sources["outputs"] / "user001" / "b.png").unlink()
    (sources["outputs"] / "user002").mkdir()
    (sources["outputs"] / "user002" / "new.png").write_bytes(b"N")
    differences, compared = compare_files(str(folder), roots)

    assert differences == [
        "outputs/user001/a.png: changed after the backup",
        "outputs/user002/new.png: written after the backup (not in it)",
        f"outputs/user001/b.png: in the backup, gone from {roots['outputs']}",
    ]
    assert compared == 4


def test_a_failed_verification_in_the_run_record_refuses(tmp_path):
    from ansible.module_utils.workshop_shutdown import recorded_verify_problem

    record = tmp_path / "run-record.json"
    assert recorded_verify_problem(str(record), "backup-1") is None  # no record yet
    verify = {"ok": False, "at": "2026-11-29T15:00:00+00:00", "backup": "backup-1"}
    verify["failures"] = [{"file": "outputs.tar", "member": "outputs/user003/img.png", "reason": "content differs"}]
    record.write_text(json.dumps({"backup": {"verify": verify}}))
    problem = recorded_verify_problem(str(record), "backup-1")
    assert "backup-1 failed its verification" in problem and "outputs.tar member outputs/user003/img.png" in problem
    record.write_text(json.dumps({"backup": {"verify": dict(verify, ok=True)}}))
    assert recorded_verify_problem(str(record), "backup-1") is None


def test_volumes_are_covered_by_the_backup_or_named_as_not_needed():
    from ansible.module_utils.workshop_shutdown import volume_coverage

    covered, uncovered = volume_coverage(["p_redis-data", "p_cache", "p_models"], "p_redis-data", ["p_cache"])
    assert sorted(covered) == ["p_cache", "p_redis-data"]
    assert uncovered == ["p_models"]


@pytest.mark.parametrize(
    "entry, mtime, not_before, problem",
    [
        ({"state": "exited", "exit_code": 0}, "2026-11-29T15:00:10.5Z", "2026-11-29T15:00:10.1+00:00", None),
        ({"state": "exited", "exit_code": 0}, "2026-11-29T15:00:09.9Z", "2026-11-29T15:00:10.1+00:00", "did not write"),
        ({"state": "exited", "exit_code": 137}, "2026-11-29T15:00:10.5Z", None, "did not shut down cleanly"),
        ({"state": "running", "exit_code": 0}, "2026-11-29T15:00:10.5Z", None, "still running"),
        ({"state": "exited", "exit_code": 0}, "2026-11-29T15:00:05.123456789Z", None, None),
        ({"state": "exited", "exit_code": 0}, "2026-11-29T14:59:00Z", None, "did not write"),
    ],
)
def test_the_final_snapshot_must_be_written_as_redis_stopped(entry, mtime, not_before, problem):
    from ansible.module_utils.workshop_shutdown import final_snapshot_problem

    entry = dict(entry, container="comfy-redis", finished_at="2026-11-29T15:00:11.000000001Z")
    found = final_snapshot_problem(entry, mtime, not_before, 11)
    assert (found is None) if problem is None else (problem in found)
