"""The report's page and text: fonts, text the font can show, fitting text to a width, formats."""

from __future__ import annotations

import math
import unicodedata
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

from fpdf import FPDF
from fpdf.enums import XPos, YPos

FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"))
"""Where DejaVu Sans is looked for (Debian: fonts-dejavu-core); core Helvetica otherwise."""

Color = tuple[int, int, int]
INK: Color = (33, 37, 41)
MUTED: Color = (108, 117, 125)
RULE: Color = (222, 226, 230)
TILE: Color = (248, 249, 250)
ALERT: Color = (170, 40, 34)
"""Text that warns (the bottleneck); darker than the bottleneck bar so that it reads on white."""

DASH = "\u2013"
"""Shown for a number that does not exist (no data)."""
ELLIPSIS = "\u2026"
MAX_TEXT = 400
"""Characters of a source text looked at before it is fitted (the rest cannot fit anyway)."""
_UNITS = ((1, 0.001, "ms"), (120, 1, "s"), (7200, 60, "min"), (172800, 3600, "h"))
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_ASCII = {DASH: "-", ELLIPSIS: "...", "\u00b7": "-", "\u2192": "->", "\u25a0": "#"}


@lru_cache(maxsize=1)
def font_files() -> tuple[Path, Path] | None:
    """DejaVu Sans regular and bold, when installed."""
    for d in FONT_DIRS:
        regular, bold = d / "DejaVuSans.ttf", d / "DejaVuSans-Bold.ttf"
        if regular.is_file() and bold.is_file():
            return regular, bold
    return None


# numbers, durations and dates --------------------------------------------------------------


def count(n: int | None) -> str:
    """An integer with thousands separators; a dash for none."""
    return DASH if n is None else f"{n:,}"


def percent(r: float | None) -> str:
    """A ratio as a percentage with one decimal; a dash for none."""
    return DASH if r is None or not math.isfinite(r) else f"{r * 100:.1f}%"


def duration(seconds: float | None) -> str:
    """Seconds in the largest sensible unit."""
    if seconds is None or not math.isfinite(seconds):
        return DASH
    for limit, div, unit in _UNITS:
        if seconds < limit:
            value = seconds / div
            return f"{value:.0f} {unit}" if unit == "ms" else f"{value:.1f} {unit}"
    return f"{seconds / 86400:.1f} d"


