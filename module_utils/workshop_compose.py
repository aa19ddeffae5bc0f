"""The compose-project lookup shared by every module that works on the workshop's containers.

Containers are found by the labels both docker compose v2 and docker-compose v1 put on them
(com.docker.compose.project / .service), through the Docker API, so the modules work the same
whichever compose CLI deployed the workshop, and need none.
"""

import contextlib
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.workshop_dotenv import read_dotenv
from ansible.module_utils.workshop_errors import WorkshopError, WorkshopUnreachable
from ansible.module_utils.workshop_files import sha256_stream

try:
    import docker
    import docker.errors
except ImportError:  # the module fails through require_libraries, naming the package, before any Docker step
    docker = None

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
# Containers started or stopped at once (the Docker Engine does the waiting; 24 for 20 participants).
MAX_PARALLEL = 8
# Removing a network that still lists an endpoint of a removed container: tries, and seconds between them.
NETWORK_TRIES = 5
NETWORK_PAUSE = 0.5


def normalize_project_name(name):
    """Compose's own normalisation: lower case, only [a-z0-9_-] kept."""
    return re.sub(r"[^a-z0-9_-]", "", name.lower())


def resolve_project_name(project_dir, project_name=None, env_file=None):
    """The project name compose uses: explicit, else COMPOSE_PROJECT_NAME of the .env (`env_file`, the one
    every module reads; default the project directory's), else the directory's name."""
    if project_name:
        return normalize_project_name(project_name)
    env_file = env_file or os.path.join(project_dir, ".env")
    if os.path.exists(env_file):
        from_env = read_dotenv(env_file).get("COMPOSE_PROJECT_NAME")
        if from_env:
            return normalize_project_name(from_env)
    return normalize_project_name(os.path.basename(os.path.normpath(project_dir)))


def _state(container):
    return container.attrs.get("State", {})


def _container_entry(container, **facts):
    """A container as the modules return it: its service, name and state, and `facts`."""
    return dict(
        service=container.labels.get(SERVICE_LABEL, ""),
        container=container.name,
        state=_state(container).get("Status", container.status),
        **facts,
    )


def _sorted_entries(entries):
    return sorted(entries, key=lambda entry: (entry["service"], entry["container"]))


