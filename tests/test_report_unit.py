"""The workshop report rendered from fixed inputs: the checklist's template filled in, and a safe HTML page."""

import copy
import json
import re
from html.parser import HTMLParser
from itertools import pairwise
from pathlib import Path

import pytest
from ansible.module_utils.workshop_report import (
    count_ticks,
    format_percent,
    histogram_bins,
    linear_scale,
    nice_step,
    render_html,
    render_markdown,
    step_points,
    time_ticks,
)

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
        "- Average job duration: 47.8 seconds",
        "- Longest job: 3.1 minutes (job `9f3c2a1e-5b7d-4e1a-9c2f-0d8e7b6a5c41`)",
        "- Workshop duration: 7.3 hours",
        "- Peak queue depth: 14 jobs (at 11:46 UTC)",
        "- Time to clear queue: 18.5 minutes (cut-off 16:30 UTC, queue empty 16:48 UTC)",
        "- Longest wait time: 7.4 minutes",
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
        "- Announced cut-off: `4:30 PM`",
    ],
)
def test_markdown_fields_show_the_inputs(inputs, line):
    assert line in render_markdown(**inputs)


def test_issues_list_top_errors_then_log_categories_with_a_sample(inputs):
    markdown = render_markdown(**inputs)
    issues = markdown.split("## Issues Encountered\n")[1].split("\n\n")[0].splitlines()
    assert issues[0].startswith("1. Failed jobs: `CUDA out of memory. Tried to allocate 2.50 GiB` (2 jobs).")
    assert issues[2].startswith("3. Failed jobs: `Worker timed out after 600 s` (1 job).")
    categories = [re.search(r"Log lines about (\w+): (\d+)", line).groups() for line in issues[3:]]
    # ssl and thermal have no lines: they are left out.
    assert categories == [("errors", "8"), ("warnings", "8"), ("connection", "5"), ("restarts", "1"), ("requeues", "1")]
    assert "e.g. `2026-01-15T13:17:52.871000000Z ERROR torch.cuda.OutOfMemoryError" in issues[3]
    assert all(line.endswith("Resolution: _(to fill in: resolution)_") for line in issues)


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
    assert "1. Failed jobs: ``bad `x` **bold** [link](y) second line`` (3 jobs)." in markdown


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
