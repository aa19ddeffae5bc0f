"""The tests' shared cache of module payloads (scripts/controller_payload_cache.py): a payload is built
once per version of the code, a changed module gets a payload of its own, and without the variable
Ansible builds payloads as it always does."""

import json
import os
import subprocess

import pytest

from conftest import REPO

pytestmark = pytest.mark.playbook

PROBE = """#!/usr/bin/python
from ansible.module_utils.basic import AnsibleModule

AnsibleModule(argument_spec={}).exit_json(changed=False, marker=%r)
"""


def run_probe(tmp_path, marker, cache):
    (tmp_path / "library").mkdir(exist_ok=True)
    (tmp_path / "library" / "probe.py").write_text(PROBE % marker)
    config = f"[defaults]\nlibrary = {tmp_path / 'library'}\nmodule_utils = {REPO / 'module_utils'}\n"
    (tmp_path / "ansible.cfg").write_text(config)
    python = os.environ.get("COMFY_WRAPUP_HOST_PYTHON") or str(REPO / ".venv-host/bin/python")
    completed = subprocess.run(
        ["ansible", "localhost", "-m", "probe", "-e", f"ansible_python_interpreter={python}"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={
            **os.environ,
            "ANSIBLE_CONFIG": str(tmp_path / "ansible.cfg"),
            "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
            "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.minimal",
            "COMFY_WRAPUP_PAYLOAD_CACHE": cache,
        },
    )
    return json.loads(completed.stdout.partition(" => ")[2])["marker"]


def payloads(cache):
    """{"<code digest>/<payload>": inode} of the probe's payloads in the cache (a payload built again is a new file)."""
    return {
        f"{version.name}/{entry.name}": entry.stat().st_ino
        for version in cache.iterdir()
        for entry in version.iterdir()
        if "probe" in entry.name and not entry.name.endswith(".lock")
    }


def test_a_payload_is_built_once_per_version_of_the_code_and_runs_that_version(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()

    assert run_probe(tmp_path, "first", str(cache)) == "first"
    built = payloads(cache)
    assert len(built) == 1
    assert run_probe(tmp_path, "first", str(cache)) == "first"
    assert payloads(cache) == built  # the same file: used again, not built again

    assert run_probe(tmp_path, "second", str(cache)) == "second"  # the changed module runs, from a payload of its own
    both = payloads(cache)
    assert len(both) == 2 and built.items() <= both.items() and len({name.split("/")[0] for name in both}) == 2

    assert run_probe(tmp_path, "third", "") == "third"  # without the variable: nothing cached
    assert payloads(cache) == both
