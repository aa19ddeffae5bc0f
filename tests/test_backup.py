"""Short-term phase: back up, verify, and only then allow shutdown."""

import gzip
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import (
    BACKUP_ROOT,
    PROJECT_DIR,
    REDIS_PORT,
    REPO,
    container,
    parse_time,
    run_playbook,
    staging,
    submit,
    wait_for,
    wait_for_status,
)


def tree(root):
    """{relative path: bytes} of every file under root."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def backups(workshop_id):
    folder = BACKUP_ROOT / workshop_id
    return sorted(p for p in folder.glob("backup-*") if (p / "MANIFEST.json").exists()) if folder.exists() else []


@pytest.fixture(scope="module")
def played(staging_workshop):
    """A small workshop played to its end: outputs, failures, logs, a queue history."""
    staging(
        "play", staging_workshop_play_jobs_per_user="1-3", staging_workshop_play_burst_gap=0.5, staging_workshop_play_bursts=2
    )
    return staging_workshop


@pytest.fixture
def workshop_id(played):
    """A workshop id of its own, so each test has its own backup folder; removed afterwards."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield name
    shutil.rmtree(BACKUP_ROOT / name, ignore_errors=True)


# A participant folder that is a symbolic link to another disk (the sealed backup has it).
LINKED_USER = "user099"


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory):
    """The folder on another disk LINKED_USER's outputs folder links to while `sealed` is made."""
    folder = tmp_path_factory.mktemp("elsewhere")
    (folder / "portrait.png").write_bytes(os.urandom(20000))
    return folder


@pytest.fixture(scope="module")
def sealed(played, elsewhere):
    """One sealed, verified backup of the played workshop, in a workshop folder of its own, for the
    tests that only read a backup or damage a copy of it; made while LINKED_USER's outputs folder
    was a symbolic link to `elsewhere`."""
    name = f"sealed-{uuid.uuid4().hex[:8]}"
    link = PROJECT_DIR / "data" / "outputs" / LINKED_USER
    os.symlink(elsewhere, link)
    try:
        backup(name)
    finally:
        link.unlink()
    yield BACKUP_ROOT / name
    shutil.rmtree(BACKUP_ROOT / name, ignore_errors=True)


def backup(workshop_id, *args, **kwargs):
    return run_playbook(
        "playbooks/backup.yml", *args, extra_vars={"workshop_id": workshop_id, **kwargs.pop("extra", {})}, **kwargs
    )


