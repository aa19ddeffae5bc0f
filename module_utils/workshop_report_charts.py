"""The report's charts: inline SVG figures of the queue depth over time, jobs per participant and job
durations, and the scale, tick and bin helpers they are drawn with. Every text from the inputs is escaped."""

import html
import math
from datetime import datetime, timezone

from ansible.module_utils.workshop_report_text import _get, as_number, format_number, one_line, ranked_pairs
from ansible.module_utils.workshop_time import parse_time

MAX_BARS = 60
TIME_STEPS_MINUTES = (1, 2, 5, 10, 15, 30, 60, 120, 180, 240, 360, 720, 1440)

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


# --- SVG figures -----------------------------------------------------------------------------------------

_W, _H = 720, 300
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 20, 24, 48


def _e(text):
    return html.escape(str(text), quote=True)


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
    peak = max(depth for _dummy, depth in series)
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
    rows = [(user, as_number(n) or 0) for user, n in ranked_pairs(per_participant)]
    rows.sort(key=lambda row: (-row[1], str(row[0])))
    return bar_chart("chart-jobs-per-participant", "Jobs per participant", rows, "participants", "Jobs submitted", reason)


def bar_chart(figure_id, name, rows, noun, axis, reason, order="most first"):
    """A <figure> of one horizontal bar per (label, number) row, in the rows' order (`order` says which)."""
    if not rows:
        return _not_measured_figure(figure_id, name, reason)
    shown, hidden = rows[:MAX_BARS], len(rows) - MAX_BARS
    row_height, left, top = 18, 130, 28
    height = top + row_height * len(shown) + 36
    ticks = count_ticks(max(n for _dummy, n in shown))
    x = linear_scale(0, ticks[-1], left, _W - _RIGHT - 24)
    most = max(n for _dummy, n in shown)
    out = [_svg_open(f"{name}: {len(rows)} {noun}, up to {format_number(most)} {axis.lower()} each", _W, height)]
    bottom = top + row_height * len(shown)
    for tick in ticks:
        out.append(f'<line class="grid" x1="{_c(x(tick))}" x2="{_c(x(tick))}" y1="{top}" y2="{bottom}"/>')
        out.append(f'<text x="{_c(x(tick))}" y="{top - 8}" text-anchor="middle">{_e(format_number(tick))}</text>')
    for i, (label, n) in enumerate(shown):
        y = top + i * row_height
        out.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{_e(one_line(label, 18))}</text>')
        out.append(f'<rect class="bar" x="{left}" y="{y + 3}" width="{_c(x(n) - left)}" height="{row_height - 6}"/>')
        out.append(f'<text x="{_c(x(n) + 4)}" y="{y + 13}">{_e(format_number(n))}</text>')
    out.append(f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{bottom}"/>')
    out.append(f'<text x="{_c((left + _W - _RIGHT) / 2)}" y="{height - 10}" text-anchor="middle">{_e(axis)}</text>')
    out.append("</svg>")
    caption = f"{_e(name)}, {_e(order)}" + (f"; {hidden} more not shown" if hidden > 0 else "") + "."
    return _figure(figure_id, caption, "".join(out))


def duration_histogram_chart(durations, reason="per-job durations were not provided"):
    """The <figure> of the job duration histogram (seconds), bins from histogram_bins."""
    name = "Job duration histogram"
    bins = histogram_bins(durations or [])
    if not bins:
        return _not_measured_figure("chart-duration-histogram", name, reason)
    ticks = count_ticks(max(n for _dummy, _dummy, n in bins))
    x = linear_scale(bins[0][0], bins[-1][1], _LEFT, _W - _RIGHT)
    y = linear_scale(0, ticks[-1], _H - _BOTTOM, _TOP)
    base = _H - _BOTTOM
    out = [_svg_open(f"{name}: {sum(entry[2] for entry in bins)} completed jobs in {len(bins)} bins", _W, _H)]
    out += _y_axis(ticks, y, _LEFT, _W - _RIGHT, "Jobs", _H)
    for low, high, n in bins:
        width = x(high) - x(low)
        out.append(
            f'<rect class="bar" x="{_c(x(low) + 1)}" y="{_c(y(n))}" width="{_c(max(width - 2, 1))}" height="{_c(base - y(n))}">'
            f"<title>{_e(format_number(low))}-{_e(format_number(high))} s: {n} jobs</title></rect>"
        )
    every = max(1, math.ceil(len(bins) / 12))
    for i, edge in enumerate([bins[0][0]] + [high for _dummy, high, _dummy in bins]):
        if i % every == 0 or i == len(bins):
            out.append(f'<text x="{_c(x(edge))}" y="{base + 16}" text-anchor="middle">{_e(format_number(edge))}</text>')
    out.append(f'<line class="axis" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{base}" y2="{base}"/>')
    out.append(f'<text x="{_c((_LEFT + _W - _RIGHT) / 2)}" y="{_H - 8}" text-anchor="middle">Job duration (seconds)</text>')
    out.append("</svg>")
    width = bins[0][1] - bins[0][0]
    return _figure("chart-duration-histogram", f"{_e(name)}, bins of {_e(format_number(width))} seconds.", "".join(out))
