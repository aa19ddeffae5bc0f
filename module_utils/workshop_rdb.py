"""Read the queue's Redis snapshot (dump.rdb) without a Redis server: verify it, list its keys.

Handles the RDB versions written by Redis 5/6 (9), 7.0 (10), 7.2 (11: listpack-encoded sets) and
7.4 (12: hashes whose fields carry their own TTL), every encoding they use, and the CRC-64 trailer.
A newer version is refused with a message that says so, never misread. Pure standard library, so it
runs on the hosts' own Python.

The layout follows Redis's own src/rdb.h and src/rdb.c (rdbLoadObject, rdbLoadRio): the numbers of
the value types and opcodes below are theirs.

Values are returned as text: every string (keys, values, members, fields) is decoded from UTF-8
with errors="surrogateescape", so job records read as JSON text while binary values still
round-trip exactly (`value.encode("utf-8", "surrogateescape")`). Integers stored as integers
come back as their decimal text, as Redis itself returns them.
"""

import functools
import os
import struct
from collections import Counter
from typing import NamedTuple, Optional

from ansible.module_utils.workshop_errors import WorkshopError

SUPPORTED_VERSIONS = range(9, 13)
# The Redis release that first wrote each version: named in the message for a version not supported.
_VERSION_WRITERS = {9: "5.0", 10: "7.0", 11: "7.2", 12: "7.4"}

# Redis's CRC-64 ("Jones", src/crc64.c): polynomial 0xad93d23594c935a9 bit-reversed, init 0, no xorout.
_CRC_POLY = 0x95AC9329AC4BC9B5
# crc64() takes blocks of this many bytes through bytes.translate (C speed) and only the chaining
# from block to block through a Python loop; 256 measured fastest (tables ~0.5 MB, built once).
_CRC_BLOCK = 256
_READ_CHUNK = 1 << 20

_OP_SLOT_INFO = 0xF4
_OP_FUNCTION_PRE_GA = 0xF6
_OP_EXPIRETIME_MS = 0xFC
_OP_EXPIRETIME = 0xFD
_OP_SELECTDB = 0xFE
_OP_EOF = 0xFF
_TYPE_MODULE_PRE_GA = 6

_ENC_INT_WIDTHS = {0: 1, 1: 2, 2: 4}
_ENC_LZF = 3
_ZIPLIST_INT_WIDTHS = {0xC0: 2, 0xD0: 4, 0xE0: 8, 0xF0: 3, 0xFE: 1}
_LISTPACK_INT_WIDTHS = {0xF1: 2, 0xF2: 3, 0xF3: 4, 0xF4: 8}
_INTSET_FORMATS = {2: "<h", 4: "<i", 8: "<q"}
_QUICKLIST_PLAIN = 1
_QUICKLIST_PACKED = 2


class RdbEntry(NamedTuple):
    """One key: `value` is str, list[str], set[str], list[(member, score)] in file order, dict, or
    None for streams and module values (their data is skipped, not decoded)."""

    db: int
    key: str
    type: str
    value: object
    expire_ms: Optional[int]


# --- CRC-64 -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _crc_after_zeros():
    """after[d][v]: the CRC register after byte v followed by d zero bytes, from 0."""
    first = []
    for byte in range(256):
        crc = byte
        for _dummy in range(8):
            crc = (crc >> 1) ^ _CRC_POLY if crc & 1 else crc >> 1
        first.append(crc)
    after = [first]
    for _dummy in range(_CRC_BLOCK - 1):
        after.append([first[crc & 0xFF] ^ (crc >> 8) for crc in after[-1]])
    return after


@functools.lru_cache(maxsize=None)
def _crc_block_tables():
    """Per position in a block, eight 256-byte translate tables: one per byte of its CRC contribution;
    and the eight tables that carry the register across a whole block."""
    after = _crc_after_zeros()
    lanes = []
    for position in range(_CRC_BLOCK):
        packed = b"".join(crc.to_bytes(8, "little") for crc in after[_CRC_BLOCK - 1 - position])
        lanes.append([packed[lane::8] for lane in range(8)])
    carry = [after[_CRC_BLOCK - 1 - index] for index in range(8)]
    return lanes, carry


