"""workshop_rdb against snapshots saved by a real redis-server, filled like the platform's queue."""

import contextlib
import json
import random
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis
from ansible.module_utils import workshop_rdb
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_rdb import crc64, iter_rdb, rdb_summary, verify_rdb

REDIS_SERVER = "/usr/bin/redis-server"
QUEUE_KEYS = ("queue:pending", "queue:running", "queue:completed", "queue:failed")
# Every way of saving the same data: which server (rdbchecksum is fixed at startup), the config
# set before SAVE, and what the checksum reads as.
VARIANTS = {
    "default": ("checked", {}, "ok"),
    "lru": ("checked", {"maxmemory-policy": "allkeys-lru"}, "ok"),  # IDLE opcode before each key
    "lfu": ("checked", {"maxmemory-policy": "allkeys-lfu"}, "ok"),  # FREQ opcode before each key
    "uncompressed": ("checked", {"rdbcompression": "no"}, "ok"),
    "no-checksum": ("unchecked", {}, "disabled"),
}
CONFIG_DEFAULTS = {"maxmemory-policy": "noeviction", "rdbcompression": "yes"}
MARKER = "corrupt-me-" * 4  # a job field whose bytes stay uncompressed in the "uncompressed" snapshot
LISTPACK_INTEGERS = [0, 5, 127, 128, -1, 1000, -4096, 4095, 30000, -30000, 8_000_000, -8_000_000, 2_000_000_000, 2**40, -(2**62)]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_redis(folder, *args):
    """A throwaway redis-server on a free loopback port, saving only when told to."""
    port = free_port()
    command = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "", "--appendonly", "no"]
    # The debug command lets the test force plain quicklist nodes; depth 1 LZF-compresses inner list nodes.
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


