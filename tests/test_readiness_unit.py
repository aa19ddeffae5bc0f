"""Next-workshop readiness, fast tier: real certificates made by openssl, served by a real TLS server
on loopback, real backup folders in the backup's own format, a real redis-server for the queues."""

import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import tarfile
import threading
from datetime import datetime, timedelta, timezone

import pytest
from ansible.module_utils.workshop_backup import seal, write_archive, write_members
from ansible.module_utils.workshop_readiness import (
    check_backup,
    check_certificate,
    check_disk,
    check_gpu_host,
    check_restore_test,
    compose_images,
    next_workshop_date,
)
from scratch_redis import free_port, port_of, running_redis

from conftest import REPO

DOMAIN = "ws.example.org"


def openssl(args, data):
    done = subprocess.run(args, input=data, capture_output=True, text=True, check=False)
    return done.returncode, done.stdout, done.stderr


def make_cert(folder, days, name=DOMAIN):
    """A self-signed certificate for `name`, valid `days` days from now, made by openssl: (cert, key)."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "fullchain.pem", folder / "privkey.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            str(days),
            "-subj",
            f"/CN={name}",
            "-addext",
            f"subjectAltName=DNS:{name}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def not_after(cert):
    """The certificate's end, read apart from the code under test (openssl -enddate, strptime)."""
    out = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-enddate"], capture_output=True, text=True, check=True)
    return datetime.strptime(out.stdout.strip().split("=", 1)[1], "%b %d %H:%M:%S %Y %Z").replace(tzinfo=timezone.utc)


@pytest.fixture
def tls_server():
    """Start a real TLS server on loopback serving a given certificate; yields start(cert, key) -> "127.0.0.1:port"."""
    servers = []

    def start(cert, key):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.2)
        stop = threading.Event()

        def serve():
            while not stop.is_set():
                try:
                    conn, _addr = listener.accept()
                except OSError:
                    continue
                try:
                    with context.wrap_socket(conn, server_side=True) as tls:
                        tls.recv(1)
                except (OSError, ssl.SSLError):
                    pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        servers.append((stop, thread, listener))
        return f"127.0.0.1:{listener.getsockname()[1]}"

    yield start
    for stop, thread, listener in servers:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def closed_address():
    return f"127.0.0.1:{free_port()}"


