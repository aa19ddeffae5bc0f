"""Reading the platform's .env on the workshop host.

Secrets such as REDIS_PASSWORD are read here, on the host, so they never travel through
Ansible variables, module arguments or logs.
"""

import re

from ansible.module_utils.workshop_errors import WorkshopError

_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def parse_dotenv(text):
    """Return the KEY=VALUE pairs of a .env text as a dict, as docker compose reads them.

    Blank lines and # comments are skipped; single-quoted values are taken literally,
    double-quoted values have their escapes (\\n, \\", \\\\) resolved, and unquoted values
    lose a trailing ` # comment`.
    """
    values = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match or line.lstrip().startswith("#"):
            continue
        key, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        elif len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r'\\([\\"n])', lambda m: "\n" if m.group(1) == "n" else m.group(1), value[1:-1])
        else:
            value = re.sub(r"\s+#.*$", "", value)
        values[key] = value
    return values


def read_dotenv(path):
    """Read and parse the .env at `path`; a missing or unreadable file raises WorkshopError."""
    try:
        with open(path, encoding="utf-8") as env_file:
            return parse_dotenv(env_file.read())
    except FileNotFoundError:
        raise WorkshopError(
            f"No .env at {path}: set workshop_project_dir to the workshop's project directory, or workshop_env_file "
            "(a module's env_file) to its .env",
            path=path,
        ) from None
    except OSError as exc:
        raise WorkshopError(f"Cannot read the .env at {path}: {exc.strerror}", path=path) from None


def dotenv_secret(path, key):
    """Return the value of `key` in the .env at `path`; a missing or empty key raises WorkshopError."""
    value = read_dotenv(path).get(key)
    if not value:
        raise WorkshopError(f"{key} is not set in {path}: add it, or name the right key", path=path, key=key)
    return value
