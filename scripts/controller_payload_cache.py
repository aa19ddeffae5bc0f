"""A cache of built module payloads shared by the test suite's ansible runs (the controller's .venv).

Before running a module, Ansible builds its AnsiballZ payload: it parses the module and, one by one,
every module_utils file it imports (ansible.module_utils.basic and its dozens of helpers included)
to find what to zip. That costs about a quarter of a second of CPU for each module, and Ansible keeps
the result only for one run: in a folder of the run's own temporary folder. The suite makes hundreds
of runs of the same few dozen modules.

With COMFY_WRAPUP_PAYLOAD_CACHE set to a folder (tests/conftest.py sets it; nothing else does), that
per-run folder is a link to a folder of COMFY_WRAPUP_PAYLOAD_CACHE named by a digest of the Ansible
version and of every file of the modules and module_utils the run can use (the configured library and
module_utils paths, and the roles' own): a payload is built once per version of the code, by Ansible
itself, and a changed module or helper gets a new folder. Ansible's own lock and write-then-rename
keep concurrent runs apart. Without the variable nothing is changed: an admin's runs, `make demo`
and `make bench` build their payloads as Ansible does.

bootstrap.sh installs this file in .venv with a .pth line; the patch is applied when Ansible imports
ansible.executor.module_common.
"""

import contextlib
import hashlib
import importlib.abc
import importlib.util
import os
import sys

CACHE = os.environ.get("COMFY_WRAPUP_PAYLOAD_CACHE")
PATCHED = "ansible.executor.module_common"


def code_digest():
    """The Ansible version and the content of every file a module payload can be built from, digested."""
    from ansible import constants as C
    from ansible.release import __version__

    folders = [*C.DEFAULT_MODULE_PATH, *C.DEFAULT_MODULE_UTILS_PATH]
    for roles in filter(os.path.isdir, C.DEFAULT_ROLES_PATH):
        for role in sorted(os.listdir(roles)):
            folders += [os.path.join(roles, role, "library"), os.path.join(roles, role, "module_utils")]
    digest = hashlib.sha256(__version__.encode())
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(name for name in dirs if name != "__pycache__")
            for name in sorted(files):
                path = os.path.join(root, name)
                with open(path, "rb") as source:
                    digest.update(b"\0".join((path.encode(), source.read(), b"")))
    return digest.hexdigest()[:32]


def _share_the_payload_folder(module_common):
    from ansible import constants as C

    build = module_common._find_module_utils
    shared = []

    def find_module_utils(**kwargs):
        own = os.path.join(C.DEFAULT_LOCAL_TMP, "ansiballz_cache")
        if not shared:
            shared.append(os.path.join(CACHE, code_digest()))
        os.makedirs(shared[0], exist_ok=True)  # every time: a link to a folder removed meanwhile would fail the build
        with contextlib.suppress(FileExistsError):  # linked already, by this process or another fork of this run
            os.symlink(shared[0], own)
        return build(**kwargs)

    module_common._find_module_utils = find_module_utils


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches PATCHED once it is executed; out of the import system after that one import."""

    def find_spec(self, fullname, path, target=None):
        if fullname != PATCHED:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        execute = spec.loader.exec_module

        def execute_then_patch(module):
            execute(module)
            _share_the_payload_folder(module)

        spec.loader.exec_module = execute_then_patch
        return spec


if CACHE:
    sys.meta_path.insert(0, _PatchOnImport())