def ping(client):
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two servers holding the same data, one saving without checksum: {name: (client, dump folder)}."""
    checked_dir, unchecked_dir = tmp_path_factory.mktemp("checked"), tmp_path_factory.mktemp("unchecked")
    with running_redis(checked_dir) as checked, running_redis(unchecked_dir, "--rdbchecksum", "no") as unchecked:
        for client in (checked, unchecked):
            fill(client, random.Random(20251120))
        yield {"checked": (checked, checked_dir), "unchecked": (unchecked, unchecked_dir)}


def job(rng, user, status, long):
    """A job record as the queue manager writes it; `long` ones carry a whole workflow (LZF territory)."""
    job_id = str(uuid.UUID(int=rng.getrandbits(128)))
    nodes = 40 if long else 0
    workflow = {str(n): {"class_type": "KSampler", "inputs": {"seed": rng.randrange(10**9), "steps": 20}} for n in range(nodes)}
    return job_id, {
        "id": job_id,
        "user_id": user,
        "workflow": workflow,
        "status": status,
        "priority": rng.randrange(3),
        "created_at": "2025-11-20T10:00:00+00:00",
        "metadata": {"note": "ünïcödé ✓"} if rng.random() < 0.1 else {},
    }


def fill(client, rng):
    """~300 jobs, the queues, per-user sets and counters, and one key of every other shape and size."""
    client.flushall()
    statuses = ("pending", "running", "completed", "failed")
    for number in range(300):
        user = f"user{number % 12:03d}"
        status = statuses[number % 4] if number < 200 else "completed"
        job_id, record = job(rng, user, status, long=number % 3 == 0)
        if number == 7:
            record["metadata"] = {"marker": MARKER}
        client.set(f"job:{job_id}", json.dumps(record))
        client.zadd(f"queue:{status}", {job_id: record["priority"] * 1e6 + 1_763_000_000 + number + 0.25})
        client.sadd(f"user:{user}:jobs", job_id)
    for number, completed in enumerate((0, 5, -100, 300, 70_000, 2**40)):  # int8, int16, int32, too big: plain string
        client.set(f"user:user{number:03d}:completed", completed)
    client.sadd("user:user100:jobs", *[str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(600)])
    client.sadd("user:user101:jobs", 1, 2, 3)  # intset of 16-bit
    client.sadd("user:user102:jobs", 1, 100_000)  # intset of 32-bit
    client.sadd("user:user103:jobs", -5, 2**40)  # intset of 64-bit
    client.zadd("queue:integral", {str(n): n for n in LISTPACK_INTEGERS})  # integral scores: listpack integers
    client.zadd("queue:special", {"low": float("-inf"), "high": float("inf"), "mid": -0.5})
    client.hset("meta:small", mapping={"version": "1.4.2", "workers": 3, **{f"i{n}": n for n in LISTPACK_INTEGERS}})
    client.hset("meta:large", mapping={f"field{n}": f"value {n} " * (n % 5) for n in range(300)})
    client.hset("meta:large", "notes", "a value longer than hash-max-listpack-value " * 3)  # makes it a hashtable
    # Entries of 127 and 128 bytes: either side of the listpack back-length's first size step.
    client.rpush("log:small", "started", 42, -7, "done", "y" * 125, "y" * 126, *LISTPACK_INTEGERS)
    client.rpush("log:large", *[f"line {n} " + "x" * (n % 50) for n in range(2000)])  # many nodes, inner ones LZF
    client.execute_command("DEBUG", "QUICKLIST-PACKED-THRESHOLD", "100")
    client.rpush("log:plain", "short", "p" * 150, "tail")  # the 150-byte element gets a plain node
    client.execute_command("DEBUG", "QUICKLIST-PACKED-THRESHOLD", str(2**30))
    client.set("binary", b"\xff\xfe\x00 not utf-8")
    client.set("empty", "")
    client.set("worker:worker-1:heartbeat", "2025-11-20T10:05:00+00:00", ex=60)
    client.set("job:expiring", "{}", px=86_400_000)
    client.xadd("events", {"type": "job_created"}, id="1-1")
    client.xadd("events", {"type": "job_updated"}, id="2-1")
    client.xgroup_create("events", "dashboard", id="0")
    client.xreadgroup("dashboard", "viewer", {"events": ">"}, count=1)
    client.function_load("#!lua name=wrapup\nredis.register_function('noop', function() return 1 end)", replace=True)
    other = redis.Redis(connection_pool=redis.ConnectionPool(**{**client.connection_pool.connection_kwargs, "db": 1}))
    other.set("job:db1", "in db 1")
    other.zadd("queue:pending", {"x": 1})  # not db 0's queue: rdb_summary must not count it
    other.set("temp", "soon gone", ex=3600)
    other.close()


@pytest.fixture(scope="module")
def snapshots(servers):
    """{variant: path of its dump}."""
    paths = {}
    for name, (server, config, _) in VARIANTS.items():
        client, folder = servers[server]
        for setting, value in {**CONFIG_DEFAULTS, **config}.items():
            client.config_set(setting, value)
        client.save()
        paths[name] = Path(shutil.copy(folder / "dump.rdb", folder / f"{name}.rdb"))
    return paths


def server_contents(client, db):
    """{key: (type, value, expire_ms)} as the server reports them, in workshop_rdb's shapes."""
    port = client.connection_pool.connection_kwargs["port"]
    conn = redis.Redis(host="127.0.0.1", port=port, db=db, decode_responses=False)
    contents = {}
    for raw_key in conn.scan_iter(count=1000):
        kind = conn.type(raw_key).decode()
        value = {
            "string": lambda k: text(conn.get(k)),
            "list": lambda k: [text(v) for v in conn.lrange(k, 0, -1)],
            "set": lambda k: {text(v) for v in conn.smembers(k)},
            "zset": lambda k: [(text(m), s) for m, s in conn.zrange(k, 0, -1, withscores=True)],
            "hash": lambda k: {text(f): text(v) for f, v in conn.hgetall(k).items()},
            "stream": lambda k: None,
        }[kind](raw_key)
        expire = conn.pexpiretime(raw_key)
        contents[text(raw_key)] = (kind, value, None if expire < 0 else expire)
    conn.close()
    return contents


def text(raw):
    return raw.decode("utf-8", "surrogateescape")


def rdb_contents(path):
    contents = {}
    for entry in iter_rdb(path):
        value = entry.value
        if entry.type == "zset":
            # Listpacks hold members in ascending order, skiplists are saved from the top down.
            ascending = sorted(value, key=lambda pair: (pair[1], pair[0].encode("utf-8", "surrogateescape")))
            assert value in (ascending, ascending[::-1]), entry.key
            value = ascending
        contents.setdefault(entry.db, {})[entry.key] = (entry.type, value, entry.expire_ms)
    return contents


