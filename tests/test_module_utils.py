"""The plain Python behind the modules, tested directly."""

import json
import os
import subprocess
from datetime import datetime, timezone

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible.module_utils.workshop_compose import normalize_project_name, resolve_project_name
from ansible.module_utils.workshop_dotenv import dotenv_secret, parse_dotenv, read_dotenv
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import tree_usage

from conftest import REPO, load_module, pyenv_python


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("KEY=value", {"KEY": "value"}),
        ("export KEY=value", {"KEY": "value"}),
        ("KEY = value  ", {"KEY": "value"}),
        ("KEY=value # a comment", {"KEY": "value"}),
        ("KEY=pa#ss", {"KEY": "pa#ss"}),
        ("KEY='a # b'", {"KEY": "a # b"}),
        ('KEY="a\\nb \\"q\\""', {"KEY": 'a\nb "q"'}),
        ("KEY=", {"KEY": ""}),
        ("# KEY=value", {}),
        ("not a setting", {}),
    ],
)
def test_parse_dotenv(line, expected):
    assert parse_dotenv(line + "\n") == expected


def test_read_dotenv_names_a_missing_file(tmp_path):
    with pytest.raises(WorkshopError, match=f"No .env at {tmp_path / '.env'}"):
        read_dotenv(str(tmp_path / ".env"))


def test_dotenv_secret_names_a_missing_key_without_values(tmp_path):
    env = tmp_path / ".env"
    env.write_text("ADMIN_PASSWORD=secret-admin\n")
    with pytest.raises(WorkshopError) as error:
        dotenv_secret(str(env), "REDIS_PASSWORD")
    assert "REDIS_PASSWORD is not set in" in error.value.msg
    assert "secret-admin" not in error.value.msg


@pytest.mark.parametrize(("name", "expected"), [("ComfyUI", "comfyui"), ("comfy.multi", "comfymulti"), ("my_ws-2", "my_ws-2")])
def test_normalize_project_name(name, expected):
    assert normalize_project_name(name) == expected


def test_project_name_from_env_then_directory(tmp_path):
    project = tmp_path / "ComfyUI"
    project.mkdir()
    assert resolve_project_name(str(project)) == "comfyui"
    (project / ".env").write_text("COMPOSE_PROJECT_NAME=workshop7\n")
    assert resolve_project_name(str(project)) == "workshop7"
    assert resolve_project_name(str(project), "Explicit") == "explicit"
    # The workshop's env_file, where it is not the project directory's .env, is the one read.
    elsewhere = tmp_path / "secrets.env"
    elsewhere.write_text("COMPOSE_PROJECT_NAME=Workshop8\n")
    assert resolve_project_name(str(project), None, str(elsewhere)) == "workshop8"


def test_tree_usage_counts_every_file_once_per_participant(tmp_path):
    sizes = {"user001/a.png": 10, "user001/sub/b.mp4": 2000, "user002/c.png": 7, "loose.txt": 3}
    for name, size in sizes.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    os.symlink(tmp_path / "user001", tmp_path / "user002" / "link")  # inside the tree: a link, not followed

    usage = tree_usage(str(tmp_path))

    assert usage["files"] == 4 and usage["links"] == 1
    assert usage["bytes"] == sum(sizes.values())
    assert usage["folders"]["user001"] == {"bytes": 2010, "files": 2}
    assert usage["folders"]["user002"] == {"bytes": 7, "files": 1}
    assert usage["folders"][""] == {"bytes": 3, "files": 1}


def test_tree_usage_names_a_missing_folder(tmp_path):
    with pytest.raises(WorkshopError, match="No folder at"):
        tree_usage(str(tmp_path / "nope"))


def test_workshop_state_module_fails_clearly_on_a_missing_env(tmp_path, capsys):
    workshop_state = load_module("workshop_state")
    args = {
        "project_dir": str(tmp_path),
        "outputs_dir": str(tmp_path),
        "env_file": str(tmp_path / ".env"),
        "_ansible_check_mode": True,
    }
    with patch_module_args(args), pytest.raises(SystemExit):
        workshop_state.main()

    result = json.loads(capsys.readouterr().out)
    assert result["failed"] is True
    assert result["msg"].startswith(f"No .env at {tmp_path / '.env'}")


@pytest.mark.parametrize("version", ["3.8", "3.10"])
def test_the_platforms_z_timestamps_parse_on_old_host_pythons(version):
    """Python before 3.11 refuses `Z` in fromisoformat; every time figure of a 3.10 host hangs on this."""
    code = (
        "import sys; sys.path.insert(0, 'module_utils'); import workshop_time as t; "
        "print(t.epoch_of('2026-01-28T14:03:11.482113Z'), t.epoch_of('2026-01-28T14:03:11.482Z'), "
        "t.epoch_of('2026-01-28T14:03:11+00:00'), t.epoch_of('2026-01-28T14:03:11.123456789Z'), t.epoch_of('nonsense'))"
    )
    out = subprocess.run([pyenv_python(version), "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    second = datetime(2026, 1, 28, 14, 3, 11, tzinfo=timezone.utc).timestamp()
    assert out.split() == [str(second + 0.482113), str(second + 0.482), str(second), str(second + 0.123456), "None"]
