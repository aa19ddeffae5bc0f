"""What the workshop did, from its job records: counts, durations, waits, queue depth, who came, which models.

The records are read from the live Redis (SCAN + pipelined MGET, a few round trips for 100,000 jobs)
or from a dump.rdb without a server; compute_metrics turns either list into one plain dict of figures.
Every figure is a small function of the job list (and, to parse each job once, of its parsed
timestamps and workflow facts), so each can be tested on its own.

Timestamps are ISO-8601 (a naive one is taken as UTC, as the platform writes UTC); times in the
result are normalised to `datetime.isoformat()` in UTC ("2025-11-20T10:00:00+00:00").
"""

import contextlib
import gc
import json
import math
import os
import pickle
import signal
import statistics
import time
from collections import Counter
from datetime import datetime
from operator import itemgetter
from typing import NamedTuple, Optional

from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_rdb import iter_rdb

try:  # optional (requirements-host.txt): several times json's speed on job records; json does without it
    from orjson import loads as _fast_loads
except ImportError:
    _fast_loads = None
from ansible.module_utils.workshop_time import iso, parse_time

JOB_PREFIX = "job:"
STATUSES = ("completed", "failed", "cancelled", "pending", "running")
# Inputs that name a model file. Matched by input name rather than by class_type, so variants
# (CheckpointLoader, LoraLoaderModelOnly, DualCLIPLoader's clip_name1/2) count too.
MODEL_FIELDS = frozenset(
    ("ckpt_name", "unet_name", "clip_name", "clip_name1", "clip_name2", "clip_name3", "vae_name", "lora_name")
)
# Names too generic to trust outside a loader node (LTX-2's LTXAVTextEncoderLoader, LatentUpscaleModelLoader).
LOADER_MODEL_FIELDS = MODEL_FIELDS | {"text_encoder", "model_name"}
NO_ERROR = "(no error recorded)"
_TEXT_TYPE = frozenset((str,))
# Keys per MGET, and MGETs per pipeline (one round trip): 20,000 records a round trip keeps the
# replies a few tens of MB at most while 100,000 jobs need only five.
MGET_BATCH = 1000
MGETS_PER_ROUND_TRIP = 20
SCAN_COUNT = 10000
# Keys of invalid records listed in metrics.json (their count is always exact).
MAX_INVALID_KEYS = 100
# redis_metrics reads and tallies the records in up to this many processes side by side, one per
# this many keys at least: a fork costs milliseconds, 10,000 records about a fifth of a second.
MAX_PROCESSES = 4
KEYS_PER_PROCESS = 10000


class JobRecords(NamedTuple):
    """What jobs_from_redis and jobs_from_rdb return; unpacks as `jobs, invalid = ...`.

    jobs: the parsed records (dicts), ordered by key. invalid: the keys whose value is not a
    JSON object, or a record without the fields every figure needs (record_problem); they are
    skipped, and len(invalid) is their count."""

    jobs: list
    invalid: list


class WorkflowFacts(NamedTuple):
    """models: [(loader_field, name)]; resolutions: ["WxH"]; batch_sizes: [int]; each without repeats, in node order."""

    models: list
    resolutions: list
    batch_sizes: list


# --- reading the records ------------------------------------------------------------------------


@contextlib.contextmanager
def _gc_paused():
    """No cyclic garbage collection while building or walking 100,000 records.

    Job records form no reference cycles, yet every few hundred new containers the collector
    re-walks all the records built so far: measured, it made reading and computing about three
    times slower. On leaving, every object of the process is frozen (gc.freeze), or the next few
    collections would walk the records again to find nothing (0.3 s for 100,000 records, measured):
    reference counting still frees what is frozen, only a reference cycle among it is never
    collected, which a module's one-shot process does not mind. The collector's previous state is
    restored.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.freeze()
            gc.enable()


def _glob_escape(text):
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)


def record_problem(record):
    """Why a job record cannot be counted (a short phrase), or None when it can.

    Every figure needs a record that is a JSON object with text field names, a `user_id` and a
    `status` (both text); anything else in it is read leniently (an unreadable time is unset).
    """
    if not isinstance(record, dict):
        return "not a JSON object"
    # Names parsed from JSON are always text: the set of their types is {str} (C speed, no generator).
    if {*map(type, record)} - _TEXT_TYPE and not all(isinstance(field, str) for field in record):
        return "a field name that is not text"
    user = record.get("user_id")
    if not isinstance(user, str) or not user:
        return "no user_id"
    if not isinstance(record.get("status"), str):
        return "no status"
    return None


def _json_record(raw, fast=None):
    """A record's JSON text (bytes or str) parsed: by orjson when it is installed and takes it, else by json.

    orjson refuses what json reads (NaN, integers beyond 64 bits, lone surrogates): those go to json,
    so the result is json.loads' either way. None when neither can read it."""
    if fast is not None:
        try:
            return fast(raw)
        except (ValueError, TypeError):  # orjson.JSONDecodeError is a ValueError
            pass
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _parse_records(pairs, fast=_fast_loads):
    """JobRecords from (key, raw JSON) pairs, in their order; a None value (key gone since SCAN, or not a
    string) is skipped silently.

    `fast`: orjson's loads where installed (None: json alone)."""
    jobs, invalid = [], []
    with _gc_paused():
        for key, raw in pairs:
            if raw is None:
                continue
            record = _json_record(raw, fast)
            if record_problem(record) is None:
                jobs.append(record)
            else:
                invalid.append(key)
    return JobRecords(jobs, invalid)


