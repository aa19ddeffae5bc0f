"""Shared fixtures: the staging workshop on this machine, and ways to drive it.

The staging workshop is brought up once per test session through the project's own
playbook (so the role is tested by every run) and torn down at the end.
"""

import atexit
import contextlib
import fcntl
import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path

import ansible.module_utils
import docker
import pytest
import redis

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["faultlog", "pytester"]  # the fault suite's table (fault_case, --fault-table); pytester tests it
# The modules import their helpers as ansible.module_utils.<name>, as Ansible ships them.
ansible.module_utils.__path__.append(str(REPO / "module_utils"))
from ansible.module_utils.workshop_time import parse_time  # importable once the path is in


def pyenv_python(version):
    """The newest pyenv build of `version` (e.g. "3.10"): the old Pythons of workshop hosts."""
    versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    builds = [b.name for b in versions.glob(f"{version}.*") if re.fullmatch(r"\d+\.\d+\.\d+", b.name)]
    if not builds:
        pytest.fail(f"no pyenv build of Python {version} in {versions}: the machine image provides them")
    newest = max(builds, key=lambda b: tuple(int(part) for part in b.split(".")))
    return str(versions / newest / "bin" / "python")


def load_module(name):
    """Import library/<name>.py, the way a test calls a module's main() directly."""
    spec = importlib.util.spec_from_file_location(name, REPO / "library" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Slots: each pytest session (and each pytest-xdist worker in it) has a staging workshop of its own,
# so sessions run side by side. Slot = COMFY_WRAPUP_SLOT (default 0) + the xdist worker's number;
# inventory/local gives every ansible run of the session the ports, directories and names of that
# slot (COMFY_WRAPUP_SLOT), and the tests read them from the same function. Slot 0 is the platform's
# own layout (the shared one: run it under `flock /tmp/comfy-wrapup-docker.lock`, so a session with
# workers takes slot 0 only under the lock; experiments without it use COMFY_WRAPUP_SLOT=10 and up);
# slot N adds 1000*N to the ports and "-sN" to names.
SLOT = int(os.environ.get("COMFY_WRAPUP_SLOT") or 0) + int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:])
os.environ["COMFY_WRAPUP_SLOT"] = str(SLOT)
# Not passed on to ansible runs: unbuffered, Python reads a pipelined module one byte per read(2).
os.environ.pop("PYTHONUNBUFFERED", None)
# Module payloads built once per session instead of once per ansible run (scripts/controller_payload_cache.py);
# set by the first process of the session (pytest-xdist's workers inherit it), removed when it ends. Set to
# nothing, the session builds them as Ansible does.
if "COMFY_WRAPUP_PAYLOAD_CACHE" not in os.environ:
    os.environ["COMFY_WRAPUP_PAYLOAD_CACHE"] = tempfile.mkdtemp(prefix="comfy-wrapup-payloads-")
    atexit.register(shutil.rmtree, os.environ["COMFY_WRAPUP_PAYLOAD_CACHE"], True)
SLOT_SUFFIX = f"-s{SLOT}" if SLOT else ""


def local_inventory():
    """inventory/local, the staging workshop's inventory script, imported (a file without .py)."""
    loader = importlib.machinery.SourceFileLoader("local_inventory", str(REPO / "inventory" / "local"))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


SETTINGS = local_inventory().slot_settings(SLOT)
PROJECT_DIR = Path(SETTINGS["workshop_project_dir"])
BACKUP_ROOT = Path(SETTINGS["workshop_backup_root"])
COMPOSE_PROJECT = SETTINGS["staging_workshop_compose_project"]
CONTAINER_PREFIX = SETTINGS["staging_workshop_container_prefix"]
REDIS_PORT = SETTINGS["workshop_redis_port"]
QUEUE_MANAGER_PORT = SETTINGS["staging_workshop_queue_manager_port"]
ADMIN_PORT = SETTINGS["staging_workshop_admin_port"]
FRONTEND_BASE_PORT = SETTINGS["staging_workshop_frontend_base_port"]
SSH_PORT = 23000 + SLOT  # a range no other sshd of the tests uses
QUEUE_MANAGER = f"http://127.0.0.1:{QUEUE_MANAGER_PORT}"


def container(service):
    """The container name of a staging service in this session's slot (comfy-redis in slot 0)."""
    return f"{CONTAINER_PREFIX}-{service}"


RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
# Settings of the staging workshop under test: fewer participants than the default 20 keep the
# suite quick; the worker fails nothing by chance, so each test decides its own failures.
STAGING_VARS = {"staging_workshop_num_users": 6, "staging_workshop_fail_rate": 0.0, "staging_workshop_job_seconds": 0.2}


