"""The report as one self-contained HTML page: the document model of workshop_report_text plus the
charts of workshop_report_charts; inline CSS and SVG, no script, nothing fetched, every text from the
inputs escaped (error messages and log lines are untrusted)."""

from ansible.module_utils.workshop_checklist import build_checklist, status_text
from ansible.module_utils.workshop_report_charts import (
    _e,
    duration_histogram_chart,
    jobs_per_participant_chart,
    queue_depth_chart,
)
from ansible.module_utils.workshop_report_markdown import marked
from ansible.module_utils.workshop_report_text import Code, Missing, Prompt, Status, _get, build_report, one_line

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
table.checklist { border-collapse: collapse; width: 100%; }
table.checklist th, table.checklist td { border-bottom: 1px solid #e5e7eb; padding: .3rem .5rem; text-align: left;
  vertical-align: top; }
table.checklist td.mark { font-weight: 700; text-align: center; }
.ok { color: #15803d; }
.not { color: #b91c1c; }
footer { margin-top: 2rem; border-top: 1px solid #c9ced8; }
@media print { body { margin: 0; max-width: none; } figure { break-inside: avoid; } }
"""


def _html_runs(runs):
    parts = []
    for run in runs:
        if isinstance(run, Code):
            parts.append(f"<code>{_e(one_line(run))}</code>")
        elif isinstance(run, Prompt):
            parts.append(f'<em class="prompt">(to fill in: {_e(run)})</em>')
        elif isinstance(run, Missing):
            parts.append(f'<span class="missing">not measured: {_e(run)}</span>')
        elif isinstance(run, Status):
            parts.append(marked("status", _e(run)))
        else:
            parts.append(_e(run))
    return "".join(parts)


def checklist_html(checklist):
    """The verification checklist as an HTML table (between its markers: the part the checklist phase rewrites)."""
    rows = ['<table class="checklist">', "<tr><th></th><th>Item</th><th>Evidence, or why not and what to do</th></tr>"]
    for line in checklist["lines"]:
        mark, css = ("✓", "ok") if line["ok"] else ("✗", "not")
        text = one_line(line.get("evidence") or line.get("reason"), 1000)
        rows.append(f'<tr class="{css}"><td class="mark">{mark}</td><td>{_e(line["item"])}</td><td>{_e(text)}</td></tr>')
    rows.append("</table>")
    return "\n".join(rows)


def html_fragments(checklist):
    """{marker: text between it} of the report's checklist parts."""
    return {"checklist": checklist_html(checklist), "status": _e(status_text(checklist))}


def render_html(metrics, logs, gpu, gpu_reason, network, network_reason, record, context, durations=None, checklist=None):
    """The report as one self-contained HTML page: the same content as the Markdown plus three inline SVG
    charts (queue depth, jobs per participant, and a histogram of `durations`, per-job seconds, when given),
    and the verification checklist's table (`checklist`, default from the record alone)."""
    checklist = checklist or build_checklist(record, {})
    title, header, sections, footer = build_report(
        metrics, logs, gpu, gpu_reason, network, network_reason, record, context, status=status_text(checklist)
    )
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
    out.append('<section id="verification-checklist"><h2>Verification Checklist</h2>')
    out.append(marked("checklist", checklist_html(checklist)))
    out.append("</section>")
    out.append("</main>")
    out.append("<footer>")
    for label, runs in footer:
        out.append(f"<p><strong>{_e(label)}:</strong> {_html_runs(runs)}</p>")
    out += ["</footer>", "</body>", "</html>", ""]
    return "\n".join(out)
