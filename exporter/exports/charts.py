"""The report's charts, drawn to scale: the cohort funnel and the daily activity bars."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from exporter.exports.pdfdoc import (
    ALERT,
    INK,
    MUTED,
    RULE,
    Color,
    Doc,
    count,
    day,
    percent,
    short_day,
)

CONTINUED: Color = (52, 114, 196)
"""Funnel: went on to the next step (or, on the first and last rows, enrolled / completed)."""
IN_PROGRESS: Color = (173, 181, 189)
"""Funnel: still active at the step."""
DROPPED: Color = (240, 160, 150)
"""Funnel: dropped at the step."""
BOTTLENECK: Color = (206, 62, 50)
"""Funnel: dropped at the bottleneck step."""
SERIES_COLORS: dict[str, Color] = {
    "enrollments": (94, 60, 153),
    "completions": (27, 158, 119),
    "conversions": (230, 145, 30),
}
"""Daily chart: one colour per series."""
GRID: Color = (233, 236, 239)
MAX_BARS = 62
"""Most days drawn as grouped bars; longer ranges are drawn as lines."""

FUNNEL_LABEL_W = 50.0
FUNNEL_NOTE_W = 48.0
FUNNEL_ROW_H = 9.0
FUNNEL_BAR_H = 5.0
CHART_H = 58.0
AXIS_W = 13.0
PLOT_PAD = 3.0
"""Room right of the plot for the last day's label."""


@dataclass(frozen=True, slots=True)
class FunnelRow:
    """One funnel row: a step, or the enrolled / completed totals (step None)."""

    label: str
    reached: int
    in_progress: int = 0
    dropped: int = 0
    ratio: float | None = None
    bottleneck: bool = False
    step: bool = False


def segments(reached: int, in_progress: int, dropped: int) -> tuple[int, int, int]:
    """(continued, in progress, dropped) of a bar: non-negative and summing to `reached`."""
    reached = max(reached, 0)
    drop = min(max(dropped, 0), reached)
    active = min(max(in_progress, 0), reached - drop)
    return reached - active - drop, active, drop


def funnel(doc: Doc, rows: Sequence[FunnelRow]) -> None:
    """Horizontal bars of each row to scale; drop-off and in-progress shares inside each bar."""
    pdf = doc.pdf
    left = pdf.l_margin
    bar_x = left + FUNNEL_LABEL_W
    bar_w = doc.width - FUNNEL_LABEL_W - FUNNEL_NOTE_W
    note_x = bar_x + bar_w + 3
    top = max((r.reached for r in rows), default=0) or 1
    for r in rows:
        doc.need(FUNNEL_ROW_H)
        y = pdf.get_y()
        worst = r.bottleneck
        doc.font(8.5, bold=not r.step or worst, color=ALERT if worst else INK)
        doc.write(left, y, FUNNEL_LABEL_W - 3, FUNNEL_ROW_H, r.label)
        cont, active, drop = segments(r.reached, r.in_progress, r.dropped)
        x = bar_x
        for n, color in (
            (cont, CONTINUED),
            (active, IN_PROGRESS),
            (drop, BOTTLENECK if worst else DROPPED),
        ):
            w = bar_w * n / top
            if w > 0:
                pdf.set_fill_color(*color)
                pdf.rect(x, y + (FUNNEL_ROW_H - FUNNEL_BAR_H) / 2, w, FUNNEL_BAR_H, style="F")
            x += w
        if not r.step:
            doc.font(8.5, bold=True)
            doc.write(note_x, y, FUNNEL_NOTE_W - 3, FUNNEL_ROW_H, count(r.reached))
        else:
            head = f"{count(r.reached)} reached" + (" \u00b7 bottleneck" if worst else "")
            doc.shrink(head, FUNNEL_NOTE_W - 3, 8, 6.5, bold=worst, color=ALERT if worst else INK)
            doc.write(note_x, y + 0.6, FUNNEL_NOTE_W - 3, 4, head)
            note = f"dropped {count(r.dropped)} ({percent(r.ratio)})"
            if r.in_progress:
                note += f" \u00b7 {count(r.in_progress)} active"
            doc.shrink(note, FUNNEL_NOTE_W - 3, 7, 6, bold=worst, color=ALERT if worst else MUTED)
            doc.write(note_x, y + 4.4, FUNNEL_NOTE_W - 3, 4, note)
        pdf.set_xy(left, y + FUNNEL_ROW_H)
    pdf.ln(1)
    doc.need(5)
    y = pdf.get_y()
    x = left
    for color, label in (
        (CONTINUED, "went on to the next step"),
        (IN_PROGRESS, "still active at the step"),
        (DROPPED, "dropped at the step"),
        (BOTTLENECK, "dropped at the bottleneck"),
    ):
        x = doc.swatch(x, y, color, label)
    pdf.set_xy(left, y + 5)


