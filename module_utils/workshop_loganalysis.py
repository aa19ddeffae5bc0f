"""Counting what the checklist greps for in the exported logs, exactly and per service.

Reads the per-service `<service>.log.gz` files workshop_logs writes (lines `<timestamp>Z <message>`),
streamed, so memory stays flat whatever the logs' size (only samples and job ids are kept).

Rules, applied to each record (a line, or a Python traceback with the lines that belong to it):
a record counts at most once per category, and may count in several categories.

- errors: a record with a level (platform `... - LEVEL - ...`, JSON `"level"`, uvicorn `LEVEL:`,
  nginx `[level]`) counts when the level is ERROR/CRITICAL (nginx error/crit/alert/emerg); a record
  without one (redis, tracebacks, plain stderr) when it has the word error, exception or traceback,
  or a line that is a Python exception's (`KeyError: 'id'`).
- warnings: level WARNING (nginx warn); without a level, the word warning or warn.
- ssl: mentions SSL/TLS/OpenSSL/x509/certificate together with a problem word (fail, error,
  expired, invalid, verify, alert, unknown ca, bad, denied, refused), or in an
  error/warning record.
- connection: connection refused/reset/closed/lost/aborted/timed out, timeout, reset by peer,
  broken pipe, ECONNREFUSED/ECONNRESET/ETIMEDOUT, (host) unreachable, could not / cannot /
  failed to connect, `Error <n> connecting`. The platform's job timeout (`Job timeout exceeded`,
  `job timeout 3600s` at start) is a job's, not a connection's, and does not count.
- thermal: the words thermal or overheat.
- restarts: redis's `Redis is starting` when it is not the log's first line (the first start is
  not a restart); the words restarted/restarting; a Python service's first record after a gap of
  `restart_gap` seconds in its timestamps (a heuristic: a worker idle that long also reads as one).
- crashes: crashed, Killed, OOM / out of memory / MemoryError, and a Python traceback nobody
  logged: a traceback right after an ERROR/CRITICAL record is that record's logger.exception()
  output (a handled exception), part of it and not a crash.
- requeues: requeue/re-queue, retry/retrying/retries/retried.
- job_failures: the worker's `Job {id} failed: {error}`. A job's failure (a CUDA out-of-memory in
  one job, a bad prompt) is the job's, not the service's: such a record counts here and never
  as an error or a crash, so the report does not list one failed job three times.
- stale_jobs: the queue manager's `Cleaned up N stale jobs`, counting N (its count is jobs, not lines).

Worker jobs come from the worker's lines: `Processing job {id} for user {user}`,
`Job {id} completed successfully`, `Job {id} failed: {error}`, and the totals it logs at shutdown,
`Total jobs completed: N` / `Total jobs failed: N` (summed: each run of a worker logs its own).
"""

import glob
import gzip
import json
import os
import re
import zlib
from datetime import datetime, timezone

from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_time import DOCKER_STAMP

CATEGORIES = (
    "errors",
    "warnings",
    "ssl",
    "connection",
    "thermal",
    "restarts",
    "crashes",
    "requeues",
    "stale_jobs",
    "job_failures",
)
DEFAULT_RESTART_GAP = 300
# A record longer than this keeps only its first lines for matching, so one runaway traceback
# cannot grow memory.
_MAX_RECORD_LINES = 200

_DOCKER_STAMP = re.compile(DOCKER_STAMP)
_PLATFORM = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:,\d+)? - .+? - (DEBUG|INFO|WARNING|ERROR|CRITICAL) - (.*)$", re.S)
_UVICORN = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL):\s+(.*)$", re.S)
_NGINX = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(debug|info|notice|warn|error|crit|alert|emerg)\] (.*)$", re.S)
_ERROR_LEVELS = {"ERROR", "CRITICAL", "FATAL", "CRIT", "ALERT", "EMERG"}
_WARNING_LEVELS = {"WARNING", "WARN"}

# The words, or a Python exception's own line ("KeyError: 'id'", "torch.OutOfMemoryError: ...").
_ERROR_WORDS = re.compile(r"(?i:\b(?:error|exception|traceback)\b)|^[\w.]+(?:Error|Exception)\b")
_WARNING_WORDS = re.compile(r"\bwarn(?:ing)?\b", re.I)
_SSL = re.compile(r"\b(?:open)?ssl|\btls|\bx509|certificate", re.I)
_SSL_PROBLEM = re.compile(r"fail|error|expire|invalid|verif|alert|unknown ca|\bbad\b|denied|refused", re.I)
_CONNECTION = re.compile(
    r"connection (?:refused|reset|closed|lost|aborted|timed out)|refused|reset by peer|timed out|time-?out|broken pipe"
    r"|ECONNREFUSED|ECONNRESET|ETIMEDOUT|unreachable|(?:could not|cannot|can't|failed to|unable to) connect|error \d+ connecting",
    re.I,
)
_JOB_TIMEOUT = re.compile(r"job[ _]timeout", re.I)
_THERMAL = re.compile(r"thermal|overheat", re.I)
_REDIS_START = re.compile(r"Redis is starting")
_RESTART_WORDS = re.compile(r"\brestart(?:ed|ing)\b", re.I)
_CRASH = re.compile(r"\bcrash(?:ed)?\b|\bKilled\b|\bOOM\b|oom-kill|out of memory|MemoryError", re.I)
_REQUEUE = re.compile(r"re-?queue|\bretr(?:y|ying|ies|ied)\b", re.I)
_STALE = re.compile(r"Cleaned up (\d+) stale jobs")