def span(delta: timedelta) -> str:
    """A range length in days, hours and minutes ("7 days", "1 day 6 h", "45 min")."""
    minutes = int(delta.total_seconds() // 60)
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    parts = []
    if days:
        parts.append(f"{days} day" + ("" if days == 1 else "s"))
    if hours:
        parts.append(f"{hours} h")
    if mins or not parts:
        parts.append(f"{mins} min")
    return " ".join(parts)


def zone_abbrev(t: datetime) -> str:
    """The zone's abbreviation at `t` (CET, EDT, UTC), else its offset as UTC+05:30."""
    name = t.tzname() or ""
    if name.isalpha():
        return name
    off = t.utcoffset() or timedelta()
    sign = "-" if off < timedelta() else "+"
    hours, rest = divmod(abs(int(off.total_seconds())) // 60, 60)
    return f"UTC{sign}{hours:02d}:{rest:02d}"


def day(t: datetime) -> str:
    """A local date as "Wed 25 Nov"."""
    return f"{_WEEKDAYS[t.weekday()]} {t.day} {_MONTHS[t.month - 1]}"


def short_day(t: datetime) -> str:
    """A local date as "25 Nov"."""
    return f"{t.day} {_MONTHS[t.month - 1]}"


def when(t: datetime, zone: ZoneInfo) -> str:
    """An instant as a person reads it in `zone`: "Wed 25 Nov 2026 15:13 CET"."""
    local = t.astimezone(zone)
    return f"{day(local)} {local.year} {local:%H:%M} {zone_abbrev(local)}"


# the document --------------------------------------------------------------------------------


class _Page(FPDF):
    """An A4 page with a footer line."""

    footer_text = ""
    font_name = "Helvetica"

    def footer(self) -> None:
        """Report name, generated time and page number at the bottom of each page."""
        self.set_y(-12)
        self.set_font(self.font_name, "", 8)
        self.set_text_color(*MUTED)
        sep = "  \u00b7  " if self.font_name != "Helvetica" else "  -  "
        self.cell(0, 5, f"{self.footer_text}{sep}page {self.page_no()} of {{nb}}", align="C")


class Doc:
    """An A4 document with the report's fonts and text helpers."""

    def __init__(self, title: str, footer: str) -> None:
        self.pdf = _Page(orientation="P", unit="mm", format="A4")
        fonts = font_files()
        self.unicode = fonts is not None
        if fonts is not None:
            self.pdf.add_font("DejaVu", "", str(fonts[0]))
            self.pdf.add_font("DejaVu", "B", str(fonts[1]))
            self.pdf.font_name = "DejaVu"
        self.pdf.set_auto_page_break(auto=True, margin=16)
        self.pdf.set_margins(15, 15, 15)
        self.font(8)
        self.pdf.footer_text = self.fit(footer, 150)
        self.pdf.set_title(self.text(title))
        self.pdf.set_creator("workflow-analytics")
        self.pdf.add_page()

    @property
    def width(self) -> float:
        """Width between the margins."""
        return self.pdf.w - self.pdf.l_margin - self.pdf.r_margin

    @property
    def room(self) -> float:
        """Height left on the page above the bottom margin."""
        return self.pdf.page_break_trigger - self.pdf.get_y()

    def need(self, height: float) -> None:
        """Start a new page unless `height` fits on this one."""
        if self.room < height:
            self.pdf.add_page()

    def text(self, s: str) -> str:
        """`s` on one line with only characters the font can show (source text is untrusted)."""
        s = s[:MAX_TEXT]
        if not s.isprintable():
            s = "".join(
                ch if ch.isprintable() else " "
                for ch in s
                if unicodedata.category(ch) not in ("Cf", "Cs")
            )
        if self.unicode:
            font = self.pdf.current_font
            cmap = getattr(font, "cmap", None)
            if cmap and not all(ord(ch) in cmap for ch in s):
                s = "".join(ch if ord(ch) in cmap else "\ufffd" for ch in s)
            return s
        for k, v in _ASCII.items():
            s = s.replace(k, v)
        return s.encode("latin-1", "replace").decode("latin-1")

    def fit(self, s: str, width: float) -> str:
        """`s` cut with an ellipsis so that it is at most `width` mm wide in the current font."""
        s = self.text(s)
        measure = self.pdf.get_string_width
        if measure(s) <= width:
            return s
        dots = self.text(ELLIPSIS)
        lo, hi = 0, len(s)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if measure(s[:mid].rstrip() + dots) <= width:
                lo = mid
            else:
                hi = mid - 1
        return s[:lo].rstrip() + dots

    def font(self, size: float, bold: bool = False, color: Color = INK) -> None:
        """Set the font and colour."""
        self.pdf.set_font(self.pdf.font_name, "B" if bold else "", size)
        self.pdf.set_text_color(*color)

    def shrink(
        self, s: str, width: float, size: float, least: float, bold: bool = False,
        color: Color = INK,
    ) -> None:
        """Set the largest font size from `size` down to `least` at which `s` fits `width`."""
        text = self.text(s)
        while True:
            self.font(size, bold, color)
            if size <= least or self.pdf.get_string_width(text) <= width:
                return
            size = max(least, size - 0.5)

    def write(
        self,
        x: float,
        y: float,
        w: float,
        h: float,
        s: str,
        align: str = "L",
    ) -> None:
        """`s` fitted into the box (x, y, w, h) in the current font, without padding."""
        self.pdf.set_xy(x, y)
        c_margin = self.pdf.c_margin
        self.pdf.c_margin = 0
        self.pdf.cell(w, h, self.fit(s, w), align=align)
        self.pdf.c_margin = c_margin

    def line(
        self, s: str, size: float = 10, bold: bool = False, color: Color = INK, h: float = 6
    ) -> None:
        """One full-width line of text, fitted."""
        self.font(size, bold, color)
        self.write(self.pdf.l_margin, self.pdf.get_y(), self.width, h, s)
        self.pdf.set_xy(self.pdf.l_margin, self.pdf.get_y() + h)

    def para(self, s: str, size: float = 7.5, color: Color = MUTED, h: float = 3.8) -> None:
        """Full-width text wrapped over as many lines as it needs (the report's own words)."""
        self.font(size, color=color)
        c_margin = self.pdf.c_margin
        self.pdf.c_margin = 0
        self.pdf.set_x(self.pdf.l_margin)
        self.pdf.multi_cell(self.width, h, self.text(s), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.pdf.c_margin = c_margin
        self.pdf.ln(0.8)

    def heading(self, s: str, need: float = 40) -> None:
        """A section heading with a rule under it, on a new page unless `need` mm follow."""
        self.pdf.ln(3)
        self.need(need + 11)
        self.line(s, 13, bold=True, h=8)
        y = self.pdf.get_y()
        self.pdf.set_draw_color(*RULE)
        self.pdf.set_line_width(0.2)
        self.pdf.line(self.pdf.l_margin, y, self.pdf.w - self.pdf.r_margin, y)
        self.pdf.ln(2.5)

    def swatch(self, x: float, y: float, color: Color, label: str, size: float = 7.5) -> float:
        """A small colour square with a label; the x after it."""
        self.pdf.set_fill_color(*color)
        self.pdf.rect(x, y + 0.9, 2.6, 2.6, style="F")
        self.font(size, color=MUTED)
        label = self.text(label)
        w = self.pdf.get_string_width(label)
        self.write(x + 3.6, y, w + 0.5, 4.4, label)
        return x + 3.6 + w + 5

    def output(self) -> bytes:
        """The finished PDF."""
        return bytes(self.pdf.output())

