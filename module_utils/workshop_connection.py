# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The connection contract: how every module reaches one workshop.

Every module that talks to the workshop's Redis or Docker Engine takes the same options (the
playbooks set them once, through module_defaults fed from `workshop_connection`), whether it
uses all of them or not, so one dictionary describes a workshop to all of them. Documented by
the workshop_redis and workshop_compose doc fragments.
"""

import importlib
import traceback

from ansible.module_utils.basic import missing_required_lib
from ansible.module_utils.workshop_compose import compose_argument_spec
from ansible.module_utils.workshop_redis import REDIS_MUTUALLY_EXCLUSIVE, redis_argument_spec

# The options of `workshop_connection` (group_vars): what module_defaults gives every connected module.
CONNECTION_OPTIONS = ("project_dir", "env_file", "project_name", "docker_host", "redis_host", "redis_port", "redis_password_key")

CONNECTION_MUTUALLY_EXCLUSIVE = REDIS_MUTUALLY_EXCLUSIVE


def connection_argument_spec(project_dir_required=True, **options):
    """The connection options (Redis and compose project), plus the module's own `options`."""
    spec = redis_argument_spec()
    spec.update(compose_argument_spec(project_dir_required))
    spec.update(options)
    return spec


def require_libraries(module, *names):
    """Fail the module, naming the package to install, when a Python library it needs is missing on the host."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            module.fail_json(msg=missing_required_lib(name), exception=traceback.format_exc())
