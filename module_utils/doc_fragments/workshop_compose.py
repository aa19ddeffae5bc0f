"""Documentation of the compose-project options every Docker-facing module shares (workshop_connection.compose_argument_spec)."""


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  project_dir:
    description:
      - The platform's project directory on the host (C(docker-compose.yml), C(.env), C(data/)).
      - Part of the connection every connected module takes; modules that do not use it ignore it.
    type: path
  project_name:
    description:
      - Compose project name. Default C(COMPOSE_PROJECT_NAME) of the project's C(.env), else
        the name of O(project_dir), as compose itself chooses.
    type: str
  docker_host:
    description: Docker Engine to use. Default C(DOCKER_HOST) of the environment, else the local socket.
    type: str
  docker_timeout:
    description: Seconds to wait for the Docker Engine.
    type: int
    default: 60
"""
