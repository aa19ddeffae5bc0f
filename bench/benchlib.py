"""What the benchmarks share: made-up workshop outputs, a cold page cache, a timed command."""

import json
import os
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_outputs(folder, megabytes, users=None):
    """PNG/MP4-like incompressible outputs in participants' folders, as the staging workshop makes them."""
    command = ["python3", str(REPO / "roles/staging_workshop/files/extra_outputs.py"), str(folder), "--megabytes", str(megabytes)]
    if users:
        command += ["--users", str(users)]
    subprocess.run(command, check=True, capture_output=True)


def drop_caches():
    """Cold cache for every contender, where root may; otherwise all run warm, and the table says so."""
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed(command, cold=True, **kwargs):
    """Seconds `command` took, and whether it started from a cold page cache."""
    was_cold = drop_caches() if cold else False
    start = time.perf_counter()
    subprocess.run(command, check=True, **kwargs)
    return time.perf_counter() - start, was_cold


def host_python():
    """The workshop host's Python the modules run on (COMFY_WRAPUP_HOST_PYTHON, .venv-host), else the control node's."""
    python = os.environ.get("COMFY_WRAPUP_HOST_PYTHON") or ""
    return python if Path(python).is_file() else str(REPO / ".venv/bin/python")


def ad_hoc_module(name, args):
    """The ansible command that runs module `name` of library/ once on this machine, on host_python(), with `args`."""
    interpreter = f"ansible_python_interpreter={host_python()}"
    return ["ansible", "localhost", "-c", "local", "-i", "localhost,", "-e", interpreter, "-m", name, "-a", json.dumps(args)]
