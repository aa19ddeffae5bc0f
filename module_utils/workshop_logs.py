"""Exporting the logs of a compose project's containers, streamed so memory stays flat.

One gzip file per service, each line `<timestamp> <message>` with the timestamp padded to
nanoseconds (Docker trims trailing zeros, which would break the time order of text), and the
combined file the checklist makes (`docker-compose logs > workshop-logs.txt`), merged in time
order from the per-service files, each line prefixed `<service> | ` as compose does.
"""

import calendar
import gzip
import heapq
import os
import re
import time

from ansible.module_utils.workshop_compose import SERVICE_LABEL
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import atomic_file, sha256_stream
from ansible.module_utils.workshop_time import DOCKER_STAMP

try:  # docker-py and the HTTP libraries under it; without them the module fails through require_libraries
    import docker.errors
    import requests.exceptions
    import urllib3.exceptions

    STREAM_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError)
except ImportError:
    STREAM_ERRORS = (OSError,)

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


def export_container(container, path, since=None, until=None, engine=None):
    """Stream one container's logs (stdout and stderr, with timestamps) into `path`.

    Give `until`: the completeness check asks the engine again for the window's last lines, which
    a running container must not move meanwhile.
    """
    kwargs = dict(timestamps=True, stdout=True, stderr=True, follow=False)
    if since is not None:
        kwargs["since"] = since
    if until is not None:
        kwargs["until"] = until
    return write_gzip_lines(path, _complete_lines(container, kwargs, path, engine))


def _complete_lines(container, kwargs, path, engine):
    """The container's log lines, normalized, ending with the engine's own last line, else a WorkshopError.

    docker-py ends a log stream that was cut mid-way (the engine going away, the connection
    dropped) as if it were complete; a cut stream must fail, not become a short log file that a
    backup would seal as the workshop's logs. So the engine is asked again for the window from the
    last line read on: its last line there must be that line. The error is raised inside the
    atomic write, so `path` keeps what it held.
    """
    engine = f"The Docker Engine at {engine}" if engine else "The Docker Engine"
    last = b""
    try:
        for line in split_lines(container.logs(stream=True, **kwargs)):
            last = normalize_line(line)
            yield last
        again = dict(kwargs)
        match = _STAMP.match(last)
        if match:
            # Docker's `since` is inclusive; a microsecond earlier survives the float's rounding.
            again["since"] = calendar.timegm(time.strptime(match.group(1).decode(), "%Y-%m-%dT%H:%M:%S")) - 1e-6
            again["since"] += int((match.group(2) or b"0").ljust(9, b"0")) / 1e9
        final = b""
        for line in split_lines(container.logs(stream=True, **again)):
            final = normalize_line(line)
    except STREAM_ERRORS as exc:
        raise WorkshopError(
            f"{engine} stopped answering while the logs of {container.name} were read ({exc}): {path} was left as it was "
            "and the logs are still in Docker; run again once it answers",
            docker_host=engine,
            container=container.name,
        ) from None
    if final != last:
        raise WorkshopError(
            f"The log stream of {container.name} ended before its last line: the connection to the {engine[4:]} was cut. "
            f"{path} was left as it was and the logs are still in Docker; run again",
            docker_host=engine,
            container=container.name,
        )


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
