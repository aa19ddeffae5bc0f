"""workshop_rdb against snapshots saved by a real redis-server, filled like the platform's queue."""

import json
import random
import shutil
import struct
import time
import uuid
from pathlib import Path

import pytest
import redis
from ansible.module_utils import workshop_rdb
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_rdb import crc64, iter_rdb, rdb_summary, verify_rdb
from scratch_redis import running_redis

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
        (b"REDIS0008\xff" + bytes(8), r"RDB version 8 is not supported at offset 5: this reader knows versions 9-12 .* older"),
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


# --- hand-built snapshots of versions 10, 11 and 12, written to the format's documentation ---------------
# The builder below follows Redis's own description of the format (src/rdb.h, src/rdb.c, listpack.md,
# intset.h, lzf), not workshop_rdb: lengths, string encodings, listpacks, intsets, the value types of
# each version, and the CRC-64 trailer computed bit by bit.

RDB_VERSIONS = (10, 11, 12)
NOW_MS = 1_763_632_800_000  # 2025-11-20T10:00:00Z


def crc64_bitwise(data):
    """Redis's CRC-64 (Jones polynomial, reflected, init 0, no final xor), one bit at a time."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x95AC9329AC4BC9B5 if crc & 1 else crc >> 1
    return crc


def rdb_length(n):
    """00xxxxxx, 01xxxxxx xxxxxxxx, 0x80 + 32-bit big-endian, 0x81 + 64-bit big-endian."""
    if n < 64:
        return bytes([n])
    if n < 16384:
        return bytes([0x40 | n >> 8, n & 0xFF])
    if n < 2**32:
        return b"\x80" + n.to_bytes(4, "big")
    return b"\x81" + n.to_bytes(8, "big")


def rdb_string(value, encoding="raw"):
    """A string: raw (length + bytes), as an 8/16/32-bit integer (11000000 + 0, 1, 2), or LZF (11000011)."""
    data = value.encode() if isinstance(value, str) else value
    if encoding == "int":
        number = int(data)
        for code, width in ((0, 1), (1, 2), (2, 4)):
            if -(2 ** (8 * width - 1)) <= number < 2 ** (8 * width - 1):
                return bytes([0xC0 | code]) + number.to_bytes(width, "little", signed=True)
        raise ValueError(number)
    if encoding == "lzf":
        packed = lzf_repeat(data)
        return b"\xc3" + rdb_length(len(packed)) + rdb_length(len(data)) + packed
    return rdb_length(len(data)) + data


def lzf_repeat(data):
    """LZF of a text that repeats its first 3 bytes: a literal run (000LLLLL + L+1 bytes), then one
    back-reference 3 bytes back (LLLooooo [extra length] oooooooo, copying length+2 bytes, overlapping)."""
    assert data == (data[:3] * len(data))[: len(data)] and 6 <= len(data) <= 3 + 264
    copy = len(data) - 3 - 2
    head = bytes([2]) + data[:3]
    if copy < 7:
        return head + bytes([copy << 5, 2])
    return head + bytes([7 << 5, copy - 7, 2])


def lp_entry(value):
    """A listpack entry: encoding and data, then the back-length of both (listpack.md)."""
    if isinstance(value, int):
        if 0 <= value <= 127:
            body = bytes([value])
        elif -4096 <= value <= 4095:
            body = bytes([0xC0 | (value & 0x1FFF) >> 8, value & 0xFF])
        else:
            code, width = next(
                (c, w) for c, w in ((0xF1, 2), (0xF2, 3), (0xF3, 4), (0xF4, 8)) if -(2 ** (8 * w - 1)) <= value < 2 ** (8 * w - 1)
            )
            body = bytes([code]) + value.to_bytes(width, "little", signed=True)
    else:
        data = value.encode() if isinstance(value, str) else value
        if len(data) < 64:
            body = bytes([0x80 | len(data)]) + data
        elif len(data) < 4096:
            body = bytes([0xE0 | len(data) >> 8, len(data) & 0xFF]) + data
        else:
            body = b"\xf0" + len(data).to_bytes(4, "little") + data
    size = len(body)
    backlen = bytes([size]) if size <= 127 else bytes([size >> 7, (size & 127) | 128])
    return body + backlen


def listpack(values):
    """<total bytes: u32><elements: u16><entries><0xFF>."""
    entries = b"".join(lp_entry(value) for value in values)
    return (6 + len(entries) + 1).to_bytes(4, "little") + len(values).to_bytes(2, "little") + entries + b"\xff"


def intset(values):
    """<encoding: u32 (2, 4 or 8)><length: u32><sorted values, little-endian>."""
    width = 2 if all(-(2**15) <= v < 2**15 for v in values) else 4 if all(-(2**31) <= v < 2**31 for v in values) else 8
    body = b"".join(v.to_bytes(width, "little", signed=True) for v in sorted(values))
    return width.to_bytes(4, "little") + len(values).to_bytes(4, "little") + body


class RdbBuilder:
    """An RDB file, key by key; bytes() ends it with EOF and the CRC-64 of everything before."""

    def __init__(self, version):
        self.out = bytearray(b"REDIS%04d" % version)
        self.expected = {}  # {db: {key: (type, value, expire_ms)}}
        self.db = 0

    def aux(self, key, value, encoding="raw"):
        self.out += b"\xfa" + rdb_string(key) + rdb_string(value, encoding)

    def select(self, db, sizes=(0, 0)):
        self.db = db
        self.out += b"\xfe" + rdb_length(db) + b"\xfb" + rdb_length(sizes[0]) + rdb_length(sizes[1])

    def slot_info(self, slot, keys, expiring):
        self.out += b"\xf4" + rdb_length(slot) + rdb_length(keys) + rdb_length(expiring)

    def key(self, type_code, key, payload, kind, value, expire_ms=None):
        if expire_ms is not None:
            self.out += b"\xfc" + expire_ms.to_bytes(8, "little")
        self.out += bytes([type_code]) + rdb_string(key) + payload
        self.expected.setdefault(self.db, {})[key] = (kind, value, expire_ms)

    def __bytes__(self):
        body = bytes(self.out) + b"\xff"
        return body + crc64_bitwise(body).to_bytes(8, "little")


def job_record(n, status):
    return json.dumps({"id": f"j{n}", "user_id": f"user{n % 3 + 1:03d}", "status": status, "workflow": {}})


def build_rdb(version):
    """A snapshot of `version` holding every encoding that version's Redis writes for the platform's keys."""
    rdb = RdbBuilder(version)
    rdb.aux("redis-ver", {10: "7.0.15", 11: "7.2.5", 12: "7.4.1"}[version])
    rdb.aux("redis-bits", "64", "int")
    rdb.aux("ctime", str(NOW_MS // 1000), "int")
    rdb.aux("aof-base", "0", "int")
    rdb.select(0, (12, 1))
    for n, status in enumerate(("completed", "failed", "pending")):
        rdb.key(0, f"job:j{n}", rdb_string(job_record(n, status)), "string", job_record(n, status))
    rdb.key(0, "user:user001:completed", rdb_string("-300", "int"), "string", "-300")
    rdb.key(0, "user:user002:completed", rdb_string("70000", "int"), "string", "70000")
    rdb.key(0, "note", rdb_string("abc" * 30, "lzf"), "string", "abc" * 30)
    heartbeat = "2025-11-20T10:00:30+00:00"
    rdb.key(0, "worker:worker-1:heartbeat", rdb_string(heartbeat), "string", heartbeat, expire_ms=NOW_MS + 60_000)
    members = [("j0", 1763632800.5), ("j1", 1763632801)]
    zset_lp = listpack([item for member, score in members for item in (member, score if isinstance(score, int) else repr(score))])
    rdb.key(17, "queue:completed", rdb_string(zset_lp), "zset", members)
    doubles = b"".join(rdb_string(m) + struct.pack("<d", score) for m, score in (("j2", 2e6 + 1.25), ("j9", float("inf"))))
    rdb.key(5, "queue:pending", rdb_length(2) + doubles, "zset", [("j2", 2e6 + 1.25), ("j9", float("inf"))])
    values = ["started", 42, -4096, 4095, 30000, -8_000_000, 2**40, "x" * 130]
    node = listpack(values)
    plain = "p" * 150
    quicklist = rdb_length(2) + rdb_length(2) + rdb_string(node) + rdb_length(1) + rdb_string(plain)
    rdb.key(18, "log:worker", quicklist, "list", [str(v) for v in values] + [plain])
    rdb.key(11, "user:user003:jobs", rdb_string(intset([3, -2, 100_000])), "set", {"3", "-2", "100000"})
    big = {f"job-{n:03d}" for n in range(3)}
    rdb.key(2, "user:user100:jobs", rdb_length(3) + b"".join(rdb_string(m) for m in sorted(big)), "set", big)
    hash_fields = {"version": "1.4.2", "workers": 3}
    hash_lp = listpack([item for pair in hash_fields.items() for item in pair])
    rdb.key(16, "meta:small", rdb_string(hash_lp), "hash", {"version": "1.4.2", "workers": "3"})
    rdb.key(4, "meta:large", rdb_length(1) + rdb_string("notes") + rdb_string("long " * 20), "hash", {"notes": "long " * 20})
    if version >= 11:  # Redis 7.2: small sets of text are listpacks
        rdb.key(20, "user:user001:jobs", rdb_string(listpack(["j0", "j3", 7])), "set", {"j0", "j3", "7"})
    if version >= 12:  # Redis 7.4: hashes whose fields expire
        rdb.slot_info(0, 20, 2)
        min_expire = NOW_MS + 5_000
        # RDB_TYPE_HASH_METADATA: min expire, then per field a TTL relative to it (+1; 0: none), field, value.
        fields = rdb_length(2) + rdb_length(0) + rdb_string("kept") + rdb_string("forever")
        fields += rdb_length(1) + rdb_string("brief") + rdb_string("5 s")
        rdb.key(24, "session:big", min_expire.to_bytes(8, "little") + fields, "hash", {"kept": "forever", "brief": "5 s"})
        # RDB_TYPE_HASH_LISTPACK_EX: min expire, then a listpack of field, value, absolute TTL (0: none).
        triples = listpack(["token", "abc", min_expire, "user", "user001", 0])
        payload = min_expire.to_bytes(8, "little") + rdb_string(triples)
        rdb.key(25, "session:small", payload, "hash", {"token": "abc", "user": "user001"})
        # The 7.4 release candidates' forms: no min expire, absolute TTLs.
        fields = rdb_length(1) + rdb_length(min_expire) + rdb_string("old") + rdb_string("rc")
        rdb.key(22, "session:rc-big", fields, "hash", {"old": "rc"})
        rdb.key(23, "session:rc-small", rdb_string(listpack(["a", "b", 0])), "hash", {"a": "b"})
    rdb.select(1, (1, 0))
    rdb.key(0, "job:elsewhere", rdb_string(job_record(9, "completed")), "string", job_record(9, "completed"))
    return rdb


@pytest.fixture(params=RDB_VERSIONS, ids=lambda version: f"rdb{version}")
def built(request, tmp_path):
    rdb = build_rdb(request.param)
    path = tmp_path / f"v{request.param}.rdb"
    path.write_bytes(bytes(rdb))
    return request.param, rdb, path


def test_hand_built_snapshots_parse_to_what_was_written(built):
    _, rdb, path = built
    found = {}
    for entry in iter_rdb(path):
        found.setdefault(entry.db, {})[entry.key] = (entry.type, entry.value, entry.expire_ms)
    assert found == rdb.expected


def test_hand_built_snapshots_checksum_and_count_keys(built):
    version, rdb, path = built
    data = path.read_bytes()
    assert crc64(data[:-8]) == int.from_bytes(data[-8:], "little") == crc64_bitwise(data[:-8])
    per_db = {db: len(keys) for db, keys in rdb.expected.items()}
    assert verify_rdb(path) == {
        "version": version,
        "checksum": "ok",
        "keys": sum(per_db.values()),
        "keys_per_db": per_db,
        "size_bytes": len(data),
    }
    # 3 jobs, 2 counters, note, heartbeat, 2 queues, a list, 2 sets, 2 hashes; 7.2 a set; 7.4 four hashes.
    assert per_db[0] == {10: 14, 11: 15, 12: 19}[version]
    summary = rdb_summary(path, zsets=("queue:completed", "queue:pending", "queue:failed"))
    assert summary["zset_sizes"] == {"queue:completed": 2, "queue:pending": 2, "queue:failed": 0}
    assert summary["job_records"] == 3


def test_hand_built_snapshots_give_the_job_records_to_the_metrics(built):
    from ansible.module_utils.workshop_metrics import jobs_from_rdb

    _, _, path = built
    records = jobs_from_rdb(path, now_ms=NOW_MS)
    assert [job["id"] for job in records.jobs] == ["j0", "j1", "j2"]
    assert records.invalid == []


def test_a_flipped_byte_in_a_version_12_snapshot_is_a_checksum_mismatch(tmp_path):
    data = bytearray(bytes(build_rdb(12)))
    at = data.index(b"forever") + 2
    data[at] ^= 0x20
    path = tmp_path / "flipped.rdb"
    path.write_bytes(data)
    with pytest.raises(WorkshopError, match="checksum mismatch"):
        verify_rdb(path)


def test_a_version_12_snapshot_saved_without_checksum_reads_as_disabled(tmp_path):
    data = bytes(build_rdb(12))
    path = tmp_path / "unchecked.rdb"
    path.write_bytes(data[:-8] + bytes(8))
    assert verify_rdb(path)["checksum"] == "disabled"


@pytest.mark.parametrize("version", [13, 99])
def test_a_future_version_says_which_and_what_to_do(tmp_path, version):
    data = bytes(build_rdb(12))
    path = tmp_path / "future.rdb"
    path.write_bytes(b"REDIS%04d" % version + data[9:])
    with pytest.raises(WorkshopError) as caught:
        verify_rdb(path)
    message = caught.value.msg
    assert f"RDB version {version} is not supported" in message
    assert "versions 9-12" in message and "newer Redis" in message and "redis-check-rdb" in message
    assert caught.value.context == {"path": str(path), "offset": 5}
