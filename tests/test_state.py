"""post_workshop.yml's first play, workshop_state, locally and over real SSH."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import PROJECT_DIR, compose, redis_answers, run_playbook, submit, wait_for, wait_for_status

SSH_PORT = 22022


def queue_line(output):
    match = re.search(r"Queue: (\d+) pending, (\d+) running, (\d+) completed, (\d+) failed", output)
    assert match, output
    return tuple(int(n) for n in match.groups())


def zcards(rdb):
    return tuple(rdb.zcard(f"queue:{q}") for q in ("pending", "running", "completed", "failed"))


def test_post_workshop_prints_the_workshops_state(staging_workshop, rdb):
    job = submit("user003", metadata={"staging": {"duration": 0.1, "succeed": True}})
    wait_for_status(rdb, job, {"completed"})
    expected_bytes = sum(p.stat().st_size for p in (PROJECT_DIR / "data" / "outputs").rglob("*") if p.is_file())

    run = run_playbook("post_workshop.yml", "--tags", "state")

    assert queue_line(run.output) == zcards(rdb)
    assert "frontends 6 of 6" in run.output
    assert run.changed() == 0
    assert f"{expected_bytes} B" in run.output or expected_bytes > 1024  # human_readable rounds larger sizes


def test_post_workshop_in_check_mode_reads_the_same_state(staging_workshop, rdb):
    run = run_playbook("post_workshop.yml", "--tags", "state", check=True)
    assert queue_line(run.output) == zcards(rdb)
    assert run.changed() == 0


def test_a_missing_env_file_is_named(staging_workshop, tmp_path):
    run = run_playbook(
        "post_workshop.yml", "--tags", "state", extra_vars={"workshop_env_file": str(tmp_path / ".env")}, expect_ok=False
    )
    assert run.returncode != 0
    assert f"No .env at {tmp_path / '.env'}" in run.output


def test_a_wrong_password_is_named_but_never_shown(staging_workshop, tmp_path):
    env = tmp_path / ".env"
    env.write_text("REDIS_PASSWORD=not-the-password-4711\n")
    run = run_playbook("post_workshop.yml", "--tags", "state", extra_vars={"workshop_env_file": str(env)}, expect_ok=False)
    assert "Redis at 127.0.0.1:6379 refused the password: check REDIS_PASSWORD in" in run.output
    assert "not-the-password-4711" not in run.output


def test_an_unknown_compose_project_lists_the_known_ones(staging_workshop):
    run = run_playbook("post_workshop.yml", "--tags", "state", extra_vars={"workshop_compose_project": "nosuch"})
    assert "Services: not read: No containers of compose project 'nosuch'" in run.text
    assert "comfyui" in run.output


@pytest.fixture
def sshd(tmp_path):
    """A real sshd on loopback that lets root in with a key made for this test."""
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", tmp_path / name], check=True)
    shutil.copy(tmp_path / "client_key.pub", tmp_path / "authorized_keys")
    config = tmp_path / "sshd_config"
    config.write_text(
        f"Port {SSH_PORT}\nListenAddress 127.0.0.1\nHostKey {tmp_path / 'host_key'}\n"
        f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PidFile {tmp_path / 'sshd.pid'}\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)
    daemon = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", SSH_PORT), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or daemon.poll() is not None:
                pytest.fail(f"sshd did not start: {daemon.stderr.read().decode() if daemon.poll() is not None else ''}")
            time.sleep(0.1)
    yield tmp_path / "client_key"
    daemon.terminate()
    daemon.wait(timeout=10)


def test_post_workshop_runs_over_ssh(staging_workshop, rdb, sshd, tmp_path):
    inventory = tmp_path / "inventory"
    inventory.write_text(
        "[workshop]\n"
        f"vps ansible_host=127.0.0.1 ansible_port={SSH_PORT} ansible_user=root "
        f"ansible_ssh_private_key_file={sshd} ansible_python_interpreter={sys.executable} "
        "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null' "
        f"workshop_id=staging-ssh workshop_project_dir={PROJECT_DIR} "
        f"workshop_docker_host={os.environ['DOCKER_HOST']}\n"
    )

    run = run_playbook("post_workshop.yml", "--tags", "state", "-i", str(inventory))

    assert run.recap["vps"]["failed"] == 0 and run.recap["vps"]["unreachable"] == 0
    assert queue_line(run.output) == zcards(rdb)
    assert "Workshop staging-ssh on vps" in run.output


def test_with_redis_down_the_state_says_so_and_the_run_goes_on(staging_workshop, rdb):
    compose("stop", "redis")
    try:
        run = run_playbook("post_workshop.yml", "--tags", "state")
    finally:
        compose("start", "redis")
        wait_for(lambda: redis_answers(rdb), what="redis to answer again")
    assert "Queue: not read: Cannot reach Redis at 127.0.0.1:6379" in run.text
    assert "frontends 6 of 6" in run.output  # what could be read is still shown
    assert "Not read: queue." in run.text


def test_without_a_docker_engine_the_state_says_so_and_the_run_goes_on(staging_workshop, rdb, tmp_path):
    run = run_playbook(
        "post_workshop.yml", "--tags", "state", extra_vars={"workshop_docker_host": f"unix://{tmp_path}/none.sock"}
    )
    assert f"Services: not read: No Docker Engine answers at unix://{tmp_path}/none.sock" in run.text
    assert queue_line(run.output) == zcards(rdb)
