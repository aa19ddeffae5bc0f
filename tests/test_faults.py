"""Fault cases that belong to no one phase's test file: the real part fails mid-way, and nothing is lost.

Each case states itself through `fault_case` (tests/faultlog.py): `make faults` prints the table.
Cases without Docker use scratch folders, the real S3 server (rclone), the real sshd and a small
tmpfs; the slow ones among them (whole playbook or module runs, tens of seconds) are marked `staging`
so the fast tier keeps its minute. The Docker cases reuse the session's staging workshop.
"""

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from ansible.module_utils.workshop_archive import remote_key
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_record import read_record
from ansible.module_utils.workshop_share import share
from s3server import (
    S3Server,
    s3,  # noqa: F401 - a fixture (of site)
)
from smtpserver import smtp  # noqa: F401 - a fixture (of site)
from test_archive_unit import WORKSHOP, bucket_files, files_of, kill_tree, make_backup, run_main, s3_args, ssh_args
from test_share_playbook_unit import LINK, fetch
from test_share_playbook_unit import PASSWORDS as SITE_PASSWORDS
from test_share_playbook_unit import site as site  # the fixture
from test_share_unit import MADE, PASSWORDS, open_with_7z, params, tree
from test_share_unit import workshop as workshop  # the fixture

from conftest import BACKUP_ROOT, COMPOSE_PROJECT, PROJECT_DIR, REPO, compose, container, run_module, run_playbook, wait_for


@contextlib.contextmanager
def small_disk(path, size):
    """A tmpfs of `size` mounted at `path` for the block: a disk that fills up."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def grow(path, size):
    """Free space on the small disk, as an admin would: it is given `size` in all."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def matches_manifest(folder):
    """Every file of a sealed backup has the size and sha256 its MANIFEST lists (nothing lost or altered)."""
    manifest = json.loads((Path(folder) / "MANIFEST.json").read_text())["files"]
    on_disk = {rel: data for rel, data in files_of(folder).items() if rel != "MANIFEST.json"}
    assert sorted(on_disk) == sorted(manifest)
    for rel, data in on_disk.items():
        assert hashlib.sha256(data).hexdigest() == manifest[rel]["sha256"] and len(data) == manifest[rel]["size"], rel
    return len(on_disk)