def _crc_bytewise(data, crc):
    table = _crc_after_zeros()[0]
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def _crc_blocks(body, crc):
    """CRC of whole blocks. The CRC is linear, so each block's own contribution is the XOR of its bytes'
    table entries: computed for all blocks at once, column by column, as big integers."""
    lanes, carry = _crc_block_tables()
    count = len(body) // _CRC_BLOCK
    sums = [0] * 8
    for position in range(_CRC_BLOCK):
        column = body[position::_CRC_BLOCK]
        for lane, table in enumerate(lanes[position]):
            sums[lane] ^= int.from_bytes(column.translate(table), "little")
    contributions = bytearray(8 * count)
    for lane in range(8):
        contributions[lane::8] = sums[lane].to_bytes(count, "little")
    c0, c1, c2, c3, c4, c5, c6, c7 = carry
    for (own,) in struct.iter_unpack("<Q", contributions):
        crc = own ^ (
            c0[crc & 0xFF]
            ^ c1[(crc >> 8) & 0xFF]
            ^ c2[(crc >> 16) & 0xFF]
            ^ c3[(crc >> 24) & 0xFF]
            ^ c4[(crc >> 32) & 0xFF]
            ^ c5[(crc >> 40) & 0xFF]
            ^ c6[(crc >> 48) & 0xFF]
            ^ c7[crc >> 56]
        )
    return crc


def crc64(data, crc=0):
    """Redis's CRC-64 of `data` (any bytes-like object), continuing from `crc` to checksum in chunks."""
    view = memoryview(data).cast("B")
    whole = len(view) - len(view) % _CRC_BLOCK
    if whole:
        crc = _crc_blocks(bytes(view[:whole]), crc)
    return _crc_bytewise(view[whole:], crc)


# --- the file as a byte stream ------------------------------------------------------------------


class _Input:
    """The file read in chunks: the offset of every read, and the CRC-64 of all bytes consumed."""

    def __init__(self, handle, path):
        self.handle = handle
        self.path = path
        self.size = os.fstat(handle.fileno()).st_size
        self.buffer = b""
        self.pos = 0
        self.base = 0  # file offset of buffer[0]; all bytes before it are in self.crc
        self.crc = 0

    @property
    def offset(self):
        return self.base + self.pos

    def fail(self, what, offset=None, detail=""):
        """The error for a problem at `offset` (default: here), as "<path>: <what> at offset N[: detail]"."""
        offset = self.offset if offset is None else offset
        msg = f"{self.path}: {what} at offset {offset}" + (f": {detail}" if detail else "")
        return WorkshopError(msg, path=self.path, offset=offset)

    def read(self, count):
        end = self.pos + count
        if end > len(self.buffer):
            self._refill(count)
            end = count
        data = self.buffer[self.pos : end]
        self.pos = end
        return data

    def byte(self):
        if self.pos >= len(self.buffer):
            self._refill(1)
        value = self.buffer[self.pos]
        self.pos += 1
        return value

    def _refill(self, count):
        if self.offset + count > self.size:
            raise self.fail("truncated", detail=f"{count} more bytes needed, the file ends at {self.size}")
        self.crc = crc64(memoryview(self.buffer)[: self.pos], self.crc)
        self.base += self.pos
        rest = self.buffer[self.pos :]
        self.buffer = rest + self.handle.read(max(count - len(rest), _READ_CHUNK))
        self.pos = 0
        if len(self.buffer) < count:
            raise self.fail("truncated", detail="the file shrank while being read")

    def consumed_crc(self):
        return crc64(memoryview(self.buffer)[: self.pos], self.crc)

    def int_le(self, width):
        return int.from_bytes(self.read(width), "little", signed=True)

    def _length_or_encoding(self):
        """A length (6, 14, 32 or 64 bits), or the number of a special string encoding: (value, is_encoding)."""
        first = self.byte()
        kind = first >> 6
        if kind == 0:
            return first & 0x3F, False
        if kind == 1:
            return (first & 0x3F) << 8 | self.byte(), False
        if kind == 3:
            return first & 0x3F, True
        if first == 0x80:
            return int.from_bytes(self.read(4), "big"), False
        if first == 0x81:
            return int.from_bytes(self.read(8), "big"), False
        raise self.fail(f"bad length byte {first:#04x}", self.offset - 1)

    def length(self):
        start = self.offset
        value, is_encoding = self._length_or_encoding()
        if is_encoding:
            raise self.fail(f"string encoding {value} where a length belongs", start)
        return value

    def string(self):
        """A string as bytes, whichever way it is stored: raw, as an integer, or LZF-compressed."""
        start = self.offset
        value, is_encoding = self._length_or_encoding()
        if not is_encoding:
            return self.read(value)
        if value in _ENC_INT_WIDTHS:
            return b"%d" % self.int_le(_ENC_INT_WIDTHS[value])
        if value == _ENC_LZF:
            packed_size = self.length()
            size = self.length()
            try:
                return _lzf_decompress(self.read(packed_size), size)
            except (ValueError, IndexError) as error:
                raise self.fail("corrupt LZF string", start, str(error)) from None
        raise self.fail(f"unknown string encoding {value}", start)

    def binary_double(self):
        return struct.unpack("<d", self.read(8))[0]

    def text_double(self):
        """A score of the old ZSET type: length byte then ASCII, with 253-255 for nan, inf and -inf."""
        size = self.byte()
        special = {253: float("nan"), 254: float("inf"), 255: float("-inf")}
        return special[size] if size in special else float(self.read(size))