def job_keys(conn, prefix=JOB_PREFIX, scan_count=SCAN_COUNT):
    """Every key starting with `prefix`, by SCAN (never KEYS, which blocks the server); sorted, without repeats."""
    keys, cursor = set(), 0
    while True:
        # SCAN may return a key twice (when the table rehashes mid-scan): the set drops repeats.
        cursor, batch = conn.call(conn.client.scan, cursor, match=f"{_glob_escape(prefix)}*", count=scan_count)
        keys.update(batch)
        if int(cursor) == 0:
            return sorted(keys)


def jobs_from_redis(conn, prefix=JOB_PREFIX, batch=MGET_BATCH, per_round_trip=MGETS_PER_ROUND_TRIP):
    """Every job record on the WorkshopRedis `conn`: SCAN for the keys, then MGETs of `batch` keys,
    `per_round_trip` of them pipelined together. Returns JobRecords(jobs, invalid)."""
    return records_of_keys(conn, job_keys(conn, prefix), batch, per_round_trip)


def records_of_keys(conn, keys, batch=MGET_BATCH, per_round_trip=MGETS_PER_ROUND_TRIP):
    """JobRecords of `keys` (sorted) on `conn`, read by MGETs of `batch` keys, `per_round_trip` to a round trip."""
    values = []
    step = batch * per_round_trip
    for start in range(0, len(keys), step):
        pipe = conn.client.pipeline(transaction=False)
        chunk = keys[start : start + step]
        for offset in range(0, len(chunk), batch):
            pipe.mget(chunk[offset : offset + batch])
        for reply in conn.call(pipe.execute):
            values.extend(reply)
    return _parse_records(zip(keys, values))