# daily chart ---------------------------------------------------------------------------------


def nice_ticks(peak: float, most: int = 5) -> list[int]:
    """Axis ticks 0, s, 2s, ... reaching at least `peak`, s a 1-2-5 step, at most `most` + 1."""
    peak = max(peak, 1)
    raw = peak / most
    mag = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    step = max(int(step), 1)
    return list(range(0, math.ceil(peak / step) * step + 1, step))


@dataclass(frozen=True, slots=True)
class Day:
    """One day bucket of the chart: its start (UTC), its length and its counts."""

    start: datetime
    length: timedelta
    values: dict[str, int]


def days(series: Sequence[dict], zone: ZoneInfo) -> list[Day]:
    """Day buckets from the API's daily series, each with its length in `zone`."""
    out = []
    for i, p in enumerate(series):
        b = p["bucket"]
        if i + 1 < len(series):
            nxt = series[i + 1]["bucket"]
        else:
            local = b.astimezone(zone).replace(tzinfo=None) + timedelta(days=1)
            nxt = local.replace(tzinfo=zone).astimezone(b.tzinfo)
        out.append(Day(b, nxt - b, {k: p[k] for k in SERIES_COLORS}))
    return out


def daily(doc: Doc, buckets: Sequence[Day], zone: ZoneInfo) -> None:
    """Enrollments, completions and conversions per day: grouped bars (lines past MAX_BARS)."""
    pdf = doc.pdf
    left = pdf.l_margin
    doc.need(CHART_H + 20)
    y0 = pdf.get_y()
    x = left
    for name, color in SERIES_COLORS.items():
        total = sum(b.values[name] for b in buckets)
        x = doc.swatch(x, y0, color, f"{name.capitalize()} {count(total)}", size=8)
    plot_x = left + AXIS_W
    plot_w = doc.width - AXIS_W - PLOT_PAD
    plot_top = y0 + 8
    plot_h = CHART_H
    base = plot_top + plot_h
    peak = max((v for b in buckets for v in b.values.values()), default=0)
    ticks = nice_ticks(peak)
    scale = plot_h / ticks[-1]
    pdf.set_line_width(0.2)
    doc.font(7, color=MUTED)
    for t in ticks:
        y = base - t * scale
        pdf.set_draw_color(*(RULE if t == 0 else GRID))
        pdf.line(plot_x, y, plot_x + plot_w, y)
        doc.write(left, y - 2, AXIS_W - 2, 4, count(t), align="R")
    n = max(len(buckets), 1)
    slot = plot_w / n
    if len(buckets) <= MAX_BARS:
        bar = slot * 0.8 / len(SERIES_COLORS)
        for i, b in enumerate(buckets):
            for j, (name, color) in enumerate(SERIES_COLORS.items()):
                h = b.values[name] * scale
                if h > 0:
                    pdf.set_fill_color(*color)
                    pdf.rect(plot_x + i * slot + slot * 0.1 + j * bar, base - h, bar, h, "F")
    else:
        pdf.set_line_width(0.4)
        for name, color in SERIES_COLORS.items():
            pdf.set_draw_color(*color)
            points = [
                (plot_x + (i + 0.5) * slot, base - b.values[name] * scale)
                for i, b in enumerate(buckets)
            ]
            if len(points) > 1:
                pdf.polyline(points, style="D")
        pdf.set_line_width(0.2)
    if peak == 0:
        doc.font(8, color=MUTED)
        doc.write(plot_x, plot_top + plot_h / 2 - 3, plot_w, 6, "nothing happened in the range",
                  align="C")
    _day_labels(doc, buckets, zone, plot_x, slot, base + 1)
    pdf.set_xy(left, base + 6)


def _day_labels(
    doc: Doc, buckets: Sequence[Day], zone: ZoneInfo, plot_x: float, slot: float, y: float
) -> None:
    """Date labels under the bars, every k-th day so that they do not overlap."""
    doc.font(6.5, color=MUTED)
    local = [b.start.astimezone(zone) for b in buckets]
    if not local:
        return
    pdf = doc.pdf
    for fmt in (day, short_day):
        width = max(pdf.get_string_width(fmt(t)) for t in local) + 2
        if width <= slot or fmt is short_day:
            break
    every = max(1, math.ceil(width / slot))
    right = pdf.w - pdf.r_margin
    for i in range(0, len(local), every):
        text = doc.text(fmt(local[i]))
        w = pdf.get_string_width(text) + 0.5
        x = min(plot_x + (i + 0.5) * slot - w / 2, right - w)
        doc.write(x, y, w, 4, text, align="C")
