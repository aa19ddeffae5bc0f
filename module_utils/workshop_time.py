"""The one way this project reads and writes times.

The platform writes JavaScript's `toISOString()` ("2025-11-20T10:00:00.000Z"). Python before 3.11
refuses the trailing `Z` and fractions of other than 3 or 6 digits in `datetime.fromisoformat`,
so a workshop host on Ubuntu 22.04 (Python 3.10) would read every platform time as unset.
Everything here runs on Python 3.8 and later.
"""

import re
from datetime import datetime, timezone

# A fraction of 1 to 9 digits (Docker writes nanoseconds); fromisoformat before 3.11 takes 3 or 6.
_FRACTION = re.compile(r"\.(\d+)")

# The timestamp `docker logs --timestamps` puts before each line (RFC 3339, UTC, up to nanoseconds,
# then one space): group 1 the seconds, group 2 the fraction. The one pattern the log export (bytes)
# and the log analysis (text) both compile.
DOCKER_STAMP = r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z "


def _from_text(text):
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    match = _FRACTION.search(text)
    if match is None or len(match.group(1)) in (3, 6):
        return None
    digits = (match.group(1) + "000000")[:6]
    try:
        return datetime.fromisoformat(text[: match.start()] + "." + digits + text[match.end() :])
    except ValueError:
        return None


_UTC = timezone.utc
_fromisoformat = datetime.fromisoformat


def parse_time(value):
    """Aware UTC datetime of an ISO-8601 text (`Z` or an offset; naive taken as UTC), a datetime
    or epoch seconds; None when unset or unreadable."""
    if value.__class__ is str:  # the common case first: metrics call this three times per job
        if value[-1:] == "Z":
            # The platform's own form, on every Python: "...Z" read as "+00:00" gives a datetime
            # whose tzinfo is already timezone.utc. Anything fromisoformat refuses takes the long way.
            try:
                moment = _fromisoformat(value[:-1] + "+00:00")
            except ValueError:
                moment = None
            if moment is not None and moment.tzinfo is _UTC:
                return moment
        value = _from_text(value)
    elif isinstance(value, str):
        value = _from_text(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, timezone.utc)
        except (OverflowError, OSError, ValueError):  # NaN, infinity, milliseconds taken for seconds
            return None
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    try:
        return value.astimezone(timezone.utc)
    except (OverflowError, ValueError):  # 0001-01-01T00:00:00+01:00 is before the year 1 in UTC
        return None


def epoch_of(value):
    """Epoch seconds of a time parse_time reads; None when unset or unreadable."""
    moment = parse_time(value)
    return moment.timestamp() if moment is not None else None


def utc_iso(epoch):
    """ISO-8601 UTC text of epoch seconds, as the run record and module results give times."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()


def iso(moment):
    """ISO-8601 text of a datetime; None stays None."""
    return moment.isoformat() if moment is not None else None
