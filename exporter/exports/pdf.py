"""The PDF report: headline numbers, cohort funnel with drop-off per step, action performance."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from fpdf import FPDF
from fpdf.enums import XPos, YPos
from fpdf.fonts import FontFace

from exporter import queries
from exporter.exports.datasets import ExportSpec
from exporter.exports.formats import iso

FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"))
"""Where DejaVu Sans is looked for (Debian: fonts-dejavu-core); core Helvetica otherwise."""

_INK = (33, 37, 41)
_MUTED = (108, 117, 125)
_BAR = (52, 114, 196)
_WORST = (200, 60, 50)
_DROP = (236, 200, 196)
_RULE = (222, 226, 230)
_TOP_ERROR_CHARS = 48
DASH = "\u2013"
"""Shown for a number that does not exist (no data)."""
_UNITS = ((1, 0.001, "ms"), (120, 1, "s"), (7200, 60, "min"), (172800, 3600, "h"))


def _font_files() -> tuple[Path, Path] | None:
    for d in FONT_DIRS:
        regular, bold = d / "DejaVuSans.ttf", d / "DejaVuSans-Bold.ttf"
        if regular.is_file() and bold.is_file():
            return regular, bold
    return None


def count(n: int | None) -> str:
    """An integer with thousands separators; a dash for none."""
    return DASH if n is None else f"{n:,}"


def percent(r: float | None) -> str:
    """A ratio as a percentage with one decimal; a dash for none."""
    return DASH if r is None else f"{r * 100:.1f}%"


def duration(seconds: float | None) -> str:
    """Seconds in the largest sensible unit."""
    if seconds is None:
        return DASH
    for limit, div, unit in _UNITS:
        if seconds < limit:
            value = seconds / div
            return f"{value:.0f} {unit}" if unit == "ms" else f"{value:.1f} {unit}"
    return f"{seconds / 86400:.1f} d"


class _Report(FPDF):
    """A4 page with a footer line."""

    footer_text = ""
    font_name = "Helvetica"

    def footer(self) -> None:
        """Generated time and page number at the bottom of each page."""
        self.set_y(-12)
        self.set_font(self.font_name, "", 8)
        self.set_text_color(*_MUTED)
        self.cell(0, 5, f"{self.footer_text}   ·   page {self.page_no()}", align="C")


class _Writer:
    """Lays the report out on an FPDF document."""

    def __init__(self, generated: str) -> None:
        self.pdf = _Report(orientation="P", unit="mm", format="A4")
        fonts = _font_files()
        self.unicode = fonts is not None
        if fonts is not None:
            self.pdf.add_font("DejaVu", "", str(fonts[0]))
            self.pdf.add_font("DejaVu", "B", str(fonts[1]))
            self.pdf.font_name = "DejaVu"
        self.pdf.footer_text = f"Generated {generated} by workflow-analytics"
        self.pdf.set_auto_page_break(auto=True, margin=16)
        self.pdf.set_margins(15, 15, 15)
        self.pdf.set_title("Workflow report")
        self.pdf.set_creator("workflow-analytics")
        self.pdf.add_page()

    def text(self, s: str) -> str:
        """Text the font can show."""
        if self.unicode:
            return s
        return s.replace(DASH, "-").replace("·", "-").encode("latin-1", "replace").decode("latin-1")

    def font(self, size: float, bold: bool = False, color: tuple[int, int, int] = _INK) -> None:
        """Set the font and colour."""
        self.pdf.set_font(self.pdf.font_name, "B" if bold else "", size)
        self.pdf.set_text_color(*color)

    def line(self, s: str, size: float = 10, bold: bool = False, color=_INK, h: float = 6) -> None:
        """One full-width line of text."""
        self.font(size, bold, color)
        self.pdf.cell(0, h, self.text(s), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def heading(self, s: str) -> None:
        """A section heading with a rule under it."""
        self.pdf.ln(4)
        if self.pdf.get_y() > self.pdf.h - 60:
            self.pdf.add_page()
        self.line(s, 13, bold=True, h=8)
        y = self.pdf.get_y()
        self.pdf.set_draw_color(*_RULE)
        self.pdf.line(self.pdf.l_margin, y, self.pdf.w - self.pdf.r_margin, y)
        self.pdf.ln(2)

    def tiles(self, items: list[tuple[str, str, str]]) -> None:
        """Headline numbers in boxes, four per row: (label, value, note)."""
        pdf = self.pdf
        width = (pdf.w - pdf.l_margin - pdf.r_margin - 3 * 3) / 4
        for i, (label, value, note) in enumerate(items):
            col = i % 4
            if col == 0 and i:
                pdf.set_y(pdf.get_y() + 22)
            x, y = pdf.l_margin + col * (width + 3), pdf.get_y()
            pdf.set_draw_color(*_RULE)
            pdf.set_fill_color(248, 249, 250)
            pdf.rect(x, y, width, 19, style="DF")
            pdf.set_xy(x + 2, y + 1.5)
            self.font(8, color=_MUTED)
            pdf.cell(width - 4, 4, self.text(label))
            pdf.set_xy(x + 2, y + 6)
            self.font(15, bold=True)
            pdf.cell(width - 4, 7, self.text(value))
            pdf.set_xy(x + 2, y + 13.5)
            self.font(7, color=_MUTED)
            pdf.cell(width - 4, 4, self.text(note))
            pdf.set_xy(pdf.l_margin, y)
        pdf.set_y(pdf.get_y() + 23)

    def funnel(self, f: dict[str, Any]) -> None:
        """Horizontal bars of reached per step, the dropped share marked, drop-off written out."""
        pdf = self.pdf
        left, label_w, right_w = pdf.l_margin, 62, 42
        bar_w = pdf.w - pdf.l_margin - pdf.r_margin - label_w - right_w
        top = max([f["enrolled"], *(s["reached"] for s in f["steps"])], default=0) or 1
        rows = [("Enrolled", f["enrolled"], None), *((None, 0, s) for s in f["steps"])]
        rows.append(("Completed", f["completed"], None))
        for label, n, step in rows:
            if pdf.get_y() > pdf.h - 28:
                pdf.add_page()
            y = pdf.get_y()
            reached = step["reached"] if step else n
            name = label or f"{step['index'] + 1}. {step['name']}"
            self.font(9, bold=step is None)
            pdf.set_xy(left, y)
            pdf.cell(label_w - 2, 8, self.text(_clip(name, 38)))
            width = bar_w * reached / top
            worst = bool(step and step["bottleneck"])
            if width > 0:
                pdf.set_fill_color(*(_WORST if worst else _BAR))
                pdf.rect(left + label_w, y + 1.5, width, 5, style="F")
            dropped = step["dropped"] if step else None
            if dropped and dropped > 0:
                pdf.set_fill_color(*_DROP)
                pdf.rect(left + label_w + width, y + 1.5, bar_w * dropped / top, 5, style="F")
            pdf.set_xy(left + label_w + bar_w + 2, y)
            if step is None:
                pdf.cell(right_w - 2, 8, self.text(count(reached)))
            else:
                self.font(8, bold=worst, color=_WORST if worst else _INK)
                note = f"{count(reached)}  drop-off {percent(step['dropoff_ratio'])}"
                pdf.cell(right_w - 2, 4, self.text(note))
                pdf.set_xy(left + label_w + bar_w + 2, y + 4)
                self.font(7, color=_MUTED)
                pdf.cell(right_w - 2, 4, self.text(f"dropped {count(dropped)}"))
            pdf.set_xy(left, y + 8)
        self.pdf.ln(1)
        self.line(
            "Bars: executions that reached each step (cohort enrolled in the range, followed to "
            "now); light red: dropped at the step; red: the bottleneck.",
            7,
            color=_MUTED,
            h=4,
        )

    def actions(self, a: dict[str, Any]) -> None:
        """The action performance table, one row per step."""
        pdf = self.pdf
        self.font(8)
        head = ("Step", "Action", "Runs", "OK", "Failed", "Success", "p50", "p95", "Top error")
        widths = (44, 22, 14, 14, 13, 16, 15, 15, 33)
        pdf.set_fill_color(255, 255, 255)
        pdf.set_draw_color(*_RULE)
        with pdf.table(
            headings_style=FontFace(emphasis="BOLD", fill_color=(241, 243, 245)),
            col_widths=widths,
            text_align=("LEFT", "LEFT", "RIGHT", "RIGHT", "RIGHT", "RIGHT", "RIGHT", "RIGHT",
                        "LEFT"),
            line_height=5,
            borders_layout="HORIZONTAL_LINES",
            first_row_as_headings=True,
        ) as t:
            t.row([self.text(h) for h in head])
            for s in a["actions"]:
                d = s["duration_seconds"]
                err = s["top_errors"][0] if s["top_errors"] else None
                t.row(
                    [
                        self.text(_clip(s["name"], 30)),
                        self.text(s["action_type"]),
                        count(s["executions"]),
                        count(s["succeeded"]),
                        count(s["failed"]),
                        percent(s["success_rate"]),
                        self.text(duration(d["p50"])),
                        self.text(duration(d["p95"])),
                        self.text(
                            _clip(f"{err['error']} ({err['count']:,})", _TOP_ERROR_CHARS)
                            if err
                            else DASH
                        ),
                    ]
                )


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def render_pdf(
    wf: queries.Workflow, spec: ExportSpec, data: dict[str, Any], generated_at: datetime
) -> bytes:
    """The report as PDF bytes (CPU-bound: run it in a thread)."""
    generated = iso(generated_at.replace(microsecond=0))
    w = _Writer(generated)
    s, f, a = data["summary"], data["funnel"], data["actions"]
    w.line("Workflow report", 9, color=_MUTED, h=5)
    w.line(_clip(wf.name, 70), 20, bold=True, h=10)
    w.line(f"Workflow {wf.workflow_id}   ·   {len(wf.steps)} steps", 9, color=_MUTED, h=5)
    w.line(
        f"Range {iso(spec.start)} to {iso(spec.end)} (half-open; series in {spec.tz})",
        9,
        color=_MUTED,
        h=5,
    )
    w.line(f"Generated {generated}", 9, color=_MUTED, h=5)

    w.heading("Headline numbers")
    ttc, ttv = s["time_to_complete_seconds"], s["time_to_convert_seconds"]
    w.tiles(
        [
            ("Enrollments", count(s["enrollments"]), "enrolled in the range"),
            ("Completions", count(s["completions"]), "completed in the range"),
            ("Conversions", count(s["conversions"]), "converted in the range"),
            ("Exits / failures", f"{count(s['exits'])} / {count(s['failures'])}", "in the range"),
            ("Completion rate", percent(s["completion_rate"]), "of the cohort enrolled"),
            ("Conversion rate", percent(s["conversion_rate"]), "of the cohort enrolled"),
            ("Time to complete", duration(ttc["p50"]), f"median; p95 {duration(ttc['p95'])}"),
            ("Time to convert", duration(ttv["p50"]), f"median; p95 {duration(ttv['p95'])}"),
        ]
    )

    w.heading("Funnel and drop-off per step")
    w.funnel(f)
    worst = next((st for st in f["steps"] if st["bottleneck"]), None)
    if worst is not None:
        w.line(
            f"Bottleneck: step {worst['index'] + 1}, {worst['name']}, loses "
            f"{percent(worst['dropoff_ratio'])} of those who reach it.",
            9,
            bold=True,
            h=6,
        )

    w.heading("Action performance")
    if a["actions"]:
        w.actions(a)
    else:
        w.line("No step attempts in the range.", 9, color=_MUTED)
    return bytes(w.pdf.output())