def test_the_manifest_lists_every_file_and_the_configuration_is_owner_only(sealed):
    """What a restore relies on. The restore itself (bytes restored equal bytes backed up, the snapshot
    loaded with the same keys and queues) is tested through the playbooks in test_restore.py."""
    [folder] = backups(sealed.name)
    assert (folder / "config" / ".env").read_bytes() == (PROJECT_DIR / ".env").read_bytes()
    assert oct((folder / "config" / ".env").stat().st_mode & 0o777) == "0o600"
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    assert set(manifest["files"]) == {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {"MANIFEST.json"}


def test_a_second_run_changes_nothing_and_changed_data_or_an_unreadable_manifest_makes_a_new_backup(workshop_id, rdb):
    backup(workshop_id)
    again = backup(workshop_id)
    assert again.changed() == 0, again.output
    [first] = backups(workshop_id)

    job = submit("user002", metadata={"staging": {"duration": 0.1, "succeed": True}})
    wait_for_status(rdb, job, {"completed"})
    time.sleep(1)  # backup names have a resolution of one second
    backup(workshop_id)

    first, second = backups(workshop_id)
    assert first.name < second.name  # a new folder; the first is untouched
    assert json.loads((first / "MANIFEST.json").read_text())["name"] == first.name

    # Nothing changed, but the newest backup's MANIFEST cannot be read (cut short): it is no backup to
    # rely on, so a new one is made beside it, which is left exactly as it is.
    garbled = (second / "MANIFEST.json").read_bytes()[:40]
    (second / "MANIFEST.json").write_bytes(garbled)
    time.sleep(1)
    anew = backup(workshop_id)
    assert anew.changed() > 0 and backups(workshop_id)[:2] == [first, second] and len(backups(workshop_id)) == 3, anew.output
    assert f"Cannot read {second / 'MANIFEST.json'}" in anew.text and "a new one is made" in anew.text
    assert (second / "MANIFEST.json").read_bytes() == garbled


def test_outputs_that_only_went_since_the_newest_backup_make_no_new_one(workshop_id):
    """As after retention or cleanup removed outputs the backup holds: a backup of what is left would hold
    nothing new, and as the newest it would be the copy retention keeps forever instead of this one."""
    backup(workshop_id)
    outputs = PROJECT_DIR / "data" / "outputs"
    aside = PROJECT_DIR.parent / f"aside-{workshop_id}"  # the same disk: a rename keeps every file as it was
    aside.mkdir()
    kept, *gone = sorted(path for path in outputs.iterdir() if path.is_dir() and any(path.iterdir()))
    for folder in gone:
        folder.rename(aside / folder.name)
    changed = next(path for path in kept.rglob("*") if path.is_file())
    original = changed.read_bytes()
    try:
        again = backup(workshop_id)
        assert again.changed() == 0 and len(backups(workshop_id)) == 1, again.output
        assert "Outputs only went since" in again.text

        changed.write_bytes(original[::-1] if original[::-1] != original else b"x" * len(original))  # same size
        time.sleep(1)  # backup names have a resolution of one second
        rewritten = backup(workshop_id)
        assert rewritten.changed() > 0 and len(backups(workshop_id)) == 2
    finally:
        changed.write_bytes(original)
        for folder in gone:
            (aside / folder.name).rename(folder)
        aside.rmdir()


def test_check_mode_writes_nothing(workshop_id):
    preview = backup(workshop_id, check=True)
    assert preview.changed() > 0
    assert "Would make backup " in preview.text and "output files and the Redis snapshot" in preview.text
    assert backups(workshop_id) == []
    assert not list((BACKUP_ROOT / workshop_id).glob(".partial-*"))


@pytest.mark.fault
def test_killed_mid_backup_then_rerun_ends_with_a_correct_backup(workshop_id, tmp_path, fault_case):
    fault_case(
        "ansible-playbook killed (SIGKILL) mid-backup, then re-run",
        expected="the killed run seals nothing; the re-run seals one backup, no .partial left, "
        "its outputs byte-equal to the project's",
    )
    bulk = PROJECT_DIR / "data" / "outputs" / "user001" / "bulk"
    subprocess.run(
        ["python3", str(REPO / "roles/staging_workshop/files/extra_outputs.py"), str(bulk), "--megabytes", "600", "--users", "1"],
        check=True,
        capture_output=True,
    )
    try:
        env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
        run = subprocess.Popen(
            ["ansible-playbook", "playbooks/backup.yml", "-e", f"workshop_id={workshop_id}"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(
            lambda: list((BACKUP_ROOT / workshop_id).glob(".partial-*/outputs.tar.partial")),
            timeout=120,
            interval=0.05,
            what="the backup to be writing its outputs archive",
        )
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        assert backups(workshop_id) == []  # nothing sealed: the interrupted backup is no backup
        [left] = (BACKUP_ROOT / workshop_id).glob(".partial-*")

        rerun = backup(workshop_id)

        [folder] = backups(workshop_id)
        assert not list((BACKUP_ROOT / workshop_id).glob(".partial-*"))
        assert f"Removed what an interrupted backup left: {left}" in " ".join(rerun.text.split())
        with tarfile.open(folder / "outputs.tar") as archive:
            # filter="data" where tarfile has it (Debian's 3.11.2 has not): the archive is ours, either way.
            archive.extractall(tmp_path, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        assert tree(tmp_path / "outputs") == tree(PROJECT_DIR / "data" / "outputs")
        fault_case.observed(f"killed while writing outputs.tar: nothing sealed; re-run sealed {folder.name}, outputs byte-equal")
    finally:
        shutil.rmtree(bulk)


@pytest.mark.fault
def test_a_full_disk_fails_clearly_and_leaves_nothing_partial(played, tmp_path, fault_case):
    fault_case(
        "Disk full before the backup (8 MiB backup root)",
        expected="backup fails 'Not enough space ... nothing was written'; the earlier backup untouched",
    )
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)], check=True)
    try:
        earlier = small / "staging-full" / "backup-20200101T000000Z"
        earlier.mkdir(parents=True)
        (earlier / "MANIFEST.json").write_text('{"files": {}}')

        run = run_playbook(
            "playbooks/backup.yml",
            extra_vars={"workshop_id": "staging-full", "workshop_backup_root": str(small)},
            expect_ok=False,
        )

        assert run.returncode != 0
        assert "Not enough space for the backup" in run.output and "nothing was written" in run.output
        assert sorted(p.name for p in (small / "staging-full").iterdir()) == ["backup-20200101T000000Z"]
        assert (earlier / "MANIFEST.json").read_text() == '{"files": {}}'
        fault_case.observed("refused before writing: 'Not enough space for the backup'; the earlier backup untouched")
    finally:
        subprocess.run(["umount", str(small)], check=True)


@pytest.mark.fault
def test_an_archive_filling_the_disk_mid_way_leaves_no_partial_file(tmp_path, fault_case):
    fault_case(
        "Disk full mid-backup (outputs.tar fills a 4 MiB disk)",
        expected="write_archive fails 'is full'; no partial file left; the source untouched",
    )
    from ansible.module_utils.workshop_backup import write_archive
    from ansible.module_utils.workshop_errors import WorkshopError

    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=True)
    try:
        source = tmp_path / "src"
        source.mkdir()
        (source / "big.png").write_bytes(os.urandom(6 << 20))
        with pytest.raises(WorkshopError, match="is full"):
            write_archive(str(small / "outputs.tar"), {"outputs": str(source)})
        assert list(small.iterdir()) == []
        assert len((source / "big.png").read_bytes()) == 6 << 20  # nothing lost: the source as it was
        fault_case.observed("WorkshopError '... is full'; the disk empty again, the source intact")
    finally:
        subprocess.run(["umount", str(small)], check=True)