def redis_metrics(conn, registered_users, cutoff=None, final_time=None, prefix=JOB_PREFIX, processes=None):
    """compute_metrics of every job record on `conn`, read and tallied by `processes` processes side by side
    (default: one per usable CPU, at most MAX_PROCESSES, and one per KEYS_PER_PROCESS keys), each taking
    its share of the sorted keys; the same figures as compute_metrics(jobs_from_redis(conn), ...).

    Returns (metrics, the keys of the invalid records)."""
    keys = job_keys(conn, prefix)
    if processes is None:
        processes = min(MAX_PROCESSES, _usable_cpus(), len(keys) // KEYS_PER_PROCESS)
    size = -(-len(keys) // max(1, processes)) or 1
    shares = [keys[start : start + size] for start in range(0, len(keys), size)] or [[]]
    with _gc_paused():
        tally = _merged(side_by_side(lambda share: _tally_of_records(records_of_keys(conn, share)), shares))
        figures = _figures(tally, _read_figure(tally["valid"], tally["invalid"]), registered_users, cutoff, final_time)
    return figures, tally["invalid"]


def _usable_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def side_by_side(function, parts):
    """[function(part) for part in parts]: a single part in this process; several, each in a forked child,
    all at the same time, while this process waits for their results (a child exits without freeing what
    it built, which for 50,000 records takes a tenth of a second). A child's result comes back pickled
    through a pipe. A child's WorkshopError (or subclass) is raised here as it was raised there, any
    other error as a WorkshopError naming it; whatever happens, every child is ended and reaped."""
    if len(parts) == 1:
        return [function(parts[0])]
    started, running, reaped = [], {}, set()  # running: pid -> the read end of its pipe, until its result is read
    try:
        for part in parts:
            pid, reader = _start_child(function, part)
            started.append(pid)
            running[pid] = reader
        results = []
        for pid in list(running):
            with os.fdopen(running[pid], "rb") as stream:
                payload = stream.read()
            del running[pid]
            results.append(_child_result(pid, payload, reaped))
        return results
    finally:
        for pid, reader in running.items():  # a child failed first, or this process was stopped
            with contextlib.suppress(OSError):  # already closed if it was stopped while reading this one
                os.close(reader)
            os.kill(pid, signal.SIGKILL)
        for pid in started:
            if pid not in reaped:
                with contextlib.suppress(ChildProcessError):  # never hide the error that got here
                    os.waitpid(pid, 0)


def _start_child(function, part):
    """(pid, read end of its pipe) of a forked child running function(part); a fork refused is a WorkshopError."""
    try:
        reader, writer = os.pipe()
    except OSError as exc:
        raise WorkshopError(f"Cannot start a reader process of the job records (a pipe: {exc})") from None
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(reader)
        os.close(writer)
        raise WorkshopError(f"Cannot start a reader process of the job records ({exc}): too many processes?") from None
    if pid == 0:  # the child: never returns
        os.close(reader)
        _run_child(function, part, writer)
    os.close(writer)
    return pid, reader


def _run_child(function, part, writer):
    status = 1
    try:
        try:
            outcome = (True, function(part))
        except WorkshopError as error:  # its own kind (WorkshopUnreachable, ...), rebuilt from msg and context
            outcome = (False, (type(error), error.msg, error.context))
        except BaseException as error:  # noqa: BLE001 - whatever ended the work here is the caller's error
            outcome = (False, (WorkshopError, _described(error), {}))
        try:
            payload = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:  # noqa: BLE001 - an error context or a result that does not pickle
            failed = f"A reader process of the job records could not send its result back ({_described(error)})"
            payload = pickle.dumps((False, (WorkshopError, failed, {})), protocol=pickle.HIGHEST_PROTOCOL)
        with os.fdopen(writer, "wb") as stream:
            stream.write(payload)
        status = 0
    finally:
        os._exit(status)  # never back into the caller's code (an Ansible module's exit, pytest)


def _described(error):
    try:
        return f"{type(error).__name__}: {error}"
    except Exception:  # noqa: BLE001 - an exception whose text cannot be made
        return type(error).__name__


def _child_result(pid, payload, reaped):
    try:
        succeeded, result = pickle.loads(payload)
    except Exception as error:  # noqa: BLE001 - nothing, part of it, or what this process cannot rebuild
        _dummy, status = os.waitpid(pid, 0)
        reaped.add(pid)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            raise WorkshopError(
                f"A reader process (pid {pid}) of the job records sent a result that cannot be read back ({_described(error)})"
            ) from None
        how = f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit status {os.WEXITSTATUS(status)}"
        raise WorkshopError(
            f"A reader process (pid {pid}) of the job records ended without sending its result ({how}, "
            f"{len(payload)} bytes sent): was it killed, or out of memory?"
        ) from None
    if not succeeded:
        kind, message, context = result
        raise kind(message, **context)
    return result


def jobs_from_rdb(path, prefix=JOB_PREFIX, db=0, now_ms=None):
    """The same JobRecords from an RDB snapshot: the string keys of `db` starting with `prefix`.

    A key already expired at `now_ms` (default: now) is left out, as Redis drops it when loading the file.
    """
    now_ms = time.time() * 1000 if now_ms is None else now_ms
    pairs = (
        (entry.key, entry.value)
        for entry in iter_rdb(path)
        if entry.db == db
        and entry.type == "string"
        and entry.key.startswith(prefix)
        and (entry.expire_ms is None or entry.expire_ms > now_ms)
    )
    return _parse_records(sorted(pairs, key=itemgetter(0)))  # ordered by key, as job_keys orders them


# --- what a workflow uses -----------------------------------------------------------------------


def _integer(value):
    """A size input's positive whole value, also given as a float or as digits; None for links (["4", 0]),
    other text, booleans, fractions, zero and below."""
    if isinstance(value, bool):
        return None
    digits = isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 9
    if digits or (isinstance(value, float) and value.is_integer()):
        value = int(value)
    return value if isinstance(value, int) and value > 0 else None


# class_type -> (input names that name a model, whether it is a latent node), worked out once per class_type.
_NODE_KINDS = {}
_MAX_NODE_KINDS = 4096


def _node_kind(class_type):
    kind = _NODE_KINDS.get(class_type)
    if kind is None:
        kind = (
            LOADER_MODEL_FIELDS if "Loader" in class_type else MODEL_FIELDS,
            class_type.startswith("Empty") and "Latent" in class_type,
        )
        if len(_NODE_KINDS) < _MAX_NODE_KINDS:
            _NODE_KINDS[class_type] = kind
    return kind


def workflow_facts(workflow):
    """Models, resolutions and batch sizes of an API-format workflow ({node_id: {class_type, inputs}}).

    Anything else (None, UI format, a malformed node) yields what can be read, never an error:
    a job record is the participants' data, not ours to reject.
    """
    if isinstance(workflow, str):
        try:
            workflow = json.loads(workflow)
        except ValueError:
            workflow = None
    models, resolutions, batch_sizes = {}, {}, {}  # dicts as ordered sets
    nodes = workflow.values() if isinstance(workflow, dict) else ()
    kinds = _NODE_KINDS
    for node in nodes:
        if not isinstance(node, dict) or not isinstance(inputs := node.get("inputs"), dict):
            continue
        class_type = node.get("class_type")
        if class_type.__class__ is not str:
            class_type = class_type if isinstance(class_type, str) else ""
        fields, latent = kinds.get(class_type) or _node_kind(class_type)
        # This runs for every job: most nodes name no model, and isdisjoint says so at C speed.
        if not fields.isdisjoint(inputs):
            for field, value in inputs.items():
                if field in fields and isinstance(value, str) and value:
                    models[(field, value)] = None
        if latent:
            width, height = _integer(inputs.get("width")), _integer(inputs.get("height"))
            if width is not None and height is not None:
                resolutions[f"{width}x{height}"] = None
            size = _integer(inputs.get("batch_size"))
            if size is not None:
                batch_sizes[size] = None
    return WorkflowFacts(list(models), list(resolutions), list(batch_sizes))


# --- small helpers --------------------------------------------------------------------------------


class JobTimes(NamedTuple):
    """A job's created_at, started_at and completed_at as aware UTC datetimes (None when unset or unreadable)."""

    created: Optional[datetime]
    started: Optional[datetime]
    completed: Optional[datetime]


def job_times(jobs):
    """JobTimes of each job, in the same order; compute_metrics parses them once for every figure."""
    return [
        JobTimes(parse_time(job.get("created_at")), parse_time(job.get("started_at")), parse_time(job.get("completed_at")))
        for job in jobs
    ]


def job_facts(jobs):
    """workflow_facts of each job, in the same order."""
    return [workflow_facts(job.get("workflow")) for job in jobs]


def _round(value, digits=3):
    return round(value, digits) if isinstance(value, float) else value


def _percent(part, whole):
    return round(100 * part / whole, 1) if whole else None


def _ranked(counter, tie=str):
    """A Counter as a ranked list [{"name", "count"}], most frequent first, ties by tie(name).

    A list, not a dict: metrics.json is written with sorted keys, which would put a dict's names in
    alphabetical order and lose the ranking the report shows.
    """
    ordered = sorted(counter.items(), key=lambda item: (-item[1], tie(item[0])))
    return [{"name": name, "count": count} for name, count in ordered]


def error_text(value):
    """A job's error as one line of text: whitespace runs collapsed, so the same error written with
    another line break or trailing space counts as the same; a non-text error as its JSON."""
    if value is None or value == "":
        return NO_ERROR
    if not isinstance(value, str):
        value = json.dumps(value, sort_keys=True, default=str)
    return " ".join(value.split()) or NO_ERROR


def percentile(values, q):
    """The q-th percentile (0-100) of `values` by linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return None
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _longest(values, job_ids):
    """(value, job id) of the largest of `values`, with `job_ids` in the same order; the first such job on a tie;
    None for no values."""
    if not values:
        return None
    position = max(range(len(values)), key=values.__getitem__)
    return values[position], job_ids[position]


def _longer(first, second):
    """The longer of two _longest results of consecutive runs of jobs: the first on a tie."""
    return second if first is None or (second is not None and second[0] > first[0]) else first


# --- the figures --------------------------------------------------------------------------------
# Each takes the job list; those that need timestamps or workflow facts also take them already
# parsed (job_times, job_facts), so compute_metrics parses each job once, not once per figure.


def job_counts(jobs):
    return _counts_of(Counter(job.get("status") for job in jobs), len(jobs))


def _counts_of(statuses, submitted):
    """The jobs figure of the `statuses` Counter of `submitted` jobs: each platform status, and a status the
    platform does not have (a typo, another case) counted under `other` with its names, never lost."""
    counts = {"submitted": submitted, **{status: statuses[status] for status in STATUSES}}
    others = {str(status): n for status, n in statuses.items() if status not in STATUSES and n}
    if others:
        counts["other"] = sum(others.values())
        counts["other_statuses"] = dict(sorted(others.items()))
    counts["success_rate"] = _percent(statuses["completed"], statuses["completed"] + statuses["failed"])
    return counts


def _completed_runs(jobs, times):
    """(run time in seconds: completed_at - started_at, job) of every completed job with both times, and how
    many more there are whose times go backwards (completed before started: a clock or record at fault)."""
    times = job_times(jobs) if times is None else times
    return _forward(
        ((when.completed - when.started).total_seconds(), job)
        for job, when in zip(jobs, times)
        if job.get("status") == "completed" and when.started is not None and when.completed is not None
    )


def _forward(measured):
    """The (seconds, job) pairs of `measured` whose times go forward, and how many go backwards."""
    kept, backwards = [], 0
    for entry in measured:
        if entry[0] >= 0:
            kept.append(entry)
        else:
            backwards += 1
    return kept, backwards


def durations(jobs, times=None):
    """Run time (completed_at - started_at, seconds) of the completed jobs; those whose times go backwards
    are left out of every figure and counted (`backwards`)."""
    measured, backwards = _completed_runs(jobs, times)
    values = [seconds for seconds, _dummy in measured]
    return _durations_of(values, _longest(values, [job.get("id") for _dummy, job in measured]), backwards)


def run_times(jobs, times=None):
    """Run time of every completed job (durations' values, to the millisecond), shortest first: the report's histogram."""
    return _run_times_of(seconds for seconds, _dummy in _completed_runs(jobs, times)[0])


def _run_times_of(values):
    return sorted(round(seconds, 3) for seconds in values)


def _durations_of(values, longest, backwards=0):
    """The durations figure of run times `values` (seconds), the longest of them and its job being `longest` (_longest);
    `backwards` jobs whose times go backwards were left out of them."""
    if not values:
        figure = {"count": 0, "mean": None, "median": None, "p95": None, "max": None, "max_job_id": None}
    else:
        longest, job_id = longest
        figure = {
            "count": len(values),
            "mean": _round(statistics.fmean(values)),
            "median": _round(float(statistics.median(values))),
            "p95": _round(float(percentile(values, 95))),
            "max": _round(longest),
            "max_job_id": job_id,
        }
    return dict(figure, backwards=backwards) if backwards else figure


def waits(jobs, times=None):
    """Time in the queue (started_at - created_at, seconds) of every job that started; those started before they
    were created are left out and counted (`backwards`)."""
    times = job_times(jobs) if times is None else times
    measured, backwards = _forward(
        ((when.started - when.created).total_seconds(), job)
        for job, when in zip(jobs, times)
        if when.created is not None and when.started is not None
    )
    values = [seconds for seconds, _dummy in measured]
    return _waits_of(values, _longest(values, [job.get("id") for _dummy, job in measured]), backwards)


def _waits_of(values, longest, backwards=0):
    """The wait figure of queue times `values` (seconds), the longest of them and its job being `longest` (_longest);
    `backwards` jobs started before they were created were left out of them."""
    if not values:
        figure = {"count": 0, "mean": None, "max": None, "max_job_id": None}
    else:
        longest, job_id = longest
        figure = {"count": len(values), "mean": _round(statistics.fmean(values)), "max": _round(longest), "max_job_id": job_id}
    return dict(figure, backwards=backwards) if backwards else figure


def queue_depth(jobs, times=None):
    """Jobs waiting (created, not yet started) over time: [[iso, depth], ...] with one point per change.

    A job leaves the queue when it starts; one that never started (cancelled or failed while
    pending) leaves at its completed_at; one with neither is still waiting. All events of one
    instant are applied before its point is recorded, and an instant whose events cancel out
    records no point. A terminal job that never started and has no completed_at cannot be placed
    and is left out, as is a job without created_at.
    """
    times = job_times(jobs) if times is None else times
    changes = Counter()
    for job, when in zip(jobs, times):
        if when.created is None:
            continue
        left = when.started or when.completed
        if left is None and job.get("status") in ("completed", "failed", "cancelled"):
            continue
        changes[when.created] += 1
        if left is not None:
            changes[max(left, when.created)] -= 1  # a clock that put leaving before arriving: count it as instant
    return _depth_series(_by_iso(changes))


def _by_iso(changes):
    """{instant: change} keyed by the instants' isoformat() instead, the instants whose events cancel out left out.

    Every instant is UTC, so their isoformat() texts sort as the instants do ("...:00+00:00" before
    "...:00.5+00:00"), and texts are what a child process sends back cheaply."""
    return {instant.isoformat(): change for instant, change in changes.items() if change}


def _depth_series(changes):
    """The queue_depth figure of `changes` {instant's isoformat(): jobs arriving less jobs leaving}."""
    series, depth = [], 0
    append = series.append
    # Instants are unique: ordered by instant alone, without comparing (instant, change) tuples (3x faster).
    for instant, change in sorted(changes.items(), key=itemgetter(0)):
        if change:
            depth += change
            append([instant, depth])
    if not series:
        return {"series": [], "peak": None, "peak_at": None}
    peak_at, peak = max(series, key=lambda point: point[1])  # the first time the peak is reached
    return {"series": series, "peak": peak, "peak_at": peak_at}


def timeline(jobs, times=None):
    """From the first submission to the last thing that happened to any job."""
    times = job_times(jobs) if times is None else times
    created = [when.created for when in times if when.created is not None]
    activity = [instant for when in times for instant in when if instant is not None]
    return _timeline_of(min(created, default=None), max(activity, default=None))


def _timeline_of(first, last):
    """The timeline figure of the first created_at (`first`) and the last time at all (`last`), None when none."""
    if first is None:
        return {"first_job_at": None, "last_activity_at": iso(last), "duration_seconds": None}
    return {
        "first_job_at": iso(first),
        "last_activity_at": iso(last),
        "duration_seconds": _round((last - first).total_seconds()),
    }


def drain(cutoff=None, final_time=None):
    """How long the queue took to clear after submissions were closed at `cutoff`."""
    start, end = parse_time(cutoff), parse_time(final_time)
    seconds = _round((end - start).total_seconds()) if start is not None and end is not None else None
    return {"cutoff": iso(start), "final_time": iso(end), "time_to_clear_seconds": seconds}


def participants(jobs, registered_users):
    """Who came: registered users with at least one job; jobs per user, registered or not.

    registered, attended, dropouts and unregistered are lists of user ids (registered in the order
    given, without repeats); jobs_per_participant holds every registered user (0 for a dropout) and
    every user with a job, ranked ([{name, count}], most jobs first).
    """
    return _participants_of(Counter(job.get("user_id") for job in jobs), registered_users)


def _participants_of(per_user, registered_users):
    """The participants figure of jobs per user (a Counter) and the registered users."""
    registered = list(dict.fromkeys(registered_users or ()))
    attended = [user for user in registered if per_user[user]]
    known = set(registered)
    return {
        "registered": registered,
        "attended": attended,
        "dropouts": [user for user in registered if not per_user[user]],
        "attendance_rate": _percent(len(attended), len(registered)),
        "jobs_per_participant": _ranked(Counter({**dict.fromkeys(registered, 0), **per_user})),
        "unregistered": sorted((user for user in per_user if user not in known), key=str),
    }


def failures(jobs):
    errors = Counter(error_text(job.get("error")) for job in jobs if job.get("status") == "failed")
    return {"by_error": _ranked(errors)}


def models(jobs, facts=None):
    """Jobs per model file (ranked lists): all, completed and failed ones; a model counts once per job
    however often it is loaded."""
    facts = job_facts(jobs) if facts is None else facts
    used, succeeded, failed = Counter(), Counter(), Counter()
    for job, fact in zip(jobs, facts):
        names = {name for _dummy, name in fact.models}
        used.update(names)
        if job.get("status") == "completed":
            succeeded.update(names)
        elif job.get("status") == "failed":
            failed.update(names)
    return {"used": _ranked(used), "succeeded": _ranked(succeeded), "failed": _ranked(failed)}


def resolutions(jobs, facts=None):
    """Jobs per "WxH" of their latent nodes (a ranked list), each counted once per job."""
    facts = job_facts(jobs) if facts is None else facts
    return _ranked(Counter(size for fact in facts for size in fact.resolutions))


def batch_sizes(jobs, facts=None):
    """Jobs per batch size of their latent nodes ([{"name": "1", "count": n}, ...]), each counted once per job;
    ties smallest size first."""
    facts = job_facts(jobs) if facts is None else facts
    counts = Counter(size for fact in facts for size in fact.batch_sizes)
    return [{"name": str(entry["name"]), "count": entry["count"]} for entry in _ranked(counts, tie=lambda size: size)]


def records(jobs, invalid=()):
    """How many records were read, and which could not be counted: (valid jobs, {read, valid, invalid,
    invalid_keys}). `jobs`: a reader's JobRecords, whose jobs it already checked and whose invalid keys
    are counted, or a list whose every job record_problem checks here, a refused one named `job:<id>`
    (or `#<position>` without an id). `invalid`: more keys the reader skipped."""
    if isinstance(jobs, JobRecords):  # a key given in both (records and records.invalid) counts once
        valid, skipped = jobs.jobs, list(dict.fromkeys(str(key) for key in (*jobs.invalid, *invalid)))
    else:
        valid, skipped = [], [str(key) for key in invalid]
        for position, job in enumerate(jobs):
            if record_problem(job) is None:
                valid.append(job)
            else:
                job_id = job.get("id") if isinstance(job, dict) else None
                skipped.append(f"{JOB_PREFIX}{job_id}" if isinstance(job_id, str) else f"#{position}")
    return valid, _read_figure(len(valid), skipped)


def _read_figure(valid, skipped):
    """The records figure of `valid` records counted and the keys `skipped` (each once)."""
    return {
        "read": valid + len(skipped),
        "valid": valid,
        "invalid": len(skipped),
        "invalid_keys": sorted(skipped)[:MAX_INVALID_KEYS],
    }


def compute_metrics(jobs, registered_users, cutoff=None, final_time=None, invalid=()):
    """Every figure of the wrap-up report from the job records (see each function for its definition).

    jobs: what jobs_from_redis or jobs_from_rdb returned, or a list of job records (see `records`).
    cutoff and final_time (ISO-8601 strings, datetimes or epoch seconds) only feed the drain figure.
    invalid: keys of records the reader could not use; with the jobs record_problem refuses, they
    are counted in the `records` figure and left out of every other one.
    """
    with _gc_paused():
        jobs, read = records(jobs, invalid)
        return _figures(_tally(jobs), read, registered_users, cutoff, final_time)


def _tally_of_records(job_records):
    """_tally of a reader's JobRecords, with its invalid keys (as text)."""
    tally = _tally(job_records.jobs)
    tally["invalid"] = [str(key) for key in job_records.invalid]
    return tally


def _tally(jobs):
    """What every figure needs from the valid records `jobs`, in one pass, each timestamp parsed once:
    counters, the run and wait times in the jobs' order (and the longest one's job), the queue's changes by
    instant (_by_iso), the first and last time. Tallies of consecutive runs of jobs merge (_merged)
    into the tally of all of them, which is how redis_metrics shares the work out.

    _figures of it equals calling each figure function (job_counts, durations, run_times, waits,
    queue_depth, timeline, participants, failures, models, resolutions, batch_sizes) on the jobs,
    which a test checks on random histories; this only walks 100,000 records once instead of ten times.
    """
    parse = parse_time
    statuses, users, errors = [], [], []
    run_seconds, run_ids, wait_seconds, wait_ids = [], [], [], []
    runs_backwards = waits_backwards = 0
    created_all, activity = [], []
    changes = {}  # not a Counter: its missing keys cost a Python call each (__missing__)
    changed = changes.get
    used, succeeded, failed, sizes, batches = [], [], [], [], []
    terminal = ("completed", "failed", "cancelled")
    for job in jobs:
        get = job.get
        status = get("status")
        statuses.append(status)
        users.append(get("user_id"))
        created, started, completed = parse(get("created_at")), parse(get("started_at")), parse(get("completed_at"))
        if created is not None:
            created_all.append(created)
            activity.append(created)
            if started is not None:
                if started >= created:
                    wait_seconds.append((started - created).total_seconds())
                    wait_ids.append(get("id"))
                else:
                    waits_backwards += 1
            left = started or completed
            if left is not None or status not in terminal:
                changes[created] = changed(created, 0) + 1
                if left is not None:
                    left = left if left > created else created
                    changes[left] = changed(left, 0) - 1
        if started is not None:
            activity.append(started)
        if completed is not None:
            activity.append(completed)
        fact = workflow_facts(get("workflow"))
        names = {name for _dummy, name in fact.models} if fact.models else ()  # a model counts once per job
        sizes += fact.resolutions
        batches += fact.batch_sizes
        used += names
        if status == "completed":
            if started is not None and completed is not None:
                if completed >= started:
                    run_seconds.append((completed - started).total_seconds())
                    run_ids.append(get("id"))
                else:
                    runs_backwards += 1
            succeeded += names
        elif status == "failed":
            failed += names
            errors.append(error_text(get("error")))
    return {
        "valid": len(jobs),
        "invalid": [],
        "statuses": Counter(statuses),
        "users": Counter(users),
        "errors": Counter(errors),
        "runs": (run_seconds, _longest(run_seconds, run_ids)),
        "waits": (wait_seconds, _longest(wait_seconds, wait_ids)),
        "backwards": {"runs": runs_backwards, "waits": waits_backwards},
        "changes": _by_iso(changes),
        "first": min(created_all, default=None),
        "last": max(activity, default=None),
        "models": (Counter(used), Counter(succeeded), Counter(failed)),
        "resolutions": Counter(sizes),
        "batch_sizes": Counter(batches),
    }


def _merged(tallies):
    """The tally of the jobs of `tallies` (tallies of consecutive runs of jobs, in their order); the first is
    updated in place."""
    total, *rest = tallies
    for tally in rest:
        total["valid"] += tally["valid"]
        total["invalid"] += tally["invalid"]
        for part in ("statuses", "users", "errors", "resolutions", "batch_sizes"):
            total[part].update(tally[part])
        for part in ("runs", "waits"):
            (values, longest), (more, more_longest) = total[part], tally[part]
            values.extend(more)
            total[part] = (values, _longer(longest, more_longest))
            total["backwards"][part] += tally["backwards"][part]
        changes = total["changes"]
        for instant, change in tally["changes"].items():
            changes[instant] = changes.get(instant, 0) + change
        for counter, more in zip(total["models"], tally["models"]):
            counter.update(more)
        total["first"] = min((moment for moment in (total["first"], tally["first"]) if moment is not None), default=None)
        total["last"] = max((moment for moment in (total["last"], tally["last"]) if moment is not None), default=None)
    return total


def _figures(tally, read, registered_users, cutoff, final_time):
    """Every figure of compute_metrics from the tally of the valid jobs and the records figure `read`."""
    counts = _counts_of(tally["statuses"], tally["valid"])
    run_seconds, longest_run = tally["runs"]
    used, succeeded, failed = tally["models"]
    figures = {
        "records": read,
        "jobs": counts,
        "durations": _durations_of(run_seconds, longest_run, tally["backwards"]["runs"]),
        "duration_seconds": _run_times_of(run_seconds),
        "wait": _waits_of(*tally["waits"], tally["backwards"]["waits"]),
        "queue_depth": _depth_series(tally["changes"]),
        "timeline": _timeline_of(tally["first"], tally["last"]),
        "drain": drain(cutoff, final_time),
        "participants": _participants_of(tally["users"], registered_users),
        "failures": {"by_error": _ranked(tally["errors"])},
        "models": {"used": _ranked(used), "succeeded": _ranked(succeeded), "failed": _ranked(failed)},
        "resolutions": _ranked(tally["resolutions"]),
        "batch_sizes": [
            {"name": str(entry["name"]), "count": entry["count"]}
            for entry in _ranked(tally["batch_sizes"], tie=lambda size: size)
        ],
    }
    # The long series hold numbers and times of our own making; every other figure may hold a record's text.
    return {name: figure if name in _SERIES else well_formed(figure) for name, figure in figures.items()}


_SERIES = frozenset(("duration_seconds", "queue_depth", "timeline"))


def well_formed(value):
    """`value` (text, or dicts and lists of it) with each lone surrogate in its text made U+FFFD.

    A record's JSON may escape one ("\\udcff": JavaScript's JSON.stringify writes a broken string so),
    and no UTF-8 file (the report, metrics.json) can hold it: the report stopped at such an error text."""
    if isinstance(value, str):
        if value.isascii():
            return value
        # UTF-16 pairs what surrogates make a character and replaces only the lone ones.
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {well_formed(key): well_formed(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(well_formed(item) for item in value)
    return value
