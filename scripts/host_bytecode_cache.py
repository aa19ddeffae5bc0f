"""A bytecode cache for Ansible's module payloads, for the test host's Python (.venv-host) only.

Every module task runs its AnsiballZ payload, a zip that Python imports with zipimport, which
cannot keep bytecode: each run compiles ansible.module_utils.basic and everything it imports
again, about a third of a module task's CPU. bootstrap.sh installs this file in .venv-host with
a .pth line, so the suite's thousands of module runs compile each source once. The code run is
the payload's own: compiled code is looked up by the sha256 of the source it was compiled from
and given the payload's path for its tracebacks. Real workshop hosts do not have it and need not;
the benchmarks turn it off (COMFY_WRAPUP_BYTECODE_CACHE=off) to time what a real host does.
"""

import hashlib
import marshal
import os
import zipimport

CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ansiballz-bytecode")
_compile_source = zipimport._compile_source
_compiled = {}


def _with_filename(code, filename):
    consts = tuple(_with_filename(c, filename) if isinstance(c, type(code)) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def _cached_compile_source(pathname, source):
    if "_payload.zip" not in pathname:
        return _compile_source(pathname, source)
    # Python 3.10's zipimport compiles each file twice (once to name it, once to run it): the second
    # time is answered from memory.
    key = (pathname, hashlib.sha256(source).hexdigest())
    if key in _compiled:
        return _compiled[key]
    entry = os.path.join(CACHE, key[1])
    code = None
    try:
        with open(entry, "rb") as cached:
            # loads of the whole file: load() on a file object reads it item by item, 8 times slower.
            code = _with_filename(marshal.loads(cached.read()), pathname)
    except (OSError, EOFError, ValueError, TypeError):
        pass
    if code is None:
        code = _compile_source(pathname, source)
        try:
            os.makedirs(CACHE, exist_ok=True)
            partial = f"{entry}.{os.getpid()}"
            with open(partial, "wb") as cached:
                marshal.dump(code, cached)
            os.replace(partial, entry)
        except OSError:
            pass
    _compiled[key] = code
    return code


if os.environ.get("COMFY_WRAPUP_BYTECODE_CACHE") != "off":
    zipimport._compile_source = _cached_compile_source