@pytest.mark.parametrize("damage", ["archive", "rdb", "missing"])
@pytest.mark.fault
def test_verify_catches_a_damaged_backup(sealed, workshop_id, damage, fault_case):
    fault_case(
        "Corrupted file in a backup (outputs.tar byte, dump.rdb byte, a log missing)",
        expected="verify fails naming the backup and the file; the backup left as it is",
    )
    shutil.copytree(sealed, BACKUP_ROOT / workshop_id, symlinks=True)  # the sealed backup, damaged here in a copy
    [folder] = backups(workshop_id)
    if damage == "archive":
        _flip_byte(folder / "outputs.tar", 1024 + 100)  # inside the first member's content
    elif damage == "rdb":
        _flip_byte(folder / "redis" / "dump.rdb", 40)
    else:
        (folder / "logs" / "worker-1.log.gz").unlink()
    newer = PROJECT_DIR / "data" / "outputs" / "user001" / f"after-the-backup-{damage}.png"
    newer.write_bytes(os.urandom(64))  # the workshop changed since: `--tags verify` still makes no backup

    try:
        run = backup(workshop_id, "--tags", "verify", expect_ok=False)
    finally:
        newer.unlink()

    assert run.returncode != 0, run.output[-3000:]
    assert f"Backup {folder} is damaged" in run.output
    expected = {"archive": "outputs.tar", "rdb": "redis/dump.rdb", "missing": "logs/worker-1.log.gz: missing"}[damage]
    assert expected in run.output
    assert backups(workshop_id) == [folder]  # no new backup; the damaged one kept, never deleted
    assert "TASK [backup : Export user outputs for participants]" not in run.output
    fault_case.observed(f"{damage}: 'Backup ... is damaged: {expected}'; the backup kept")


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_configuration_can_be_kept_encrypted_with_ansible_vault(workshop_id, tmp_path):
    secret = "vault-pass-for-the-test-6f1c"
    (tmp_path / "pass").write_text(secret + "\n")
    refused = backup(workshop_id, extra={"backup_config_vault_password": secret}, expect_ok=False)
    assert refused.returncode != 0 and "set backup_config_vault_password_file" in refused.output
    assert backups(workshop_id) == []

    run = backup(workshop_id, extra={"backup_config_vault_password_file": str(tmp_path / "pass")})

    [folder] = backups(workshop_id)
    assert not (folder / "config" / ".env").exists()
    vaulted = folder / "config" / ".env.vault"
    assert vaulted.read_text().startswith("$ANSIBLE_VAULT;1.")
    decrypted = subprocess.run(
        ["ansible-vault", "view", "--vault-password-file", str(tmp_path / "pass"), str(vaulted)], capture_output=True, check=True
    ).stdout
    assert decrypted == (PROJECT_DIR / ".env").read_bytes()
    assert secret not in run.output


