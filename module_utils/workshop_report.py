"""The workshop report: the checklist's "Create Workshop Report" template, filled in, as Markdown and HTML.

Both renderings come from one document model (sections of labelled lines), so they always say the
same. A figure whose input is missing reads `not measured: <reason>`, never a bare placeholder;
what only a person can know is left as a marked prompt `_(to fill in: ...)_`.

The HTML page is self-contained (inline CSS and SVG charts, no script, nothing fetched) and every
text that comes from job records or logs is escaped: error messages and log lines are untrusted.
"""

import html
import math
import os
import re
from datetime import datetime, timezone

from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import write_if_changed
from ansible.module_utils.workshop_time import parse_time

LOG_CATEGORIES = ("errors", "warnings", "ssl", "connection", "thermal", "restarts", "crashes", "requeues")
# Log categories the job figures already say: listed as issues only when there are no job metrics.
JOB_LOG_CATEGORIES = ("job_failures",)
TOP_ISSUES = 10
TOP_LIST = 5
INVALID_SHOWN = 5
SAMPLE_CHARS = 300
MAX_BARS = 60
TIME_STEPS_MINUTES = (1, 2, 5, 10, 15, 30, 60, 120, 180, 240, 360, 720, 1440)


class Code(str):
    """Text from the inputs (names, errors, log lines): shown verbatim, never as markup."""


class Prompt(str):
    """A blank only a person can fill in."""


class Missing(str):
    """Why a figure was not measured."""


# --- number and time formatting --------------------------------------------------------------------


def as_number(value):
    """An int or float of `value` (numeric text included, as templated facts may be text); None otherwise."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return value if not (isinstance(value, float) and math.isnan(value)) else None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return int(number) if number.is_integer() and "." not in value else number
    return None


def format_number(value, digits=1):
    """Ints as they are, floats with `digits` decimals."""
    number = as_number(value)
    if number is None:
        return str(value)
    return str(number) if isinstance(number, int) else f"{number:.{digits}f}"


def plural(count, word):
    """ "1 job", "2 jobs": `word` is the singular, made plural with an s."""
    return f"{format_number(count)} {word}{'' if as_number(count) == 1 else 's'}"


def format_percent(value):
    """93 -> "93.0%" (the metrics give percentages, not fractions)."""
    return f"{float(as_number(value)):.1f}%"


def _trimmed(number):
    """One decimal, without a trailing .0: 93.0 -> "93", 47.84 -> "47.8"."""
    text = f"{number:.1f}"
    return text[:-2] if text.endswith(".0") else text


def format_duration(seconds):
    """A duration in the unit that fits: "6 s", "93 s", "3.1 min", "7.3 h" (under 2 minutes in seconds,
    under 2 hours in minutes), so a short workshop never reads "0.0 hours"."""
    value = float(as_number(seconds))
    if abs(value) < 120:
        return f"{_trimmed(value)} s"
    if abs(value) < 7200:
        return f"{_trimmed(value / 60)} min"
    return f"{_trimmed(value / 3600)} h"


def format_clock(value):
    """ "16:48 UTC" of an ISO time; the text itself when it is not one (e.g. an announced "4:30 PM")."""
    moment = parse_time(value)
    return moment.strftime("%H:%M UTC") if moment else str(value)


def format_stamp(value):
    moment = parse_time(value)
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else str(value)


def count_of(value):
    """A count given either as a number or as the list of what was counted (the metrics list user ids)."""
    if isinstance(value, (list, tuple, set, dict)):
        return len(value)
    return as_number(value)


def one_line(text, limit=SAMPLE_CHARS):
    """Untrusted text on one line, cut to `limit` characters, so one log line cannot swamp the report."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# --- chart helpers ---------------------------------------------------------------------------------


def linear_scale(d0, d1, r0, r1):
    """A function mapping the domain [d0, d1] linearly onto [r0, r1] (an empty domain maps to the middle)."""
    if d1 == d0:
        return lambda _value: (r0 + r1) / 2
    return lambda value: r0 + (value - d0) * (r1 - r0) / (d1 - d0)


def nice_step(raw):
    """The smallest 1, 2 or 5 times a power of ten that is at least `raw` (> 0)."""
    if raw <= 0:
        return 1
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * power >= raw * (1 - 1e-9):
            return factor * power
    return 10 * power


def count_ticks(maximum, max_ticks=6):
    """Whole-number ticks from 0 up to a round top at or above `maximum`."""
    step = max(1, int(nice_step(max(maximum, 1) / max_ticks)))
    top = max(step, math.ceil(maximum / step) * step)
    return list(range(0, top + 1, step))


