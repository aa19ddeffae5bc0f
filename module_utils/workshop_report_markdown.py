"""The report as Markdown: the document model of workshop_report_text, with untrusted text in code spans."""

from ansible.module_utils.workshop_checklist import build_checklist, status_text
from ansible.module_utils.workshop_report_text import Code, Missing, Prompt, Status, build_report, one_line

_MD_SPECIAL = "\\`*_[]<>#|"


def md_code(text):
    """A code span holding `text` verbatim, whatever backticks it contains; an HTML comment's opening in it
    gets a zero-width space ("<!\u200b--"), so that no job's error can pass for the checklist's markers,
    which the checklist phase finds the report's parts by (a code span cannot escape it otherwise)."""
    text = one_line(text).replace("<!--", "<!\u200b--")
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
        elif isinstance(run, Status):
            parts.append(marked("status", md_escape(run)))
        else:
            parts.append(md_escape(run))
    return "".join(parts)


def marked(name, inner):
    """`inner` between the markers the checklist phase finds it by (HTML comments: invisible in both renderings)."""
    return f"<!-- {name}:begin -->{inner}<!-- {name}:end -->"


def checklist_markdown(checklist):
    """The verification checklist as a Markdown table (between its markers: the part the checklist phase rewrites)."""
    rows = ["", "| | Item | Evidence, or why not and what to do |", "|:-:|---|---|"]
    for line in checklist["lines"]:
        text = one_line(line.get("evidence") or line.get("reason"), 1000)
        rows.append(f"| {'✓' if line['ok'] else '✗'} | {md_escape(line['item'])} | {md_escape(text)} |")
    return "\n".join(rows) + "\n"


def markdown_fragments(checklist):
    """{marker: text between it} of the report's checklist parts."""
    return {"checklist": checklist_markdown(checklist), "status": md_escape(status_text(checklist))}


def render_markdown(metrics, logs, gpu, gpu_reason, network, network_reason, record, context, durations=None, checklist=None):
    """The report as Markdown, the checklist's template filled in. `durations` (per-job seconds) is
    drawn only in the HTML; it is accepted here so both renderings take the same inputs. `checklist`
    (workshop_checklist.build_checklist) gives the Verification Checklist and the status; default: from
    the record alone."""
    del durations
    checklist = checklist or build_checklist(record, {})
    title, header, sections, footer = build_report(
        metrics, logs, gpu, gpu_reason, network, network_reason, record, context, status=status_text(checklist)
    )
    out = [f"# {title}", ""]
    if header:
        out += [_md_runs(header), ""]
    for heading, lines, numbered in sections:
        out.append(f"## {heading}")
        for i, (label, runs) in enumerate(lines, 1):
            bullet = f"{i}." if numbered else "-"
            out.append(f"{bullet} {label}: {_md_runs(runs)}" if label else f"{bullet} {_md_runs(runs)}")
        out.append("")
    out += ["## Verification Checklist", marked("checklist", checklist_markdown(checklist)), ""]
    out += ["---", ""]
    for label, runs in footer:
        out += [f"**{label}:** {_md_runs(runs)}", ""]
    return "\n".join(out)