def project(tmp_path, days, name=DOMAIN):
    """A project folder whose .env names DOMAIN and a relative SSL_CERT_PATH, with that certificate."""
    project_dir = tmp_path / "comfyui"
    cert, key = make_cert(project_dir / "ssl", days, name)
    env = {"DOMAIN": DOMAIN, "SSL_CERT_PATH": "./ssl/fullchain.pem"}
    (project_dir / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return project_dir, env, cert, key


def certificate_line(project_dir, env, address, now=None, next_day=None):
    now = now or datetime.now(timezone.utc)
    next_day = next_day or (now + timedelta(days=7)).date()
    return check_certificate(str(project_dir), env, str(project_dir / ".env"), next_day, now, openssl, address=address)


# --- the certificate -----------------------------------------------------------------------------------


def test_a_certificate_expiring_before_the_next_workshop_is_flagged_with_its_days_left(tmp_path, tls_server):
    project_dir, env, cert, key = project(tmp_path, days=3)
    address = tls_server(cert, key)
    now = datetime.now(timezone.utc)
    next_day = (now + timedelta(days=7)).date()

    entry, facts = certificate_line(project_dir, env, address, now, next_day)

    days_left = (not_after(cert) - now).days  # 2: made a moment ago for 3 days
    assert entry["ok"] is False
    assert entry["reason"].startswith(f"the certificate at {cert} expires {not_after(cert):%Y-%m-%d %H:%M} UTC")
    assert f"before the end of the next workshop on {next_day.isoformat()}" in entry["reason"]
    assert f"{address} serves this certificate" in entry["reason"]
    assert entry["figures"] == f"{days_left} days left" and days_left == 2
    assert facts["served"]["not_after"] == not_after(cert).isoformat()


def test_a_certificate_valid_for_90_days_is_ready_and_served_the_same(tmp_path, tls_server):
    project_dir, env, cert, key = project(tmp_path, days=90)
    address = tls_server(cert, key)
    now = datetime.now(timezone.utc)

    entry, facts = certificate_line(project_dir, env, address, now)

    assert entry["ok"] is True, entry
    assert entry["evidence"].startswith(f"{cert} for {DOMAIN} valid until {not_after(cert):%Y-%m-%d %H:%M} UTC")
    assert entry["evidence"].endswith(f"{address} serves this certificate")
    assert entry["figures"] == f"{(not_after(cert) - now).days} days left" == "89 days left"
    assert facts["file"]["names"] == [DOMAIN]


def test_the_next_workshop_day_counts_whole(tmp_path):
    """Valid until the evening before the next workshop is not enough; through its end is."""
    project_dir, env, cert, _key = project(tmp_path, days=3)
    end = not_after(cert)
    now = datetime.now(timezone.utc)

    on_the_day, _facts = certificate_line(project_dir, env, closed_address(), now, end.date())
    day_before, _facts = certificate_line(project_dir, env, closed_address(), now, end.date() - timedelta(days=1))

    assert on_the_day["ok"] is False and day_before["ok"] is True


def test_a_served_certificate_other_than_the_file_is_said_and_checked(tmp_path, tls_server):
    project_dir, env, cert, _key = project(tmp_path, days=90)
    old_cert, old_key = make_cert(tmp_path / "old", days=3)
    address = tls_server(old_cert, old_key)

    entry, facts = certificate_line(project_dir, env, address)

    assert entry["ok"] is False
    assert (
        f"{address} serves a DIFFERENT certificate (until {not_after(old_cert):%Y-%m-%d %H:%M} UTC): reload nginx"
        in entry["reason"]
    )
    assert f"the certificate served on {address} expires {not_after(old_cert):%Y-%m-%d %H:%M} UTC" in entry["reason"]
    assert f"the certificate at {cert}" not in entry["reason"]  # the file itself is fine
    assert facts["file"]["sha256"] != facts["served"]["sha256"]


def test_a_certificate_for_another_name_is_flagged(tmp_path):
    project_dir, env, cert, _key = project(tmp_path, days=90, name="other.example.org")

    entry, _facts = certificate_line(project_dir, env, closed_address())

    assert entry["ok"] is False
    assert f"the certificate at {cert} is for other.example.org, not {DOMAIN}" in entry["reason"]


def test_an_unreachable_server_leaves_the_file_checked_alone(tmp_path):
    project_dir, env, cert, _key = project(tmp_path, days=90)
    address = closed_address()

    entry, facts = certificate_line(project_dir, env, address)

    assert entry["ok"] is True and entry["evidence"].startswith(f"{cert} for {DOMAIN} valid until ")
    assert f"not reachable on {address}" in entry["evidence"] and "the file alone was checked" in entry["evidence"]
    assert facts["served"] is None


def test_a_missing_or_garbled_certificate_file_is_named(tmp_path):
    project_dir, env, cert, _key = project(tmp_path, days=90)
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    garbled, _facts = certificate_line(project_dir, env, closed_address())
    cert.unlink()
    missing, _facts = certificate_line(project_dir, env, closed_address())

    assert garbled["ok"] is False and garbled["reason"].startswith(f"{cert} holds no certificate openssl can read")
    assert missing["ok"] is False
    assert (
        missing["reason"] == f"Cannot read the certificate {cert} (SSL_CERT_PATH=./ssl/fullchain.pem): No such file or directory"
    )


def test_the_next_workshop_defaults_to_a_week_ahead_and_refuses_a_non_date():
    now = datetime(2026, 11, 29, 23, 0, tzinfo=timezone.utc)
    assert next_workshop_date("", now).isoformat() == "2026-12-06"
    assert next_workshop_date("2027-01-15", now).isoformat() == "2027-01-15"
    with pytest.raises(Exception, match="not a date"):
        next_workshop_date("next tuesday", now)


# --- the backups -------------------------------------------------------------------------------------


def make_backup(tmp_path, name="backup-20261129T170000Z", backup_dir=None, snapshot=None):
    """A sealed backup of the backup phase's own format (outputs.tar, its member list, a config file),
    in `backup_dir` (default <tmp_path>/backups); with `snapshot` (dump.rdb, its persistent keys) its Redis too."""
    backup_dir = backup_dir or tmp_path / "backups"
    source = tmp_path / "data" / "outputs"
    for user, count in (("user001", 3), ("user002", 2)):
        (source / user).mkdir(parents=True, exist_ok=True)
        for n in range(count):
            (source / user / f"img{n}.png").write_bytes(os.urandom(100_000 + n))
    partial = backup_dir / f".partial-{name}"
    (partial / "config").mkdir(parents=True)
    members, _vanished = write_archive(str(partial / "outputs.tar"), {"outputs": str(source)})
    write_members(str(partial / "outputs.tar"), members)
    (partial / "config" / ".env").write_text("DOMAIN=ws.example.org\n")
    facts = {"name": name}
    if snapshot:
        (partial / "redis").mkdir()
        shutil.copyfile(snapshot[0], partial / "redis" / "dump.rdb")
        facts["redis"] = {"file": "redis/dump.rdb", "keys": snapshot[1]}
    final = backup_dir / name
    seal(str(partial), str(final), facts)
    return final


def test_a_readable_backup_is_ready(tmp_path):
    folder = make_backup(tmp_path)
    files = json.loads((folder / "MANIFEST.json").read_text())["files"]
    record = {"backup": {"verify": {"ok": True, "at": "2026-11-29T17:05:00+00:00", "backup": folder.name, "failures": []}}}

    entry, newest = check_backup(str(folder.parent), record)

    total = sum(entry_["size"] for entry_ in files.values())
    assert newest == folder.name and entry["ok"] is True
    assert entry["evidence"] == (
        f"{folder}: MANIFEST and {len(files)} files ({total / 1024:.1f} KiB) read, sizes as listed; "
        "verified at 2026-11-29T17:05:00+00:00"
    )


def test_a_missing_backup_folder_is_named(tmp_path):
    entry, newest = check_backup(str(tmp_path / "backups" / "berlin"), {})
    assert entry["ok"] is False and newest is None
    assert (
        entry["reason"] == f"No backup in {tmp_path / 'backups' / 'berlin'} (no backup-*/MANIFEST.json): run playbooks/backup.yml"
    )

    (tmp_path / "backups" / "berlin" / "backup-20261129T170000Z").mkdir(parents=True)  # no MANIFEST: never a backup
    again, newest = check_backup(str(tmp_path / "backups" / "berlin"), {})
    assert again == entry and newest is None  # the same words: a second run on unchanged data rewrites nothing


def test_a_manifest_that_does_not_parse_is_named(tmp_path):
    folder = make_backup(tmp_path)
    (folder / "MANIFEST.json").write_text('{"files": {"outputs.tar": ')

    entry, _newest = check_backup(str(folder.parent), {})

    assert entry["ok"] is False
    assert entry["reason"].startswith(f"Cannot read {folder / 'MANIFEST.json'}: ")


def test_a_truncated_file_is_named_with_its_sizes(tmp_path):
    folder = make_backup(tmp_path)
    archive = folder / "outputs.tar"
    listed = archive.stat().st_size
    os.truncate(archive, 1000)

    entry, _newest = check_backup(str(folder.parent), {})

    assert entry["ok"] is False
    assert entry["reason"] == f"{archive}: 1000 bytes, its MANIFEST lists {listed}"


def test_a_garbled_archive_of_the_right_size_is_named(tmp_path):
    folder = make_backup(tmp_path)
    archive = folder / "outputs.tar"
    size = archive.stat().st_size
    archive.write_bytes(b"\xff" * size)

    entry, _newest = check_backup(str(folder.parent), {})

    assert entry["ok"] is False and entry["reason"].startswith(f"{archive}: not a readable tar archive")


def test_the_newest_backup_is_checked_and_a_failed_verification_counts(tmp_path):
    make_backup(tmp_path, "backup-20261128T170000Z")
    newer = make_backup(tmp_path, "backup-20261129T170000Z")
    record = {"backup": {"verify": {"ok": False, "at": "2026-11-29T18:00:00+00:00", "backup": newer.name, "failures": [{}]}}}

    entry, newest = check_backup(str(newer.parent), record)

    assert newest == newer.name
    assert entry["ok"] is False and entry["reason"] == "its verification at 2026-11-29T18:00:00+00:00 failed (1 failures)"


# --- the restore test --------------------------------------------------------------------------------

NOW = datetime(2026, 11, 29, 21, 0, tzinfo=timezone.utc)


def restore_record(days_ago, ok=True):
    at = (NOW - timedelta(days=days_ago)).isoformat()
    failures = [] if ok else [{"file": "outputs.tar", "member": None, "reason": "content differs from the manifest"}]
    return {"restore_test": {"ok": ok, "at": at, "backup": "backup-20261020T170000Z", "files_compared": 9, "failures": failures}}


@pytest.mark.parametrize(
    ("record", "ok", "text"),
    [
        (restore_record(29), True, "Passed: backup-20261020T170000Z at 2026-10-31 21:00 UTC, 9 files compared"),
        (
            restore_record(31),
            False,
            "The last restore test (backup-20261020T170000Z at 2026-10-29 21:00 UTC) is older than 30 days",
        ),
        (
            restore_record(1, ok=False),
            False,
            "The last restore test (backup-20261020T170000Z at 2026-11-28 21:00 UTC) FAILED: "
            "outputs.tar: content differs from the manifest",
        ),
        ({}, False, "No restore test in /b/run-record.json: run playbooks/restore_test.yml"),
    ],
    ids=["fresh", "too-old", "failed", "none"],
)
def test_a_restore_test_counts_when_it_passed_within_the_max_age(record, ok, text):
    entry = check_restore_test(record, "/b/run-record.json", 30, NOW)
    assert entry["ok"] is ok and entry["evidence" if ok else "reason"] == text


def test_a_fetch_that_failed_before_a_backup_was_chosen_says_so():
    record = restore_record(1, ok=False)
    record["restore_test"].update(backup=None, source="s3", fetched=False)

    entry = check_restore_test(record, "/b/run-record.json", 30, NOW)

    assert not entry["ok"]
    assert entry["reason"].startswith(
        "The last restore test (the newest backup on s3 at 2026-11-28 21:00 UTC, which could not be fetched) FAILED"
    )


def test_a_stale_restore_test_says_one_is_run():
    entry = check_restore_test(restore_record(40), "/b/run-record.json", 30, NOW, newest="backup-20261129T170000Z", will_run=True)
    assert entry["reason"].endswith("; a restore test of backup-20261129T170000Z is run (readiness_run_restore_test)")
    assert entry["figures"] == "40 days ago"


# --- disk, images, GPU host ----------------------------------------------------------------------------


def test_disk_needs_the_margin_times_the_last_outputs(tmp_path):
    outputs = tmp_path / "data" / "outputs"
    outputs.mkdir(parents=True)
    (outputs / "img.png").write_bytes(b"x" * 5000)
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    record = {"backup": {"outputs": {"bytes": free // 2 + (1 << 30)}}}  # twice that cannot fit

    short, facts = check_disk(str(outputs), str(tmp_path / "backups"), record, "/r.json", 2)
    fits, fits_facts = check_disk(str(outputs), str(tmp_path / "backups"), {}, "/r.json", 2)

    assert short["ok"] is False and short["reason"].startswith(f"{facts['needed_bytes'] / 2**30:.1f} GiB free needed (2 x ")
    assert short["reason"].endswith(f", less on the filesystem of {outputs} and {tmp_path / 'backups'}")
    assert facts["needed_bytes"] == 2 * (free // 2 + (1 << 30))
    assert fits["ok"] is True and fits_facts["outputs_bytes"] == 5000 and fits_facts["needed_bytes"] == 10000
    assert fits["evidence"] == (
        f"9.8 KiB free needed (2 x 4.9 KiB, the last workshop's outputs: {outputs} as it is now, no backup recorded), "
        f"there on one filesystem of {outputs} and {tmp_path / 'backups'}"
    )


def test_compose_images_follow_compose_file_includes_and_variables(tmp_path):
    (tmp_path / "docker-compose.yml").write_text(
        "x-py: &py\n  image: comfy/python:${PY_TAG:-3.11}\n"
        "include:\n  - docker-compose.users.yml\n"
        "services:\n  redis:\n    image: 'redis:7-alpine'\n  qm:\n    <<: *py\n"
        "  w:\n    image: ${WORKER_IMAGE}  # the GPU worker\n"
    )
    (tmp_path / "docker-compose.users.yml").write_text('services:\n  user001:\n    image: "comfyui-frontend:latest"\n')
    env = {"WORKER_IMAGE": "comfy/worker:1.2"}

    assert compose_images(str(tmp_path), env) == [
        "comfy/python:3.11",
        "comfy/worker:1.2",
        "comfyui-frontend:latest",
        "redis:7-alpine",
    ]
    # COMPOSE_FILE of the .env replaces the default file.
    assert compose_images(str(tmp_path), {**env, "COMPOSE_FILE": "docker-compose.users.yml"}) == ["comfyui-frontend:latest"]


def test_the_gpu_host_line():
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        port = listener.getsockname()[1]
        up = check_gpu_host("127.0.0.1", port, 2.0)
    finally:
        listener.close()
    down = check_gpu_host("127.0.0.1", free_port(), 2.0, tries=1)
    unset = check_gpu_host("", 22, 2.0)

    assert up["ok"] is True and up["evidence"] == f"127.0.0.1:{port} answers from the VPS" and up["figures"].endswith(" ms")
    assert down["ok"] is False and down["reason"].startswith(
        f"127.0.0.1:{down['reason'].split(':')[1].split()[0]} does not answer"
    )
    assert unset["ok"] is None and unset["evidence"].startswith("No separate GPU host configured")


# --- the module, and what it keeps ---------------------------------------------------------------------


def run_main(name, args, capsys, check=False):
    from ansible.module_utils.testing import patch_module_args

    from conftest import load_module

    module = load_module(name)
    with patch_module_args({**args, "_ansible_check_mode": check, "_ansible_diff": True}), pytest.raises(SystemExit):
        module.main()
    return json.loads(capsys.readouterr().out)


def test_the_module_reports_every_line_and_a_busy_queue(tmp_path, capsys, tls_server):
    project_dir, _env, cert, key = project(tmp_path, days=3)
    (project_dir / "data" / "outputs").mkdir(parents=True)
    make_backup(tmp_path)
    record = tmp_path / "backups" / "run-record.json"
    with running_redis(tmp_path) as client:
        client.zadd("queue:pending", {"job-1": 2e6})
        client.zadd("queue:running", {"job-2": 1.0, "job-3": 2.0})
        result = run_main(
            "readiness_facts",
            {
                "project_dir": str(project_dir),
                "outputs_dir": str(project_dir / "data" / "outputs"),
                "backup_dir": str(tmp_path / "backups"),
                "backup_root": str(tmp_path),
                "record": str(record),
                "redis_port": port_of(client),
                "redis_password": "",
                "docker_host": f"unix://{tmp_path}/no-docker.sock",
                "docker_timeout": 2,
                "tls_address": tls_server(cert, key),
                "next_workshop": (datetime.now(timezone.utc) + timedelta(days=7)).date().isoformat(),
            },
            capsys,
        )

    lines = {entry["check"]: entry for entry in result["lines"]}
    assert [entry["check"] for entry in result["lines"]] == [
        "backup",
        "restore_test",
        "certificate",
        "disk",
        "images",
        "queues",
        "gpu_host",
    ]
    assert result["changed"] is False and result["ok"] is False
    assert (
        lines["backup"]["ok"] is True and lines["certificate"]["ok"] is False and lines["certificate"]["figures"] == "2 days left"
    )
    assert lines["queues"]["ok"] is False
    assert (
        lines["queues"]["reason"]
        == f"Redis at 127.0.0.1:{port_of(client)} still holds 1 pending, 2 running: drain or cancel them (playbooks/drain.yml)"
    )
    assert lines["images"]["ok"] is False and lines["images"]["reason"].startswith(
        f"No Docker Engine answers at unix://{tmp_path}/no-docker.sock"
    )
    assert lines["gpu_host"]["ok"] is None
    assert result["table"][0].startswith(f"Next-workshop readiness for {result['next_workshop']}: NOT READY")
    assert result["table"][3].startswith("✗ TLS certificate valid ") and result["table"][3].endswith("(2 days left)")
    assert not record.exists()  # read-only


def readiness_of(*oks, figures="1 day left"):
    lines = [
        {"check": "queues", "item": "Queues empty", "ok": ok, ("evidence" if ok else "reason"): f"text {ok}", "figures": figures}
        for ok in oks
    ]
    return {
        "at": datetime.now(timezone.utc).isoformat(),
        "ok": all(oks),
        "next_workshop": "2026-12-06",
        "lines": lines,
        "table": [],
    }


def test_the_report_writes_once_and_again_only_when_the_outcome_changes(tmp_path, capsys):
    dest = tmp_path / "backups" / "berlin"
    record = dest / "run-record.json"
    args = {"dest": str(dest), "record": str(record), "workshop_id": "berlin"}

    dry = run_main("readiness_report", {**args, "readiness": readiness_of(True)}, capsys, check=True)
    assert dry["changed"] is True and not dest.exists()

    first = run_main("readiness_report", {**args, "readiness": readiness_of(True)}, capsys)
    kept = json.loads((dest / "readiness.json").read_text())
    stamps = {name: (dest / name).stat().st_mtime_ns for name in ("readiness.json", "readiness.md", "run-record.json")}
    assert first["changed"] is True and stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert json.loads(record.read_text())["readiness"] == kept == first["section"]
    assert "| ✓ | Queues empty | text True (1 day left) |" in (dest / "readiness.md").read_text()

    # Later, the same verdicts with drifted figures: nothing rewritten, the first time kept.
    again = run_main("readiness_report", {**args, "readiness": readiness_of(True, figures="0 days left")}, capsys)
    assert again["changed"] is False and again["section"]["at"] == kept["at"]
    assert stamps == {name: (dest / name).stat().st_mtime_ns for name in stamps}

    changed = run_main("readiness_report", {**args, "readiness": readiness_of(False)}, capsys)
    assert changed["changed"] is True and json.loads(record.read_text())["readiness"]["ok"] is False
    assert changed["diff"]["before"] != changed["diff"]["after"]
    assert "**NOT READY (1 of 1 checks failed)**" in (dest / "readiness.md").read_text()


def test_an_empty_outputs_archive_reads_on_the_hosts_python(tmp_path):
    """A workshop without outputs has a valid tar with no member; the check runs on the host's Python
    (3.10 here), whose tarfile differs from the controller's."""
    package = tmp_path / "pkg" / "ansible" / "module_utils"
    package.mkdir(parents=True)
    for init in (package.parent / "__init__.py", package / "__init__.py"):
        init.write_text("")
    for source in (REPO / "module_utils").glob("*.py"):
        shutil.copy(source, package)
    with tarfile.open(tmp_path / "outputs.tar", "w"):
        pass
    python = os.environ.get("COMFY_WRAPUP_HOST_PYTHON") or str(REPO / ".venv-host/bin/python")
    code = (
        "import sys; from ansible.module_utils import workshop_readiness as r; "
        "print(r._quick_read(sys.argv[1], int(sys.argv[2])))"
    )
    archive = tmp_path / "outputs.tar"
    read = subprocess.run(
        [python, "-c", code, str(archive), str(archive.stat().st_size)],
        cwd=tmp_path / "pkg",
        capture_output=True,
        text=True,
        check=True,
    )
    assert read.stdout == "None\n", read
