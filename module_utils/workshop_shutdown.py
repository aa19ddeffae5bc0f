"""The shutdown guard: what must hold before a workshop's containers or volumes are removed.

Plain functions over a backup folder, the run record and Redis snapshots, so they are unit-tested
without Docker. The module `shutdown_guard` calls them with what it read from the Docker Engine.
"""

import os

from ansible.module_utils.workshop_backup import archives_of, list_tree, read_manifest
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import sha256_file
from ansible.module_utils.workshop_rdb import iter_rdb
from ansible.module_utils.workshop_record import failures_text, read_record
from ansible.module_utils.workshop_time import parse_time

# Value types whose content the RDB reader skips: two snapshots cannot be compared on them.
OPAQUE_TYPES = ("stream", "module")


def recorded_verify_problem(run_record, newest):
    """Why the run record forbids relying on the backup (its `backup.verify.ok` is false), or None.

    A record that names another backup than `newest` says nothing about it; the caller verifies
    the newest itself either way.
    """
    verify = (read_record(run_record).get("backup") or {}).get("verify")
    if not isinstance(verify, dict) or verify.get("ok") is not False:
        return None
    if verify.get("backup") and verify["backup"] != newest:
        return None
    named = failures_text(verify.get("failures"), limit=5)
    return (
        f"the run record {run_record} says backup {verify.get('backup') or newest} failed its verification"
        f"{' at ' + verify['at'] if verify.get('at') else ''}{' (' + named + ')' if named else ''}"
    )


def offsite_problem(run_record, newest):
    """Why no verified off-host copy of backup `newest` is recorded (None when one is)."""
    targets = ((read_record(run_record).get("archive") or {}).get("targets")) or {}
    if any(entry.get("backup") == newest and entry.get("verified") is True for entry in targets.values()):
        return None
    seen = "; ".join(
        f"{name}: {entry.get('backup')}{' verified' if entry.get('verified') else ' NOT verified'}"
        for name, entry in sorted(targets.items())
    )
    return (
        f"no verified off-host copy of the newest backup {newest} is recorded in {run_record} ({seen or 'no archive recorded'})"
    )


def volume_coverage(volumes, redis_volume, not_needed):
    """{volume: why it may go} for every volume, and the sorted volumes nothing covers."""
    covered, uncovered = {}, []
    for name in volumes:
        if name == redis_volume:
            covered[name] = "redis/dump.rdb of the backup, compared by content with the final snapshot"
        elif name in not_needed:
            covered[name] = "named as not needed (shutdown_volumes_not_needed)"
        else:
            uncovered.append(name)
    return covered, sorted(uncovered)


def logs_missing(folder, containers):
    """The containers (of `containers` [{service, container}]) whose log is not in the backup folder's
    manifest: logs/<service>.log.gz, or logs/<container>.log.gz where a service has several."""
    files = read_manifest(folder).get("files", {})
    suffix = ".log.gz"
    logged = {os.path.basename(path)[: -len(suffix)] for path in files if path.startswith("logs/") and path.endswith(suffix)}
    return sorted(c["container"] for c in containers if c["service"] not in logged and c["container"] not in logged)


def _normal(kind, value):
    """A value in a form that compares by content: order kept only where Redis keeps it (lists)."""
    if kind == "set":
        return sorted(value)
    if kind == "zset":
        return sorted((member, float(score)) for member, score in value)
    if kind == "hash":
        return sorted(value.items())
    return value


def rdb_content(path):
    """{(db, key): (type, value)} of every key of the snapshot without a TTL, and the keys with one.

    Keys with a TTL (the workers' heartbeats, rewritten every poll and gone within a minute) are
    left out of the comparison and returned apart, so they are named, not compared.
    """
    values, expiring = {}, []
    for entry in iter_rdb(path):
        if entry.expire_ms is not None:
            expiring.append(entry.key)
            continue
        values[(entry.db, entry.key)] = (entry.type, _normal(entry.type, entry.value))
    return values, sorted(expiring)


