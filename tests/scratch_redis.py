"""The one scratch redis-server of the fast tier: a real Redis on a free loopback port, in a folder of its own."""

import contextlib
import socket
import subprocess
import time

import pytest
import redis

REDIS_SERVER = "/usr/bin/redis-server"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ping(client):
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


@contextlib.contextmanager
def running_redis(folder, *args):
    """A throwaway redis-server on a free loopback port, saving only when told to; yields a client (str replies)."""
    port = free_port()
    command = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "", "--appendonly", "no"]
    # The debug command lets a test force plain quicklist nodes; depth 1 LZF-compresses inner list nodes.
    command += ["--enable-debug-command", "local", "--list-compress-depth", "1", *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
    try:
        deadline = time.monotonic() + 10
        while not ping(client):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server on port {port} did not start")
            time.sleep(0.05)
        yield client
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)


def port_of(client):
    return client.connection_pool.connection_kwargs["port"]
