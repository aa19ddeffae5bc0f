"""The yearly roll-up (the checklist's "Archive Strategy / Long Term: aggregate yearly reports"): one
report across every workshop of a year, from the metrics.json each workshop's report phase kept.

collect_entries (on each workshop host) reads <backup_root>/*/report/metrics.json and the run record
beside it; build_rollup sums them; render_markdown / render_html write the roll-up (the HTML with an
inline SVG chart, nothing fetched).
"""

import glob
import json
import os

from ansible.module_utils.workshop_report_charts import _e, bar_chart
from ansible.module_utils.workshop_report_markdown import md_escape
from ansible.module_utils.workshop_report_text import _get, as_number, count_of, format_number, format_percent
from ansible.module_utils.workshop_time import parse_time

METRICS = os.path.join("report", "metrics.json")
RECORD = "run-record.json"
ROLLUP_FILES = ("rollup-{year}.md", "rollup-{year}.html")


def _read_json(path):
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def workshop_day(metrics, record):
    """(day "YYYY-MM-DD", where it came from) of a workshop: the drain's final time (run record, else the
    metrics' own drain), else the first job the metrics saw; (None, None) when none is known."""
    for source, value in (
        ("drain final time", _get(record, "drain", "final_time")),
        ("drain final time", _get(metrics, "drain", "final_time")),
        ("first job", _get(metrics, "timeline", "first_job_at")),
    ):
        moment = parse_time(value)
        if moment is not None:
            return moment.strftime("%Y-%m-%d"), source
    return None, None


def gpu_hours(metrics):
    """Hours the GPU spent on completed jobs (the sum of their run times); None when not known."""
    seconds = _get(metrics, "duration_seconds")
    if isinstance(seconds, list) and seconds:
        return round(sum(as_number(s) or 0 for s in seconds) / 3600, 3)
    mean, count = as_number(_get(metrics, "durations", "mean")), as_number(_get(metrics, "durations", "count"))
    if mean is not None and count is not None:
        return round(mean * count / 3600, 3)
    return None


def workshop_entry(workshop_id, metrics, record, host=None):
    """One row of the roll-up."""
    day, source = workshop_day(metrics, record)
    jobs = _get(metrics, "jobs") or {}
    return {
        "workshop_id": workshop_id,
        "host": host,
        "date": day,
        "dated_by": source,
        "participants": count_of(_get(metrics, "participants", "attended")),
        "registered": count_of(_get(metrics, "participants", "registered")),
        "jobs": as_number(jobs.get("submitted")),
        "completed": as_number(jobs.get("completed")),
        "failed": as_number(jobs.get("failed")),
        "success_rate": as_number(jobs.get("success_rate")),
        "peak_queue": as_number(_get(metrics, "queue_depth", "peak")),
        "gpu_hours": gpu_hours(metrics),
    }


def collect_entries(backup_root, year, host=None):
    """(entries of `year`, [(workshop, why left out)]) of every <backup_root>/<workshop>/report/metrics.json."""
    entries, left_out = [], []
    for path in sorted(glob.glob(os.path.join(glob.escape(backup_root), "*", METRICS))):
        folder = os.path.dirname(os.path.dirname(path))
        workshop_id = os.path.basename(folder)
        try:
            metrics = _read_json(path)
        except (OSError, ValueError) as exc:
            left_out.append({"workshop_id": workshop_id, "host": host, "reason": f"{path} is unreadable ({exc})"})
            continue
        try:
            record = _read_json(os.path.join(folder, RECORD))
        except (OSError, ValueError):
            record = {}
        entry = workshop_entry(workshop_id, metrics if isinstance(metrics, dict) else {}, record, host)
        if entry["date"] is None:
            left_out.append({"workshop_id": workshop_id, "host": host, "reason": "no date: no drain final time, no job"})
        elif not entry["date"].startswith(f"{int(year):04d}-"):
            left_out.append({"workshop_id": workshop_id, "host": host, "reason": f"of {entry['date'][:4]}"})
        else:
            entries.append(entry)
    # Workshops the phases recorded whose report never ran: named, so none is missed silently.
    for path in sorted(glob.glob(os.path.join(glob.escape(backup_root), "*", RECORD))):
        folder = os.path.dirname(path)
        if not os.path.exists(os.path.join(folder, METRICS)):
            reason = f"no {METRICS} (run the report phase for it: --tags report -e workshop_id=...)"
            left_out.append({"workshop_id": os.path.basename(folder), "host": host, "reason": reason})
    return entries, left_out


def _sum(entries, key):
    values = [entry[key] for entry in entries if entry.get(key) is not None]
    return sum(values) if values else None


def build_rollup(entries, year):
    """The roll-up: workshops in date order, and the year's totals."""
    rows = sorted(entries, key=lambda e: (str(e.get("date")), str(e.get("workshop_id")), str(e.get("host"))))
    completed, failed = _sum(rows, "completed"), _sum(rows, "failed")
    finished = (completed or 0) + (failed or 0)
    peaks = [entry["peak_queue"] for entry in rows if entry.get("peak_queue") is not None]
    known_gpu = [entry for entry in rows if entry.get("gpu_hours") is not None]
    totals = {
        "workshops": len(rows),
        "participants": _sum(rows, "participants"),
        "jobs": _sum(rows, "jobs"),
        "completed": completed,
        "failed": failed,
        "success_rate": round(100.0 * completed / finished, 1) if finished else None,
        "peak_queue": max(peaks) if peaks else None,
        "gpu_hours": round(sum(entry["gpu_hours"] for entry in known_gpu), 3) if known_gpu else None,
        "gpu_hours_of": len(known_gpu),
    }
    return {"year": int(year), "workshops": rows, "totals": totals}