def compare_rdb(backup_path, final_path):
    """Every difference of content between two snapshots, key by key (keys with a TTL left out).

    Returns (differences: [str naming the key], compared: int, ttl_keys: [keys left out]).
    """
    before, ttl_before = rdb_content(backup_path)
    after, ttl_after = rdb_content(final_path)
    differences = []
    for db, key in sorted(set(before) | set(after)):
        name = key if db == 0 else f"{key} (db {db})"
        if (db, key) not in after:
            differences.append(f"{name}: in the backup, gone from the final snapshot")
        elif (db, key) not in before:
            differences.append(f"{name}: written after the backup (not in it)")
        elif before[(db, key)][0] != after[(db, key)][0]:
            differences.append(f"{name}: a {before[(db, key)][0]} in the backup, a {after[(db, key)][0]} now")
        elif after[(db, key)][0] in OPAQUE_TYPES:
            differences.append(f"{name}: a {after[(db, key)][0]}, whose content cannot be compared")
        elif before[(db, key)][1] != after[(db, key)][1]:
            differences.append(f"{name}: value changed after the backup")
    return differences, len(set(before) | set(after)), sorted(set(ttl_before) | set(ttl_after))


def compare_files(folder, sources):
    """Every difference between the participants' files now and the backup's archives.

    `sources` {name: path} are the folders backed up (outputs, inputs, ...), archived with their
    name as the members' prefix; each file is compared by path, size and sha256.
    Returns (differences: [str naming the file], compared: int).
    """
    members = {}
    for archive in archives_of(folder).values():
        for member in archive:
            if member.get("sha256") and member["path"].split("/", 1)[0] in sources:
                members[member["path"]] = member
    differences, seen = [], set()
    for name in sorted(sources):
        root = sources[name]
        if not os.path.isdir(root):
            raise WorkshopError(f"No folder at {root} ({name}): check the workshop's paths", path=root)
        for relpath, size, _dummy in list_tree(root):
            path = f"{name}/{relpath}"
            seen.add(path)
            member = members.get(path)
            if member is None:
                differences.append(f"{path}: written after the backup (not in it)")
            elif member["size"] != size or member["sha256"] != sha256_file(os.path.join(root, relpath)):
                differences.append(f"{path}: changed after the backup")
    differences += [f"{path}: in the backup, gone from {sources[path.split('/', 1)[0]]}" for path in sorted(set(members) - seen)]
    return differences, len(seen | set(members))


def final_snapshot_problem(container, mtime, not_before, window):
    """Why the RDB file in a stopped Redis container may not be its final state, or None.

    `container` is an entry of ComposeProject.inventory(). A clean shutdown (exit code 0) of a Redis
    with save points writes the snapshot as it stops, so the file must be written after the stop was
    asked for (`not_before`, when this run stopped it), else within `window` seconds of its end.
    """
    if container["state"] in ("running", "restarting", "paused"):
        return f"{container['container']} is still {container['state']}: stop every service first"
    if container.get("exit_code") != 0:
        return (
            f"{container['container']} did not shut down cleanly (exit code {container.get('exit_code')}): "
            "Redis may not have saved its final snapshot"
        )
    written = parse_time(mtime)
    finished = parse_time(container.get("finished_at"))
    if written is None or finished is None:
        return f"cannot tell when {container['container']} wrote its snapshot (mtime {mtime})"
    floor = parse_time(not_before) if not_before else None
    if floor is None:
        floor = finished.timestamp() - window
        floor_text = f"within {window}s before it stopped ({container.get('finished_at')})"
    else:
        floor_text = f"after it was asked to stop ({not_before})"
        floor = floor.timestamp()
    if written.timestamp() < floor:
        return (
            f"{container['container']} did not write its snapshot as it stopped (written {mtime}, not {floor_text}): "
            "give Redis save points (save 900 1 ...) so it saves on shutdown"
        )
    return None