class ComposeProject:
    """The containers of one compose project on one Docker Engine."""

    def __init__(self, client, name, engine):
        self.client = client
        self.name = name
        self.engine = engine

    @classmethod
    def from_params(cls, params):
        """Connect to the engine named by docker_host (default: DOCKER_HOST, else the local socket)."""
        engine = params.get("docker_host") or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        name = resolve_project_name(params["project_dir"], params.get("project_name"), params.get("env_file"))
        try:
            client = docker.DockerClient(base_url=engine, timeout=params.get("docker_timeout", 60))
            client.ping()
        except docker.errors.DockerException as exc:
            raise WorkshopUnreachable(
                f"No Docker Engine answers at {engine} ({exc}): is Docker running? Set docker_host "
                "(workshop_docker_host) if it listens elsewhere",
                docker_host=engine,
            ) from None
        return cls(client, name, engine)

    def containers(self, missing_ok=False):
        """Every container of the project, running or not; an unknown project raises, naming the known
        ones, unless `missing_ok` (a project already taken down has none)."""
        # Listing inspects every container found: one removed meanwhile (another project going down) is
        # skipped, not an error; the other projects' names need no inspection at all (sparse).
        try:
            found = self.client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={self.name}"}, ignore_removed=True)
            if found or missing_ok:
                return found
            others = self.client.containers.list(all=True, filters={"label": PROJECT_LABEL}, sparse=True)
            known = sorted({(c.attrs.get("Labels") or {}).get(PROJECT_LABEL) for c in others})  # a sparse one has no .labels
        except docker.errors.DockerException as exc:
            raise WorkshopError(f"Docker at {self.engine} failed listing containers: {exc}", docker_host=self.engine) from None
        raise WorkshopUnreachable(
            f"No containers of compose project '{self.name}' on {self.engine}; projects there: "
            f"{', '.join(known) or 'none'}. Set workshop_compose_project (or COMPOSE_PROJECT_NAME in the .env)",
            project=self.name,
            known_projects=known,
        )

    def services(self):
        """One entry per container: service, container, state, restart count, start time, sorted by service."""
        return _sorted_entries(
            _container_entry(
                container, restart_count=container.attrs.get("RestartCount", 0), started_at=_state(container).get("StartedAt")
            )
            for container in self.containers()
        )

    def select(self, pattern=None, names=None):
        """The project's containers whose service matches `pattern` or is one of `names`; none raises."""
        containers = self.containers()
        regex = re.compile(pattern) if pattern else None
        chosen = [
            c
            for c in containers
            if (regex and regex.search(c.labels.get(SERVICE_LABEL, ""))) or (names and c.labels.get(SERVICE_LABEL) in names)
        ]
        if not chosen:
            services = sorted({c.labels.get(SERVICE_LABEL, "") for c in containers})
            wanted = f"pattern '{pattern}'" if pattern else f"services {', '.join(names)}"
            raise WorkshopError(
                f"No service of compose project '{self.name}' matches {wanted}; its services: {', '.join(services)}",
                project=self.name,
                services=services,
            )
        return sorted(chosen, key=lambda c: c.labels.get(SERVICE_LABEL, ""))

    def set_state(self, containers, state, stop_timeout, check_mode):
        """Start or stop `containers`, all at once as `docker compose` does (a stop waits up to
        stop_timeout per container, not per project); returns the services that were (or, in
        check mode, would be) changed, in the order of `containers`."""
        moving = [c for c in containers if (c.status in ("running", "restarting")) != (state == "started")]
        if moving and not check_mode:
            with ThreadPoolExecutor(max_workers=min(len(moving), MAX_PARALLEL)) as pool:
                failures = [error for error in pool.map(lambda c: self._set_one(c, state, stop_timeout), moving) if error]
            if failures:
                raise failures[0]
        return [container.labels.get(SERVICE_LABEL, container.name) for container in moving]

    def _set_one(self, container, state, stop_timeout):
        """Start or stop one container; returns the WorkshopError naming it, or None (returned, not
        raised: a raise would make pool.map cancel the containers not yet started or stopped)."""
        verb = "start" if state == "started" else "stop"
        try:
            container.start() if verb == "start" else container.stop(timeout=stop_timeout)
        except docker.errors.DockerException as exc:
            return WorkshopError(f"Docker at {self.engine} could not {verb} {container.name}: {exc}", container=container.name)
        return None

    def networks(self):
        """Names of the project's networks (labelled with its name), sorted."""
        return sorted(n.name for n in self._labelled(self.client.networks, "networks"))

    def volumes(self):
        """Names of the project's named volumes (labelled with its name), sorted."""
        return sorted(v.name for v in self._labelled(self.client.volumes, "volumes"))

    def _labelled(self, collection, what):
        try:
            return collection.list(filters={"label": f"{PROJECT_LABEL}={self.name}"})
        except docker.errors.DockerException as exc:
            raise WorkshopError(f"Docker at {self.engine} failed listing {what}: {exc}", docker_host=self.engine) from None

    def inventory(self):
        """What the project has on the engine: containers (with state and mounted volumes), networks, volumes."""
        services = _sorted_entries(
            _container_entry(
                container,
                exit_code=_state(container).get("ExitCode"),
                finished_at=_state(container).get("FinishedAt"),
                volumes=[
                    dict(name=m.get("Name"), destination=m.get("Destination"))
                    for m in sorted(container.attrs.get("Mounts", []), key=lambda m: m.get("Destination", ""))
                    if m.get("Type") == "volume"
                ],
            )
            for container in self.containers(missing_ok=True)
        )
        return dict(project=self.name, services=services, networks=self.networks(), volumes=self.volumes())

    def stop_in_order(self, containers, last, stop_timeout, check_mode):
        """Stop `containers`, those of the services in `last` after all others (Redis last: nothing
        writes to it once it stops). Returns the services stopped (in check mode, that would be)."""
        first = [c for c in containers if c.labels.get(SERVICE_LABEL) not in last]
        final = [c for c in containers if c.labels.get(SERVICE_LABEL) in last]
        return self.set_state(first, "stopped", stop_timeout, check_mode) + self.set_state(
            final, "stopped", stop_timeout, check_mode
        )

    def down(self, volumes, stop_timeout, check_mode, last=()):
        """Stop the project's containers (those of `last` after the others), remove them and its
        networks, then exactly the named `volumes`.

        Each volume must carry the project's label: a volume of another project (or none) is refused
        before anything is removed. Returns {containers, networks, volumes} removed (in check mode,
        that would be); the volumes are those confirmed gone afterwards.
        """
        containers = sorted(self.containers(missing_ok=True), key=lambda c: c.name)
        networks = self.networks()
        own = set(self.volumes())
        existing = self._existing_volumes(volumes)
        foreign = sorted(name for name in existing if name not in own)
        if foreign:
            raise WorkshopError(
                f"Volume(s) {', '.join(foreign)} on {self.engine} do not belong to compose project '{self.name}' "
                f"(its volumes: {', '.join(sorted(own)) or 'none'}): nothing was removed",
                project=self.name,
                volumes=foreign,
            )
        removed = dict(containers=[c.name for c in containers], networks=networks, volumes=sorted(existing))
        if check_mode:
            return removed
        self.stop_in_order(containers, last, stop_timeout, check_mode=False)
        for container in containers:
            self._call(container.remove, f"remove container {container.name}", v=False)
        for network in self.client.networks.list(filters={"label": f"{PROJECT_LABEL}={self.name}"}):
            self._remove_network(network)
        for name in sorted(existing):
            self._call(self.client.volumes.get(name).remove, f"remove volume {name}")
        left = self._existing_volumes(volumes)
        if left:
            raise WorkshopError(
                f"Volume(s) {', '.join(sorted(left))} of project '{self.name}' are still on {self.engine} after removal",
                project=self.name,
                volumes=sorted(left),
            )
        return removed

    def _remove_network(self, network, tries=NETWORK_TRIES, pause=NETWORK_PAUSE):
        """Remove a network of the project. The engine can still list an endpoint of a container just
        removed (for a moment, or for good after a removal under load: "has active endpoints"); such an
        endpoint, whose container is gone, is disconnected as `docker network disconnect -f` does, and the
        removal tried again. An endpoint of a container that exists (another project's) is left, and named."""
        for attempt in range(tries):
            try:
                network.remove()
                return
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                if "active endpoints" not in str(exc):
                    raise WorkshopError(
                        f"Docker at {self.engine} could not remove network {network.name}: {exc}", project=self.name
                    ) from None
                error = exc
            network.reload()
            attached = []
            for key, endpoint in (network.attrs.get("Containers") or {}).items():
                name = endpoint.get("Name") or key
                try:
                    self.client.containers.get(key)
                    attached.append(name)
                except docker.errors.NotFound:
                    with contextlib.suppress(docker.errors.APIError):
                        network.disconnect(name, force=True)
            if attached:
                raise WorkshopError(
                    f"Docker at {self.engine} could not remove network {network.name} of compose project '{self.name}': "
                    f"containers not of the project are attached to it ({', '.join(sorted(attached))}): disconnect them "
                    f"(docker network disconnect {network.name} NAME) and run again",
                    project=self.name,
                )
            if attempt < tries - 1:
                time.sleep(pause)
        raise WorkshopError(f"Docker at {self.engine} could not remove network {network.name}: {error}", project=self.name)

    def _existing_volumes(self, names):
        found = []
        for name in names:
            try:
                self.client.volumes.get(name)
            except docker.errors.NotFound:
                continue
            except docker.errors.DockerException as exc:
                raise WorkshopError(f"Docker at {self.engine} failed reading volume {name}: {exc}", volume=name) from None
            found.append(name)
        return found

    def _call(self, function, what, **kwargs):
        try:
            function(**kwargs)
        except docker.errors.NotFound:
            pass  # gone already: what was wanted
        except docker.errors.DockerException as exc:
            raise WorkshopError(f"Docker at {self.engine} could not {what}: {exc}", project=self.name) from None

    def copy_out(self, container, path, dest):
        """Stream the file `path` out of `container` (from a named volume as well) into `dest`."""
        return self.copy_out_with_stat(container, path, dest)[0]

    def copy_out_with_stat(self, container, path, dest):
        """copy_out, also returning Docker's stat of the file (name, size, mode, mtime with nanoseconds).

        Works on a stopped container too: the file is read from its file system and volumes."""
        import tarfile

        try:
            stream, stat = container.get_archive(path)
        except docker.errors.DockerException as exc:
            raise WorkshopError(
                f"Cannot read {path} in {container.name} on {self.engine}: {exc}", container=container.name, path=path
            ) from None
        reader = _ChunkReader(stream)
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for info in tar:
                if info.isfile():
                    with open(dest, "wb") as out:
                        source = tar.extractfile(info)
                        for block in iter(lambda src=source: src.read(1 << 20), b""):
                            out.write(block)
                        out.flush()
                        os.fsync(out.fileno())
                    return info.size, stat
        raise WorkshopError(f"{path} in {container.name} is not a file", container=container.name, path=path)


