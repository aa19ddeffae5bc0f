"""The test host's Python (.venv-host): a payload imported from a zip is compiled once, and what
runs is still the payload's own code, with the payload's own path in its tracebacks."""

import hashlib
import os
import subprocess
import zipfile

from conftest import REPO

HOST_PYTHON = os.environ.get("COMFY_WRAPUP_HOST_PYTHON") or str(REPO / ".venv-host/bin/python")
IMPORT = "import sys; sys.path.insert(0, sys.argv[1]); import payload_mod; payload_mod.run()"


def payload(folder, name, source):
    path = folder / f"ansible_{name}_payload.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("payload_mod.py", source)
    return path


def run(zip_path, cache="on"):
    return subprocess.run(
        [HOST_PYTHON, "-c", IMPORT, str(zip_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "COMFY_WRAPUP_BYTECODE_CACHE": cache},
        check=False,
    )


def cache_entry(source):
    import_path = subprocess.run(
        [HOST_PYTHON, "-c", "import host_bytecode_cache as c; print(c.CACHE)"], capture_output=True, text=True, check=True
    )
    return os.path.join(import_path.stdout.strip(), hashlib.sha256(source.encode()).hexdigest())


def test_a_payload_is_compiled_once_and_runs_its_own_code_with_its_own_path(tmp_path):
    marker = os.urandom(8).hex()  # a source no earlier run compiled
    source = f"def run():\n    print('{marker}')\n    raise RuntimeError('from the payload')\n"
    entry = cache_entry(source)
    (tmp_path / "b").mkdir()
    first = payload(tmp_path, "one", source)
    second = payload(tmp_path / "b", "two", source)

    off = run(first, cache="off")
    assert marker in off.stdout and not os.path.exists(entry)

    compiled = run(first)
    assert os.path.exists(entry)
    cached = run(second)

    for result, path in ((compiled, first), (cached, second)):
        assert marker in result.stdout
        assert "RuntimeError: from the payload" in result.stderr
        assert f'File "{path}/payload_mod.py", line 3, in run' in result.stderr

    # The second payload's code came from the cache: with the entry replaced, the replacement runs.
    subprocess.run(
        [
            HOST_PYTHON,
            "-c",
            "import marshal, sys; open(sys.argv[1], 'wb').write(marshal.dumps(compile("
            "'def run(): print(\"from the cache\")', 'x', 'exec')))",
            entry,
        ],
        check=True,
    )
    assert run(second).stdout == "from the cache\n"
    os.unlink(entry)
