"""The workshop report's content: the checklist's "Create Workshop Report" template as a document model.

build_report turns the inputs (metrics, logs, GPU facts, network probe, run record, context) into
sections of labelled lines, each line a list of runs: our own text, Code (text from the inputs,
shown verbatim), Prompt (a blank only a person can fill in) or Missing (why a figure was not
measured). The Markdown and HTML renderings (workshop_report_markdown, workshop_report_html) both
write this one model, so they always say the same.
"""

import math

from ansible.module_utils.workshop_loganalysis import CATEGORIES
from ansible.module_utils.workshop_time import parse_time

# Log categories the job figures already say: listed as issues only when there are no job metrics.
JOB_LOG_CATEGORIES = ("job_failures",)
# The log analysis's one table of categories, in its order, less those.
LOG_CATEGORIES = tuple(category for category in CATEGORIES if category not in JOB_LOG_CATEGORIES)
TOP_ISSUES = 10
TOP_LIST = 5
INVALID_SHOWN = 5
SAMPLE_CHARS = 300


class Code(str):
    """Text from the inputs (names, errors, log lines): shown verbatim, never as markup."""


class Prompt(str):
    """A blank only a person can fill in."""


class Missing(str):
    """Why a figure was not measured."""


class Status(str):
    """The footer's status, as the verification checklist gives it: the renderings mark it, so the
    checklist phase can replace it (and the checklist's table) in a report already written."""


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
        # The checklist's template calls it the completion rate: registered participants who submitted a job.
        _field(
            "Completion rate", _get(people, "attendance_rate"), format_percent, why if people is None else "nobody registered"
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
        if as_number(durations.get("backwards")):
            runs.append(f"; {plural(durations['backwards'], 'job')} left out: completed before started, by their records")
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
    unknown = _get(jobs, "other_statuses")
    others += sorted(unknown.items()) if isinstance(unknown, dict) else []
    if any(n for _dummy, n in others):
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
    sample = next((samples[0] for _dummy, _dummy, samples in counts if samples), None)
    return ", ".join(f"{service} {n}" for n, service, _dummy in counts), sample


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
    categories = [*LOG_CATEGORIES, *sorted(set(totals) - set(CATEGORIES))]
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
    lines = [(None, [*runs, ". Resolution: ", Prompt("resolution")]) for _dummy, (_dummy, runs) in ranked[:TOP_ISSUES]]
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
        if drain.get("reopened_at") and drain.get("drained") is False:
            runs.append(f"; submissions reopened {format_stamp(drain['reopened_at'])}, not drained since")
        lines.append(("Queue drained", runs))
    if drain and drain.get("stuck_jobs"):
        lines.append(("Stuck jobs at the end of the drain", [format_number(count_of(drain["stuck_jobs"]))]))
    lines.append((None, [Prompt("any additional context, decisions, or notable observations")]))
    return ("Notes", lines, False)


def build_report(metrics, logs, gpu, gpu_reason, network, network_reason, record, context, status=None):
    """(title, header runs, sections, footer lines): the document both renderings write. `status` is
    the verification checklist's status text (workshop_checklist.status_text); the renderings
    put the checklist's table before the footer."""
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
    footer = [
        (
            "Report completed",
            [f"{format_stamp(context['generated_at'])} (generated)"] if context.get("generated_at") else [Prompt("date")],
        ),
        ("Completed by", [Prompt("admin name")]),
        ("Status", [Status(status)] if status else [Prompt("READY FOR STORAGE / NEEDS FOLLOW-UP")]),
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