def s3_listing(target):
    """Every key in the bucket of an archive_targets entry."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=target["endpoint_url"],
        aws_access_key_id=target["access_key"],
        aws_secret_access_key=target["secret_key"],
        region_name=target["region"],
    )
    return [o["Key"] for o in client.list_objects_v2(Bucket=target["bucket"]).get("Contents") or []]


# --- archive: the SSH target's disk fills mid-file ---------------------------------------------------


# End to end and tens of seconds: in the Docker tier's time (make test), not the fast tier's minute.
@pytest.mark.staging
@pytest.mark.fault
def test_the_ssh_target_filling_up_mid_copy_fails_clearly_and_the_rerun_completes(tmp_path, sshd, capsys, fault_case):
    fault_case(
        "Disk full mid-archive (the SSH target's disk fills mid-file)",
        expected="archive_copy fails naming the target and the full disk; no partial file under a final name; "
        "local backup = MANIFEST; after space is freed the re-run completes byte-exact and verified",
    )
    backup_dir, name, record = make_backup(tmp_path, big=12 << 20)
    local = files_of(backup_dir / name)
    with small_disk(tmp_path / "nas", "6m"):
        failed = run_main(ssh_args(sshd, tmp_path, backup_dir, record), capsys)

        assert failed["failed"] is True and "nas" in failed["msg"] and "No space left on device" in failed["msg"], failed
        remote = tmp_path / "nas" / WORKSHOP / name
        finals = {rel: data for rel, data in files_of(remote).items() if not Path(rel).name.startswith(".")}
        assert "outputs.tar" not in finals and all(data == local[rel] for rel, data in finals.items())
        assert (read_record(record).get("archive") or {}).get("targets", {}).get("nas", {}).get("verified") is not True
        assert matches_manifest(backup_dir / name) == len(local) - 1

        grow(tmp_path / "nas", "64m")
        again = run_main(ssh_args(sshd, tmp_path, backup_dir, record), capsys)

        assert again.get("failed") is not True and again["done"] is True, again
        assert files_of(remote) == local  # every file, byte for byte, and no .part left
        assert read_record(record)["archive"]["targets"]["nas"]["verified"] is True
    fault_case.observed(f"failed: {failed['msg'][:160]}; re-run sent {again['progress']['bytes_sent']} B, copy == backup")


# --- archive: the object storage goes away mid-upload, then comes back -------------------------------


# End to end and tens of seconds: in the Docker tier's time (make test), not the fast tier's minute.
@pytest.mark.staging
@pytest.mark.fault
def test_object_storage_stopped_mid_upload_fails_naming_it_and_the_rerun_after_restart_completes(tmp_path, fault_case):
    fault_case(
        "Object storage stopped mid-upload, then restarted",
        expected="archive_copy fails naming the target and endpoint; no object half-visible; local backup = MANIFEST; "
        "after the restart the re-run completes, bucket == backup, verified",
    )
    server = S3Server(tmp_path / "s3").start()
    try:
        backup_dir, name, record = make_backup(tmp_path, big=30 << 20)
        local = files_of(backup_dir / name)
        command = [
            "ansible",
            "workshop",
            "-i",
            str(REPO / "inventory" / "local"),
            "-m",
            "archive_copy",
            "-a",
            json.dumps(s3_args(server, backup_dir, record)),
        ]
        env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_CALLBACK_RESULT_FORMAT="json")
        client = server.client()
        key = remote_key("comfy", WORKSHOP, name, "outputs.tar")
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def parts_sent():
            try:
                uploads = client.list_multipart_uploads(Bucket="workshops", Prefix=key).get("Uploads") or []
            except client.exceptions.NoSuchUpload:  # rclone's answer while none is open
                return 0
            return len(client.list_parts(Bucket="workshops", Key=key, UploadId=uploads[0]["UploadId"]).get("Parts") or [])

        wait_for(lambda: parts_sent() >= 2 or process.poll() is not None, timeout=60, interval=0.02, what="two parts sent")
        server.stop()  # the storage goes away mid-file
        out, err = process.communicate(timeout=180)

        assert process.returncode != 0, out + err
        result = json.loads(out.partition(" => ")[2])
        assert "Archive target 's3test'" in result["msg"] and server.endpoint_url in result["msg"], result["msg"]
        assert not server.path_of(key).exists()  # nothing half-written under the final name
        assert matches_manifest(backup_dir / name) == len(local) - 1

        server.start()  # the same endpoint and bucket, back again
        rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)

        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert bucket_files(server, name) == local
        assert read_record(record)["archive"]["targets"]["s3test"]["verified"] is True
    finally:
        server.stop()
    fault_case.observed(f"failed: {result['msg'][:160]}; after the restart the re-run completed, bucket == backup, verified")


# --- share: the disk fills while the archives are built ----------------------------------------------


@pytest.mark.fault
def test_a_disk_filling_up_mid_share_fails_clearly_and_the_rerun_builds_every_archive(workshop, tmp_path, fault_case):
    fault_case(
        "Disk full mid-share (archives and served folder on a full disk)",
        expected="share fails naming the file and the full disk; no .partial left; every archive present opens to "
        "exactly its owner's bytes; outputs untouched; after space is freed the re-run completes",
    )
    outputs_before = tree(workshop / "data" / "outputs")
    disk = tmp_path / "disk"
    with small_disk(disk, "160k"):
        settings = params(workshop, tmp_path, share_dir=str(disk / "ws" / "share"), folder=str(disk / "served"), jobs=1)
        with pytest.raises(WorkshopError, match="No space left on device") as failed:
            share(settings, check_mode=False)

        assert not [p for p in disk.rglob("*") if p.name.endswith(".partial")]
        for archive in disk.rglob("*.zip"):
            user = archive.name.split("-")[1]
            rc, _ = open_with_7z(archive, PASSWORDS[user], tmp_path / "x" / archive.parent.name / user)
            assert rc == 0 and tree(tmp_path / "x" / archive.parent.name / user) == {
                f"outputs/{n}": d for n, d in MADE[user].items()
            }
        assert tree(workshop / "data" / "outputs") == outputs_before

        grow(disk, "8m")
        result = share(settings, check_mode=False)

        assert [p["user"] for p in result["participants"]] == sorted(MADE)
        for entry in result["participants"]:
            user = entry["user"]
            archive = disk / "served" / entry["location"].split("/served/")[1]
            rc, _ = open_with_7z(archive, PASSWORDS[user], tmp_path / "y" / user)
            assert rc == 0 and tree(tmp_path / "y" / user) == {f"outputs/{n}": d for n, d in MADE[user].items()}
        assert tree(workshop / "data" / "outputs") == outputs_before
    fault_case.observed(f"failed: {failed.value.msg[:160]}; re-run built {len(result['participants'])} archives, all exact")


# --- Docker Engine: it goes away while the logs are exported -----------------------------------------


class EngineProxy:
    """A unix-socket forwarder between a module and the Docker Engine, which the test cuts.

    Once a request whose first line contains `trigger` has passed, its answer is forwarded up to
    `after` bytes, or up to half of its last read when it ends sooner; then that connection is
    closed (`whole=False`: a dropped connection, the engine still answers new ones) or every
    connection and the socket itself (`whole=True`: to the module, the engine went away
    mid-answer). The shared engine itself is never touched.
    """

    def __init__(self, path, engine, trigger, after=4096, whole=True):
        self.path, self.engine, self.trigger, self.after, self.whole = str(path), engine, trigger.encode(), after, whole
        self.cut, self.gone = threading.Event(), threading.Event()
        self.requests, self.sockets = [], []
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(self.path)
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.gone.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.engine)
            pair = {"armed": False, "sent": 0, "sockets": (client, upstream)}
            self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, pair, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, pair, False), daemon=True).start()

    def _pump(self, source, sink, pair, to_engine):
        try:
            while not self.gone.is_set():
                data = source.recv(65536)
                if not data:
                    break
                if to_engine:
                    line = data.split(b"\r\n", 1)[0]
                    self.requests.append(line.decode(errors="replace"))
                    pair["armed"] = pair["armed"] or (self.trigger in line and not self.cut.is_set())
                elif pair["armed"]:
                    room = self.after - pair["sent"]
                    if len(data) >= room or data.endswith(b"0\r\n\r\n"):  # past `after`, or the answer's last chunk
                        sink.sendall(data[: min(room, len(data) // 2)])
                        self.cut.set()
                        self.stop() if self.whole else self._close(*pair["sockets"])
                        return
                    pair["sent"] += len(data)
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    @staticmethod
    def _close(*sockets):
        for each in sockets:
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                each.close()

    def stop(self):
        self.gone.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._close(*self.sockets)


def log_lines(name):
    logs = subprocess.run(["docker", "logs", "--timestamps", name], capture_output=True, text=True, check=True)
    return (logs.stdout + logs.stderr).count("\n")


@pytest.mark.fault
def test_the_docker_engine_going_away_mid_log_export_fails_naming_it_and_keeps_the_earlier_export(
    staging_workshop, tmp_path, fault_case
):
    fault_case(
        "Docker Engine gone mid-log-export (and a dropped connection, engine still up)",
        expected="compose_logs fails naming the engine and the container, never a short log; the earlier export untouched, "
        "no .partial; the logs still in Docker",
    )
    dest = tmp_path / "logs"
    ok, first = run_module("compose_logs", {"project_dir": str(PROJECT_DIR), "dest": str(dest)})
    assert ok, first
    before = files_of(dest)
    redis_id = subprocess.run(
        ["docker", "inspect", "--format", "{{.Id}}", container("redis")], capture_output=True, text=True, check=True
    ).stdout.strip()
    engine = os.environ["DOCKER_HOST"].removeprefix("unix://")
    failures = {}
    for whole in (False, True):  # the connection dropped mid-answer, then the whole engine gone mid-answer
        proxy = EngineProxy(
            tmp_path / f"engine-{whole}.sock", engine, trigger=f"/containers/{redis_id}/logs", after=1024, whole=whole
        )
        try:
            ok, failures[whole] = run_module(
                "compose_logs", {"project_dir": str(PROJECT_DIR), "dest": str(dest), "docker_host": f"unix://{proxy.path}"}
            )
        finally:
            proxy.stop()

        assert proxy.cut.is_set(), proxy.requests  # the answer was cut, mid-way
        assert not ok and "MODULE FAILURE" not in json.dumps(failures[whole]), failures[whole]
        message = failures[whole]["msg"]
        assert f"unix://{proxy.path}" in message and container("redis") in message, message
        assert ("stopped answering" if whole else "ended before its last line") in message, message
        assert files_of(dest) == before  # nothing replaced by a short export, no .partial left

    entry = next(e for e in first["services"] if e["service"] == "redis")
    assert entry["lines"] == log_lines(container("redis")) > 0  # every line still in Docker, as the earlier export has it
    said = {whole: failures[whole]["msg"].replace(str(tmp_path), "<tmp>")[:120] for whole in failures}
    fault_case.observed(f"dropped: {said[False]} / gone: {said[True]}; earlier export unchanged, its lines all still in Docker")


# --- an unknown compose project: the shutdown stops nothing ------------------------------------------


def project_states():
    """{container: state} of the session's staging project."""
    listed = subprocess.run(
        [
            "docker",
            "ps",
            "--all",
            "--filter",
            f"label=com.docker.compose.project={COMPOSE_PROJECT}",
            "--format",
            "{{.Names}} {{.State}}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    return dict(line.split(" ", 1) for line in listed if line)


@pytest.mark.fault
def test_an_unknown_compose_project_stops_nothing_and_names_the_known_ones(staging_workshop, rdb, fault_case):
    fault_case(
        "Unknown compose project (shutdown with workshop_compose_project=nosuch)",
        expected="shutdown fails naming 'nosuch' and the projects there; every container in its state, Redis keys kept",
    )
    compose("up", "-d")
    wait_for(lambda: rdb.ping(), what="Redis to answer")
    states, keys = project_states(), sorted(key for key in rdb.keys("*") if not key.endswith(":heartbeat"))

    try:
        run = run_playbook(
            "playbooks/shutdown.yml",
            extra_vars={"workshop_id": "fault-unknown-project", "workshop_compose_project": "nosuch", "shutdown_mode": "stop"},
            expect_ok=False,
        )
    finally:
        shutil.rmtree(BACKUP_ROOT / "fault-unknown-project", ignore_errors=True)

    assert run.returncode != 0
    said = run.text[run.text.find("No containers of compose project") :][:120]
    assert said.startswith("No containers of compose project 'nosuch'") and "projects there" in said, run.output[-3000:]
    assert project_states() == states and sorted(k for k in rdb.keys("*") if not k.endswith(":heartbeat")) == keys
    fault_case.observed(f"failed: {said}...; {len(states)} containers in their states, Redis keys kept")


# End to end and tens of seconds: in the Docker tier's time (make test), not the fast tier's minute.
@pytest.mark.staging
@pytest.mark.fault
def test_share_playbook_killed_mid_build_then_rerun_sends_each_participant_one_exact_archive(site, fault_case):
    fault_case(
        "ansible-playbook killed (SIGKILL) mid-share, then re-run",
        expected="the killed run sends no message and leaves no object under a final key; outputs untouched; the re-run "
        "sends each participant one message whose link downloads exactly their outputs",
    )
    outputs = site["project"] / "data" / "outputs"
    for user in ("user001", "user002"):
        (outputs / user / "big.png").write_bytes(os.urandom(16 << 20))  # time for the kill to land mid-build
    before = tree(outputs)
    archives = site["tmp"] / "backups" / "ws-share" / "share"
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "TMPDIR": str(site["tmp"])}
    command = ["ansible-playbook", str(REPO / "playbooks" / "share.yml"), "-e", site["vars"]]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(
        lambda: process.poll() is not None or [p for p in archives.rglob("*.zip.partial") if p.stat().st_size > 1 << 20],
        timeout=120,
        interval=0.02,
        what="an archive being built",
    )
    kill_tree(process.pid)
    process.wait()

    assert process.returncode == -9, "the kill must land mid-build"
    assert site["mailbox"].messages == []
    listed = s3_listing(json.loads(Path(site["vars"][1:]).read_text())["share_target"])
    assert not [key for key in listed if key.endswith(".partial")]
    assert tree(outputs) == before

    rerun = run_playbook("playbooks/share.yml", "-e", site["vars"])

    assert [m[1] for m in site["mailbox"].messages] == [["ada@example.org"], ["bob@example.org"]]
    for (_, _, message), user in zip(site["mailbox"].messages, ["user001", "user002"], strict=True):
        status, data = fetch(LINK.search(message.get_content()).group(1))
        assert status == 200
        (site["tmp"] / f"{user}.zip").write_bytes(data)
        rc, _ = open_with_7z(site["tmp"] / f"{user}.zip", SITE_PASSWORDS[user], site["tmp"] / "got" / user)
        assert rc == 0
        mine = {f"outputs/{rel.split('/', 1)[1]}": data for rel, data in before.items() if rel.startswith(user + "/")}
        assert tree(site["tmp"] / "got" / user) == mine
    assert tree(outputs) == before
    fault_case.observed(
        f"killed mid-build: no message, {len(listed)} objects, none partial; re-run changed={rerun.changed()}, "
        "one message each, archives exact"
    )