@pytest.mark.parametrize("variant", VARIANTS)
def test_iter_rdb_returns_what_the_server_holds(servers, snapshots, variant):
    client, _ = servers[VARIANTS[variant][0]]
    contents = rdb_contents(snapshots[variant])
    assert set(contents) == {0, 1}
    for db, keys in contents.items():
        expected = server_contents(client, db)
        assert sorted(keys) == sorted(expected)
        for key, (kind, value, expire_ms) in keys.items():
            assert (kind, value, expire_ms) == expected[key], key
    assert contents[0]["worker:worker-1:heartbeat"][2] > time.time() * 1000
    assert contents[0]["binary"][1].encode("utf-8", "surrogateescape") == b"\xff\xfe\x00 not utf-8"
    assert contents[0]["user:user005:completed"][1] == str(2**40)
    jobs = [json.loads(value) for key, (_, value, _) in contents[0].items() if key.startswith("job:") and value != "{}"]
    assert len(jobs) == 300
    assert {j["status"] for j in jobs} == {"pending", "running", "completed", "failed"}


@pytest.mark.parametrize(("variant", "checksum"), [(name, checksum) for name, (_, _, checksum) in VARIANTS.items()])
def test_verify_rdb_counts_every_key(servers, snapshots, variant, checksum):
    client, _ = servers[VARIANTS[variant][0]]
    sizes = {}
    port = client.connection_pool.connection_kwargs["port"]
    for db in (0, 1):
        conn = redis.Redis(host="127.0.0.1", port=port, db=db)
        sizes[db] = conn.dbsize()
        conn.close()
    path = snapshots[variant]
    facts = verify_rdb(str(path))
    assert facts == {
        "version": 10,
        "checksum": checksum,
        "keys": sizes[0] + sizes[1],
        "keys_per_db": sizes,
        "size_bytes": path.stat().st_size,
    }
    assert sizes[0] > 330


def test_rdb_summary_sizes_the_queues_of_db_0(servers, snapshots):
    client, _ = servers["checked"]
    summary = rdb_summary(snapshots["default"], zsets=(*QUEUE_KEYS, "queue:absent"))
    assert summary["zset_sizes"] == {**{key: client.zcard(key) for key in QUEUE_KEYS}, "queue:absent": 0}
    assert summary["zset_sizes"]["queue:completed"] > 128  # a skiplist
    assert 0 < summary["zset_sizes"]["queue:failed"] <= 128  # a listpack
    assert summary["job_records"] == len(list(client.scan_iter("job:*", count=1000))) == 301
    assert {k: summary[k] for k in ("version", "checksum", "keys", "keys_per_db")} == {
        k: v for k, v in verify_rdb(snapshots["default"]).items() if k != "size_bytes"
    }


def test_rdb_summary_refuses_a_queue_that_is_not_a_sorted_set(snapshots):
    with pytest.raises(WorkshopError, match=r"'log:small' in db 0 is a list, not a sorted set"):
        rdb_summary(snapshots["default"], zsets=("log:small",))


def test_snapshots_exercise_every_encoding_redis_7_0_writes(servers, snapshots, monkeypatch):
    """Which RDB value types, opcodes and string encodings the saved data went through."""
    client, _ = servers["checked"]
    seen = set()

    def record(name, function):
        def wrapper(*args):
            seen.add(name)
            return function(*args)

        return wrapper

    for code, (kind, load) in workshop_rdb._VALUE_TYPES.items():
        monkeypatch.setitem(workshop_rdb._VALUE_TYPES, code, (kind, record(code, load)))
    for code, skip in workshop_rdb._SKIPPED_OPCODES.items():
        monkeypatch.setitem(workshop_rdb._SKIPPED_OPCODES, code, record(hex(code), skip))
    monkeypatch.setattr(workshop_rdb, "_lzf_decompress", record("lzf", workshop_rdb._lzf_decompress))
    monkeypatch.setattr(workshop_rdb, "_listpack_item", record("listpack", workshop_rdb._listpack_item))
    for variant in ("lru", "lfu"):
        verify_rdb(snapshots[variant])
    # string, set, zset_2, hash, intset, hash/zset listpack, quicklist 2, stream 2; FUNCTION2, IDLE, FREQ, AUX, RESIZEDB
    assert seen == {0, 2, 4, 5, 11, 16, 17, 18, 19, "0xf5", "0xf8", "0xf9", "0xfa", "0xfb", "lzf", "listpack"}
    encodings = {key: client.object("encoding", key) for key in ("user:user003:completed", "meta:small", "meta:large")}
    assert encodings == {"user:user003:completed": "int", "meta:small": "listpack", "meta:large": "hashtable"}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"123456789", 0xE9C6D914C4B8D9CA),  # the check value in Redis's crc64.c
        (b"", 0),
        (b"\x00" * 300, 0),  # no init, no final xor
    ],
)
def test_crc64_known_values(data, expected):
    assert crc64(data) == expected


