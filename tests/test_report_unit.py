"""The workshop report rendered from fixed inputs: the checklist's template filled in, and a safe HTML page."""

import copy
import json
import re
from datetime import datetime, timezone
from html.parser import HTMLParser
from itertools import pairwise
from pathlib import Path

import pytest
from ansible.module_utils.workshop_report import render_html, render_markdown
from ansible.module_utils.workshop_report_charts import (
    count_ticks,
    histogram_bins,
    linear_scale,
    nice_step,
    step_points,
    time_ticks,
)
from ansible.module_utils.workshop_report_text import format_duration, format_percent

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "report_inputs.json"
SECTIONS = [
    "Participants",
    "System Performance Metrics",
    "Timing Analysis",
    "GPU Performance",
    "Network Performance",
    "Issues Encountered",
    "Successful Workflows",
    "Participant Feedback",
    "System Stability Log",
    "Recommendations for Next Time",
    "Files Generated",
    "Notes",
    "Verification Checklist",
]
FIGURES = ["chart-queue-depth", "chart-jobs-per-participant", "chart-duration-histogram"]
VOID = {"meta", "br", "hr", "img", "input", "link", "area", "base", "col", "embed", "source", "track", "wbr"}
SVG_LEAVES = {"line", "polyline", "circle", "rect", "path"}
INJECTED = "<script>alert('x')</script>"


@pytest.fixture
def inputs():
    return json.loads(FIXTURE.read_text())


def headings(markdown):
    return re.findall(r"^## (.+)$", markdown, re.M)


