"""Fault cases that belong to no one phase's test file: the real part fails mid-way, and nothing is lost.

Each case states itself through `fault_case` (tests/faultlog.py): `make faults` prints the table.
Fast-tier cases use scratch folders, the real S3 server (rclone), the real sshd and a small tmpfs;
the staging cases reuse the session's staging workshop.
"""

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from ansible.module_utils.workshop_archive import remote_key
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_record import read_record
from ansible.module_utils.workshop_share import share
from s3server import S3Server
from test_archive_unit import WORKSHOP, bucket_files, files_of, make_backup, run_main, s3_args, ssh_args
from test_share_unit import MADE, PASSWORDS, open_with_7z, params, tree
from test_share_unit import workshop as workshop  # noqa: F401 - the fixture, re-exported for this module

from conftest import PROJECT_DIR, REPO, compose, container, http, run_module, run_playbook, wait_for


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


# --- archive: the SSH target's disk fills mid-file ---------------------------------------------------


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


@pytest.mark.fault
def test_object_storage_stopped_mid_upload_fails_naming_it_and_the_rerun_after_restart_completes(tmp_path, fault_case):
    fault_case(
        "Object storage stopped mid-upload, then restarted",
        expected="archive_copy fails naming the target and endpoint; no object half-visible; local backup = MANIFEST; "
        "after the restart the re-run completes, bucket == backup, verified",
    )
    server = S3Server(tmp_path / "s3").start()
    try:
        backup_dir, name, record = make_backup(tmp_path, big=60 << 20)
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
def test_a_disk_filling_up_mid_share_fails_clearly_and_the_rerun_builds_every_archive(workshop, tmp_path, fault_case):  # noqa: F811
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

    Once a request whose line contains `trigger` has passed and `after` bytes of its answer have
    been forwarded, every connection is closed and the socket removed: to the module, the engine
    went away mid-answer. The shared engine itself is never touched.
    """

    def __init__(self, path, engine, trigger, after):
        self.path, self.engine, self.trigger, self.after = str(path), engine, trigger.encode(), after
        self.cut = threading.Event()
        self.requests = []
        self.sockets = []
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(self.path)
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.cut.is_set():
            try:
                client, _ = self.listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.engine)
            armed = {"on": False, "sent": 0}
            self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, armed, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, armed, False), daemon=True).start()

    def _pump(self, source, sink, armed, to_engine):
        try:
            while not self.cut.is_set():
                data = source.recv(65536)
                if not data:
                    break
                if to_engine:
                    self.requests.append(data.split(b"\r\n", 1)[0].decode(errors="replace"))
                    armed["on"] = armed["on"] or self.trigger in data.split(b"\r\n", 1)[0]
                elif armed["on"]:
                    room = self.after - armed["sent"]
                    if len(data) >= room:
                        sink.sendall(data[:room])
                        self.stop()
                        return
                    armed["sent"] += len(data)
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def stop(self):
        self.cut.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        for each in self.sockets:
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                each.close()


def log_lines(name):
    logs = subprocess.run(["docker", "logs", "--timestamps", name], capture_output=True, text=True, check=True)
    return (logs.stdout + logs.stderr).count("\n")


@pytest.mark.fault
def test_the_docker_engine_going_away_mid_log_export_fails_naming_it_and_keeps_the_earlier_export(
    staging_workshop, tmp_path, fault_case
):
    fault_case(
        "Docker Engine gone mid-log-export",
        expected="compose_logs fails naming the engine and the container; the earlier export untouched, no .partial; "
        "the logs still in Docker and the re-run exports every line",
    )
    for _ in range(150):  # queue-manager log lines enough for the cut to land mid-answer
        http("GET", "/health")
    dest = tmp_path / "logs"
    ok, first = run_module("compose_logs", {"project_dir": str(PROJECT_DIR), "dest": str(dest)})
    assert ok, first
    before = files_of(dest)
    queue_manager = subprocess.run(
        ["docker", "inspect", "--format", "{{.Id}}", container("queue-manager")], capture_output=True, text=True, check=True
    ).stdout.strip()
    engine = os.environ["DOCKER_HOST"].removeprefix("unix://")
    proxy = EngineProxy(tmp_path / "engine.sock", engine, trigger=f"/containers/{queue_manager}/logs", after=4096)
    try:
        ok, failed = run_module(
            "compose_logs", {"project_dir": str(PROJECT_DIR), "dest": str(dest), "docker_host": f"unix://{proxy.path}"}
        )
    finally:
        proxy.stop()

    assert proxy.cut.is_set(), proxy.requests  # the engine did go away, mid-answer
    assert not ok and "MODULE FAILURE" not in json.dumps(failed), failed
    assert f"unix://{proxy.path}" in failed["msg"] and container("queue-manager") in failed["msg"], failed["msg"]
    assert files_of(dest) == before  # nothing replaced by a truncated export, no .partial left

    ok, again = run_module("compose_logs", {"project_dir": str(PROJECT_DIR), "dest": str(dest)})
    entry = next(e for e in again["services"] if e["service"] == "queue-manager")
    assert ok and entry["lines"] >= log_lines(container("queue-manager")) - 2  # every line still in Docker, exported
    fault_case.observed(f"failed: {failed['msg'][:200]}; earlier export unchanged; re-run exported {entry['lines']} lines")


# --- an unknown compose project: the shutdown stops nothing ------------------------------------------


def project_states():
    listed = subprocess.run(
        ["docker", "ps", "--all", "--format", "{{.Names}} {{.State}}"], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    return dict(line.split(" ", 1) for line in listed if line)


@pytest.mark.fault
def test_an_unknown_compose_project_stops_nothing_and_names_the_known_ones(staging_workshop, rdb, fault_case):
    fault_case(
        "Unknown compose project (shutdown --e workshop_compose_project=nosuch)",
        expected="shutdown fails naming 'nosuch' and the projects there; every container in its state, Redis keys unchanged",
    )
    compose("up", "-d")
    wait_for(lambda: rdb.ping(), what="Redis to answer")
    states, keys = project_states(), sorted(rdb.keys("*"))

    run = run_playbook(
        "playbooks/shutdown.yml",
        extra_vars={"workshop_id": "fault-unknown-project", "workshop_compose_project": "nosuch", "shutdown_mode": "stop"},
        expect_ok=False,
    )

    assert run.returncode != 0
    assert "No containers of compose project 'nosuch'" in run.text and "projects there" in run.text, run.output[-3000:]
    assert project_states() == states and sorted(rdb.keys("*")) == keys
    line = next(line for line in run.text.split("fatal:")[1:2] or [run.text[-300:]])
    fault_case.observed(f"failed: {line[:200]}; {len(states)} containers in their states, {len(keys)} Redis keys unchanged")
