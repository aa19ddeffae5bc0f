"""Exporting the logs of a compose project's containers, streamed so memory stays flat.

One gzip file per service, each line `<timestamp> <message>` with the timestamp padded to
nanoseconds (Docker trims trailing zeros, which would break the time order of text), and the
combined file the checklist makes (`docker-compose logs > workshop-logs.txt`), merged in time
order from the per-service files, each line prefixed `<service> | ` as compose does.
"""

import gzip
import heapq
import os
import re

from ansible.module_utils.workshop_compose import SERVICE_LABEL
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import atomic_file, sha256_stream
from ansible.module_utils.workshop_time import DOCKER_STAMP

_STAMP = re.compile(DOCKER_STAMP.encode("ascii"))


def normalize_line(line):
    """Pad a Docker timestamp's fraction to nine digits so lines sort by time as text."""
    match = _STAMP.match(line)
    if not match:
        return line
    fraction = (match.group(2) or b"").ljust(9, b"0")
    return match.group(1) + b"." + fraction + b"Z " + line[match.end() :]


def split_lines(chunks):
    """Lines (with their newline) of a stream of byte chunks whose boundaries fall anywhere."""
    rest = b""
    for chunk in chunks:
        rest += chunk
        *lines, rest = rest.split(b"\n")
        for line in lines:
            yield line + b"\n"
    if rest:
        yield rest + b"\n"


def _sha256_of(path):
    """sha256 of a gzip file's uncompressed content."""
    with gzip.open(path, "rb") as stream:
        return sha256_stream(stream)


def write_gzip_lines(path, lines):
    """Write lines to `path` gzip-compressed through a temporary name; returns (lines, bytes, changed).

    Identical content already at `path` is left alone (changed false), so re-exporting unchanged
    logs changes nothing. The gzip header carries no time, for the same reason. The file is
    fsynced before its rename and the folder after it, so a sealed backup's logs survive a power cut.
    """
    count = size = 0
    changed = True
    try:
        with atomic_file(path) as target:
            with open(target.tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out:
                for line in lines:
                    out.write(line)
                    count += 1
                    size += len(line)
            if same_content(path, target.tmp):
                target.discard()
                changed = False
    except OSError as exc:
        raise WorkshopError(f"Cannot write {path}: {exc.strerror}", path=path) from None
    return count, size, changed


def same_content(path, other):
    """Whether the gzip file at `path` exists and holds what `other` holds (compared uncompressed)."""
    return os.path.exists(path) and _sha256_of(path) == _sha256_of(other)


def log_file_name(container, services_seen):
    """<service>.log.gz, or <container>.log.gz where a service has several containers."""
    service = container.labels.get(SERVICE_LABEL, container.name)
    return f"{container.name if services_seen[service] > 1 else service}.log.gz"


def export_container(container, path, since=None, until=None):
    """Stream one container's logs (stdout and stderr, with timestamps) into `path`."""
    kwargs = dict(stream=True, timestamps=True, stdout=True, stderr=True, follow=False)
    if since is not None:
        kwargs["since"] = since
    if until is not None:
        kwargs["until"] = until
    return write_gzip_lines(path, (normalize_line(line) for line in split_lines(container.logs(**kwargs))))


def _prefixed(path, service, width):
    prefix = f"{service:<{width}} | ".encode()
    with gzip.open(path, "rb") as stream:
        for line in stream:
            yield line[:40], prefix + line


def write_combined(path, parts):
    """Merge per-service files [(service, path)] in time order into one gzip file; returns (lines, bytes, changed)."""
    width = max((len(service) for service, _dummy in parts), default=0)
    streams = [_prefixed(part, service, width) for service, part in parts]
    return write_gzip_lines(path, (line for _dummy, line in heapq.merge(*streams, key=lambda item: item[0])))