@pytest.mark.parametrize("size", [1, 255, 256, 257, 1000, 70_001])
def test_crc64_in_pieces_equals_crc64_whole(size):
    data = random.Random(size).randbytes(size)
    whole = crc64(data)
    for cut in (0, 1, size // 3, size - 1):
        assert crc64(data[cut:], crc64(data[:cut])) == whole
    bitwise = 0
    for byte in data[:300]:  # the polynomial applied bit by bit, no tables
        bitwise ^= byte
        for _ in range(8):
            bitwise = (bitwise >> 1) ^ 0x95AC9329AC4BC9B5 if bitwise & 1 else bitwise >> 1
    assert crc64(data[:300]) == bitwise


def test_crc64_matches_the_trailer_redis_wrote(snapshots):
    data = snapshots["default"].read_bytes()
    assert crc64(data[:-8]) == int.from_bytes(data[-8:], "little") != 0


def damaged(tmp_path, snapshot, change):
    path = tmp_path / "damaged.rdb"
    path.write_bytes(change(bytearray(snapshot.read_bytes())))
    return path


def test_a_flipped_byte_is_a_checksum_mismatch(tmp_path, snapshots):
    data = snapshots["uncompressed"].read_bytes()
    at = data.index(MARKER.encode()) + 3
    path = damaged(tmp_path, snapshots["uncompressed"], lambda d: d[:at] + bytes([d[at] ^ 0x01]) + d[at + 1 :])
    trailer = len(data) - 8
    pattern = rf"{path}: checksum mismatch at offset {trailer}: file says 0x[0-9a-f]{{16}}, content gives 0x[0-9a-f]{{16}}"
    with pytest.raises(WorkshopError, match=pattern) as caught:
        verify_rdb(path)
    assert caught.value.context == {"path": str(path), "offset": trailer}
    read = []
    with pytest.raises(WorkshopError, match="checksum mismatch"):
        read.extend(iter_rdb(path))  # every key comes out before the trailer is checked
    assert len(read) == verify_rdb(snapshots["uncompressed"])["keys"]


@pytest.mark.parametrize("keep", [9, 200, 0.5, -9, -8, -1])
def test_a_truncated_file_is_caught(tmp_path, snapshots, keep):
    size = snapshots["default"].stat().st_size
    cut = int(size * keep) if isinstance(keep, float) else keep % size
    path = damaged(tmp_path, snapshots["default"], lambda d: d[:cut])
    with pytest.raises(WorkshopError, match=rf"{path}: truncated at offset \d+: \d+ more bytes needed, the file ends at {cut}"):
        verify_rdb(path)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"id": "not a snapshot"}', r"not an RDB snapshot \(no REDIS magic and version\) at offset 0"),
        (b"", r"not an RDB snapshot .* at offset 0: it starts with b''"),
        (b"REDIS", r"not an RDB snapshot"),
        (b"REDIS0012\xff" + bytes(8), r"RDB version 12 is not supported at offset 5: this reader knows 9-11"),
    ],
)
def test_a_file_that_is_not_an_rdb_is_refused(tmp_path, content, problem):
    path = tmp_path / "dump.rdb"
    path.write_bytes(content)
    with pytest.raises(WorkshopError, match=problem):
        verify_rdb(path)


def test_an_unknown_value_type_is_named_with_its_offset(tmp_path, snapshots):
    data = bytearray(snapshots["default"].read_bytes())
    at = data.index(b"\xfe\x00\xfb") + 3  # SELECTDB 0, RESIZEDB and its two lengths, then the first key's type
    for _ in range(2):
        at += {0: 1, 1: 2}.get(data[at] >> 6, 5 if data[at] == 0x80 else 9)
    data[at] = 0x42
    path = tmp_path / "dump.rdb"
    path.write_bytes(data)
    with pytest.raises(WorkshopError, match=rf"unknown value type 66 at offset {at}$"):
        verify_rdb(path)


def test_bytes_after_the_checksum_are_refused(tmp_path, snapshots):
    path = damaged(tmp_path, snapshots["default"], lambda d: d + b"\n")
    with pytest.raises(WorkshopError, match="1 unexpected bytes after the checksum"):
        verify_rdb(path)


def test_a_missing_file_names_its_path(tmp_path):
    with pytest.raises(WorkshopError, match=rf"cannot read RDB snapshot {tmp_path}/none.rdb: No such file"):
        verify_rdb(tmp_path / "none.rdb")


def test_the_module_is_importable_as_ansible_ships_it():
    assert Path(workshop_rdb.__file__).resolve() == Path(__file__).resolve().parent.parent / "module_utils" / "workshop_rdb.py"
