"""post_workshop.yml's first play, workshop_state, locally and over real SSH."""

import os
import re

import pytest

from conftest import (
    BACKUP_ROOT,
    COMPOSE_PROJECT,
    PROJECT_DIR,
    REDIS_PORT,
    compose,
    redis_answers,
    run_playbook,
    ssh_inventory,
    submit,
    wait_for,
    wait_for_status,
)


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
    files = sum(1 for p in (PROJECT_DIR / "data" / "outputs").rglob("*") if p.is_file())
    assert f"Outputs: {files} files, {expected_bytes / 1048576:.1f} MiB from " in " ".join(run.output.split())


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
    assert f"Redis at 127.0.0.1:{REDIS_PORT} refused the password: check REDIS_PASSWORD in" in run.output
    assert "not-the-password-4711" not in run.output


@pytest.mark.fault
def test_an_unknown_compose_project_lists_the_known_ones(staging_workshop, fault_case):
    fault_case(
        "Unknown compose project (state report)",
        expected="the state report says the services were not read, naming 'nosuch' and the known projects; the drain "
        "stops before announcing anything",
    )
    run = run_playbook("post_workshop.yml", "--tags", "state", extra_vars={"workshop_compose_project": "nosuch"})
    assert "Services: not read: No containers of compose project 'nosuch'" in run.text
    assert COMPOSE_PROJECT in run.output

    # The drain stops before it announces a cut-off or records anything: a re-run must not reuse one never read out.
    workshop_id = f"nosuch-{os.urandom(3).hex()}"
    drain = run_playbook(
        "post_workshop.yml",
        "--tags",
        "drain",
        extra_vars={"workshop_compose_project": "nosuch", "workshop_id": workshop_id},
        expect_ok=False,
    )
    assert "Cannot close submissions on localhost: No containers of compose project 'nosuch'" in drain.text, drain.output[-3000:]
    assert "Nothing was announced and no frontend was stopped" in drain.text
    assert not (BACKUP_ROOT / workshop_id).exists()
    fault_case.observed(f"'No containers of compose project nosuch'; known: {COMPOSE_PROJECT} listed; the drain stopped first")


def test_post_workshop_runs_over_ssh(staging_workshop, rdb, sshd, tmp_path):
    inventory = ssh_inventory(tmp_path, sshd, "workshop_id=staging-ssh")

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
    assert f"Queue: not read: Cannot reach Redis at 127.0.0.1:{REDIS_PORT}" in run.text
    assert "frontends 6 of 6" in run.output  # what could be read is still shown
    assert "Not read: queue." in run.text


def test_without_a_docker_engine_the_state_says_so_and_the_run_goes_on(staging_workshop, rdb, tmp_path):
    run = run_playbook(
        "post_workshop.yml", "--tags", "state", extra_vars={"workshop_docker_host": f"unix://{tmp_path}/none.sock"}
    )
    assert f"Services: not read: No Docker Engine answers at unix://{tmp_path}/none.sock" in run.text
    assert queue_line(run.output) == zcards(rdb)
