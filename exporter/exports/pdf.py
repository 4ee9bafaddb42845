"""The PDF report: headline numbers with their definitions, cohort funnel, daily activity, actions.

Activity counts (what happened in the range) and cohort numbers (what became of those enrolled
in the range) are shown apart and say which is which. Dates, and the days of the chart, are in
the requested time zone; the chart is daily whatever series granularity the request resolved to.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from exporter import queries
from exporter.exports import charts
from exporter.exports.datasets import ExportSpec
from exporter.exports.formats import iso
from exporter.exports.pdfdoc import (
    DASH,
    MUTED,
    RULE,
    TILE,
    Doc,
    count,
    day,
    duration,
    percent,
    span,
    when,
)

TILE_H = 17.0
TILE_GAP = 3.0
ROW_H = 5.5
ACTION_COLUMNS: tuple[tuple[str, float, str], ...] = (
    ("Step", 40, "L"),
    ("Action", 21, "L"),
    ("Runs", 14, "R"),
    ("OK", 14, "R"),
    ("Failed", 13, "R"),
    ("Success", 15, "R"),
    ("p50", 14, "R"),
    ("p95", 14, "R"),
    ("Top error", 35, "L"),
)
"""Action table: heading, width in mm, alignment."""

ACTIVITY_NOTE = (
    "Activity: events whose time falls in the range, whenever the contact enrolled."
)
COHORT_NOTE = "Cohort: the executions enrolled in the range, followed to now."


def _tiles(doc: Doc, items: Sequence[tuple[str, str, str]], per_row: int) -> None:
    """Headline numbers in boxes: (label, value, note)."""
    pdf = doc.pdf
    width = (doc.width - (per_row - 1) * TILE_GAP) / per_row
    for start in range(0, len(items), per_row):
        doc.need(TILE_H + 2)
        y = pdf.get_y()
        for col, (label, value, note) in enumerate(items[start : start + per_row]):
            x = pdf.l_margin + col * (width + TILE_GAP)
            pdf.set_draw_color(*RULE)
            pdf.set_fill_color(*TILE)
            pdf.set_line_width(0.2)
            pdf.rect(x, y, width, TILE_H, style="DF")
            doc.font(7.5, color=MUTED)
            doc.write(x + 2, y + 1.2, width - 4, 4, label)
            doc.shrink(value, width - 4, 14, 9, bold=True)
            doc.write(x + 2, y + 5.4, width - 4, 6.5, value)
            doc.shrink(note, width - 4, 6.5, 5.5, color=MUTED)
            doc.write(x + 2, y + 12, width - 4, 4, note)
        pdf.set_xy(pdf.l_margin, y + TILE_H + 2)


def _header(doc: Doc, wf: queries.Workflow, spec: ExportSpec, zone: ZoneInfo, now: datetime):
    doc.line("Workflow report", 9, color=MUTED, h=5)
    doc.line(wf.name, 18, bold=True, h=10)
    doc.line(
        f"Workflow {wf.workflow_id}  \u00b7  {len(wf.steps)} steps", 9, color=MUTED, h=5
    )
    doc.line(f"{when(spec.start, zone)}  \u2192  {when(spec.end, zone)}", 10, bold=True, h=6)
    doc.line(
        f"{span(spec.end - spec.start)}, the end excluded  \u00b7  Dates and days in "
        f"{spec.tz}  \u00b7  Generated {when(now, zone)}",
        8.5,
        color=MUTED,
        h=5,
    )


def _headline(doc: Doc, s: dict[str, Any], f: dict[str, Any]) -> None:
    doc.heading("Headline numbers", need=60)
    doc.line("Activity in the range", 9.5, bold=True, h=5)
    doc.para(ACTIVITY_NOTE + " Completions and conversions here may belong to earlier "
             "enrollments.")
    _tiles(
        doc,
        [
            ("Enrollments", count(s["enrollments"]), "enrolled in the range"),
            ("Completions", count(s["completions"]), "completed in the range"),
            ("Conversions", count(s["conversions"]), "converted in the range"),
            ("Exits", count(s["exits"]), "exited early in the range"),
            ("Failures", count(s["failures"]), "failed in the range"),
        ],
        5,
    )
    ttc, ttv = s["time_to_complete_seconds"], s["time_to_convert_seconds"]
    doc.para(
        f"Time from enrollment to completion: median {duration(ttc['p50'])}, "
        f"p95 {duration(ttc['p95'])}  \u00b7  to conversion: median {duration(ttv['p50'])}, "
        f"p95 {duration(ttv['p95'])} (of the completions and conversions above).",
    )
    doc.pdf.ln(1.5)
    enrolled = f["enrolled"]
    doc.line(f"Cohort: the {count(enrolled)} executions enrolled in the range", 9.5, bold=True,
             h=5)
    doc.para(
        COHORT_NOTE + " Rates are shares of this cohort; the funnel below follows it step "
        "by step."
    )
    _tiles(
        doc,
        [
            ("Completion rate", percent(f["completion_rate"]),
             f"{count(f['completed'])} of {count(enrolled)} completed"),
            ("Conversion rate", percent(f["conversion_rate"]),
             f"{count(f['converted'])} of {count(enrolled)} converted in window"),
            ("Still active", count(f["in_progress"]), "not finished yet"),
            ("Left early", count(f["exited"] + f["failed"]),
             f"{count(f['exited'])} exited, {count(f['failed'])} failed"),
        ],
        4,
    )


def _funnel(doc: Doc, f: dict[str, Any]) -> None:
    doc.heading("Cohort funnel: drop-off per step", need=40)
    doc.para(
        "Executions of the cohort that reached each step, to scale. Inside each bar: who went "
        "on to the next step, who is still active at it, and who dropped there (reached "
        "\u2212 reached the next step \u2212 still active)."
    )
    doc.pdf.ln(1)
    if not f["enrolled"]:
        doc.line("No executions were enrolled in the range: the cohort funnel is empty.", 9,
                 color=MUTED)
        return
    rows = [charts.FunnelRow("Enrolled", f["enrolled"])]
    rows += [
        charts.FunnelRow(
            f"{st['index'] + 1}. {st['name']}",
            st["reached"],
            st["in_progress"],
            st["dropped"],
            st["dropoff_ratio"],
            bool(st["bottleneck"]),
            step=True,
        )
        for st in f["steps"]
    ]
    rows.append(charts.FunnelRow("Completed", f["completed"]))
    charts.funnel(doc, rows)
    worst = next((st for st in f["steps"] if st["bottleneck"]), None)
    if worst is not None:
        head = f"Bottleneck: step {worst['index'] + 1} loses {percent(worst['dropoff_ratio'])} "
        doc.line(f"{head}of those who reach it: {worst['name']}", 9, bold=True, h=6)


def _daily(doc: Doc, spec: ExportSpec, s: dict[str, Any], zone: ZoneInfo) -> None:
    doc.heading("Daily activity", need=charts.CHART_H + 20)
    buckets = charts.days(s["series"], zone)
    charts.daily(doc, buckets, zone)
    notes = [f"Events per day in {spec.tz} (activity, as in the tiles above)."]
    if buckets:
        first, last = buckets[0], buckets[-1]
        if spec.start > first.start:
            notes.append(f"The first day counts from {spec.start.astimezone(zone):%H:%M}.")
        if spec.end < last.start + last.length:
            notes.append(f"The last day counts until {spec.end.astimezone(zone):%H:%M}.")
        odd = [b for b in buckets if b.length != timedelta(days=1)]
        for b in odd[:4]:
            hours = b.length.total_seconds() / 3600
            notes.append(
                f"{day(b.start.astimezone(zone))} has {hours:g} hours (clock change)."
            )
    doc.para(" ".join(notes))


def _actions(doc: Doc, a: dict[str, Any]) -> None:
    doc.heading("Action performance", need=3 * ROW_H + 10)
    doc.para(
        "Step attempts entered in the range (activity), whenever the contact enrolled. "
        "Success = OK / (OK + failed); durations are interpolated from histogram buckets."
    )
    if not a["actions"]:
        doc.line("No step attempts in the range.", 9, color=MUTED)
        return
    _table_head(doc)
    for s in a["actions"]:
        if doc.room < ROW_H:
            doc.pdf.add_page()
            _table_head(doc)
        d = s["duration_seconds"]
        err = s["top_errors"][0] if s["top_errors"] else None
        name = s["name"] if s["index"] is not None else f"{s['name']} (removed)"
        _table_row(
            doc,
            (
                name,
                s["action_type"],
                count(s["executions"]),
                count(s["succeeded"]),
                count(s["failed"]),
                percent(s["success_rate"]),
                duration(d["p50"]),
                duration(d["p95"]),
                f"{count(err['count'])} \u00d7 {err['error']}" if err else DASH,
            ),
        )


def _table_head(doc: Doc) -> None:
    pdf = doc.pdf
    y = pdf.get_y()
    pdf.set_fill_color(241, 243, 245)
    pdf.rect(pdf.l_margin, y, doc.width, ROW_H, style="F")
    doc.font(7.5, bold=True)
    x = pdf.l_margin
    for head, w, align in ACTION_COLUMNS:
        doc.write(x + 1, y, w - 2, ROW_H, head, align=align)
        x += w
    pdf.set_xy(pdf.l_margin, y + ROW_H)


def _table_row(doc: Doc, cells: Sequence[str]) -> None:
    pdf = doc.pdf
    y = pdf.get_y()
    doc.font(7.5)
    x = pdf.l_margin
    for text, (_, w, align) in zip(cells, ACTION_COLUMNS, strict=True):
        doc.write(x + 1, y, w - 2, ROW_H, text, align=align)
        x += w
    pdf.set_draw_color(*RULE)
    pdf.set_line_width(0.2)
    pdf.line(pdf.l_margin, y + ROW_H, pdf.l_margin + doc.width, y + ROW_H)
    pdf.set_xy(pdf.l_margin, y + ROW_H)


def render_pdf(
    wf: queries.Workflow, spec: ExportSpec, data: dict[str, Any], generated_at: datetime
) -> bytes:
    """The report as PDF bytes (CPU-bound: run it in a thread)."""
    zone = ZoneInfo(spec.tz)
    generated = generated_at.replace(microsecond=0)
    doc = Doc(
        f"Workflow report: {wf.name}",
        f"workflow-analytics report \u00b7 workflow {wf.workflow_id} \u00b7 generated "
        f"{when(generated, zone)}",
    )
    s, f, a = data["summary"], data["funnel"], data["actions"]
    _header(doc, wf, spec, zone, generated)
    _headline(doc, s, f)
    _funnel(doc, f)
    _daily(doc, spec, s, zone)
    _actions(doc, a)
    doc.pdf.ln(3)
    doc.need(5)
    doc.line(
        f"Exact range: from={iso(spec.start)} to={iso(spec.end)} tz={spec.tz} (half-open)",
        6.5,
        color=MUTED,
        h=4,
    )
    return doc.output()