class PlaybookRun:
    """The outcome of one ansible-playbook run: its output and the PLAY RECAP counts."""

    def __init__(self, completed):
        self.returncode = completed.returncode
        self.output = completed.stdout + completed.stderr
        self.recap = {
            m[0]: dict(ok=int(m[1]), changed=int(m[2]), unreachable=int(m[3]), failed=int(m[4]))
            for m in RECAP.findall(completed.stdout)
        }

    @property
    def text(self):
        """The output as one line of words, as the YAML callback's folded and quoted lines read."""
        return " ".join(self.output.split()).replace("''", "'")

    def task_output(self, task):
        """The last output of `task` ("role : name"), up to the next TASK or PLAY line, as text() reads."""
        start = self.output.rindex(f"TASK [{task}]")
        ends = [at for at in (self.output.find("\nTASK [", start), self.output.find("\nPLAY ", start)) if at != -1]
        return " ".join(self.output[start : min(ends, default=len(self.output))].split()).replace("''", "'")

    def tasks_after(self, task):
        """The names of the tasks that ran after the last run of `task` (roles' argument checks left out)."""
        tasks = re.findall(r"^TASK \[([^\]]+)\]", self.output[self.output.rindex(f"TASK [{task}]") + 1 :], re.M)
        return [name for name in tasks if "Validating arguments against arg spec" not in name]

    def changed(self, host="localhost"):
        return self.recap[host]["changed"]


def run_ansible(command, check=False, env=None):
    """Run an ansible command of the repo with its ansible.cfg; returns the CompletedProcess."""
    return subprocess.run(
        [*command, "--check"] if check else command,
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1", **(env or {})},
        timeout=900,
        check=False,
    )


def run_playbook(playbook, *args, extra_vars=None, check=False, env=None, expect_ok=True):
    """Run a playbook of the repo; with expect_ok, fail the test with its output when it fails."""
    command = ["ansible-playbook", str(REPO / playbook), *args]
    if extra_vars:
        command += ["-e", json.dumps(extra_vars)]
    run = PlaybookRun(run_ansible(command, check, env))
    if expect_ok and run.returncode != 0:
        pytest.fail(f"{playbook} failed (rc={run.returncode}):\n{run.output[-6000:]}")
    return run


def staging(action, **extra):
    return run_playbook("playbooks/staging.yml", extra_vars={**STAGING_VARS, "staging_workshop_action": action, **extra})


def dotenv(key):
    for line in (PROJECT_DIR / ".env").read_text().splitlines():
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1]
    raise KeyError(key)


def http(method, path, body=None, base=QUEUE_MANAGER):
    """Call the queue manager; returns (status, decoded JSON or None)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, json.loads(raw) if raw else None


def wait_for(predicate, timeout=30.0, interval=0.1, what="condition"):
    """predicate()'s first true value, polled every `interval` s; after `timeout` s the test fails naming
    `what` (a text, or a function giving it then, to say what was still not so)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")


def compose(*args):
    """Run the compose CLI on the staging project (whichever of v2 and v1 answers)."""
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0
    command = (["docker", "compose"] if v2 else ["docker-compose"]) + list(args)
    return subprocess.run(command, cwd=PROJECT_DIR, capture_output=True, text=True, check=True, timeout=300)