COLUMNS = (
    ("Date", "date", str),
    ("Workshop", "workshop_id", str),
    ("Host", "host", str),
    ("Participants", "participants", format_number),
    ("Jobs", "jobs", format_number),
    ("Completed", "completed", format_number),
    ("Failed", "failed", format_number),
    ("Success rate", "success_rate", format_percent),
    ("Peak queue", "peak_queue", format_number),
    ("GPU hours", "gpu_hours", lambda h: f"{as_number(h):.2f}"),
)


def _cell(row, key, render):
    value = row.get(key)
    if value == "":
        return ""
    return "n/a" if value is None else render(value)


def _rows(rollup):
    table = [[_cell(row, key, render) for _label, key, render in COLUMNS] for row in rollup["workshops"]]
    totals = dict(rollup["totals"], date=f"{rollup['year']}", workshop_id=f"{rollup['totals']['workshops']} workshops", host="")
    table.append([_cell(totals, key, render) for _label, key, render in COLUMNS])
    return table


def _summary(rollup):
    t = rollup["totals"]
    if not t["workshops"]:
        return f"No workshop of {rollup['year']} was found in the archive."
    gpu = "" if t["gpu_hours"] is None else f", {t['gpu_hours']:.2f} GPU hours (of {t['gpu_hours_of']} workshops)"
    rate = "" if t["success_rate"] is None else f", {format_percent(t['success_rate'])} of the finished jobs succeeded"
    return (
        f"{t['workshops']} workshops in {rollup['year']}: {format_number(t['participants'] or 0)} participants, "
        f"{format_number(t['jobs'] or 0)} jobs{rate}, peak queue {format_number(t['peak_queue'] or 0)}{gpu}."
    )


def _left_out_lines(left_out):
    return [
        f"{entry['workshop_id']}{' on ' + entry['host'] if entry.get('host') else ''}: {entry['reason']}" for entry in left_out
    ]


def render_markdown(rollup, left_out=(), generated_at=""):
    out = [f"# Workshops of {rollup['year']}: yearly roll-up", ""]
    out += [md_escape(_summary(rollup)) + (f" Generated {md_escape(generated_at)}." if generated_at else ""), ""]
    out += ["## Workshops", ""]
    out.append("| " + " | ".join(label for label, _key, _render in COLUMNS) + " |")
    out.append("|" + "|".join("---" if i < 3 else "--:" for i in range(len(COLUMNS))) + "|")
    table = _rows(rollup)
    for i, cells in enumerate(table):
        cells = [md_escape(cell) for cell in cells]
        if i == len(table) - 1:
            cells = [f"**{cell}**" if cell else cell for cell in cells]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "Success rate: completed of completed + failed. GPU hours: the sum of the completed jobs' run times.", ""]
    if left_out:
        out += ["## Not in this roll-up", ""] + [f"- {md_escape(line)}" for line in _left_out_lines(left_out)] + [""]
    return "\n".join(out)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 60rem; margin: 2rem auto;
  padding: 0 1rem; color: #1d2433; line-height: 1.5; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #e5e7eb; padding: .3rem .5rem; text-align: right; }
th:nth-child(-n+3), td:nth-child(-n+3) { text-align: left; }
tr.total td { font-weight: 700; border-top: 2px solid #1d2433; }
figure { margin: 1rem 0; }
figcaption { font-size: .9em; color: #4b5563; }
svg { max-width: 100%; height: auto; font-family: inherit; font-size: 11px; }
svg .axis { stroke: #6b7280; stroke-width: 1; }
svg .grid { stroke: #e5e7eb; stroke-width: 1; }
svg .bar { fill: #2563eb; }
svg text { fill: #374151; }
"""


def render_html(rollup, left_out=(), generated_at=""):
    title = f"Workshops of {rollup['year']}: yearly roll-up"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{_e(title)}</h1>",
        f"<p>{_e(_summary(rollup))}{_e(f' Generated {generated_at}.') if generated_at else ''}</p>",
        "<h2>Workshops</h2>",
        "<table>",
        "<tr>" + "".join(f"<th>{_e(label)}</th>" for label, _key, _render in COLUMNS) + "</tr>",
    ]
    table = _rows(rollup)
    for i, cells in enumerate(table):
        css = ' class="total"' if i == len(table) - 1 else ""
        out.append(f"<tr{css}>" + "".join(f"<td>{_e(cell)}</td>" for cell in cells) + "</tr>")
    out.append("</table>")
    rows = [(f"{row['date']} {row['workshop_id']}", row["jobs"] or 0) for row in rollup["workshops"]]
    out.append(
        bar_chart(
            "chart-jobs-per-workshop", "Jobs per workshop", rows, "workshops", "Jobs submitted", "no workshop", "in date order"
        )
    )
    out.append("<p>Success rate: completed of completed + failed. GPU hours: the sum of the completed jobs' run times.</p>")
    if left_out:
        out.append("<h2>Not in this roll-up</h2><ul>")
        out += [f"<li>{_e(line)}</li>" for line in _left_out_lines(left_out)]
        out.append("</ul>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def rollup_files(dest, year):
    return [os.path.join(dest, name.format(year=int(year))) for name in ROLLUP_FILES]