class StrictTree(HTMLParser):
    """Collects tags and attributes, and fails on any end tag that does not close the innermost open one."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.tags, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs), list(self.stack)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs), list(self.stack)))

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:] or 'nothing'}"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append((data, list(self.stack)))


def parse(page):
    tree = StrictTree()
    tree.feed(page)
    tree.close()
    assert tree.stack == [], f"unclosed: {tree.stack}"
    return tree


def figure(page, figure_id):
    match = re.search(rf'<figure id="{figure_id}">(.*?)</figure>', page, re.S)
    assert match, f"no figure {figure_id}"
    return match.group(1)


# --- Markdown ----------------------------------------------------------------------------------------


def test_markdown_has_every_section_in_order_and_no_placeholder(inputs):
    markdown = render_markdown(**inputs)
    assert markdown.startswith("# Workshop Report - 2026-01-15\n")
    assert headings(markdown) == SECTIONS
    assert "[X]" not in markdown and "[Yes/No]" not in markdown and "[Count]" not in markdown
    assert "not measured" not in markdown  # every input of the full sample is there
    assert "**Report completed:** 2026-01-15 17:05 UTC" in markdown
    assert "**Completed by:** _(to fill in: admin name)_" in markdown


@pytest.mark.parametrize(
    "line",
    [
        "- Total registered: 20",
        "- Attended: 18",
        "- Dropouts: 2 (`user07`, `user16`)",
        "- Completion rate: 90.0%",
        "- Total jobs submitted: 57",
        "- Successfully completed: 53",
        "- Failed: 4",
        "- Success rate: 93.0%",
        "- Average job duration: 47.8 s (median 42.4 s, 95th percentile 82.7 s, over 53 completed jobs)",
        "- Longest job: 3.1 min (job `9f3c2a1e-5b7d-4e1a-9c2f-0d8e7b6a5c41`)",
        "- Workshop duration: 7.3 h",
        "- Peak queue depth: 14 jobs (at 11:46 UTC)",
        "- Time to clear queue: 18.5 min (cut-off 16:30 UTC, queue empty 16:48 UTC)",
        "- Longest wait time: 7.4 min (job `4b1d0c9e-2a3f-4c5d-8e7f-6a5b4c3d2e1f`)",
        "- Hardware: `NVIDIA H100 80GB HBM3, 80 GiB`",
        "- Peak memory usage: 97.3%",
        "- Average memory usage: 61.8%",
        "- Temperature peak: 78°C",
        "- Thermal throttling: No",
        "- Any GPU errors: No (ECC errors: 0, Xid errors: 0)",
        "- Latency VPS ↔ GPU: 12.5ms",
        "- Connection stability: Issues (2 timeouts, 5 connection errors in the logs)",
        "- Connection timeouts: 2",
        "- Bandwidth issues: _(to fill in: None/Minor/Severe)_",
        "- Service restarts: 1 (`worker-1 1`)",
        "- Popular resolutions: `1024x1024` (34 jobs), `768x1344` (12 jobs)",
        "- Most common batch sizes: `1` (41 jobs), `4` (11 jobs), `2` (5 jobs)",
        "- Outputs backup: `/var/backups/comfy-wrapup/ws-2026-01-15/backup-20260115T170212Z/outputs.tar`",
        "- Database snapshot: `/var/backups/comfy-wrapup/ws-2026-01-15/backup-20260115T170212Z/redis/dump.rdb`",
        "- Full backup: `/var/backups/comfy-wrapup/ws-2026-01-15/backup-20260115T170212Z` (11 files), verified",
        "- Announced cut-off: `4:30 PM UTC`",
        "- Job records: 57 read, all counted",
    ],
)
def test_markdown_fields_show_the_inputs(inputs, line):
    assert line in render_markdown(**inputs)


def issues_of(markdown):
    return markdown.split("## Issues Encountered\n")[1].split("\n\n")[0].splitlines()


def issue_names(markdown):
    """(what, count) of each issue line, in the order rendered."""
    found = []
    for line in issues_of(markdown):
        match = re.match(r"\d+\. (?:Failed jobs: `(.+?)` \((\d+) jobs?\)|Log lines about ([\w ]+): (\d+))", line)
        assert match, line
        error, jobs, category, lines = match.groups()
        found.append((error or category, int(jobs or lines)))
    return found


def test_issues_are_sorted_by_frequency_with_a_sample(inputs):
    markdown = render_markdown(**inputs)
    issues = issues_of(markdown)
    # ssl and thermal have no lines: they are left out. Ties: failed jobs first, then by name.
    assert issue_names(markdown) == [
        ("errors", 8),
        ("warnings", 8),
        ("connection", 5),
        ("CUDA out of memory. Tried to allocate 2.50 GiB", 2),
        ("Value not in list: ckpt_name: 'sdxl_refiner.safetensors' not in []", 1),
        ("Worker timed out after 600 s", 1),
        ("requeues", 1),
        ("restarts", 1),
    ]
    assert "e.g. `2026-01-15T13:17:52.871000000Z ERROR torch.cuda.OutOfMemoryError" in issues[0]
    assert all(line.endswith("Resolution: _(to fill in: resolution)_") for line in issues)


def test_issues_follow_the_ranking_not_the_alphabet_and_list_each_error_once(inputs):
    """The most common error (8 jobs) sorts last alphabetically: it must still come first, and the
    same error written with other spacing is one issue."""
    inputs["logs"] = None
    inputs["metrics"]["failures"]["by_error"] = [
        {"name": "zz CUDA out of memory", "count": 8},
        {"name": "a one-off", "count": 1},
        {"name": "b one-off", "count": 1},
        {"name": "zz CUDA out of  memory\n", "count": 2},
    ]
    markdown = render_markdown(**inputs)
    assert issue_names(markdown) == [("zz CUDA out of memory", 10), ("a one-off", 1), ("b one-off", 1)]
    text = "".join(data for data, stack in parse(render_html(**inputs)).text if "section" in stack)
    assert text.index("zz CUDA out of memory") < text.index("a one-off") < text.index("b one-off")


def test_a_job_failure_in_the_logs_is_not_listed_again_when_the_jobs_are(inputs):
    inputs["logs"]["totals"]["job_failures"] = 4
    inputs["logs"]["services"]["worker-1"]["job_failures"] = {"count": 4, "samples": ["Job x failed: CUDA out of memory"]}
    assert "job failures" not in render_markdown(**inputs)
    inputs["metrics"] = None
    assert "Log lines about job failures: 4" in render_markdown(**inputs)


def test_without_gpu_the_section_says_why_and_the_report_is_complete(inputs):
    inputs.update(gpu=None, gpu_reason="nvidia-smi not found on gpu-h100-01")
    markdown = render_markdown(**inputs)
    assert headings(markdown) == SECTIONS
    gpu = markdown.split("## GPU Performance\n")[1].split("\n\n")[0].splitlines()
    assert gpu == [
        f"- {field}: not measured: nvidia-smi not found on gpu-h100-01"
        for field in (
            "Hardware",
            "Peak memory usage",
            "Average memory usage",
            "Temperature peak",
            "Thermal throttling",
            "Any GPU errors",
        )
    ]
    assert "- Success rate: 93.0%" in markdown and "[X]" not in markdown


def test_with_nothing_measured_every_field_says_not_measured(inputs):
    markdown = render_markdown(None, None, None, "", None, "no probe configured", {}, {"date": "2026-01-15"})
    assert headings(markdown) == SECTIONS
    assert "- Total jobs submitted: not measured: no job metrics were collected" in markdown
    assert "- Peak queue depth: not measured: no job metrics were collected" in markdown
    assert "- Latency VPS ↔ GPU: not measured: no probe configured" in markdown
    assert "- Service restarts: not measured: Docker's restart counts were not collected" in markdown
    assert "- not measured: no backup was recorded in the run record" in markdown
    assert "[X]" not in markdown


def test_markdown_keeps_backticks_and_markup_of_untrusted_text_inside_code(inputs):
    inputs["metrics"]["failures"]["by_error"] = {"bad `x` **bold** [link](y)\nsecond line": 3}
    markdown = render_markdown(**inputs)
    assert "Failed jobs: ``bad `x` **bold** [link](y) second line`` (3 jobs)." in markdown


def test_an_error_holding_the_checklists_markers_cannot_move_them(inputs, tmp_path):
    """The checklist phase finds the report's checklist and status by their markers: a job's error quoting
    them (in a code span, where Markdown escapes nothing) must not become one."""
    from ansible.module_utils.workshop_checklist import build_checklist
    from ansible.module_utils.workshop_report import update_checklist, write_report

    inputs["metrics"]["failures"]["by_error"] = {"<!-- checklist:begin --> boom <!-- status:begin -->": 2}
    inputs["checklist"] = build_checklist(inputs["record"], {})
    report = tmp_path / "report"
    write_report(str(report), inputs, "2026-01-15T12:00:00Z")
    written = (report / "report.md").read_text()
    assert written.count("<!-- checklist:begin -->") == written.count("<!-- status:begin -->") == 1

    changed, _files, _skipped = update_checklist(str(report), inputs["checklist"])
    assert not changed and (report / "report.md").read_text() == written
    assert headings(written) == SECTIONS and "boom" in written


def test_a_drain_ended_by_a_reopen_says_so(inputs):
    inputs["record"]["drain"].update(drained=False, reopened_at="2026-01-15T17:05:00+00:00")
    line = field(render_markdown(**inputs), "Queue drained")
    assert line.endswith("; submissions reopened 2026-01-15 17:05 UTC, not drained since"), line


def test_files_generated_names_the_files_of_the_record(inputs):
    backup = inputs["record"]["backup"]
    backup["files"] = {"MANIFEST.json": {}, "outputs.tar": {}, "redis/dump.rdb": {}, "logs/worker-1.log.gz": {}}
    backup["files"]["logs/workshop-logs.txt.gz"] = {}
    backup["files"]["config/.env"] = {}
    markdown = render_markdown(**inputs)
    path = backup["path"]
    assert f"- Logs: `{path}/logs/workshop-logs.txt.gz` (and 1 per-service logs)" in markdown
    assert f"- Configuration: `{path}/config/.env`" in markdown
    assert f"- Other files: `{path}/MANIFEST.json`" in markdown
    inputs["record"].pop("backup")
    assert "## Files Generated\n- not measured: no backup was recorded in the run record\n" in render_markdown(**inputs)


# --- HTML --------------------------------------------------------------------------------------------


def test_html_is_well_formed_with_the_sections_and_three_charts(inputs):
    page = render_html(**inputs)
    tree = parse(page)
    assert [data for data, stack in tree.text if stack[-1:] == ["h2"]] == SECTIONS
    for figure_id in FIGURES:
        svg = figure(page, figure_id)
        assert '<svg viewBox="0 0 ' in svg and 'role="img"' in svg and 'aria-label="' in svg
        assert re.search(r"<svg[^>]*><title>[^<]+</title>", svg)
    for tag, attrs, stack in tree.tags:
        if tag == "svg":
            assert stack[-1] == "figure" and attrs["aria-label"]


def test_html_references_nothing_external(inputs):
    page = render_html(**inputs)
    for needle in ("http://", "https://", "src=", "href=", "url(", "@import", "<script", "<link", "<img", "<iframe"):
        assert needle not in page.lower(), needle
    for _, attrs, _ in parse(page).tags:
        assert not {"src", "href", "xlink:href", "action", "data"} & set(attrs), attrs


def test_html_escapes_untrusted_error_and_log_text(inputs):
    inputs["metrics"]["failures"]["by_error"] = {f"node failed: {INJECTED}": 2}
    inputs["logs"]["services"]["worker-1"]["errors"]["samples"] = [f'ERROR "{INJECTED}" <img src=x onerror=alert(1)>']
    inputs["metrics"]["participants"]["jobs_per_participant"] = {'<i onclick="x">': 4}
    page = render_html(**inputs)
    assert "<script" not in page and "<img" not in page and "<i " not in page
    assert "node failed: &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "ERROR &quot;&lt;script&gt;" in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;i onclick=&quot;x&quot;&gt;" in figure(page, "chart-jobs-per-participant")
    parse(page)


def test_queue_depth_polyline_is_a_step_line_through_every_point(inputs):
    series = inputs["metrics"]["queue_depth"]["series"]
    chart = figure(render_html(**inputs), "chart-queue-depth")
    points = re.search(r'<polyline class="line" points="([^"]+)"', chart).group(1).split()
    assert len(points) == 2 * len(series) - 1
    xy = [tuple(map(float, point.split(","))) for point in points]
    assert all(a[0] <= b[0] for a, b in pairwise(xy))  # time only moves forward
    assert min(y for _, y in xy) == pytest.approx(xy[2 * series.index(max(series, key=lambda p: p[1]))][1])
    assert re.search(r'<circle class="peak" cx="[\d.]+" cy="[\d.]+"', chart)
    assert "peak 14 at 11:46" in chart
    assert ">Time (UTC)</text>" in chart and ">Jobs waiting</text>" in chart


def test_jobs_per_participant_has_one_bar_each(inputs):
    chart = figure(render_html(**inputs), "chart-jobs-per-participant")
    bars = re.findall(r'<rect class="bar" x="[\d.]+" y="[\d.]+" width="([\d.]+)"', chart)
    per_user = inputs["metrics"]["participants"]["jobs_per_participant"]
    assert len(bars) == len(per_user) == 20
    assert float(bars[0]) > 0 and float(bars[-1]) == 0  # most first; dropouts last, with 0 jobs


def test_histogram_bars_count_every_duration(inputs):
    chart = figure(render_html(**inputs), "chart-duration-histogram")
    counts = [int(n) for n in re.findall(r"s: (\d+) jobs</title></rect>", chart)]
    assert sum(counts) == len(inputs["durations"]) == 53
    assert counts == [n for _, _, n in histogram_bins(inputs["durations"])]


def test_charts_without_data_say_not_measured(inputs):
    inputs["metrics"]["queue_depth"] = {"series": [], "peak": None, "peak_at": None}
    inputs["durations"] = None
    page = render_html(**inputs)
    parse(page)
    assert "<svg" not in figure(page, "chart-queue-depth") and "not measured: no queue depth series" in page
    assert "Job duration histogram: not measured: per-job durations were not provided" in page
    assert "<svg" in figure(page, "chart-jobs-per-participant")


def test_html_shows_the_same_fields_as_markdown(inputs):
    page = render_html(**inputs)
    assert '<span class="label">Total jobs submitted:</span> 57</li>' in page
    assert '<span class="label">Success rate:</span> 93.0%</li>' in page
    assert '<em class="prompt">(to fill in: admin name)</em>' in page


# --- helpers ------------------------------------------------------------------------------------------


def test_histogram_bins_of_a_known_list():
    bins = histogram_bins([12, 18, 25, 31, 33, 39, 40, 95], width=10)
    assert bins == [
        (10, 20, 2),
        (20, 30, 1),
        (30, 40, 3),
        (40, 50, 1),
        (50, 60, 0),
        (60, 70, 0),
        (70, 80, 0),
        (80, 90, 0),
        (90, 100, 1),
    ]


def test_histogram_bins_choose_a_round_width():
    bins = histogram_bins([3.0, 7.5, 41.0, 88.0])  # span 85 over at most 12 bins: width 10
    assert [(low, high) for low, high, _ in bins][:2] == [(0, 10), (10, 20)]
    assert [n for _, _, n in bins] == [2, 0, 0, 0, 1, 0, 0, 0, 1]
    assert histogram_bins([]) == []
    assert histogram_bins([5, 5, 5]) == [(5, 5.5, 3)]  # one value: one narrow bin


@pytest.mark.parametrize(("raw", "step"), [(0.7, 1), (1, 1), (1.2, 2), (3, 5), (7.08, 10), (14, 20), (0.03, 0.05)])
def test_nice_step(raw, step):
    assert nice_step(raw) == pytest.approx(step)


def test_scales_and_ticks():
    x = linear_scale(0, 10, 100, 200)
    assert (x(0), x(5), x(10)) == (100, 150, 200)
    assert linear_scale(3, 3, 0, 10)(3) == 5
    assert count_ticks(14) == [0, 5, 10, 15]
    assert count_ticks(0) == [0, 1]
    assert time_ticks(600, 3000, max_ticks=4) == [600, 1200, 1800, 2400, 3000]  # 40 min, 4 steps: every 10 minutes
    assert time_ticks(620, 3000)[:2] == [900, 1200]  # up to 8 steps: every 5 minutes, on the clock
    assert step_points([(0, 1), (5, 3), (9, 0)]) == [(0, 1), (5, 1), (5, 3), (9, 3), (9, 0)]


@pytest.mark.parametrize(("value", "text"), [(93, "93.0%"), (92.98, "93.0%"), ("61.84", "61.8%"), (0, "0.0%")])
def test_format_percent(value, text):
    assert format_percent(value) == text


def test_inputs_are_not_modified(inputs):
    before = copy.deepcopy(inputs)
    render_markdown(**inputs)
    render_html(**inputs)
    assert inputs == before


# --- figures through metrics.json, rendered in rank order --------------------------------------------


def afternoon_jobs():
    """Jobs whose every ranking differs from the alphabet: the most used sorts last by name."""

    def one(n, user, status, model, size, batch, error=None):
        workflow = {
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": model}},
            "2": {"class_type": "EmptyLatentImage", "inputs": {"width": size[0], "height": size[1], "batch_size": batch}},
        }
        return {
            "id": f"j{n:02d}",
            "user_id": user,
            "status": status,
            "workflow": workflow,
            "error": error,
            "created_at": f"2026-01-15T10:{n:02d}:00Z",
            "started_at": f"2026-01-15T10:{n:02d}:05Z",
            "completed_at": f"2026-01-15T10:{n:02d}:35Z",
        }

    jobs = [one(n, "zoe", "completed", "zz-popular.safetensors", (1344, 768), 4) for n in range(6)]
    jobs += [one(10 + n, "amy", "completed", "mm-middle.safetensors", (768, 1344), 10) for n in range(3)]
    jobs += [one(20, "bob", "completed", "aa-rare.safetensors", (512, 512), 2)]
    jobs += [one(30 + n, "zoe", "failed", "zz-popular.safetensors", (1344, 768), 4, "zz OOM") for n in range(4)]
    jobs += [one(40, "amy", "failed", "aa-rare.safetensors", (512, 512), 2, "aa rare error")]
    return jobs


@pytest.fixture
def written(inputs):
    """The report's inputs with metrics computed from afternoon_jobs and read back from metrics.json's text."""
    from ansible.module_utils.workshop_metrics import compute_metrics

    metrics = compute_metrics(afternoon_jobs(), ["amy", "bob", "zoe", "cat"])
    inputs["metrics"] = json.loads(json.dumps(metrics, indent=1, sort_keys=True))
    inputs["logs"] = None
    return inputs


def field(markdown, label):
    return next(line for line in markdown.splitlines() if line.startswith(f"- {label}: "))


def order_in(text, *names):
    positions = [text.index(name) for name in names]
    return positions == sorted(positions)


def test_ranked_figures_render_in_rank_order_from_metrics_json(written):
    markdown = render_markdown(**written)
    models = field(markdown, "Models that worked well")
    assert models == (
        "- Models that worked well: `zz-popular.safetensors` (6 jobs completed), `mm-middle.safetensors` (3 jobs completed),"
        " `aa-rare.safetensors` (1 job completed); failed most: `zz-popular.safetensors` (4 jobs failed),"
        " `aa-rare.safetensors` (1 job failed)"
    )
    assert field(markdown, "Popular resolutions") == (
        "- Popular resolutions: `1344x768` (10 jobs), `768x1344` (3 jobs), `512x512` (2 jobs)"
    )
    assert field(markdown, "Most common batch sizes") == "- Most common batch sizes: `4` (10 jobs), `10` (3 jobs), `2` (2 jobs)"
    assert issue_names(markdown)[:2] == [("zz OOM", 4), ("aa rare error", 1)]

    page = render_html(**written)
    text = "".join(data for data, _ in parse(page).text)
    assert order_in(text, "zz-popular.safetensors (", "mm-middle.safetensors", "aa-rare.safetensors")
    assert order_in(text, "1344x768", "768x1344", "512x512")
    assert order_in(text, "zz OOM", "aa rare error")
    chart = figure(page, "chart-jobs-per-participant")
    bars = re.findall(r'text-anchor="end">([^<]+)</text>', chart)
    assert bars == ["zoe", "amy", "bob", "cat"]  # 10, 4, 1, 0 jobs


def test_a_lone_surrogate_in_a_record_reaches_the_report_as_the_replacement_character(inputs, tmp_path):
    """JavaScript's JSON.stringify escapes a broken string's lone surrogate ("\\udcff"), and json.loads gives it
    back; no UTF-8 file can hold one, and the report stopped at it. The figures carry U+FFFD instead."""
    from ansible.module_utils.workshop_metrics import compute_metrics
    from ansible.module_utils.workshop_report import write_report

    jobs = afternoon_jobs()
    record = json.loads('{"error": "CUDA \\udcff error", "user_id": "eve\\udcff", "id": "j\\udcff"}')
    jobs[-1].update(record, completed_at="2026-01-15T11:40:35Z")  # also the longest run, so its id is named
    metrics = compute_metrics(jobs, ["amy", "bob", "zoe", "cat"])
    text = json.dumps(metrics, ensure_ascii=False)
    assert "\udcff" not in text and text.count("\ufffd") >= 3

    inputs["metrics"], inputs["logs"] = metrics, None
    changed, texts, _stamp = write_report(str(tmp_path / "report"), inputs, "2026-01-15T12:00:00Z")
    assert changed and "CUDA \ufffd error" in texts["report.md"]
    assert "CUDA \ufffd error" in (tmp_path / "report" / "report.md").read_text(encoding="utf-8")


# --- labels, units, and "not measured" instead of made-up values --------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (6, "6 s"),
        (0.3, "0.3 s"),
        (93, "93 s"),
        (119.96, "120 s"),
        (186, "3.1 min"),
        (1110, "18.5 min"),
        (7199, "120 min"),
        (7200, "2 h"),
        (26240.4, "7.3 h"),
    ],
)
def test_durations_in_the_unit_that_fits(seconds, text):
    assert format_duration(seconds) == text


def test_a_short_workshop_is_not_zero_hours(inputs):
    inputs["metrics"]["timeline"]["duration_seconds"] = 93
    inputs["metrics"]["durations"]["max"] = 6
    markdown = render_markdown(**inputs)
    assert "- Workshop duration: 93 s" in markdown
    assert "- Longest job: 6 s (job `" in markdown
    assert "hours" not in markdown and "0.1 minutes" not in markdown


def test_nothing_measured_is_never_stable_and_no_counts_are_never_zero_restarts(inputs):
    inputs.update(network=None, logs=None)
    inputs["context"]["restarts"] = {}
    markdown = render_markdown(**inputs)
    assert "- Connection stability: not measured: " in markdown
    assert "Stable" not in markdown
    assert "- Service restarts: not measured: Docker's restart counts were not collected" in markdown


def test_logs_without_a_probe_say_what_was_not_measured(inputs):
    inputs["network"] = None
    inputs["network_reason"] = "no GPU host"
    inputs["logs"]["totals"]["connection"] = 0
    markdown = render_markdown(**inputs)
    assert "- Connection stability: No connection errors in the logs; the link itself not measured: no GPU host" in markdown


def test_invalid_records_are_named_in_markdown_and_html(inputs):
    inputs["metrics"]["records"] = {"read": 60, "valid": 57, "invalid": 3, "invalid_keys": ["job:a", "job:b", "job:c"]}
    line = "- Job records: 60 read; 3 unreadable or invalid records left out of every figure (`job:a`, `job:b`, `job:c`)"
    assert line in render_markdown(**inputs)
    assert "3 unreadable or invalid records left out of every figure (<code>job:a</code>" in render_html(**inputs)


def test_the_title_never_says_none(inputs):
    inputs["context"] = {"workshop_id": "berlin"}
    inputs["record"] = {}
    inputs["metrics"]["timeline"]["first_job_at"] = None
    assert render_markdown(**inputs).startswith("# Workshop Report - berlin\n")
    inputs["metrics"]["timeline"]["first_job_at"] = "2026-01-15T09:31:12Z"
    assert render_markdown(**inputs).startswith("# Workshop Report - 2026-01-15\n")
    assert render_markdown(None, None, None, "", None, "", {}, {}).startswith("# Workshop Report\n")


@pytest.mark.parametrize(
    ("cutoff", "zone", "shown"),
    [
        ("4:30 PM", None, "4:30 PM UTC"),
        ("4:30 PM", "Europe/Berlin", "4:30 PM Europe/Berlin"),
        ("16:30 CET", "CET", "16:30 CET"),
        ("2026-01-15T16:30:00+01:00", "CET", "15:30 UTC"),
    ],
)
def test_the_announced_cut_off_shows_its_time_zone(inputs, cutoff, zone, shown):
    inputs["record"]["announcement"]["cutoff"] = cutoff
    inputs["context"]["timezone"] = zone
    assert f"- Announced cut-off: `{shown}`" in render_markdown(**inputs)


# --- the backup's verification, as the run record holds it --------------------------------------------


def full_backup_line(inputs):
    return field(render_markdown(**inputs), "Full backup")


def test_a_failed_verify_says_failed_when_and_down_to_the_member(inputs):
    inputs["record"].pop("verify")
    inputs["record"]["backup"]["verify"] = {
        "ok": False,
        "at": "2026-01-15T17:10:02+00:00",
        "backup": "backup-20260115T170212Z",
        "failures": [{"file": "outputs.tar", "member": "user003/img.png", "reason": "sha256 differs from the manifest"}],
    }
    line = full_backup_line(inputs)
    assert line.endswith(
        "(11 files), FAILED verification at 2026-01-15 17:10 UTC: `outputs.tar member user003/img.png`"
        " (`sha256 differs from the manifest`)"
    )
    markdown = render_markdown(**inputs)
    assert ", verified" not in markdown
    # The status follows from the verification checklist: the outputs line is ✗, down to the member.
    assert "**Status:** <!-- status:begin -->NEEDS FOLLOW-UP: All participant outputs backed up;" in markdown
    assert (
        "| ✗ | All participant outputs backed up | backup backup-20260115T170212Z FAILED verification (outputs.tar member"
        " user003/img.png: sha256 differs from the manifest): make a new backup (--tags backup) |"
    ) in markdown
    assert "FAILED verification at 2026-01-15 17:10 UTC: <code>outputs.tar member user003/img.png</code>" in render_html(**inputs)


def test_a_failed_verify_overrides_an_older_top_level_ok(inputs):
    """The old run record kept `verify.ok: true` beside the backup; backup.verify is the one read."""
    inputs["record"]["backup"]["verify"] = {"ok": False, "at": "2026-01-15T17:10:02Z", "backup": "backup-20260115T170212Z"}
    assert ", FAILED verification at 2026-01-15 17:10 UTC (what failed was not recorded)" in full_backup_line(inputs)


def test_a_passed_verify_says_when(inputs):
    inputs["record"]["backup"]["verify"] = {"ok": True, "at": "2026-01-15T17:10:02Z", "backup": "backup-20260115T170212Z"}
    assert full_backup_line(inputs).endswith("(11 files), verified at 2026-01-15 17:10 UTC")
    assert "NEEDS FOLLOW-UP at least" not in render_markdown(**inputs)


def test_a_verify_of_another_backup_does_not_verify_this_one(inputs):
    inputs["record"]["backup"]["verify"] = {"ok": True, "at": "2026-01-15T17:10:02Z", "backup": "backup-older"}
    assert full_backup_line(inputs).endswith("NOT VERIFIED (the last verification was of `backup-older`)")
    inputs["record"]["backup"].pop("verify")
    inputs["record"].pop("verify")
    assert full_backup_line(inputs).endswith("NOT VERIFIED (no verification is recorded)")


# --- the module: metrics passed in, a preview in check mode, stamped with the time of writing --------


def run_report_module(capsys, args, check=False):
    from ansible.module_utils.testing import patch_module_args

    from conftest import load_module

    module = load_module("workshop_report")
    with patch_module_args({**args, "_ansible_check_mode": check}), pytest.raises(SystemExit):
        module.main()
    return json.loads(capsys.readouterr().out)


def module_args(inputs, dest, record):
    record.write_text(json.dumps(inputs["record"]))
    context = {key: value for key, value in inputs["context"].items() if key != "generated_at"}
    metrics = {**inputs["metrics"], "logs": inputs["logs"], "duration_seconds": inputs["durations"]}
    return {"dest": str(dest), "metrics": metrics, "run_record": str(record), "context": context}


def test_check_mode_returns_the_preview_and_writes_nothing(inputs, tmp_path, capsys):
    args = module_args(inputs, tmp_path / "report", tmp_path / "run-record.json")
    result = run_report_module(capsys, args, check=True)
    assert result["changed"] is True
    assert result["markdown"].startswith("# Workshop Report - 2026-01-15\n")
    assert "- Total jobs submitted: 57" in result["markdown"]
    assert not (tmp_path / "report").exists()
    # Nothing written, so the preview's own checklist does not tick the report, as the checklist play says.
    [line] = [line for line in result["checklist"]["lines"] if line["key"] == "report"]
    assert line["ok"] is False and line["reason"].startswith(f"report.md, report.html not in {tmp_path / 'report'}")
    # Once written, the preview's checklist is the written one: check mode then changes nothing.
    written = run_report_module(capsys, args)
    again = run_report_module(capsys, args, check=True)
    assert again["checklist"] == written["checklist"] and again["changed"] is False
    assert [line["ok"] for line in again["checklist"]["lines"] if line["key"] == "report"] == [True]


def test_the_report_is_stamped_when_written_and_a_rerun_changes_nothing(inputs, tmp_path, capsys):
    args = module_args(inputs, tmp_path / "report", tmp_path / "run-record.json")
    before = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    first = run_report_module(capsys, args)
    after = datetime.now(timezone.utc)
    assert first["changed"] is True
    stamped = datetime.strptime(first["generated_at"], "%Y-%m-%d %H:%M UTC").replace(tzinfo=timezone.utc)
    assert before <= stamped <= after  # the time of writing, not the drain's 16:48
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert markdown == first["markdown"]
    assert f"**Report completed:** {first['generated_at']} (generated)" in markdown
    html_page = (tmp_path / "report" / "report.html").read_text()
    assert f"{first['generated_at']} (generated)" in html_page

    # The same data a minute later: nothing changes, the first time stays.
    for name in ("report.md", "report.html"):
        path = tmp_path / "report" / name
        path.write_text(path.read_text().replace(first["generated_at"], "2026-01-16 09:00 UTC"))
    again = run_report_module(capsys, args)
    assert again["changed"] is False
    assert again["generated_at"] == "2026-01-16 09:00 UTC"

    # New data: both files are written again, with the new time.
    args["metrics"]["jobs"]["failed"] = 5
    third = run_report_module(capsys, args)
    assert third["changed"] is True and third["generated_at"] != "2026-01-16 09:00 UTC"
    assert "2026-01-16 09:00 UTC" not in (tmp_path / "report" / "report.html").read_text()