def test_compose_logs_exports_every_line_of_every_service_in_time_order(played, rdb, tmp_path):
    from conftest import run_module

    job = submit("user004", metadata={"staging": {"duration": 0.1, "succeed": True}})
    wait_for_status(rdb, job, {"completed"})
    ok, result = run_module("compose_logs", {"project_dir": str(PROJECT_DIR), "dest": str(tmp_path)})

    assert ok and result["changed"]
    worker = next(entry for entry in result["services"] if entry["service"] == "worker-1")
    # The worker goes on logging after the export: Docker's own count, up to where the export ended.
    until = str(int(parse_time(worker["until"]).timestamp()))
    docker_lines = subprocess.run(
        ["docker", "logs", "--timestamps", "--until", until, container("worker-1")], capture_output=True, text=True, check=True
    )
    expected = (docker_lines.stdout + docker_lines.stderr).count("\n")
    assert worker["lines"] == expected > 0
    with gzip.open(tmp_path / "worker-1.log.gz", "rt") as exported:
        lines = exported.read().splitlines()
    assert len(lines) == expected and "Processing job" in "\n".join(lines)
    with gzip.open(tmp_path / "workshop-logs.txt.gz", "rt") as combined:
        merged = combined.read().splitlines()
    assert len(merged) == result["combined"]["lines"] == sum(entry["lines"] for entry in result["services"])
    stamps = [line.split(" | ", 1)[1][:30] for line in merged]
    assert stamps == sorted(stamps)
    assert {line.split(" | ", 1)[0].strip() for line in merged} >= {"worker-1", "queue-manager", "redis"}

    again_ok, again = run_module("compose_logs", {"project_dir": str(PROJECT_DIR), "dest": str(tmp_path), "services": ["admin"]})
    assert again_ok and [entry["service"] for entry in again["services"]] == ["admin"]


# --- issue 8: complete backups, one run at a time, verify tells the truth, messages ---------------


def record_of(workshop_id):
    return json.loads((BACKUP_ROOT / workshop_id / "run-record.json").read_text())


def test_a_typo_in_the_outputs_folder_fails_naming_both_paths(workshop_id):
    typo = PROJECT_DIR / "data" / "output"
    typo.mkdir(exist_ok=True)  # even an existing folder of that name is not the workshop's outputs
    try:
        run = backup(workshop_id, extra={"workshop_outputs_dir": str(typo)}, expect_ok=False)
    finally:
        typo.rmdir()

    assert run.returncode != 0
    assert f"workshop_outputs_dir is {typo}, but the workshop writes its outputs to {PROJECT_DIR}/data/outputs" in run.output
    assert f"{container('worker-1')}:/outputs" in run.output
    assert backups(workshop_id) == []


def test_a_missing_source_folder_fails_naming_it(workshop_id):
    missing = PROJECT_DIR / "data" / "no-such-inputs"
    run = backup(
        workshop_id,
        extra={"workshop_user_dirs": {"inputs": str(missing), "user_data": str(PROJECT_DIR / "data" / "user_data")}},
        expect_ok=False,
    )
    assert run.returncode != 0
    assert f"The source folder inputs ({missing}) does not exist" in run.output
    assert backups(workshop_id) == []


def test_a_symlinked_participant_folder_is_in_the_archive(sealed, elsewhere):
    [folder] = backups(sealed.name)
    with tarfile.open(folder / "outputs.tar") as archive:
        assert archive.extractfile(f"outputs/{LINKED_USER}/portrait.png").read() == (elsewhere / "portrait.png").read_bytes()
    assert record_of(sealed.name)["backup"]["outputs"]["files"] == len(
        [m for m in json.loads((folder / "outputs.tar.members.json").read_text()) if "sha256" in m]
    )


