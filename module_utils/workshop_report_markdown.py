"""The report as Markdown: the document model of workshop_report_text, with untrusted text in code spans."""

from ansible.module_utils.workshop_report_text import Code, Missing, Prompt, build_report, one_line

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
