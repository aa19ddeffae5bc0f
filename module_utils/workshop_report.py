"""The workshop report: the checklist's "Create Workshop Report" template, filled in, as Markdown and HTML.

Split along its seams: workshop_report_text (the figures as text and the document model, one for
both renderings, so they always say the same), workshop_report_markdown, workshop_report_html (a
self-contained page: inline CSS and SVG, no script, nothing fetched, untrusted text escaped) and
workshop_report_charts (the SVG charts). This module writes the two files.

A figure whose input is missing reads `not measured: <reason>`, never a bare placeholder; what only
a person can know is left as a marked prompt `_(to fill in: ...)_`.
"""

import os
import re

from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import write_if_changed
from ansible.module_utils.workshop_report_html import html_fragments, render_html
from ansible.module_utils.workshop_report_markdown import markdown_fragments, render_markdown
from ansible.module_utils.workshop_report_text import format_stamp

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


def _splice(text, name, inner):
    """`text` with what stands between the `name` markers replaced by `inner`; None when the markers are not there."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    start = text.find(begin)
    stop = text.find(end, start + len(begin)) if start >= 0 else -1
    if start < 0 or stop < 0:
        return None
    return text[: start + len(begin)] + inner + text[stop:]


def update_checklist(dest, checklist, check_mode=False):
    """Put `checklist` (its table and the status) into the report already written in `dest`.

    Only the marked parts change, so the report stays what the report phase would write with this
    checklist (a report run afterwards changes nothing). Returns (changed, [files updated or that
    would be], [files not updated: missing, or written before the report had a checklist]).
    """
    updated, skipped = [], []
    for name, fragments in (("report.md", markdown_fragments(checklist)), ("report.html", html_fragments(checklist))):
        path = os.path.join(dest, name)
        text = _read_text(path)
        new = text
        for marker, inner in fragments.items():
            new = _splice(new, marker, inner) if new is not None else None
        if new is None:
            skipped.append(path)
        elif write_if_changed(path, new.encode(), 0o640, check_mode):
            updated.append(path)
    return bool(updated), updated, skipped