@pytest.fixture
def bulk_outputs(played):
    """A few hundred MB of outputs, so a backup lasts long enough to be caught in the act."""
    bulk = PROJECT_DIR / "data" / "outputs" / "user001" / "bulk"
    subprocess.run(
        ["python3", str(REPO / "roles/staging_workshop/files/extra_outputs.py"), str(bulk), "--megabytes", "400", "--users", "1"],
        check=True,
        capture_output=True,
    )
    yield bulk
    shutil.rmtree(bulk)


def _start_backup(workshop_id):
    return subprocess.Popen(
        ["ansible-playbook", "playbooks/backup.yml", "-e", f"workshop_id={workshop_id}"],
        cwd=REPO,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.mark.fault
def test_two_concurrent_backups_leave_one_good_backup_and_a_clear_message(workshop_id, bulk_outputs, fault_case):
    fault_case(
        "Two backups at once",
        expected="the second refused naming the lock's owner; one sealed, verified backup; no .partial, no lock left",
    )
    first = _start_backup(workshop_id)
    wait_for(lambda: list((BACKUP_ROOT / workshop_id).glob(".partial-*")), timeout=120, interval=0.05, what="the first backup")
    second = _start_backup(workshop_id)
    second_output, _ = second.communicate(timeout=600)
    first_output, _ = first.communicate(timeout=600)

    assert first.returncode == 0, first_output[-3000:]
    assert second.returncode != 0
    assert f"Another run holds the lock of {BACKUP_ROOT / workshop_id}" in second_output
    assert "backup of " + workshop_id in second_output  # names what holds it
    [folder] = backups(workshop_id)
    record = record_of(workshop_id)
    assert record["backup"]["name"] == folder.name
    assert record["backup"]["verify"]["ok"] is True and record["backup"]["verify"]["backup"] == folder.name
    assert not list((BACKUP_ROOT / workshop_id).glob(".partial-*"))
    assert not (BACKUP_ROOT / workshop_id / ".lock").exists()
    fault_case.observed(f"second refused (lock held by the first); {folder.name} sealed and verified")


@pytest.mark.fault
def test_sigkill_mid_seal_leaves_a_recorded_verified_backup_after_the_rerun(workshop_id, bulk_outputs, fault_case):
    fault_case(
        "ansible-playbook killed (SIGKILL) mid-seal, then re-run",
        expected="the re-run ends with one recorded, verified backup; no .partial left",
    )
    run = _start_backup(workshop_id)
    wait_for(
        lambda: list((BACKUP_ROOT / workshop_id).glob(".partial-*/MANIFEST.json")),
        timeout=300,
        interval=0.02,
        what="the backup to be sealing",
    )
    os.kill(run.pid, signal.SIGKILL)  # ansible-playbook only: its module goes on, as on a real host
    run.communicate()
    # The orphaned module finishes (or not) on its own; the re-run must end with a recorded, verified backup.
    backup(workshop_id)

    [folder] = backups(workshop_id)
    record = record_of(workshop_id)
    assert record["backup"]["name"] == folder.name
    assert record["backup"]["verify"] == {**record["backup"]["verify"], "ok": True, "backup": folder.name, "failures": []}
    assert not list((BACKUP_ROOT / workshop_id).glob(".partial-*"))
    fault_case.observed(f"{folder.name} recorded, verify ok, no .partial")


@pytest.mark.fault
def test_a_failed_verify_is_recorded_as_failed_naming_the_member(sealed, workshop_id, fault_case):
    fault_case(
        "Corrupted member in a backup's outputs.tar",
        expected="verify names the member; the run record's backup.verify.ok becomes false",
    )
    shutil.copytree(sealed, BACKUP_ROOT / workshop_id, symlinks=True)  # the sealed backup, damaged here in a copy
    [folder] = backups(workshop_id)
    assert record_of(workshop_id)["backup"]["verify"]["ok"] is True
    with tarfile.open(folder / "outputs.tar") as archive:
        member = next(info for info in archive if info.isfile() and info.size > 200)
    _flip_byte(folder / "outputs.tar", member.offset_data + 100)

    run = backup(workshop_id, "--tags", "verify", expect_ok=False)

    assert run.returncode != 0
    assert f"outputs.tar member {member.name}: content differs from the manifest" in run.output
    verify = record_of(workshop_id)["backup"]["verify"]
    assert verify["ok"] is False and verify["backup"] == folder.name
    assert verify["failures"] == [{"file": "outputs.tar", "member": member.name, "reason": "content differs from the manifest"}]
    fault_case.observed(f"named {member.name}: content differs; verify.ok false in the run record")


@pytest.mark.fault
def test_a_wrong_redis_password_names_the_host_and_the_env_file(workshop_id, tmp_path, fault_case):
    fault_case(
        "Wrong Redis password (backup)",
        expected="backup fails naming the host, the Redis address and the .env; the password never shown; no backup sealed",
    )
    env = tmp_path / ".env"
    env.write_text(
        "".join(
            "REDIS_PASSWORD=not-the-password\n" if line.startswith("REDIS_PASSWORD=") else line + "\n"
            for line in (PROJECT_DIR / ".env").read_text().splitlines()
        )
    )
    run = backup(workshop_id, extra={"workshop_env_file": str(env)}, expect_ok=False)

    assert run.returncode != 0
    assert "on localhost failed" in run.output
    assert f"Redis at 127.0.0.1:{REDIS_PORT} refused the password: check REDIS_PASSWORD in {env}" in run.output
    assert "not-the-password" not in run.output
    assert backups(workshop_id) == []  # no backup sealed without the snapshot
    fault_case.observed(f"'Redis at 127.0.0.1:{REDIS_PORT} refused the password: check REDIS_PASSWORD in {env}'; nothing sealed")


def test_a_relative_backup_root_is_refused_at_once_in_check_mode(workshop_id):
    started = time.monotonic()
    run = backup(workshop_id, check=True, extra={"workshop_backup_root": "relative/backups"}, expect_ok=False)
    assert run.returncode != 0 and "is a relative path: set workshop_backup_root" in run.output
    assert time.monotonic() - started < 120


def test_redis_snapshot_in_check_mode_asks_neither_redis_nor_docker(played, tmp_path):
    from conftest import run_module

    # A Docker host that does not answer and a Redis port nobody listens on: a dry run must not care.
    ok, result = run_module(
        "redis_snapshot",
        {
            "dest": str(tmp_path / "dump.rdb"),
            "project_dir": str(PROJECT_DIR),
            "docker_host": "unix:///nonexistent.sock",
            "redis_port": 1,
            "env_file": str(PROJECT_DIR / ".env"),
        },
        check=True,
    )
    assert ok and result["changed"] and result["source"] == "service redis:the RDB path Redis reports", result
    assert not (tmp_path / "dump.rdb").exists()


def test_a_wrong_rdb_path_is_named_before_any_save(played, rdb, tmp_path):
    from conftest import REDIS_ARGS, run_module

    saves = rdb.info("persistence")["rdb_saves"]
    ok, result = run_module(
        "redis_snapshot",
        {"dest": str(tmp_path / "dump.rdb"), "project_dir": str(PROJECT_DIR), "rdb_path": "/data2/dump.rdb", **REDIS_ARGS},
    )
    assert not ok
    expected = f"rdb_path is /data2/dump.rdb, but Redis at 127.0.0.1:{REDIS_PORT} writes its snapshot to /data/dump.rdb"
    assert expected in result["msg"]
    assert rdb.info("persistence")["rdb_saves"] == saves  # no BGSAVE was asked for


def test_compose_logs_check_mode_compares_content(played, rdb, tmp_path):
    from conftest import run_module

    args = {"project_dir": str(PROJECT_DIR), "dest": str(tmp_path), "services": ["redis"]}
    ok, _ = run_module("compose_logs", args)
    assert ok
    ok, same = run_module("compose_logs", args, check=True)
    assert ok and not same["changed"]
    with gzip.open(tmp_path / "redis.log.gz", "wb") as damaged:
        damaged.write(b"not the log\n")
    before = (tmp_path / "redis.log.gz").read_bytes()
    ok, differs = run_module("compose_logs", args, check=True)
    assert ok and differs["changed"]
    assert (tmp_path / "redis.log.gz").read_bytes() == before  # a dry run writes nothing
