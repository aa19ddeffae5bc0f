# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The connection contract: how every module reaches one workshop.

Every module that talks to the workshop's Redis or Docker Engine takes the same options (the
playbooks set them once, through module_defaults fed from `workshop_connection`), whether it
uses all of them or not, so one dictionary describes a workshop to all of them. Documented by
the workshop_redis and workshop_compose doc fragments.

The specs are here, apart from the clients (workshop_redis, workshop_compose), so a module imports
the redis or docker library only when it talks to Redis or to Docker: each costs a module run
0.06-0.09 s of CPU to import.
"""

import importlib
import traceback

from ansible.module_utils.basic import missing_required_lib

# The options of `workshop_connection` (group_vars): what module_defaults gives every connected module.
CONNECTION_OPTIONS = ("project_dir", "env_file", "project_name", "docker_host", "redis_host", "redis_port", "redis_password_key")

REDIS_MUTUALLY_EXCLUSIVE = [("redis_password", "env_file")]
CONNECTION_MUTUALLY_EXCLUSIVE = REDIS_MUTUALLY_EXCLUSIVE


def redis_argument_spec():
    """Options of every Redis-facing module (WorkshopRedis.from_params); pair with REDIS_MUTUALLY_EXCLUSIVE."""
    return dict(
        redis_host=dict(type="str", default="127.0.0.1"),
        redis_port=dict(type="int", default=6379),
        redis_db=dict(type="int", default=0),
        redis_password=dict(type="str", no_log=True),
        env_file=dict(type="path"),
        redis_password_key=dict(type="str", default="REDIS_PASSWORD", no_log=False),
        redis_timeout=dict(type="float", default=5.0),
    )


def compose_argument_spec(project_dir_required=True):
    """Options of every compose-facing module (ComposeProject.from_params); project_dir may be optional
    where Docker is used only by option."""
    return dict(
        project_dir=dict(type="path", required=project_dir_required),
        project_name=dict(type="str"),
        docker_host=dict(type="str"),
        docker_timeout=dict(type="int", default=60),
    )


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
