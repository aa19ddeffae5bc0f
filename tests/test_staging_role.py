"""The staging_workshop role itself: idempotent, previewable, refuses to touch real workshops."""

import subprocess

import pytest

from conftest import PROJECT_DIR, STAGING_VARS, compose, empty_staging, run_playbook, staging


def test_up_again_changes_nothing_and_check_mode_agrees(staging_workshop):
    preview = run_playbook(
        "playbooks/staging.yml",
        check=True,
        extra_vars=STAGING_VARS,
    )
    again = staging("up")

    assert preview.changed() == 0, preview.output
    assert again.changed() == 0, again.output


def test_check_mode_previews_a_change_without_making_it(staging_workshop):
    compose_file = (PROJECT_DIR / "docker-compose.users.yml").read_bytes()

    preview = run_playbook("playbooks/staging.yml", "--diff", check=True, extra_vars={"staging_workshop_num_users": 7})

    assert preview.changed() > 0
    assert "user007" in preview.output  # the diff shows the frontend it would add
    assert (PROJECT_DIR / "docker-compose.users.yml").read_bytes() == compose_file
    assert "user007" not in compose("config", "--services").stdout


def test_play_plays_the_participants_the_workshop_was_brought_up_with_unless_told_otherwise(staging_workshop, rdb):
    outputs = PROJECT_DIR / "data" / "outputs"
    everyone = {
        "staging_workshop_play_attendance": 1.0,
        "staging_workshop_play_jobs_per_user": "1",
        "staging_workshop_play_bursts": 1,
    }
    empty_staging(rdb)

    # Brought up with STAGING_VARS' 6: a play that says 20 still plays those 6.
    staging("play", staging_workshop_num_users=20, **everyone)
    assert sorted(p.name for p in outputs.iterdir()) == [
        f"user{n:03d}" for n in range(1, STAGING_VARS["staging_workshop_num_users"] + 1)
    ]

    staging("play", staging_workshop_play_users=8, **everyone)
    assert sorted(p.name for p in outputs.iterdir()) == [f"user{n:03d}" for n in range(1, 9)]


@pytest.mark.staging  # asks the Docker Engine before it refuses
def test_down_refuses_a_project_it_did_not_create(tmp_path):
    real = tmp_path / "comfyui"
    real.mkdir()
    (real / "docker-compose.yml").write_text("services: {}\n")

    run = run_playbook(
        "playbooks/staging.yml",
        extra_vars={"staging_workshop_action": "down", "staging_workshop_project_dir": str(real)},
        expect_ok=False,
    )

    assert run.returncode != 0
    assert "marker" in run.output and str(real) in run.output
    assert (real / "docker-compose.yml").exists()


@pytest.mark.playbook
def test_no_engine_gives_a_clear_error(tmp_path):
    run = run_playbook(
        "playbooks/staging.yml",
        extra_vars={"staging_workshop_project_dir": str(tmp_path / "x")},
        env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"},
        expect_ok=False,
    )
    assert run.returncode != 0
    assert "No Docker Engine answers on localhost" in run.output


def test_images_are_built_locally(staging_workshop):
    images = subprocess.run(
        ["docker", "images", "--format", "{{.Repository}}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert {"comfy-wrapup/staging-base", "comfy-wrapup/staging-redis", "comfy-wrapup/staging-python"} <= set(images)