_TRACEBACK = "Traceback (most recent call last):"
_TRACEBACK_LINKS = ("During handling of the above exception", "The above exception was the direct cause")
_PROCESSING = re.compile(r"\bProcessing job (\S+) for user (\S+)")
_COMPLETED = re.compile(r"\bJob (\S+) completed successfully")
_FAILED = re.compile(r"\bJob (\S+) failed: ")
_TOTAL = re.compile(r"\bTotal jobs (completed|failed): (\d+)")


def _split(line):
    """(line, epoch seconds or None, message) of an exported line `<timestamp>Z <message>`."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    line = line.rstrip("\r\n")
    match = _DOCKER_STAMP.match(line)
    if not match:
        return line, None, line
    moment = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    fraction = float("0." + match.group(2)) if match.group(2) else 0.0
    return line, moment.timestamp() + fraction, line[match.end() :]


def _level(message):
    """(format, level, text): the record's format and level where it has one (else None, None), and its text."""
    if message.startswith("{"):
        try:
            record = json.loads(message)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("level") or record.get("levelname"), str):
            text = " ".join(str(record[key]) for key in ("message", "msg", "exception") if record.get(key) is not None)
            return "json", (record.get("level") or record.get("levelname")).upper(), text
    for kind, pattern in (("platform", _PLATFORM), ("uvicorn", _UVICORN), ("nginx", _NGINX)):
        match = pattern.match(message)
        if match:
            return kind, match.group(1).upper(), match.group(2)
    return None, None, message


class _Record:
    """A log record: its first line, its level, and the (message) texts of its lines."""

    def __init__(self, line, kind, level, text, after_gap, first):
        self.line = line
        self.kind = kind
        self.level = level
        self.lines = [(line, text)]
        self.after_gap = after_gap
        self.first = first
        self.traceback = text.startswith(_TRACEBACK)

    def add(self, line, text):
        if len(self.lines) < _MAX_RECORD_LINES:
            self.lines.append((line, text))

    def find(self, pattern):
        """The first line of the record whose text matches `pattern`, else None."""
        for line, text in self.lines:
            if pattern.search(text):
                return line
        return None


class LogAnalysis:
    """Counts for one service, fed line by line."""

    def __init__(self, service, max_samples=5, restart_gap=DEFAULT_RESTART_GAP):
        self.service = service
        self.max_samples = max_samples
        self.restart_gap = restart_gap
        self.lines = 0
        self.categories = {category: {"count": 0, "samples": []} for category in CATEGORIES}
        self.worker_jobs = {
            "processed": 0,
            "completed": 0,
            "failed": 0,
            "job_ids": set(),
            "reported_completed": 0,
            "reported_failed": 0,
            "shutdown_reports": 0,
        }
        self._record = None
        self._last_stamp = None
        # Where the open record is in a traceback: None, "body" (frames), "ended" (after the
        # exception's line), "link" (after "During handling of the above exception...").
        self._traceback = None

    def _count(self, category, line, amount=1):
        entry = self.categories[category]
        entry["count"] += amount
        if len(entry["samples"]) < self.max_samples:
            entry["samples"].append(line)

    def feed(self, raw):
        line, stamp, message = _split(raw)
        self.lines += 1
        gap = (
            stamp is not None and self._last_stamp is not None and stamp - self._last_stamp >= (self.restart_gap or float("inf"))
        )
        if stamp is not None:
            self._last_stamp = stamp
        record = self._record
        if record is not None and self._continues(record, message):
            record.add(line, message)
            return
        kind, level, text = _level(message)
        if record is not None:
            self._close(record)
        self._record = _Record(line, kind, level, text, gap, first=self.lines == 1)
        self._traceback = "body" if self._record.traceback else None
        self._jobs(text)

    def _continues(self, record, message):
        """Whether `message` belongs to the open record: a traceback's body, or a logged exception's traceback."""
        state = self._traceback
        if message.startswith(_TRACEBACK):
            # logger.exception() prints the traceback right after its ERROR line; a chained
            # exception prints another after "During handling of the above exception...".
            if state == "link" or (state is None and record.level in _ERROR_LEVELS and len(record.lines) == 1):
                self._traceback = "body"
                return True
            return False
        if state == "body":
            if message and not message[0].isspace() and _level(message)[1] is not None:
                self._traceback = None
                return False
            if message and not message[0].isspace():
                self._traceback = "ended"  # the exception's own line: "ValueError: ..."
            return True
        if state in ("ended", "link"):
            if message.startswith(_TRACEBACK_LINKS):
                self._traceback = "link"
                return True
            if not message.strip():
                return True
        self._traceback = None
        return False

    def _close(self, record):
        level, head = record.level, record.line
        job_failure = _FAILED.search(record.lines[0][1]) is not None
        if job_failure:
            self._count("job_failures", head)
        elif level is None:
            line = record.find(_ERROR_WORDS)
            if line:
                self._count("errors", line)
            line = record.find(_WARNING_WORDS)
            if line:
                self._count("warnings", line)
        elif level in _ERROR_LEVELS:
            self._count("errors", head)
        elif level in _WARNING_LEVELS:
            self._count("warnings", head)

        ssl = record.find(_SSL)
        if ssl and (level in _ERROR_LEVELS or level in _WARNING_LEVELS or record.find(_SSL_PROBLEM)):
            self._count("ssl", ssl)
        connection = next((line for line, text in record.lines if _CONNECTION.search(_JOB_TIMEOUT.sub("", text))), None)
        if connection:
            self._count("connection", connection)
        for category, pattern in (("thermal", _THERMAL), ("requeues", _REQUEUE)):
            line = record.find(pattern)
            if line:
                self._count(category, line)

        start = record.find(_REDIS_START)
        if (start and not record.first) or record.find(_RESTART_WORDS):
            self._count("restarts", start or record.find(_RESTART_WORDS))
        elif record.after_gap and record.kind in ("platform", "json", "uvicorn"):
            self._count("restarts", head)

        crash = None if job_failure else record.find(_CRASH) or (head if record.traceback else None)
        if crash:
            self._count("crashes", crash)

        stale = _STALE.search(record.lines[0][1])
        if stale and int(stale.group(1)) > 0:
            self._count("stale_jobs", head, int(stale.group(1)))

    def _jobs(self, text):
        jobs = self.worker_jobs
        for pattern, key in ((_PROCESSING, "processed"), (_COMPLETED, "completed"), (_FAILED, "failed")):
            match = pattern.search(text)
            if match:
                jobs[key] += 1
                jobs["job_ids"].add(match.group(1))
                return
        match = _TOTAL.search(text)
        if match:
            jobs[f"reported_{match.group(1)}"] += int(match.group(2))
            jobs["shutdown_reports"] += match.group(1) == "completed"

    def finish(self):
        """Close the last record; returns {service, lines, categories, worker_jobs}."""
        if self._record is not None:
            self._close(self._record)
            self._record = None
        return {"service": self.service, "lines": self.lines, "categories": self.categories, "worker_jobs": self.worker_jobs}