@pytest.fixture(scope="session")
def staging_workshop():
    """An empty staging workshop in this session's slot, up for the whole session, torn down after it.

    Bring-ups of side-by-side slots take turns (a file lock), so the images are built once, by the first.
    """
    with open("/tmp/comfy-wrapup-staging-bringup.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            staging("reset")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    yield PROJECT_DIR
    staging("down")


def docker_client():
    """A client of the Docker Engine the tests use (DOCKER_HOST: the private one of scripts/docker-engine.sh)."""
    return docker.DockerClient(base_url=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"))


@pytest.fixture(scope="session")
def engine():
    with contextlib.closing(docker_client()) as client:
        yield client


@pytest.fixture(scope="session")
def rdb(staging_workshop):
    client = redis.Redis(host="127.0.0.1", port=REDIS_PORT, password=dotenv("REDIS_PASSWORD"), decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def cleanup_jobs(rdb):
    """Cancel whatever a test left hanging, so later tests start with an empty running queue."""
    yield
    for job_id in rdb.zrange("queue:running", 0, -1) + rdb.zrange("queue:pending", 0, -1):
        http("DELETE", f"/api/jobs/{job_id}")
    # As on the platform, a running job that was cancelled stays in queue:running until its worker reports.
    for job_id in rdb.zrange("queue:running", 0, -1):
        rdb.zrem("queue:running", job_id)
    assert rdb.zcard("queue:running") == 0 and rdb.zcard("queue:pending") == 0


def submit(user, metadata=None, workflow=None):
    """Submit one job as `user`; returns its id."""
    workflow = workflow or {"5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}}}
    status, job = http("POST", "/api/jobs", {"user_id": user, "workflow": workflow, "metadata": metadata or {}})
    assert status == 201, (status, job)
    return job["id"]


def epoch(iso):
    return datetime.fromisoformat(iso).timestamp()


def redis_answers(client):
    """Whether Redis answers a PING; any error means not (yet), as while it restarts."""
    try:
        return client.ping()
    except redis.RedisError:
        return False


def job_record(rdb, job_id):
    raw = rdb.get(f"job:{job_id}")
    return json.loads(raw) if raw else None


def wait_for_status(rdb, job_id, statuses, timeout=30.0):
    return wait_for(
        lambda: (job := job_record(rdb, job_id)) and job["status"] in statuses and job,
        timeout=timeout,
        what=f"job {job_id} to reach {statuses}",
    )


def services_up(rdb):
    """Every service of the staging workshop running again, as after a stop or a down: the project's
    files are as the role wrote them, so compose up is enough (staging("up") re-checks every file)."""
    compose("up", "-d")
    wait_for(lambda: redis_answers(rdb), what="Redis to answer")
    wait_for(lambda: (http("GET", "/health")[1] or {}).get("redis_connected"), what="the queue manager to reach Redis")


def service_started_at():
    """When each running service of the staging project last started (Docker's State.StartedAt)."""
    with contextlib.closing(docker_client()) as client:
        return {
            c.labels["com.docker.compose.service"]: parse_time(c.attrs["State"]["StartedAt"])
            for c in client.containers.list(filters={"label": f"com.docker.compose.project={COMPOSE_PROJECT}"})
        }


def empty_staging(rdb):
    """The staging workshop emptied in place, as staging("reset") leaves it but without taking it down:
    every service running, no job moving, every Redis key gone, no participant output, input or file."""
    services_up(rdb)
    started = service_started_at()

    def still_moving():
        # Not waited for: a job made to hang, a job already finished or cancelled (left in its set when
        # a service stopped halfway through the platform's non-atomic move), and a job whose worker
        # (re)started after taking it: nothing will ever take those out of their set (the platform's way).
        jobs = [job_record(rdb, job_id) for job_id in rdb.zrange("queue:pending", 0, -1) + rdb.zrange("queue:running", 0, -1)]
        return [
            job
            for job in jobs
            if job
            and job.get("status") not in ("completed", "failed", "cancelled")
            and not ((job.get("metadata") or {}).get("staging") or {}).get("hang")
            and not (
                job.get("status") == "running"
                and job.get("worker_id") in started
                and parse_time(job["started_at"]) < started[job["worker_id"]]
            )
        ]

    def named():
        fields = ("id", "status", "worker_id", "created_at", "started_at")
        return f"the jobs of earlier tests to finish: {[{key: job.get(key) for key in fields} for job in still_moving()]}"

    wait_for(lambda: not still_moving(), timeout=60, what=named)
    rdb.flushall()
    for name in ("outputs", "inputs", "user_data"):
        for child in (PROJECT_DIR / "data" / name).iterdir():
            # A participant's user_data folder is mounted into their frontend: emptied, not removed.
            inner = list(child.iterdir()) if name == "user_data" and child.is_dir() else [child]
            for path in inner:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def run_module(name, args, check=False, env=None):
    """Run one module of library/ ad hoc on the staging host; returns (ok, result dict)."""
    command = ["ansible", "workshop", "-m", name, "-a", json.dumps(args)]
    completed = run_ansible(command, check, {"ANSIBLE_CALLBACK_RESULT_FORMAT": "json", **(env or {})})
    head, _, body = completed.stdout.partition(" => ")
    if not body:
        pytest.fail(f"no result from {name}: {completed.stdout}\n{completed.stderr}")
    return "SUCCESS" in head or "CHANGED" in head, json.loads(body)


REDIS_ARGS = {"env_file": str(PROJECT_DIR / ".env"), "redis_port": REDIS_PORT}


@pytest.fixture
def sshd(tmp_path):
    """A real sshd on loopback that lets root in with a key made for this test."""
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", tmp_path / name], check=True)
    shutil.copy(tmp_path / "client_key.pub", tmp_path / "authorized_keys")
    config = tmp_path / "sshd_config"
    # SHLVL=2: Debian's bash sources ~/.bashrc for every command sshd runs (SSH_SOURCE_BASHRC) unless it
    # is a nested shell, and this machine image's root .bashrc runs `pyenv init`: 0.15 s and most of a
    # core per command, every Ansible task and archive step over SSH, where a workshop host's costs 0.01 s.
    config.write_text(
        f"Port {SSH_PORT}\nListenAddress 127.0.0.1\nHostKey {tmp_path / 'host_key'}\n"
        f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PidFile {tmp_path / 'sshd.pid'}\nSetEnv SHLVL=2\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)
    daemon = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", SSH_PORT), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or daemon.poll() is not None:
                pytest.fail(f"sshd did not start: {daemon.stderr.read().decode() if daemon.poll() is not None else ''}")
            time.sleep(0.1)
    yield tmp_path / "client_key"
    daemon.terminate()
    daemon.wait(timeout=10)


def ssh_inventory(tmp_path, client_key, host_vars=""):
    """An inventory reaching the staging workshop as host `vps` over the real sshd, with the host's Python."""
    python = os.environ.get("COMFY_WRAPUP_HOST_PYTHON") or sys.executable
    inventory = tmp_path / "inventory"
    inventory.write_text(
        "[workshop]\n"
        f"vps ansible_host=127.0.0.1 ansible_port={SSH_PORT} ansible_user=root "
        f"ansible_ssh_private_key_file={client_key} ansible_python_interpreter={python} "
        "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null' "
        f"workshop_project_dir={PROJECT_DIR} workshop_backup_root={BACKUP_ROOT} workshop_redis_port={REDIS_PORT} "
        f"workshop_queue_manager_url={QUEUE_MANAGER} workshop_docker_host={os.environ['DOCKER_HOST']} {host_vars}\n"
    )
    return inventory


# The files that take longest, longest first (each file's total, measured with --junitxml on 2 cores,
# 2026-11-30): pytest-xdist hands files to the workers in collection order (pytest_configure turns
# off its own reordering by number of tests), so these start first and the fast tier fills the gaps
# at the end, instead of one long file starting last and running alone. test_drain, second longest,
# goes fourth: its timing tests (drained within a second of the last completion) failed when they ran
# while the other workers brought their staging workshops up.
SLOWEST_FIRST = (
    "test_shutdown.py",
    "test_backup.py",
    "test_archive.py",
    "test_drain.py",
    "test_check_mode.py",
    "test_restore.py",
    "test_report.py",
    "test_staging_workshop.py",
    "test_fleet.py",
    "test_state.py",
    "test_lint.py",
    "test_staging_role.py",
    "test_faults.py",
    "test_archive_unit.py",
    "test_share.py",
    "test_roles.py",
    "test_share_playbook_unit.py",
    "test_retention_playbook_unit.py",
)


def pytest_configure(config):
    """pytest-xdist's --dist loadfile would hand out the files with the most tests first
    (--loadscope-reorder, on by default): test_lint's 185 quick ones before test_check_mode's one of
    2.5 minutes, which then ran last and alone. Files go in SLOWEST_FIRST's order instead."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    """Tiers: a test that needs the staging workshop (Docker) is marked `staging`; one that runs
    ansible-playbook without Docker is marked `playbook` where it is written; the rest are `unit`.
    The slowest files first (SLOWEST_FIRST), the others in their order."""
    items.sort(key=lambda item: SLOWEST_FIRST.index(item.path.name) if item.path.name in SLOWEST_FIRST else len(SLOWEST_FIRST))
    for item in items:
        if "staging_workshop" in getattr(item, "fixturenames", ()) or item.get_closest_marker("staging"):
            item.add_marker(pytest.mark.staging)
        elif not item.get_closest_marker("playbook"):
            item.add_marker(pytest.mark.unit)


@pytest.fixture
def played_workshop_id(staging_workshop, rdb):
    """A small workshop played on staging, and a workshop id of its own whose folder goes afterwards.

    Played on an emptied workshop: what an earlier test of this worker left (a cancelled job whose
    worker was restarted stays in queue:running for good) would hold the wrap-up's drain until its timeout."""
    empty_staging(rdb)
    staging("play", staging_workshop_play_jobs_per_user="1-2", staging_workshop_play_bursts=1)
    name = f"played-{uuid.uuid4().hex[:8]}"
    yield name
    shutil.rmtree(BACKUP_ROOT / name, ignore_errors=True)
    services_up(rdb)  # a wrap-up's drain closed the frontends: the next test of this worker finds them open