def tree_digests(container, path):
    """{path relative to `path`: sha256} of every file under `path` in `container` (a stopped one too,
    its volumes included), streamed from the Docker API without a copy on disk."""
    import tarfile

    digests = {}
    try:
        stream, _stat = container.get_archive(path)
        with tarfile.open(fileobj=_ChunkReader(stream), mode="r|") as tar:
            for info in tar:
                if info.isfile():
                    digests[info.name.partition("/")[2]] = sha256_stream(tar.extractfile(info))
    except (docker.errors.DockerException, tarfile.TarError, OSError) as exc:  # requests' errors are OSErrors
        raise WorkshopError(f"Cannot read {path} in {container.name}: {exc}", container=container.name, path=path) from None
    return digests


class _ChunkReader:
    """A file-like reader over the byte chunks the Docker API streams."""

    def __init__(self, chunks):
        self.chunks = iter(chunks)
        self.buffer = b""

    def read(self, size=-1):
        while size < 0 or len(self.buffer) < size:
            chunk = next(self.chunks, None)
            if chunk is None:
                break
            self.buffer += chunk
        if size < 0:
            size = len(self.buffer)
        block, self.buffer = self.buffer[:size], self.buffer[size:]
        return block


def containers_fingerprint(project):
    """Per container: id, restart count and state. Log lines alone do not count (a snapshot logs a
    line itself); what jobs did is in Redis and the outputs, which are fingerprinted there."""
    return {c.name: [c.id, c.attrs.get("RestartCount", 0), c.status] for c in project.containers()}