def analyze_log_text(lines, service, max_samples=5, restart_gap=DEFAULT_RESTART_GAP):
    """Analyze one service's lines (str or bytes, `<timestamp>Z <message>` or bare messages).

    Returns {service, lines, categories: {category: {count, samples}}, worker_jobs: {processed,
    completed, failed, job_ids (a set), reported_completed, reported_failed, shutdown_reports}}.
    """
    analysis = LogAnalysis(service, max_samples=max_samples, restart_gap=restart_gap)
    for line in lines:
        analysis.feed(line)
    return analysis.finish()


def analyze_log_dir(folder, max_samples=5, restart_gap=DEFAULT_RESTART_GAP):
    """Analyze every `<service>.log.gz` of `folder` (the combined workshop-logs.txt.gz is not one).

    Returns {services: {service: {category: {count, samples}}}, totals: {category: count},
    lines: {service: count}, worker_jobs: {processed, completed, failed, job_ids (sorted list),
    unique_jobs, reported_completed, reported_failed, per_service: {service: {...}}}}.
    """
    if not os.path.isdir(folder):
        raise WorkshopError(f"No log folder at {folder}: export the logs first", path=folder)
    paths = sorted(glob.glob(os.path.join(glob.escape(folder), "*.log.gz")))
    if not paths:
        raise WorkshopError(f"No <service>.log.gz files in {folder}: export the logs first", path=folder)
    services, lines, per_service, job_ids = {}, {}, {}, set()
    for path in paths:
        service = os.path.basename(path)[: -len(".log.gz")]
        analysis = LogAnalysis(service, max_samples=max_samples, restart_gap=restart_gap)
        try:
            with gzip.open(path, "rb") as stream:
                for line in stream:
                    analysis.feed(line)
        except (OSError, EOFError, zlib.error) as exc:
            raise WorkshopError(f"Cannot read {path}: {exc}; export the logs again", path=path) from None
        result = analysis.finish()
        services[service] = result["categories"]
        lines[service] = result["lines"]
        jobs = result["worker_jobs"]
        job_ids |= jobs.pop("job_ids")
        if any(jobs.values()):
            per_service[service] = jobs
    keys = ("processed", "completed", "failed", "reported_completed", "reported_failed")
    worker_jobs = {key: sum(jobs[key] for jobs in per_service.values()) for key in keys}
    worker_jobs.update(job_ids=sorted(job_ids), unique_jobs=len(job_ids), per_service=per_service)
    totals = {category: sum(counts[category]["count"] for counts in services.values()) for category in CATEGORIES}
    return {"services": services, "totals": totals, "lines": lines, "worker_jobs": worker_jobs}