def time_ticks(start, end, max_ticks=8):
    """Epoch seconds of round clock times (every 1, 2, 5, 10, 15, 30... minutes) within [start, end]."""
    span = max(end - start, 60)
    step = next((m * 60 for m in TIME_STEPS_MINUTES if span / (m * 60) <= max_ticks), TIME_STEPS_MINUTES[-1] * 60)
    first = math.ceil(start / step) * step
    return [first + i * step for i in range(int((end - first) // step) + 1)] if first <= end else []


def histogram_bins(values, width=None, max_bins=12):
    """[(low, high, count)] of equal-width bins [low, high) covering every value, edges at multiples of `width`.

    Without a width, the smallest round width (1, 2, 5 x 10^k) giving at most `max_bins` bins is used.
    """
    values = [float(v) for v in values if as_number(v) is not None]
    if not values:
        return []
    low, high = min(values), max(values)
    if width is None:
        width = nice_step((high - low) / max_bins) if high > low else nice_step(max(abs(high), 1) / max_bins)
    first = math.floor(low / width)
    counts = [0] * (math.floor(high / width) - first + 1)
    for value in values:
        counts[math.floor(value / width) - first] += 1
    return [((first + i) * width, (first + i + 1) * width, n) for i, n in enumerate(counts)]


def step_points(series):
    """[(epoch, depth)] of a step chart: the depth holds until the next change (two points per step)."""
    points = []
    for when, depth in series:
        if points:
            points.append((when, points[-1][1]))
        points.append((when, depth))
    return points


def _c(value):
    """An SVG coordinate, one decimal."""
    return f"{value:.1f}"


# --- reading the inputs ----------------------------------------------------------------------------


def _get(data, *keys):
    """data[k1][k2]... or None when any level is missing or None."""
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def ranked_pairs(ranking):
    """[(name, count)] of a ranked figure, in its order: metrics.json holds a list of {name, count}
    (or of [name, count] pairs); a dict (older metrics) gives its items in its order. Entries of
    another shape are skipped."""
    if isinstance(ranking, dict):
        return list(ranking.items())
    pairs = []
    for entry in ranking if isinstance(ranking, (list, tuple)) else ():
        if isinstance(entry, dict) and "name" in entry:
            pairs.append((entry["name"], entry.get("count")))
        elif isinstance(entry, (list, tuple)) and len(entry) == 2:
            pairs.append((entry[0], entry[1]))
    return pairs


def _ranked_list(ranking, suffix="", limit=TOP_LIST):
    """Runs naming the first entries of a ranked figure, in its order: `name` (n jobs<suffix>), ..."""
    runs = []
    for name, n in ranked_pairs(ranking)[:limit]:
        runs += [", "] if runs else []
        runs += [Code(name), f" ({plural(n, 'job')}{suffix})"]
    return runs


def _field(label, value, render, reason):
    """A line `label: <rendered value>`, or `label: not measured: <reason>` when value is None."""
    if value is None:
        return (label, [Missing(reason)])
    rendered = render(value)
    return (label, rendered if isinstance(rendered, list) else [rendered])


# --- the document model ----------------------------------------------------------------------------
# A section is (heading, lines, numbered); a line is (label or None, [runs]); a run is a str
# (our own text), Code, Prompt or Missing.


def _participants(metrics, reason):
    people = _get(metrics, "participants")
    why = reason if metrics is None else "no participant list"

    def listed(value):
        runs = [format_number(count_of(value))]
        if isinstance(value, list) and value and len(value) <= 10:
            names = []
            for name in value:
                names += [", "] if names else []
                names.append(Code(name))
            runs += [" (", *names, ")"]
        return runs

    lines = [
        _field("Total registered", _get(people, "registered"), listed, why),
        _field("Attended", _get(people, "attended"), listed, why),
        _field("Dropouts", _get(people, "dropouts"), listed, why),
        _field(
            "Attendance rate", _get(people, "attendance_rate"), format_percent, why if people is None else "nobody registered"
        ),
    ]
    unregistered = _get(people, "unregistered")
    if unregistered:
        lines.append(("Submitted without registration", listed(unregistered)))
    return ("Participants", lines, False)


def _performance(metrics, reason):
    jobs = _get(metrics, "jobs")
    why = reason if metrics is None else "no job records"
    durations = _get(metrics, "durations")

    def average(mean):
        runs = [format_duration(mean)]
        if durations.get("median") is not None and durations.get("p95") is not None:
            runs.append(
                f" (median {format_duration(durations['median'])}, 95th percentile {format_duration(durations['p95'])},"
                f" over {plural(durations.get('count'), 'completed job')})"
            )
        return runs

    def longest(seconds):
        runs = [format_duration(seconds)]
        if durations.get("max_job_id"):
            runs += [" (job ", Code(durations["max_job_id"]), ")"]
        return runs

    no_duration = why if durations is None and metrics is None else "no completed job with start and end times"
    lines = [
        _field("Total jobs submitted", _get(jobs, "submitted"), format_number, why),
        _field("Successfully completed", _get(jobs, "completed"), format_number, why),
        _field("Failed", _get(jobs, "failed"), format_number, why),
        _field("Success rate", _get(jobs, "success_rate"), format_percent, why if jobs is None else "no job finished"),
        _field("Average job duration", _get(durations, "mean"), average, no_duration),
        _field("Longest job", _get(durations, "max"), longest, no_duration),
    ]
    others = [(name, _get(jobs, name)) for name in ("cancelled", "pending", "running")]
    if any(n for _, n in others):
        lines.append(("Not completed otherwise", [", ".join(f"{name}: {format_number(n or 0)}" for name, n in others)]))
    lines.append(_field("Job records", _get(metrics, "records"), _records, why if metrics is None else "not counted"))
    return ("System Performance Metrics", lines, False)


def _records(read):
    """ "57 read, all counted", or which records could not be counted and are left out of every figure."""
    invalid = as_number(read.get("invalid")) or 0
    total = format_number(read.get("read"))
    if not invalid:
        return [f"{total} read, all counted"]
    keys = [str(key) for key in read.get("invalid_keys") or []]
    runs = [f"{total} read; {plural(invalid, 'unreadable or invalid record')} left out of every figure"]
    if keys:
        runs.append(" (")
        for i, key in enumerate(keys[:INVALID_SHOWN]):
            runs += [", "] if i else []
            runs.append(Code(key))
        if invalid > min(len(keys), INVALID_SHOWN):
            runs.append(f" and {format_number(invalid - min(len(keys), INVALID_SHOWN))} more")
        runs.append(")")
    runs.append(": not a JSON object, or no user_id or status")
    return runs


def _seconds(figures, name, unit):
    """figures[name_seconds], or an older metrics.json's figure in hours or minutes (unit: its seconds)."""
    seconds = as_number(_get(figures, f"{name}_seconds"))
    if seconds is None:
        older = as_number(_get(figures, f"{name}_{'hours' if unit == 3600 else 'minutes'}"))
        seconds = older * unit if older is not None else None
    return seconds


def _timing(metrics, reason):
    why = reason if metrics is None else "no job records with times"
    queue, wait, drain = _get(metrics, "queue_depth"), _get(metrics, "wait"), _get(metrics, "drain")

    def peak(depth):
        runs = [f"{format_number(depth)} jobs"]
        return [*runs, f" (at {format_clock(queue['peak_at'])})"] if queue.get("peak_at") else runs

    def clear(seconds):
        runs = [format_duration(seconds)]
        if drain.get("cutoff") and drain.get("final_time"):
            runs.append(f" (cut-off {format_clock(drain['cutoff'])}, queue empty {format_clock(drain['final_time'])})")
        return runs

    def longest_wait(seconds):
        runs = [format_duration(seconds)]
        return [*runs, " (job ", Code(wait["max_job_id"]), ")"] if wait.get("max_job_id") else runs

    lines = [
        _field("Workshop duration", _seconds(_get(metrics, "timeline"), "duration", 3600), format_duration, why),
        _field("Peak queue depth", _get(queue, "peak"), peak, why),
        _field(
            "Time to clear queue",
            _seconds(drain, "time_to_clear", 60),
            clear,
            reason if metrics is None else "the drain's cut-off or final time was not recorded",
        ),
        _field("Longest wait time", _get(wait, "max"), longest_wait, why if wait is None else "no job had started"),
    ]
    return ("Timing Analysis", lines, False)


def _gpu(gpu, gpu_reason, logs):
    reason = gpu_reason or "no GPU samples were taken"
    summary = _get(gpu, "summary")

    def hardware(gpus):
        names = {}
        for card in gpus:
            name = card.get("product_name") or "unknown GPU"
            memory = as_number(card.get("memory_total_mib"))
            key = f"{name}, {memory / 1024:.0f} GiB" if memory else name
            names[key] = names.get(key, 0) + 1
        runs = []
        for key, n in names.items():
            runs += [", "] if runs else []
            runs += [f"{n} x ", Code(key)] if n > 1 else [Code(key)]
        return runs

    def throttling(flag):
        runs = ["Yes" if flag else "No"]
        thermal = _get(logs, "totals", "thermal")
        return [*runs, f" ({plural(thermal, 'thermal line')} in the logs)"] if thermal else runs

    errors = None
    if summary is not None and (summary.get("ecc_errors") is not None or summary.get("xid_errors") is not None):
        errors = (as_number(summary.get("ecc_errors")) or 0, as_number(summary.get("xid_errors")) or 0)

    def gpu_errors(counts):
        ecc, xid = counts
        return f"{'Yes' if ecc or xid else 'No'} (ECC errors: {ecc}, Xid errors: {xid})"

    why = reason if gpu is None else "not in the GPU samples"
    lines = [
        _field("Hardware", _get(gpu, "gpus") or None, hardware, reason if gpu is None else "no GPU listed"),
        _field("Peak memory usage", _get(summary, "peak_memory_used_pct"), format_percent, why),
        _field("Average memory usage", _get(summary, "avg_memory_used_pct"), format_percent, why),
        _field("Temperature peak", _get(summary, "peak_temperature_c"), lambda t: f"{format_number(t)}°C", why),
        _field("Thermal throttling", _get(summary, "thermal_throttling"), throttling, why),
        _field("Any GPU errors", errors, gpu_errors, why),
    ]
    return ("GPU Performance", lines, False)


def _network(network, network_reason, logs):
    reason = network_reason or "no network probe was run"
    timeouts = as_number(_get(network, "timeouts"))
    connection = as_number(_get(logs, "totals", "connection"))
    problems = []
    if timeouts:
        problems.append(plural(timeouts, "timeout"))
    if connection:
        problems.append(f"{plural(connection, 'connection error')} in the logs")
    if problems:
        stability = [f"Issues ({', '.join(problems)})"]
    elif network is None and logs is None:
        stability = [Missing(f"{reason}, and no logs were analysed")]
    elif network is None:
        # The logs say nothing went wrong; without a probe, nobody measured the link itself.
        stability = ["No connection errors in the logs; the link itself ", Missing(reason)]
    elif logs is None:
        stability = ["Stable (no probe timeouts; logs not analysed)"]
    else:
        stability = ["Stable (no probe timeouts, no connection errors in the logs)"]
    lines = [
        _field("Latency VPS ↔ GPU", _get(network, "latency_ms"), lambda ms: f"{format_number(ms)}ms", reason),
        ("Connection stability", stability),
        _field("Connection timeouts", timeouts, format_number, reason),
        ("Bandwidth issues", [Prompt("None/Minor/Severe")]),
    ]
    return ("Network Performance", lines, False)


def _log_sample(services, category):
    """(services summary, one sample) of a category: the service with most such lines gives the sample."""
    counts = []
    for service, categories in (services or {}).items():
        entry = _get(categories, category) or {}
        if as_number(entry.get("count")):
            counts.append((as_number(entry["count"]), service, entry.get("samples") or []))
    counts.sort(key=lambda item: (-item[0], str(item[1])))
    sample = next((samples[0] for _, _, samples in counts if samples), None)
    return ", ".join(f"{service} {n}" for n, service, _ in counts), sample


def _issues(metrics, logs):
    """One numbered line per issue, most frequent first (ties: failed jobs first, then by name).

    Failed jobs are listed once per distinct error (the same text counts once, whatever its
    spacing); log categories by their line counts. The worker's `Job ... failed` lines are the
    failed jobs again, so they are listed only when there are no job metrics to list them from.
    """
    entries = {}  # (kind, name) -> [count, runs], so an issue is listed once
    for error, n in ranked_pairs(_get(metrics, "failures", "by_error")):
        count = as_number(n) or 0
        text = one_line(" ".join(str(error).split()))
        key = ("job", text)
        if key in entries:
            entries[key][0] += count
        else:
            entries[key] = [count, None]
    for key, entry in entries.items():
        entry[1] = ["Failed jobs: ", Code(key[1]), f" ({plural(entry[0], 'job')})"]
    totals = _get(logs, "totals") or {}
    categories = [*LOG_CATEGORIES, *sorted(set(totals) - set(LOG_CATEGORIES) - set(JOB_LOG_CATEGORIES))]
    if metrics is None:
        categories += list(JOB_LOG_CATEGORIES)
    for category in categories:
        n = as_number(totals.get(category))
        if not n:
            continue
        where, sample = _log_sample(_get(logs, "services"), category)
        runs = [f"Log lines about {category.replace('_', ' ')}: {format_number(n)}"]
        if where:
            runs.append(" (")
            runs.append(Code(where))
            runs.append(")")
        if sample is not None:
            runs += [", e.g. ", Code(one_line(sample))]
        entries[("log", category)] = [n, runs]
    ranked = sorted(entries.items(), key=lambda item: (-item[1][0], item[0][0] != "job", item[0][1]))
    lines = [(None, [*runs, ". Resolution: ", Prompt("resolution")]) for _, (_, runs) in ranked[:TOP_ISSUES]]
    if len(ranked) > TOP_ISSUES:
        lines.append((None, [f"{len(ranked) - TOP_ISSUES} less frequent issues not listed (see metrics.json)."]))
    if not lines:
        if metrics is None and logs is None:
            lines.append((None, [Missing("no job metrics and no logs were collected")]))
        else:
            scope = "no failed jobs" if metrics is not None else "job failures not measured"
            scope += " and no log lines in any problem category" if logs is not None else "; logs not exported"
            lines.append((None, [scope[0].upper() + scope[1:] + "."]))
    return ("Issues Encountered", lines, True)


def _workflows(metrics, reason):
    why = reason if metrics is None else "no model loaders in the workflows"
    models = _get(metrics, "models")
    failed = ranked_pairs(_get(models, "failed"))

    def worked(succeeded):
        runs = _ranked_list(succeeded, " completed")
        if failed:
            runs += ["; failed most: ", *_ranked_list(failed, " failed", 3)]
        return runs

    resolutions, batches = _get(metrics, "resolutions"), _get(metrics, "batch_sizes")
    lines = [
        _field("Models that worked well", ranked_pairs(_get(models, "succeeded")) or None, worked, why),
        _field(
            "Popular resolutions",
            ranked_pairs(resolutions) or None,
            _ranked_list,
            reason if metrics is None else "no latent sizes",
        ),
        _field(
            "Most common batch sizes",
            ranked_pairs(batches) or None,
            _ranked_list,
            reason if metrics is None else "no batch sizes",
        ),
    ]
    return ("Successful Workflows", lines, False)


def _feedback():
    prompts = (
        "general themes from discussions",
        "most popular features",
        "most requested improvements",
        "technical issues mentioned",
    )
    return ("Participant Feedback", [(None, [Prompt(prompt)]) for prompt in prompts], False)


def _stability(logs, context):
    restarts = _get(context, "restarts")

    def restart_count(per_service):
        total = sum(as_number(n) or 0 for n in per_service.values())
        runs = [format_number(total)]
        restarted = {service: n for service, n in per_service.items() if as_number(n)}
        if restarted:
            runs += [" (", Code(", ".join(f"{service} {n}" for service, n in restarted.items())), ")"]
        in_logs = as_number(_get(logs, "totals", "restarts"))
        return [*runs, f"; {plural(in_logs, 'restart line')} in the logs"] if in_logs else runs

    lines = [
        # No counts at all ({} as well as None) is "not collected", never "0".
        _field("Service restarts", restarts or None, restart_count, "Docker's restart counts were not collected"),
        ("Emergency procedures", [Prompt("None/Count")]),
        ("SLA achievement", [Prompt("% of the agreed service level met")]),
        ("Uptime", [Prompt("% (calculated as: working_time / total_time)")]),
    ]
    return ("System Stability Log", lines, False)


def _recommendations():
    return ("Recommendations for Next Time", [(None, [Prompt(f"improvement {i}")]) for i in (1, 2, 3)], True)


def _backup_layout(backup):
    """{kind: [relative paths]} of the backup: from its file list when the record has one, else the
    fixed layout the backup role writes (outputs.tar, redis/dump.rdb, logs/, config/)."""
    files = backup.get("files")
    if isinstance(files, (dict, list)):
        names = sorted(str(name) for name in files)
    else:
        redis_file = _get(backup, "redis", "file") or "redis/dump.rdb"
        names = ["logs/workshop-logs.txt.gz", "outputs.tar", "user-files.tar", redis_file, "config/"]
    kinds = {"logs": [], "outputs": [], "redis": [], "config": [], "other": []}
    for name in names:
        if name.startswith("logs/"):
            kinds["logs"].append(name)
        elif name.startswith("outputs"):
            kinds["outputs"].append(name)
        elif name.startswith("redis/") or name.endswith(".rdb"):
            kinds["redis"].append(name)
        elif name.startswith("config/"):
            kinds["config"].append(name)
        else:
            kinds["other"].append(name)
    return kinds


MAX_FAILURES_SHOWN = 5


def backup_verify(record):
    """The run record's verification of the backup: backup.verify, or the older top-level verify; None when absent."""
    verify = _get(record, "backup", "verify")
    if not isinstance(verify, dict):
        verify = _get(record, "verify")
    return verify if isinstance(verify, dict) and "ok" in verify else None


def verify_state(record):
    """ "verified", "failed" or "unverified": what the run record says of the recorded backup.

    A verification of another backup than the one recorded verifies nothing of it; `ok` must be
    true itself (not just truthy text), and a failure is never read as verified.
    """
    verify, backup = backup_verify(record), _get(record, "backup") or {}
    if verify is None:
        return "unverified"
    checked = verify.get("backup") or verify.get("name")
    if checked and backup.get("name") and str(checked) != str(backup.get("name")):
        return "unverified"
    ok = verify.get("ok")
    if ok is True or (isinstance(ok, str) and ok.strip().lower() == "true"):
        return "verified"
    return "failed"


def _verify_runs(verify, backup):
    """The verification, as runs after the backup's path: ", verified <when>", or what FAILED, down to the member."""
    state = verify_state({"backup": {**backup, "verify": verify}} if verify else {"backup": backup})
    when = f" at {format_stamp(verify['at'])}" if verify and verify.get("at") else ""
    if state == "verified":
        return [f", verified{when}"]
    if state == "unverified":
        checked = verify and (verify.get("backup") or verify.get("name"))
        if checked:
            return [", NOT VERIFIED (the last verification was of ", Code(str(checked)), ")"]
        return [", NOT VERIFIED (no verification is recorded)"]
    runs = [f", FAILED verification{when}"]
    failures = [entry for entry in verify.get("failures") or [] if isinstance(entry, dict)]
    for i, failure in enumerate(failures[:MAX_FAILURES_SHOWN]):
        runs.append(": " if i == 0 else "; ")
        where = str(failure.get("file") or "?")
        if failure.get("member"):
            where += f" member {failure['member']}"
        runs.append(Code(where))
        if failure.get("reason"):
            runs += [" (", Code(str(failure["reason"])), ")"]
    if len(failures) > MAX_FAILURES_SHOWN:
        runs.append(f"; and {len(failures) - MAX_FAILURES_SHOWN} more")
    if not failures:
        runs.append(" (what failed was not recorded)")
    return runs


def _files(record):
    backup = _get(record, "backup")
    if not backup:
        return ("Files Generated", [(None, [Missing("no backup was recorded in the run record")])], False)
    kinds = _backup_layout(backup)
    path = str(backup.get("path") or backup.get("name") or "")

    def named(paths, limit=6):
        runs = []
        for name in paths[:limit]:
            runs += [", "] if runs else []
            runs.append(Code(f"{path}/{name}" if path else name))
        if len(paths) > limit:
            runs.append(f" and {len(paths) - limit} more")
        return runs or [Missing("not in this backup")]

    logs = kinds["logs"]
    combined = [name for name in logs if "workshop-logs" in name] or logs
    log_runs = named(combined)
    if len(logs) > len(combined):
        log_runs.append(f" (and {len(logs) - len(combined)} per-service logs)")
    full = [Code(path)]
    if as_number(backup.get("files")) is not None:
        full.append(f" ({format_number(backup['files'])} files)")
    full += _verify_runs(backup_verify(record), backup)
    lines = [
        ("Logs", log_runs),
        ("Outputs backup", named(kinds["outputs"])),
        ("Full backup", full),
        ("Database snapshot", named(kinds["redis"])),
        ("Configuration", named(kinds["config"])),
    ]
    if kinds["other"]:
        lines.append(("Other files", named(kinds["other"])))
    return ("Files Generated", lines, False)


def announced_cutoff(cutoff, zone):
    """The announced cut-off with its time zone: an ISO time as "16:30 UTC"; a clock time as
    announced ("4:30 PM") followed by `zone` (the zone the announcement was made in), unless it names one."""
    moment = parse_time(cutoff) if "T" in str(cutoff) else None
    if moment is not None:
        return format_clock(moment)
    text = str(cutoff).strip()
    zone = str(zone or "UTC").strip()
    return text if text.upper().endswith(zone.upper()) else f"{text} {zone}"


def _notes(record, context):
    lines = []
    announcement, drain = _get(record, "announcement"), _get(record, "drain")
    if announcement and announcement.get("cutoff"):
        lines.append(("Announced cut-off", [Code(announced_cutoff(announcement["cutoff"], context.get("timezone")))]))
    if drain and drain.get("final_time"):
        runs = [format_stamp(drain["final_time"])]
        if drain.get("total_jobs") is not None:
            runs.append(f", {format_number(drain['total_jobs'])} jobs completed in total")
        lines.append(("Queue drained", runs))
    if drain and drain.get("stuck_jobs"):
        lines.append(("Stuck jobs at the end of the drain", [format_number(count_of(drain["stuck_jobs"]))]))
    lines.append((None, [Prompt("any additional context, decisions, or notable observations")]))
    return ("Notes", lines, False)


def build_report(metrics, logs, gpu, gpu_reason, network, network_reason, record, context):
    """(title, header runs, sections, footer lines): the document both renderings write."""
    no_metrics = "no job metrics were collected"
    context = context or {}
    header = []
    if context.get("workshop_id"):
        header += ["Workshop ", Code(context["workshop_id"])]
    if context.get("host"):
        header += [" on " if header else "On ", Code(context["host"])]
    if context.get("domain"):
        header += [" (", Code(context["domain"]), ")"]
    if context.get("generated_at"):
        header += [
            f", generated {format_stamp(context['generated_at'])}"
            if header
            else f"Generated {format_stamp(context['generated_at'])}"
        ]
    sections = [
        _participants(metrics, no_metrics),
        _performance(metrics, no_metrics),
        _timing(metrics, no_metrics),
        _gpu(gpu, gpu_reason, logs),
        _network(network, network_reason, logs),
        _issues(metrics, logs),
        _workflows(metrics, no_metrics),
        _feedback(),
        _stability(logs, context),
        _recommendations(),
        _files(record),
        _notes(record, context),
    ]
    state = verify_state(record)
    follow_up = {
        "verified": [],
        "unverified": [" (the backup was not verified: NEEDS FOLLOW-UP at least for that)"],
        "failed": [" (the backup FAILED verification: NEEDS FOLLOW-UP, see Files Generated)"],
    }[state]
    footer = [
        (
            "Report completed",
            [f"{format_stamp(context['generated_at'])} (generated)"] if context.get("generated_at") else [Prompt("date")],
        ),
        ("Completed by", [Prompt("admin name")]),
        ("Status", [Prompt("READY FOR STORAGE / NEEDS FOLLOW-UP"), *follow_up]),
    ]
    return report_title(metrics, record, context), header, sections, footer


def report_title(metrics, record, context):
    """ "Workshop Report - <day>": the date given, else the day the first job came in, else the drain's
    day; with none of them, the workshop's name (never "None", never the time the report was written)."""
    day = context.get("date")
    for moment in (_get(metrics, "timeline", "first_job_at"), _get(record, "drain", "final_time")):
        if not day and parse_time(moment) is not None:
            day = parse_time(moment).strftime("%Y-%m-%d")
    name = context.get("workshop_id")
    if day:
        return f"Workshop Report - {day}"
    return f"Workshop Report - {name}" if name else "Workshop Report"


# --- Markdown ----------------------------------------------------------------------------------------

_MD_SPECIAL = "\\`*_[]<>#|"


def md_code(text):
    """A code span holding `text` verbatim, whatever backticks it contains."""
    text = one_line(text)
    longest = run = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def md_escape(text):
    """Plain text with Markdown's special characters backslash-escaped."""
    return "".join("\\" + char if char in _MD_SPECIAL else char for char in str(text))


def _md_runs(runs):
    parts = []
    for run in runs:
        if isinstance(run, Code):
            parts.append(md_code(run))
        elif isinstance(run, Prompt):
            parts.append(f"_(to fill in: {md_escape(run)})_")
        elif isinstance(run, Missing):
            parts.append(f"not measured: {md_escape(run)}")
        else:
            parts.append(md_escape(run))
    return "".join(parts)


def render_markdown(metrics, logs, gpu, gpu_reason, network, network_reason, record, context, durations=None):
    """The report as Markdown, the checklist's template filled in. `durations` (per-job seconds) is
    drawn only in the HTML; it is accepted here so both renderings take the same inputs."""
    del durations
    title, header, sections, footer = build_report(metrics, logs, gpu, gpu_reason, network, network_reason, record, context)
    out = [f"# {title}", ""]
    if header:
        out += [_md_runs(header), ""]
    for heading, lines, numbered in sections:
        out.append(f"## {heading}")
        for i, (label, runs) in enumerate(lines, 1):
            bullet = f"{i}." if numbered else "-"
            out.append(f"{bullet} {label}: {_md_runs(runs)}" if label else f"{bullet} {_md_runs(runs)}")
        out.append("")
    out += ["---", ""]
    for label, runs in footer:
        out += [f"**{label}:** {_md_runs(runs)}", ""]
    return "\n".join(out)


# --- HTML ---------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 56rem; margin: 2rem auto;
  padding: 0 1rem; color: #1d2433; line-height: 1.5; }
h1 { border-bottom: 2px solid #1d2433; padding-bottom: .3rem; }
h2 { margin-top: 2rem; border-bottom: 1px solid #c9ced8; }
.label { font-weight: 600; }
code { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: .88em; background: #f1f3f7;
  padding: 0 .25em; border-radius: 3px; overflow-wrap: anywhere; }
.prompt { color: #8a4b00; background: #fff4e0; font-style: italic; }
.missing { color: #6b7280; font-style: italic; }
figure { margin: 1rem 0; }
figcaption { font-size: .9em; color: #4b5563; }
svg { max-width: 100%; height: auto; font-family: inherit; font-size: 11px; }
svg .axis { stroke: #6b7280; stroke-width: 1; }
svg .grid { stroke: #e5e7eb; stroke-width: 1; }
svg .line { fill: none; stroke: #2563eb; stroke-width: 2; }
svg .bar { fill: #2563eb; }
svg .peak { fill: #dc2626; }
svg text { fill: #374151; }
footer { margin-top: 2rem; border-top: 1px solid #c9ced8; }
@media print { body { margin: 0; max-width: none; } figure { break-inside: avoid; } }
"""

_W, _H = 720, 300
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 20, 24, 48


def _e(text):
    return html.escape(str(text), quote=True)


def _html_runs(runs):
    parts = []
    for run in runs:
        if isinstance(run, Code):
            parts.append(f"<code>{_e(one_line(run))}</code>")
        elif isinstance(run, Prompt):
            parts.append(f'<em class="prompt">(to fill in: {_e(run)})</em>')
        elif isinstance(run, Missing):
            parts.append(f'<span class="missing">not measured: {_e(run)}</span>')
        else:
            parts.append(_e(run))
    return "".join(parts)


def _svg_open(label, width, height):
    return (
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="{_e(label)}">'
        f"<title>{_e(label)}</title>"
    )


def _figure(figure_id, caption, body):
    return f'<figure id="{figure_id}">{body}<figcaption>{caption}</figcaption></figure>'


def _not_measured_figure(figure_id, name, reason):
    return _figure(figure_id, _e(name), f'<p class="missing">{_e(name)}: not measured: {_e(reason)}</p>')


def _y_axis(ticks, y, left, right, label, height):
    out = []
    for tick in ticks:
        out.append(f'<line class="grid" x1="{left}" x2="{right}" y1="{_c(y(tick))}" y2="{_c(y(tick))}"/>')
        out.append(f'<text x="{left - 6}" y="{_c(y(tick) + 4)}" text-anchor="end">{_e(format_number(tick))}</text>')
    middle = (_TOP + height - _BOTTOM) / 2
    out.append(f'<text x="14" y="{_c(middle)}" text-anchor="middle" transform="rotate(-90 14 {_c(middle)})">{_e(label)}</text>')
    return out


def queue_depth_chart(queue_depth, reason="no queue depth series"):
    """The <figure> of the queue depth over time: a step line, axes in UTC clock time and jobs, the peak marked."""
    name = "Queue depth over time"
    series = []
    for entry in _get(queue_depth, "series") or []:
        moment = parse_time(entry[0]) if isinstance(entry, (list, tuple)) and len(entry) == 2 else None
        depth = as_number(entry[1]) if moment else None
        if depth is not None:
            series.append((moment.timestamp(), depth))
    if not series:
        return _not_measured_figure("chart-queue-depth", name, reason)
    start, end = series[0][0], series[-1][0]
    if end - start < 60:
        end = start + 60
    peak = max(depth for _, depth in series)
    ticks = count_ticks(peak)
    x = linear_scale(start, end, _LEFT, _W - _RIGHT)
    y = linear_scale(0, ticks[-1], _H - _BOTTOM, _TOP)
    out = [_svg_open(f"{name}: peak of {format_number(peak)} jobs waiting", _W, _H)]
    out += _y_axis(ticks, y, _LEFT, _W - _RIGHT, "Jobs waiting", _H)
    base = _H - _BOTTOM
    out.append(f'<line class="axis" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{base}" y2="{base}"/>')
    for tick in time_ticks(start, end):
        label = datetime.fromtimestamp(tick, timezone.utc).strftime("%H:%M")
        out.append(f'<line class="axis" x1="{_c(x(tick))}" x2="{_c(x(tick))}" y1="{base}" y2="{base + 4}"/>')
        out.append(f'<text x="{_c(x(tick))}" y="{base + 16}" text-anchor="middle">{label}</text>')
    out.append(f'<text x="{_c((_LEFT + _W - _RIGHT) / 2)}" y="{_H - 8}" text-anchor="middle">Time (UTC)</text>')
    points = " ".join(f"{_c(x(when))},{_c(y(depth))}" for when, depth in step_points(series))
    out.append(f'<polyline class="line" points="{points}"/>')
    peak_at = parse_time(_get(queue_depth, "peak_at"))
    when = next((w for w, d in series if d == peak and (peak_at is None or w >= peak_at.timestamp() - 1e-6)), None)
    when = when if when is not None else next(w for w, d in series if d == peak)
    px, py = x(when), y(peak)
    clock = datetime.fromtimestamp(when, timezone.utc).strftime("%H:%M")
    anchor = "end" if px > _W * 0.75 else "start"
    dx = -8 if anchor == "end" else 8
    out.append(f'<circle class="peak" cx="{_c(px)}" cy="{_c(py)}" r="4"/>')
    out.append(
        f'<text class="peak-label" x="{_c(px + dx)}" y="{_c(max(py - 6, 12))}" text-anchor="{anchor}">'
        f"peak {_e(format_number(peak))} at {clock}</text>"
    )
    out.append("</svg>")
    caption = f"{_e(name)} (UTC), {len(series)} changes; peak {_e(format_number(peak))} jobs at {clock} UTC."
    return _figure("chart-queue-depth", caption, "".join(out))


def jobs_per_participant_chart(per_participant, reason="no jobs per participant"):
    """The <figure> of jobs per participant: one horizontal bar each, most jobs first (dropouts show 0)."""
    name = "Jobs per participant"
    rows = [(user, as_number(n) or 0) for user, n in ranked_pairs(per_participant)]
    if not rows:
        return _not_measured_figure("chart-jobs-per-participant", name, reason)
    rows.sort(key=lambda row: (-row[1], str(row[0])))
    shown, hidden = rows[:MAX_BARS], len(rows) - MAX_BARS
    row_height, left, top = 18, 130, 28
    height = top + row_height * len(shown) + 36
    ticks = count_ticks(max(n for _, n in shown))
    x = linear_scale(0, ticks[-1], left, _W - _RIGHT - 24)
    out = [_svg_open(f"{name}: {len(rows)} participants, up to {format_number(shown[0][1])} jobs each", _W, height)]
    bottom = top + row_height * len(shown)
    for tick in ticks:
        out.append(f'<line class="grid" x1="{_c(x(tick))}" x2="{_c(x(tick))}" y1="{top}" y2="{bottom}"/>')
        out.append(f'<text x="{_c(x(tick))}" y="{top - 8}" text-anchor="middle">{_e(format_number(tick))}</text>')
    for i, (user, n) in enumerate(shown):
        y = top + i * row_height
        label = one_line(user, 18)
        out.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{_e(label)}</text>')
        out.append(f'<rect class="bar" x="{left}" y="{y + 3}" width="{_c(x(n) - left)}" height="{row_height - 6}"/>')
        out.append(f'<text x="{_c(x(n) + 4)}" y="{y + 13}">{_e(format_number(n))}</text>')
    out.append(f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{bottom}"/>')
    out.append(f'<text x="{_c((left + _W - _RIGHT) / 2)}" y="{height - 10}" text-anchor="middle">Jobs submitted</text>')
    out.append("</svg>")
    caption = f"{_e(name)}, most first" + (f"; {hidden} more not shown" if hidden > 0 else "") + "."
    return _figure("chart-jobs-per-participant", caption, "".join(out))


def duration_histogram_chart(durations, reason="per-job durations were not provided"):
    """The <figure> of the job duration histogram (seconds), bins from histogram_bins."""
    name = "Job duration histogram"
    bins = histogram_bins(durations or [])
    if not bins:
        return _not_measured_figure("chart-duration-histogram", name, reason)
    ticks = count_ticks(max(n for _, _, n in bins))
    x = linear_scale(bins[0][0], bins[-1][1], _LEFT, _W - _RIGHT)
    y = linear_scale(0, ticks[-1], _H - _BOTTOM, _TOP)
    base = _H - _BOTTOM
    out = [_svg_open(f"{name}: {sum(n for _, _, n in bins)} completed jobs in {len(bins)} bins", _W, _H)]
    out += _y_axis(ticks, y, _LEFT, _W - _RIGHT, "Jobs", _H)
    for low, high, n in bins:
        width = x(high) - x(low)
        out.append(
            f'<rect class="bar" x="{_c(x(low) + 1)}" y="{_c(y(n))}" width="{_c(max(width - 2, 1))}" height="{_c(base - y(n))}">'
            f"<title>{_e(format_number(low))}-{_e(format_number(high))} s: {n} jobs</title></rect>"
        )
    every = max(1, math.ceil(len(bins) / 12))
    for i, edge in enumerate([bins[0][0]] + [high for _, high, _ in bins]):
        if i % every == 0 or i == len(bins):
            out.append(f'<text x="{_c(x(edge))}" y="{base + 16}" text-anchor="middle">{_e(format_number(edge))}</text>')
    out.append(f'<line class="axis" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{base}" y2="{base}"/>')
    out.append(f'<text x="{_c((_LEFT + _W - _RIGHT) / 2)}" y="{_H - 8}" text-anchor="middle">Job duration (seconds)</text>')
    out.append("</svg>")
    width = bins[0][1] - bins[0][0]
    return _figure("chart-duration-histogram", f"{_e(name)}, bins of {_e(format_number(width))} seconds.", "".join(out))


def render_html(metrics, logs, gpu, gpu_reason, network, network_reason, record, context, durations=None):
    """The report as one self-contained HTML page: the same content as the Markdown plus three inline SVG
    charts (queue depth, jobs per participant, and a histogram of `durations`, per-job seconds, when given)."""
    title, header, sections, footer = build_report(metrics, logs, gpu, gpu_reason, network, network_reason, record, context)
    no_metrics = "no job metrics were collected"
    charts = {
        "Participants": jobs_per_participant_chart(
            _get(metrics, "participants", "jobs_per_participant"), no_metrics if metrics is None else "no jobs per participant"
        ),
        "System Performance Metrics": duration_histogram_chart(durations),
        "Timing Analysis": queue_depth_chart(
            _get(metrics, "queue_depth"), no_metrics if metrics is None else "no queue depth series"
        ),
    }
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        # Nothing may be fetched or run, whatever the inputs hold.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
        f"<h1>{_e(title)}</h1>",
    ]
    if header:
        out.append(f'<p class="meta">{_html_runs(header)}</p>')
    for heading, lines, numbered in sections:
        tag = "ol" if numbered else "ul"
        slug = heading.lower().replace(" ", "-")
        out.append(f'<section id="{slug}"><h2>{_e(heading)}</h2><{tag}>')
        for label, runs in lines:
            prefix = f'<span class="label">{_e(label)}:</span> ' if label else ""
            out.append(f"<li>{prefix}{_html_runs(runs)}</li>")
        out.append(f"</{tag}>")
        if heading in charts:
            out.append(charts[heading])
        out.append("</section>")
    out.append("</main>")
    out.append("<footer>")
    for label, runs in footer:
        out.append(f"<p><strong>{_e(label)}:</strong> {_html_runs(runs)}</p>")
    out += ["</footer>", "</body>", "</html>", ""]
    return "\n".join(out)


# --- the files ------------------------------------------------------------------------------------------

# Stands for the generation time while rendering: plain letters, so neither rendering escapes it.
STAMP = "QQREPORTGENERATEDATQQ"
REPORT_FILES = ("report.md", "report.html")


def _stamp_in(template, current):
    """The generation time `current` shows where `template` has STAMP, when everything else is equal; else None."""
    if current is None:
        return None
    if STAMP not in template:
        return "" if current == template else None
    pattern = re.escape(template).replace(re.escape(STAMP), r"([^\n<>]{1,64}?)")
    match = re.fullmatch(pattern, current, re.S)
    if match is None or len(set(match.groups())) != 1:
        return None
    return match.group(1)


def _read_text(path):
    try:
        with open(path, encoding="utf-8") as current:
            return current.read()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    except OSError as exc:
        raise WorkshopError(f"Cannot read the report {path}: {exc.strerror}", path=path) from None


def write_report(dest, inputs, now, check_mode=False):
    """Render the report (render_markdown's keyword `inputs`) into `dest`/report.md and report.html.

    The generation time is `now` (the time of writing, as a datetime, ISO text or epoch), unless the
    context gives one. A report whose content is unchanged but for that time is left alone (keeping
    the time it was written), so a second run on the same data changes nothing; when any part
    changed, both files are written with the new time. In check mode nothing is written.

    Returns (changed, {file name: text as written or as it would be}, generation time shown).
    """
    context = dict(inputs.get("context") or {})
    stamp = format_stamp(context.get("generated_at") or now)
    rendering = {**inputs, "context": {**context, "generated_at": STAMP}}
    templates = dict(zip(REPORT_FILES, (render_markdown(**rendering), render_html(**rendering))))
    paths = {name: os.path.join(dest, name) for name in REPORT_FILES}
    found = {_stamp_in(templates[name], _read_text(paths[name])) for name in REPORT_FILES}
    if not context.get("generated_at") and len(found) == 1 and None not in found:
        stamp = found.pop()  # unchanged: keep the time it was written
    texts = {name: template.replace(STAMP, stamp) for name, template in templates.items()}
    changed = [write_if_changed(paths[name], texts[name].encode(), 0o640, check_mode) for name in REPORT_FILES]
    return any(changed), texts, stamp