def _lzf_decompress(data, size):
    out = bytearray()
    pos = 0
    while pos < len(data):
        control = data[pos]
        pos += 1
        if control < 32:  # a literal run of control + 1 bytes
            out += data[pos : pos + control + 1]
            pos += control + 1
            continue
        length = control >> 5
        if length == 7:
            length += data[pos]
            pos += 1
        distance = ((control & 0x1F) << 8 | data[pos]) + 1
        pos += 1
        length += 2
        start = len(out) - distance
        if start < 0:
            raise ValueError("back-reference before the start of the data")
        if length <= distance:
            out += out[start : start + length]
        else:  # the copy overlaps what it writes: the last `distance` bytes repeat
            out += (out[start:] * (length // distance + 1))[:length]
    if len(out) != size:
        raise ValueError(f"decompresses to {len(out)} bytes, the header says {size}")
    return bytes(out)


# --- in-memory encodings: ziplist, listpack, intset, zipmap -------------------------------------


def _expect(condition, problem):
    if not condition:
        raise ValueError(problem)


def _u32(blob, pos):
    return int.from_bytes(blob[pos : pos + 4], "little")


def _ziplist(blob):
    """The entries of a ziplist, as bytes or int."""
    _expect(len(blob) >= 11 and _u32(blob, 0) == len(blob) and blob[-1] == 0xFF, "bad ziplist header or end")
    items = []
    pos, end = 10, len(blob) - 1
    while pos < end:
        pos += 5 if blob[pos] == 0xFE else 1  # the previous entry's length
        item, pos = _ziplist_item(blob, pos)
        items.append(item)
    _expect(pos == end, "ziplist entries run past its end")
    return items


def _ziplist_item(blob, pos):
    encoding = blob[pos]
    if encoding < 0xC0:
        if encoding < 0x40:
            size, pos = encoding, pos + 1
        elif encoding < 0x80:
            size, pos = (encoding & 0x3F) << 8 | blob[pos + 1], pos + 2
        elif encoding == 0x80:
            size, pos = int.from_bytes(blob[pos + 1 : pos + 5], "big"), pos + 5
        else:
            raise ValueError(f"bad ziplist string header {encoding:#04x}")
        return blob[pos : pos + size], pos + size
    if 0xF1 <= encoding <= 0xFD:  # 0 to 12 held in the header itself
        return (encoding & 0x0F) - 1, pos + 1
    width = _ZIPLIST_INT_WIDTHS.get(encoding)
    _expect(width is not None, f"bad ziplist entry header {encoding:#04x}")
    return int.from_bytes(blob[pos + 1 : pos + 1 + width], "little", signed=True), pos + 1 + width


def _listpack(blob):
    """The entries of a listpack, as bytes or int."""
    _expect(len(blob) >= 7 and _u32(blob, 0) == len(blob) and blob[-1] == 0xFF, "bad listpack header or end")
    items = []
    pos, end = 6, len(blob) - 1
    while pos < end:
        item, size = _listpack_item(blob, pos)
        items.append(item)
        pos += size + _listpack_backlen_size(size)
    _expect(pos == end, "listpack entries run past its end")
    return items


def _listpack_item(blob, pos):
    """(value, size of header and data); the back-length that follows is skipped by the caller."""
    encoding = blob[pos]
    if encoding < 0x80:
        return encoding, 1
    if encoding < 0xC0:
        size = encoding & 0x3F
        return blob[pos + 1 : pos + 1 + size], 1 + size
    if encoding < 0xE0:
        value = (encoding & 0x1F) << 8 | blob[pos + 1]
        return (value - (1 << 13) if value >= 1 << 12 else value), 2
    if encoding < 0xF0:
        size = (encoding & 0x0F) << 8 | blob[pos + 1]
        return blob[pos + 2 : pos + 2 + size], 2 + size
    if encoding == 0xF0:
        size = _u32(blob, pos + 1)
        return blob[pos + 5 : pos + 5 + size], 5 + size
    width = _LISTPACK_INT_WIDTHS.get(encoding)
    _expect(width is not None, f"bad listpack entry header {encoding:#04x}")
    return int.from_bytes(blob[pos + 1 : pos + 1 + width], "little", signed=True), 1 + width


def _listpack_backlen_size(size):
    # The thresholds of Redis's lpEncodeBacklen, off-by-one quirks included.
    for limit, width in ((128, 1), (16383, 2), (2097151, 3), (268435455, 4)):
        if size < limit:
            return width
    return 5


def _intset(blob):
    width, count = _u32(blob, 0), _u32(blob, 4)
    _expect(width in _INTSET_FORMATS and len(blob) == 8 + width * count, "bad intset header")
    return [value for (value,) in struct.iter_unpack(_INTSET_FORMATS[width], blob[8:])]


def _zipmap(blob):
    """The fields and values of a zipmap (Redis < 2.6 hashes), alternating."""
    items = []
    pos = 1  # past the entry count, which is not trusted above 253
    while blob[pos] != 0xFF:
        size, pos = _zipmap_length(blob, pos)
        items.append(blob[pos : pos + size])
        size, pos = _zipmap_length(blob, pos + size)
        free = blob[pos]
        items.append(blob[pos + 1 : pos + 1 + size])
        pos += 1 + size + free
    _expect(pos == len(blob) - 1, "zipmap entries run past its end")
    return items


def _zipmap_length(blob, pos):
    size = blob[pos]
    _expect(size != 0xFF, "zipmap ends inside an entry")
    return (_u32(blob, pos + 1), pos + 5) if size == 0xFE else (size, pos + 1)


# --- values -------------------------------------------------------------------------------------


def _text(item):
    return str(item) if isinstance(item, int) else item.decode("utf-8", "surrogateescape")


def _texts(items):
    return [_text(item) for item in items]


def _pairs(items):
    _expect(len(items) % 2 == 0, "odd number of entries in a field/value encoding")
    return zip(items[0::2], items[1::2])


def _hash_of(items):
    return {_text(field): _text(value) for field, value in _pairs(items)}


def _zset_of(items):
    return [(_text(member), float(score)) for member, score in _pairs(items)]


def _load_list(src):
    return [_text(src.string()) for _dummy in range(src.length())]


def _load_set(src):
    return {_text(src.string()) for _dummy in range(src.length())}


def _load_zset_text_scores(src):
    return [(_text(src.string()), src.text_double()) for _dummy in range(src.length())]


def _load_zset_binary_scores(src):
    return [(_text(src.string()), src.binary_double()) for _dummy in range(src.length())]


def _load_hash(src):
    return {_text(src.string()): _text(src.string()) for _dummy in range(src.length())}


def _load_quicklist(src):
    items = []
    for _dummy in range(src.length()):
        items += _ziplist(src.string())
    return _texts(items)


def _load_quicklist_2(src):
    """Redis 7 lists: nodes that are either one big element (plain) or a listpack (packed)."""
    items = []
    for _dummy in range(src.length()):
        container = src.length()
        node = src.string()
        if container == _QUICKLIST_PLAIN:
            items.append(node)
        else:
            _expect(container == _QUICKLIST_PACKED, f"unknown quicklist container {container}")
            items += _listpack(node)
    return _texts(items)


def _load_hash_with_ttls(src, relative):
    """A hash whose fields may expire (Redis 7.4, RDB_TYPE_HASH_METADATA and its 7.4 RC form): per
    field, its TTL (a length), the field, the value. The GA form (relative) starts with the smallest
    expiry (8 bytes), and each TTL is relative to it (+1, 0 meaning none); the RC form's are absolute.
    The fields' expiries are not returned: the value is the hash's fields and values, as for any hash."""
    if relative:
        src.int_le(8)  # min expire
    fields = {}
    for _dummy in range(src.length()):
        src.length()  # the field's TTL
        field = _text(src.string())
        fields[field] = _text(src.string())
    return fields


def _load_hash_listpack_ex(src, with_min_expire):
    """A small hash with field TTLs (RDB_TYPE_HASH_LISTPACK_EX, and its 7.4 RC form without the
    leading 8-byte smallest expiry): a listpack of field, value, TTL triples (TTL 0: none)."""
    if with_min_expire:
        src.int_le(8)
    items = _listpack(src.string())
    _expect(len(items) % 3 == 0, "a field/value/TTL listpack whose length is not a multiple of 3")
    return {_text(field): _text(value) for field, value in zip(items[0::3], items[1::3])}


def _skip_stream(src, revision):
    """Streams are not decoded, only stepped over; revision 2 (7.0) and 3 (7.2) add fields."""
    for _dummy in range(src.length()):  # radix tree nodes: master entry ID, listpack
        src.string()
        src.string()
    for _dummy in range(3 if revision == 1 else 8):  # length, last ID; first ID, max deleted ID, entries added
        src.length()
    for _dummy in range(src.length()):  # consumer groups
        src.string()
        for _dummy in range(2 if revision == 1 else 3):  # last delivered ID; entries read
            src.length()
        for _dummy in range(src.length()):  # pending entries: raw ID, delivery time, delivery count
            src.read(16 + 8)
            src.length()
        for _dummy in range(src.length()):  # consumers: name, seen (and active) time, raw pending IDs
            src.string()
            src.read(8 if revision < 3 else 16)
            src.read(16 * src.length())


def _skip_module_fields(src):
    """The self-describing field list modules save, up to its EOF marker (as redis-check-rdb reads it)."""
    while (opcode := src.length()) != 0:
        if opcode in (1, 2):  # signed, unsigned integer
            src.length()
        elif opcode in (3, 4):  # float, double
            src.read(4 if opcode == 3 else 8)
        elif opcode == 5:
            src.string()
        else:
            raise src.fail(f"unknown module field opcode {opcode}")


def _skip_module_value(src):
    src.length()  # module type id
    _skip_module_fields(src)


_VALUE_TYPES = {
    0: ("string", lambda src: _text(src.string())),
    1: ("list", _load_list),
    2: ("set", _load_set),
    3: ("zset", _load_zset_text_scores),
    4: ("hash", _load_hash),
    5: ("zset", _load_zset_binary_scores),
    7: ("module", _skip_module_value),
    9: ("hash", lambda src: _hash_of(_zipmap(src.string()))),
    10: ("list", lambda src: _texts(_ziplist(src.string()))),
    11: ("set", lambda src: {str(value) for value in _intset(src.string())}),
    12: ("zset", lambda src: _zset_of(_ziplist(src.string()))),
    13: ("hash", lambda src: _hash_of(_ziplist(src.string()))),
    14: ("list", _load_quicklist),
    15: ("stream", lambda src: _skip_stream(src, 1)),
    16: ("hash", lambda src: _hash_of(_listpack(src.string()))),
    17: ("zset", lambda src: _zset_of(_listpack(src.string()))),
    18: ("list", _load_quicklist_2),
    19: ("stream", lambda src: _skip_stream(src, 2)),
    20: ("set", lambda src: set(_texts(_listpack(src.string())))),
    21: ("stream", lambda src: _skip_stream(src, 3)),
    22: ("hash", lambda src: _load_hash_with_ttls(src, relative=False)),  # RDB_TYPE_HASH_METADATA_PRE_GA
    23: ("hash", lambda src: _load_hash_listpack_ex(src, with_min_expire=False)),  # RDB_TYPE_HASH_LISTPACK_EX_PRE_GA
    24: ("hash", lambda src: _load_hash_with_ttls(src, relative=True)),  # RDB_TYPE_HASH_METADATA
    25: ("hash", lambda src: _load_hash_listpack_ex(src, with_min_expire=True)),  # RDB_TYPE_HASH_LISTPACK_EX
}


# --- the file -----------------------------------------------------------------------------------


def _skip_module_aux(src):
    src.length()  # module type id
    if src.length() != 2:  # the "when" field, always saved as an unsigned integer
        raise src.fail("bad module aux data")
    src.length()
    _skip_module_fields(src)


def _refuse_pre_ga_functions(src):
    # Only 7.0 release candidates wrote this; Redis itself refuses to load it.
    raise src.fail("function library in the Redis 7.0 release-candidate format, not supported", src.offset - 1)


# Opcodes that carry nothing a reader of keys needs: stepped over.
_SKIPPED_OPCODES = {
    _OP_SLOT_INFO: lambda src: (src.length(), src.length(), src.length()),  # slot id, keys, expiring keys
    0xF5: lambda src: src.string(),  # FUNCTION2: a library's source
    _OP_FUNCTION_PRE_GA: _refuse_pre_ga_functions,
    0xF7: _skip_module_aux,
    0xF8: lambda src: src.length(),  # IDLE: LRU idle time of the next key
    0xF9: lambda src: src.byte(),  # FREQ: LFU counter of the next key
    0xFA: lambda src: (src.string(), src.string()),  # AUX: redis-ver, ctime, used-mem...
    0xFB: lambda src: (src.length(), src.length()),  # RESIZEDB: table size hints
}


def _read_header(src):
    head = src.read(min(9, src.size))
    if len(head) < 9 or head[:5] != b"REDIS" or not head[5:].isdigit():
        raise src.fail("not an RDB snapshot (no REDIS magic and version)", 0, f"it starts with {head!r}")
    version = int(head[5:])
    if version not in SUPPORTED_VERSIONS:
        raise src.fail(f"RDB version {version} is not supported", 5, _unsupported_advice(version))
    return version


def _unsupported_advice(version):
    first, last = SUPPORTED_VERSIONS[0], SUPPORTED_VERSIONS[-1]
    writers = f"Redis {_VERSION_WRITERS[first]} to {_VERSION_WRITERS[last]}"
    known = f"this reader knows versions {first}-{last} (as {writers} write them)"
    if version > last:
        return (
            f"{known}; version {version} was written by a newer Redis. Check the file with that Redis's own"
            " redis-check-rdb (in the same image as the server that wrote it), and update comfy-wrapup's"
            f" workshop_rdb for version {version} before relying on it"
        )
    return f"{known}; version {version} is from a Redis older than 5.0: load it into a newer Redis and save it again"


def _read_entry(src, db, type_code, expire_ms):
    start = src.offset - 1
    key = _text(src.string())
    if type_code == _TYPE_MODULE_PRE_GA:
        raise src.fail(f"key {key!r} holds a value of a pre-release module type, which only its module can read", start)
    kind, load = _VALUE_TYPES[type_code]
    value_at = src.offset
    try:
        value = load(src)
    except (ValueError, IndexError) as error:
        raise src.fail(f"corrupt {kind} value of key {key!r}", value_at, str(error)) from None
    return RdbEntry(db, key, kind, value, expire_ms)


def _entries(src):
    """Every key up to the EOF opcode; an expiry opcode applies to the key that follows it."""
    db, expire_ms = 0, None
    while True:
        start = src.offset
        opcode = src.byte()
        if opcode == _OP_EOF:
            return
        if opcode == _OP_SELECTDB:
            db = src.length()
        elif opcode == _OP_EXPIRETIME_MS:
            expire_ms = src.int_le(8)
        elif opcode == _OP_EXPIRETIME:
            expire_ms = src.int_le(4) * 1000
        elif opcode in _SKIPPED_OPCODES:
            _SKIPPED_OPCODES[opcode](src)
        elif opcode in _VALUE_TYPES or opcode == _TYPE_MODULE_PRE_GA:
            yield _read_entry(src, db, opcode, expire_ms)
            expire_ms = None
        else:
            raise src.fail(f"unknown value type {opcode}", start)


def _check_trailer(src):
    """'ok', or 'disabled' for a file saved with rdbchecksum no (its checksum is 0)."""
    content_crc = src.consumed_crc()
    trailer_at = src.offset
    stored = int.from_bytes(src.read(8), "little")
    if src.offset != src.size:
        raise src.fail(f"{src.size - src.offset} unexpected bytes after the checksum")
    if stored == 0:
        return "disabled"
    if stored != content_crc:
        raise src.fail("checksum mismatch", trailer_at, f"file says {stored:#018x}, content gives {content_crc:#018x}")
    return "ok"


def _scan(path, facts):
    """Every entry of the file, in file order; once the trailer checks out, fills `facts`."""
    path = os.fspath(path)  # errors carry it as a context field, which must serialise as JSON
    try:
        handle = open(path, "rb")  # noqa: SIM115 - held open across the generator's yields
    except OSError as error:
        raise WorkshopError(f"cannot read RDB snapshot {path}: {error.strerror}", path=path) from None
    with handle:
        src = _Input(handle, path)
        version = _read_header(src)
        yield from _entries(src)
        checksum = _check_trailer(src)
    facts.update(version=version, checksum=checksum, size_bytes=src.size)


def iter_rdb(path):
    """Stream the keys of the RDB file at `path` as RdbEntry(db, key, type, value, expire_ms).

    expire_ms is the absolute expiry in Unix milliseconds, or None. The checksum is checked after
    the last key, so a corrupt file raises WorkshopError then, even when every key read fine.
    """
    yield from _scan(path, {})


def _count(path, on_entry):
    facts = {}
    per_db = Counter()
    for entry in _scan(path, facts):
        per_db[entry.db] += 1
        on_entry(entry)
    return {**facts, "keys": sum(per_db.values()), "keys_per_db": dict(sorted(per_db.items()))}


def verify_rdb(path):
    """Parse the whole RDB file at `path` and check its checksum; raise WorkshopError on any problem.

    Returns {version, checksum: "ok"|"disabled", keys, keys_per_db: {db: n}, size_bytes}.
    """
    return _count(path, lambda entry: None)


def rdb_summary(path, zsets=(), job_prefix="job:", db=0):
    """verify_rdb's facts plus, for database `db`, the size of each named sorted set (0 when absent)
    as zset_sizes {key: n}, and the number of keys starting with `job_prefix` as job_records."""
    path = os.fspath(path)
    zset_sizes = dict.fromkeys(zsets, 0)
    job_records = 0

    def tally(entry):
        nonlocal job_records
        if entry.db != db:
            return
        if entry.key.startswith(job_prefix):
            job_records += 1
        if entry.key in zset_sizes:
            if entry.type != "zset":
                raise WorkshopError(f"{path}: key {entry.key!r} in db {db} is a {entry.type}, not a sorted set", path=path)
            zset_sizes[entry.key] = len(entry.value)

    return {**_count(path, tally), "zset_sizes": zset_sizes, "job_records": job_records}
