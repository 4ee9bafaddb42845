"""The PDF report read back as a person would: rendered to pixels and to positioned words.

Numbers are checked against the API for the same range (and the simulator's truth), bars are
measured in the rendered page against the counts they stand for, and hostile workflows (an
empty cohort, a step that loses everyone, kilobytes of non-ASCII names, a hostile id, a range
across a daylight saving change) must keep the layout intact.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from exporter.api import ApiSettings, create_app
from exporter.api.auth import token_digest
from exporter.config import Config, config_from_dict
from exporter.exports.charts import (
    BOTTLENECK,
    CONTINUED,
    DROPPED,
    IN_PROGRESS,
    SERIES_COLORS,
)
from exporter.exports.datasets import ExportSpec, safe_id
from exporter.exports.pdf import render_pdf
from exporter.queries import Step, Workflow
from exporter.service import ExporterService
from exporter.simulate.generate import generate
from exporter.simulate.model import SimData
from exporter.simulate.writer import create_source_schema, write
from tests.conftest import Databases, PgServer
from tests.integration.test_api_common import data_now
from tests.integration.test_exports import EXPORT_TOKENS
from tests.kit.truth import Truth

P = "/api/v1"
DPI = 150
PX_PER_PT = DPI / 72
PX_PER_MM = DPI / 25.4
TOLERANCE_PX = 2.0
TENANT = "tenant-1"
HOSTILE_ID = 'wf 07 "été";..\\x'
LONG_NAME = "Relance été — Ünïcödé Ελληνικά Кириллица 中文 \u202eevil\u202c\n\t" * 110
FUNNEL_COLORS = (CONTINUED, IN_PROGRESS, DROPPED, BOTTLENECK)
STAMP = r"\d{8}T\d{4}(\d\d)?(Z|[+-]\d{4})"


# data -----------------------------------------------------------------------------------------


def _drop_everyone_at(data: SimData, wf_id: str, k: int) -> None:
    """Every execution of the workflow that reaches step k exits there (100% drop-off)."""
    sid = data.workflow(wf_id).steps[k].id
    for ex in data.executions:
        ids = [a.step_id for a in ex.step_progress]
        if ex.workflow_id != wf_id or sid not in ids:
            continue
        kept = ex.step_progress[: ids.index(sid) + 1]
        last = kept[-1]
        if last.finished_at is None:
            last.finished_at = min(last.entered_at + timedelta(minutes=1), data.now)
            last.status = "succeeded"
        ex.step_progress = kept
        ex.status, ex.exit_reason = "exited", "unsubscribed"
        ex.exited_at = last.finished_at
        ex.completed_at = ex.converted_at = ex.current_step_id = None
        ex.updated_at = last.finished_at


def _rename(data: SimData, wf_id: str) -> None:
    """Hostile id, kilobytes of mixed-script name, long step names and error texts."""
    wf = data.workflow(wf_id)
    wf.id, wf.name = HOSTILE_ID, LONG_NAME
    for k, step in enumerate(wf.steps):
        step.name = f"Étape {k + 1} — " + "très longue ½ " * 250
    for ex in data.executions:
        if ex.workflow_id == wf_id:
            ex.workflow_id = HOSTILE_ID
            for a in ex.step_progress:
                if a.status == "failed":
                    a.error = "Ошибка 550: " + "почтовый ящик недоступен " * 120


def shaped_data(now: datetime) -> SimData:
    """Simulated data where tenant 1 has a plain, a 100%-drop, an empty and a hostile workflow."""
    data = generate(executions=5000, days=40, workflows=8, tenants=2, seed=23, now=now)
    ids = [w.id for w in data.workflows if w.tenant_id == TENANT]
    _drop_everyone_at(data, ids[1], 1)
    cut = now - timedelta(days=8)
    data.executions = [
        e for e in data.executions if e.workflow_id != ids[2] or e.enrolled_at < cut
    ]
    _rename(data, ids[3])
    return data


@dataclass
class Report:
    """A running API over a filled store, with the data and its truth."""

    client: TestClient
    data: SimData
    truth: Truth
    backend: str

    def ids(self) -> list[str]:
        """Tenant 1's workflow ids: plain, 100% drop at step 2, empty cohort, hostile."""
        return [w.id for w in self.data.workflows if w.tenant_id == TENANT]


def config(dsn: str, backend: str, exports: Path) -> Config:
    """Source and store in one database; the export test tokens."""
    tokens = [
        {"name": n, "sha256": token_digest(s), "tenant": t, "scopes": sc}
        for n, (s, t, sc) in EXPORT_TOKENS.items()
    ]
    return config_from_dict(
        {
            "source": {"dsn": dsn},
            "store": {"backend": backend, "pool_max_size": 6},
            "api": {"tokens": tokens},
            "exports": {"directory": str(exports)},
        }
    )


async def serve(
    pg: PgServer, backend: str, data: SimData, exports: Path
) -> AsyncIterator[Report]:
    """Write `data` as the source, ingest it on `backend` and serve the API over it."""
    if backend == "timescaledb" and not pg.has_timescaledb:
        pytest.skip(f"TimescaleDB extension is not installed ({pg.timescaledb_reason})")
    dbs = Databases(pg)
    ext = ("timescaledb",) if backend == "timescaledb" else ()
    dsn = pg.dsn(await dbs.create(extensions=ext))
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await create_source_schema(conn)
            await write(conn, data)
        finally:
            await conn.close()
        cfg = config(dsn, backend, exports)
        svc = ExporterService(cfg)
        await svc.open()
        try:
            await svc.poll_once()
            assert svc.store is not None
            app = create_app(cfg, svc.store, svc, settings=ApiSettings(shutdown_grace=2))
            client = TestClient(TestServer(app, host="127.0.0.1"))
            await client.start_server()
            try:
                yield Report(client, data, Truth(data), backend)
            finally:
                await client.close()
        finally:
            await svc.close()
    finally:
        await dbs.drop_all()


@pytest.fixture(scope="module", params=["postgres", "timescaledb"])
async def report(
    request: pytest.FixtureRequest, pg: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Report]:
    """The shaped data served on each backend."""
    exports = tmp_path_factory.mktemp(f"exports-{request.param}")
    async for r in serve(pg, request.param, shaped_data(data_now()), exports):
        yield r


# reading the PDF back ------------------------------------------------------------------------


@dataclass(frozen=True)
class Word:
    """A word of the rendered page with its box in pixels at DPI."""

    text: str
    x0: float
    y0: float
    x1: float
    y1: float


@dataclass(frozen=True)
class Bar:
    """A filled rectangle found in the page: colour runs of one row of the image."""

    x0: int
    y0: int
    y1: int
    runs: tuple[tuple[tuple[int, int, int], int], ...]

    @property
    def width(self) -> int:
        """Total width in pixels."""
        return sum(n for _, n in self.runs)

    @property
    def x1(self) -> int:
        """First pixel right of the bar."""
        return self.x0 + self.width

    def part(self, color: tuple[int, int, int]) -> int:
        """Width of the segment of one colour."""
        return sum(n for c, n in self.runs if c == color)


@dataclass
class Pdf:
    """A rendered report: its words per page, its page images and its text."""

    body: bytes
    words: list[list[Word]]
    pages: list[Image.Image]
    text: str

    def page_of(self, *phrase: str) -> int:
        """Index of the page that holds the phrase (consecutive words)."""
        for i, words in enumerate(self.words):
            if find(words, *phrase) is not None:
                return i
        raise AssertionError(f"{' '.join(phrase)!r} is not in the report")


def read_pdf(body: bytes, tmp: Path) -> Pdf:
    """Render every page to PNG without anti-aliasing and read its words with their boxes."""
    path = tmp / "report.pdf"
    path.write_bytes(body)
    subprocess.run(
        ["pdftoppm", "-png", "-r", str(DPI), "-aa", "no", "-aaVector", "no", str(path),
         str(tmp / "page")],
        check=True,
    )
    pages = [Image.open(p).convert("RGB") for p in sorted(tmp.glob("page-*.png"))]
    xhtml = subprocess.run(
        ["pdftotext", "-bbox", str(path), "-"], check=True, capture_output=True, text=True
    ).stdout
    root = ET.fromstring(xhtml)
    words = []
    for page in root.iter("{http://www.w3.org/1999/xhtml}page"):
        words.append(
            [
                Word(
                    w.text or "",
                    *(float(w.attrib[k]) * PX_PER_PT for k in ("xMin", "yMin", "xMax", "yMax")),
                )
                for w in page.iter("{http://www.w3.org/1999/xhtml}word")
            ]
        )
    text = subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True, text=True
    ).stdout
    assert len(words) == len(pages)
    return Pdf(body, words, pages, text)


def find(words: Sequence[Word], *phrase: str) -> list[Word] | None:
    """The first run of consecutive words equal to `phrase`."""
    n = len(phrase)
    for i in range(len(words) - n + 1):
        if all(words[i + j].text == phrase[j] for j in range(n)):
            return list(words[i : i + n])
    return None


def lines(words: Iterable[Word]) -> list[list[Word]]:
    """Words grouped into lines (same top within a pixel), top to bottom, left to right."""
    out: dict[int, list[Word]] = {}
    for w in words:
        key = next((k for k in out if abs(k - w.y0) <= 1.5), round(w.y0))
        out.setdefault(key, []).append(w)
    return [sorted(ws, key=lambda w: w.x0) for _, ws in sorted(out.items())]


def tiles(words: Sequence[Word], *labels: str) -> dict[str, str]:
    """Values of headline tiles: the line below a line of labels, split at the labels' x."""
    rows = lines(words)
    for i, row in enumerate(rows):
        starts = []
        for label in labels:
            hit = find(row, *label.split())
            if hit is None:
                break
            starts.append(hit[0].x0)
        else:
            values = rows[i + 1]
            out = {}
            for j, label in enumerate(labels):
                hi = starts[j + 1] if j + 1 < len(starts) else float("inf")
                out[label] = " ".join(w.text for w in values if starts[j] - 1 <= w.x0 < hi - 1)
            return out
    raise AssertionError(f"no tile row with {labels}")


def bars(img: Image.Image, colors: Sequence[tuple[int, int, int]], min_w: int = 1) -> list[Bar]:
    """Horizontal runs of `colors` merged over consecutive image rows with the same runs."""
    px = img.load()
    wanted = set(colors)
    found: list[Bar] = []
    open_: dict[tuple, Bar] = {}
    for y in range(img.height):
        row_runs: list[tuple[int, list]] = []
        x = 0
        while x < img.width:
            c = px[x, y]
            if c in wanted:
                start = x
                runs: list[list] = []
                while x < img.width and px[x, y] in wanted:
                    c = px[x, y]
                    if runs and runs[-1][0] == c:
                        runs[-1][1] += 1
                    else:
                        runs.append([c, 1])
                    x += 1
                row_runs.append((start, runs))
            else:
                x += 1
        now: dict[tuple, Bar] = {}
        for start, runs in row_runs:
            key = (start, tuple((c, n) for c, n in runs))
            if sum(n for _, n in runs) < min_w:
                continue
            prev = open_.get(key)
            now[key] = Bar(start, prev.y0 if prev else y, y + 1, key[1])
        found += [b for k, b in open_.items() if k not in now]
        open_ = now
    found += list(open_.values())
    return sorted(found, key=lambda b: (b.y0, b.x0))


def overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    """Whether two boxes (x0, y0, x1, y1) share more than a hair."""
    return min(a[2], b[2]) - max(a[0], b[0]) > 0.5 and min(a[3], b[3]) - max(a[1], b[1]) > 0.5


def box(w: Word) -> tuple[float, float, float, float]:
    """A word's box."""
    return (w.x0, w.y0, w.x1, w.y1)


def assert_clean_layout(pdf: Pdf) -> None:
    """Every word inside the margins, no two words overlap, no word over a bar."""
    margin = 15 * PX_PER_MM
    for i, (words, img) in enumerate(zip(pdf.words, pdf.pages, strict=True)):
        for w in words:
            assert w.x0 >= margin - 2 and w.x1 <= img.width - margin + 2, (i, w)
            assert w.y1 <= img.height - 5 * PX_PER_MM, (i, w)
        ordered = sorted(words, key=lambda w: w.y0)
        for j, a in enumerate(ordered):
            for b in ordered[j + 1 :]:
                if b.y0 >= a.y1:
                    break
                assert not overlaps(box(a), box(b)), (i, a, b)
        filled = bars(img, (*FUNNEL_COLORS, *SERIES_COLORS.values()), min_w=3)
        for b in filled:
            if b.y1 - b.y0 < 2:
                continue
            for w in words:
                assert not overlaps((b.x0, b.y0, b.x1, b.y1), box(w)), (i, b, w)


# the API's numbers ---------------------------------------------------------------------------


def auth(name: str) -> dict[str, str]:
    """Authorization header of a test token."""
    return {"Authorization": f"Bearer {EXPORT_TOKENS[name][0]}"}


def path_of(wid: str, tail: str = "") -> str:
    """The analytics path of a workflow (its id percent-encoded)."""
    return f"{P}/workflows/{quote(wid, safe='')}/analytics{tail}"


async def api(client: TestClient, wid: str, tail: str, q: dict[str, str]) -> dict[str, Any]:
    """One analytics document."""
    resp = await client.get(path_of(wid, tail), params=q, headers=auth("a_read"))
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def export_pdf(client: TestClient, wid: str, q: dict[str, str], tmp: Path) -> Pdf:
    """The report streamed for `q`, read back."""
    resp = await client.get(
        path_of(wid, "/export"), params={**q, "format": "pdf"}, headers=auth("a_export")
    )
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "application/pdf"
    body = await resp.read()
    assert body.startswith(b"%PDF-")
    return read_pdf(body, tmp)


def pct(r: float | None) -> str:
    """A ratio as the report writes it."""
    return "\u2013" if r is None else f"{r * 100:.1f}%"


def human(t: datetime, tz: str) -> str:
    """A time as a person reads it, in the C locale: Wed 25 Nov 2026 15:13 CET."""
    local = t.astimezone(ZoneInfo(tz))
    return local.strftime("%a %-d %b %Y %H:%M %Z")


def local_midnight(t: datetime, tz: str, days: int = 0) -> datetime:
    """Midnight in `tz` of the day of `t`, moved by `days` calendar days, in UTC."""
    zone = ZoneInfo(tz)
    d = t.astimezone(zone).replace(tzinfo=None, hour=0, minute=0, second=0, microsecond=0)
    return (d + timedelta(days=days)).replace(tzinfo=zone).astimezone(UTC)


def funnel_rows(pdf: Pdf, page: int) -> tuple[list[Bar], int, int]:
    """Bars of the funnel (top to bottom), the x where they start and the full-scale width."""
    found = [b for b in bars(pdf.pages[page], FUNNEL_COLORS) if b.y1 - b.y0 >= 4 * PX_PER_MM]
    x0 = min(b.x0 for b in found)
    rows = [b for b in found if b.x0 == x0]
    return rows, x0, max(b.width for b in rows)


def check_funnel(pdf: Pdf, funnel: dict[str, Any]) -> list[Bar]:
    """Each drawn bar equals its counts to scale; drop-off and active lie inside the bar."""
    page = pdf.page_of("Cohort", "funnel:")
    rows, x0, full = funnel_rows(pdf, page)
    top = max(funnel["enrolled"], *(s["reached"] for s in funnel["steps"]))
    expected = [(funnel["enrolled"], 0, 0, False)]
    expected += [
        (s["reached"], s["in_progress"], s["dropped"], s["bottleneck"]) for s in funnel["steps"]
    ]
    expected.append((funnel["completed"], 0, 0, False))
    drawn = [e for e in expected if e[0] > 0]
    assert len(rows) == len(drawn), (rows, drawn)
    unit = full / top
    for bar, (reached, active, dropped, worst) in zip(rows, drawn, strict=True):
        assert abs(bar.width - reached * unit) <= TOLERANCE_PX, (bar, reached)
        drop_color = BOTTLENECK if worst else DROPPED
        assert abs(bar.part(drop_color) - max(dropped, 0) * unit) <= TOLERANCE_PX, (bar, dropped)
        assert abs(bar.part(IN_PROGRESS) - active * unit) <= TOLERANCE_PX, (bar, active)
        assert bar.part(BOTTLENECK if not worst else DROPPED) == 0
        if dropped > 0:
            assert bar.runs[-1][0] == drop_color, bar  # drop-off is the end of the bar
            assert bar.x1 <= x0 + full
    right = x0 + full
    for w in pdf.words[page]:
        for b in rows:
            assert not overlaps((b.x0, b.y0, b.x1, b.y1), box(w)), (b, w)
        if rows[0].y0 <= w.y0 <= rows[-1].y1:
            assert w.x1 <= x0 or w.x0 >= right, w  # labels left and right of the bars
    return rows


def check_headline(pdf: Pdf, summary: dict[str, Any], funnel: dict[str, Any]) -> None:
    """Activity tiles equal the API's summary, cohort tiles its funnel; both are defined."""
    words = pdf.words[0]
    act = tiles(words, "Enrollments", "Completions", "Conversions", "Exits", "Failures")
    for label, key in (
        ("Enrollments", "enrollments"),
        ("Completions", "completions"),
        ("Conversions", "conversions"),
        ("Exits", "exits"),
        ("Failures", "failures"),
    ):
        assert act[label] == f"{summary[key]:,}", (label, act)
    cohort = tiles(words, "Completion rate", "Conversion rate", "Still active", "Left early")
    assert cohort["Completion rate"] == pct(summary["completion_rate"])
    assert cohort["Conversion rate"] == pct(summary["conversion_rate"])
    assert cohort["Still active"] == f"{funnel['in_progress']:,}"
    left = funnel["enrolled"] - funnel["completed"] - funnel["in_progress"]
    assert cohort["Left early"] == f"{left:,}"
    text = " ".join(pdf.text.split())
    assert f"Cohort: the {funnel['enrolled']:,} executions enrolled in the range" in text
    assert f"{funnel['completed']:,} of {funnel['enrolled']:,} completed" in text
    assert "whenever the contact enrolled" in text
    assert "enrolled in the range, followed to now" in text


def check_daily(
    pdf: Pdf, series: list[dict[str, Any]], labels: dict[int, str] | None = None
) -> None:
    """Bars of each series are the API's daily counts to one scale, in day order.

    With `labels` (bucket index -> date label), each bar stands under its day's label.
    """
    page = pdf.page_of("Daily", "activity")
    img = pdf.pages[page]
    found = {
        name: [b for b in bars(img, [color]) if b.y1 - b.y0 >= 1 and b.runs[0][1] >= 3]
        for name, color in SERIES_COLORS.items()
    }
    # the legend swatches are squares left of the plot: leave them out
    legend_y = max(
        w.y1 for w in pdf.words[page] if w.text in ("Enrollments", "Completions", "Conversions")
    )
    found = {k: sorted((b for b in v if b.y0 > legend_y), key=lambda b: b.x0)
             for k, v in found.items()}
    peak = max(p[k] for p in series for k in SERIES_COLORS)
    tallest = max((b.y1 - b.y0 for v in found.values() for b in v), default=0)
    unit = tallest / peak if peak else 0
    centers = {}
    if labels:
        words = pdf.words[page]
        for i, label in labels.items():
            hit = find(words, *label.split())
            assert hit is not None, f"day label {label!r} missing"
            centers[i] = (hit[0].x0 + hit[-1].x1) / 2
    base = None
    for name in SERIES_COLORS:
        want = [(i, p[name]) for i, p in enumerate(series) if p[name] > 0]
        got = found[name]
        assert len(got) == len(want), (name, len(got), want)
        for bar, (i, value) in zip(got, want, strict=True):
            assert abs((bar.y1 - bar.y0) - value * unit) <= TOLERANCE_PX, (name, i, value, bar)
            base = bar.y1 if base is None else base
            assert abs(bar.y1 - base) <= 1, "bars stand on one baseline"
            if centers:
                nearest = min(centers, key=lambda k: abs(centers[k] - (bar.x0 + bar.x1) / 2))
                assert nearest == i, (name, i, labels)


# tests ---------------------------------------------------------------------------------------


async def test_report_numbers_bars_and_dates(report: Report, tmp_path: Path) -> None:
    wid = report.ids()[0]
    tz = "Europe/Paris"
    end = data_now().replace(minute=0, second=0) - timedelta(hours=1)
    start = end - timedelta(days=30)
    q = {"from": start.isoformat(), "to": end.isoformat(), "tz": tz}
    took = time.perf_counter()
    pdf = await export_pdf(report.client, wid, q, tmp_path)
    took = time.perf_counter() - took
    assert took < 3.0
    assert len(pdf.pages) == 2

    summary = await api(report.client, wid, "", {**q, "granularity": "day"})
    funnel = await api(report.client, wid, "/funnel", q)
    actions = await api(report.client, wid, "/actions", q)
    truth = report.truth.activity(wid, start, end)
    assert all(summary[k] == truth[k] for k in ("enrollments", "completions", "conversions"))
    cohort = report.truth.cohort_funnel(wid, start, end)
    assert [s["reached"] for s in funnel["steps"]] == [s["reached"] for s in cohort["steps"]]
    assert [s["dropped"] for s in funnel["steps"]] == [s["dropped"] for s in cohort["steps"]]

    text = " ".join(pdf.text.split())
    assert f"{human(start, tz)} \u2192 {human(end, tz)}" in text
    assert f"Dates and days in {tz}" in text
    assert "T00:00" not in text.split("Exact range")[0]  # no raw ISO times for people
    check_headline(pdf, summary, funnel)
    rows = check_funnel(pdf, funnel)
    assert any(b.part(BOTTLENECK) for b in rows) == any(s["bottleneck"] for s in funnel["steps"])
    check_daily(pdf, summary["series"])
    totals = f"Enrollments {summary['enrollments']:,} Completions {summary['completions']:,}"
    assert totals in text

    table = lines(pdf.words[pdf.page_of("Action", "performance")])
    for a in actions["actions"]:
        row = next(r for r in table if find(r, *a["name"].split()) is not None)
        cells = [w.text for w in row][len(a["name"].split()) :]
        want = [a["action_type"], f"{a['executions']:,}", f"{a['succeeded']:,}",
                f"{a['failed']:,}", pct(a["success_rate"])]
        assert cells[:5] == want, (cells, want)
    assert_clean_layout(pdf)


async def test_report_bottleneck_losing_everyone(report: Report, tmp_path: Path) -> None:
    wid = report.ids()[1]
    q = {"range": "30d"}
    funnel = await api(report.client, wid, "/funnel", q)
    worst = funnel["steps"][1]
    assert worst["reached"] >= 20 and worst["dropped"] == worst["reached"]
    assert worst["dropoff_ratio"] == 1.0 and worst["bottleneck"]
    assert funnel["completed"] == 0
    pdf = await export_pdf(report.client, wid, q, tmp_path)
    rows = check_funnel(pdf, funnel)
    assert len(rows) == 3  # enrolled, step 1, step 2; nobody reaches later steps
    bottleneck = rows[2]
    assert bottleneck.runs == ((BOTTLENECK, bottleneck.width),)
    text = " ".join(pdf.text.split())
    assert f"{worst['reached']:,} reached \u00b7 bottleneck" in text
    assert f"dropped {worst['dropped']:,} (100.0%)" in text
    assert "Bottleneck: step 2 loses 100.0% of those who reach it" in text
    assert_clean_layout(pdf)


async def test_report_of_an_empty_cohort(report: Report, tmp_path: Path) -> None:
    wid = report.ids()[2]
    q = {"range": "7d", "tz": "America/New_York"}
    summary = await api(report.client, wid, "", {**q, "granularity": "day"})
    assert summary["enrollments"] == 0 and summary["completion_rate"] is None
    assert summary["completions"] > 0  # earlier enrollments still finish in the range
    pdf = await export_pdf(report.client, wid, q, tmp_path)
    funnel = await api(report.client, wid, "/funnel", q)
    check_headline(pdf, summary, funnel)
    text = " ".join(pdf.text.split())
    assert "No executions were enrolled in the range: the cohort funnel is empty." in text
    page = pdf.page_of("Cohort", "funnel:")
    assert not [b for b in bars(pdf.pages[page], FUNNEL_COLORS) if b.width > 15]
    check_daily(pdf, summary["series"])
    assert len(pdf.pages) <= 2
    assert_clean_layout(pdf)


async def test_report_with_kilobytes_of_non_ascii_names(report: Report, tmp_path: Path) -> None:
    wid = report.ids()[3]
    assert wid == HOSTILE_ID
    q = {"range": "30d"}
    pdf = await export_pdf(report.client, wid, q, tmp_path)
    assert len(pdf.pages) == 2
    text = pdf.text
    assert "Relance été — Ünïcödé Ελληνικά Кириллица" in text
    assert "\u2026" in text and "Étape 1 — très longue" in text
    assert "\u202e" not in text and "\u202c" not in text  # no bidi controls from the source
    assert "Ошибка 550" in text
    assert len(pdf.body) < 400_000
    funnel = await api(report.client, wid, "/funnel", q)
    check_funnel(pdf, funnel)
    assert_clean_layout(pdf)


async def test_report_across_a_clock_change(pg: PgServer, tmp_path: Path) -> None:
    tz = "Europe/Paris"
    zone = ZoneInfo(tz)
    t = (datetime.now(UTC) - timedelta(days=6)).replace(minute=0, second=0, microsecond=0)
    while (t - timedelta(hours=1)).astimezone(zone).utcoffset() == t.astimezone(
        zone
    ).utcoffset():
        t -= timedelta(hours=1)  # the last clock change at least six days ago
    start = local_midnight(t, tz, -3)
    end = local_midnight(t, tz, 4)
    data = generate(
        executions=1500, days=12, workflows=2, tenants=2, seed=5, now=end + timedelta(hours=1)
    )
    async for r in serve(pg, "postgres", data, tmp_path / "exports"):
        wid = r.ids()[0]
        q = {"from": start.isoformat(), "to": end.isoformat(), "tz": tz}
        summary = await api(r.client, wid, "", {**q, "granularity": "day"})
        series = summary["series"]
        days = [local_midnight(start, tz, k) for k in range(7)]
        assert [datetime.fromisoformat(p["bucket"].replace("Z", "+00:00")) for p in series] == days
        truth = r.truth.activity_series(wid, start, end, "day", tz)
        for p, d in zip(series, days, strict=True):
            assert p["enrollments"] == truth.get(d, {}).get("enrollments", 0)
        pdf = await export_pdf(r.client, wid, q, tmp_path)
        text = " ".join(pdf.text.split())
        assert f"{human(start, tz)} \u2192 {human(end, tz)}" in text
        assert human(start, tz)[-4:] != human(end, tz)[-4:]  # CEST then CET, or back
        bounds = [*days, end]
        odd = next(k for k in range(7) if bounds[k + 1] - bounds[k] != timedelta(days=1))
        hours = (bounds[odd + 1] - bounds[odd]).total_seconds() / 3600
        label = days[odd].astimezone(zone).strftime("%a %-d %b")
        assert f"{label} has {hours:g} hours (clock change)" in text
        labels = {k: d.astimezone(zone).strftime("%a %-d %b") for k, d in enumerate(days)}
        check_daily(pdf, series, labels)
        assert_clean_layout(pdf)


async def test_download_names_carry_workflow_and_range(report: Report) -> None:
    tz = "Asia/Kathmandu"  # UTC+05:45
    end = data_now().replace(second=0)
    start = end - timedelta(days=7)
    q = {"from": start.isoformat(), "to": end.isoformat(), "tz": tz}
    names = {}
    plain = report.ids()[0]
    for wid, fmt, zone in (
        (plain, "pdf", tz), (plain, "csv", tz), (plain, "pdf", "UTC"), (HOSTILE_ID, "pdf", tz)
    ):
        resp = await report.client.get(
            path_of(wid, "/export"), params={**q, "tz": zone, "format": fmt},
            headers=auth("a_export"),
        )
        assert resp.status == 200
        await resp.read()
        names[wid, fmt, zone] = resp.headers["Content-Disposition"]
    stamps = "-".join(
        t.astimezone(ZoneInfo(tz)).strftime("%Y%m%dT%H%M%z") for t in (start, end)
    )
    assert stamps.count("+0545") == 2
    utc = "-".join(t.astimezone(UTC).strftime("%Y%m%dT%H%MZ") for t in (start, end))
    assert names[plain, "pdf", tz] == f'attachment; filename="wfa-report-{plain}-{stamps}.pdf"'
    assert names[plain, "csv", tz] == f'attachment; filename="wfa-summary-{plain}-{stamps}.csv"'
    assert names[plain, "pdf", "UTC"] == f'attachment; filename="wfa-report-{plain}-{utc}.pdf"'
    m = re.fullmatch(r'attachment; filename="([A-Za-z0-9_.+-]+)"', names[HOSTILE_ID, "pdf", tz])
    assert m is not None, names[HOSTILE_ID, "pdf", tz]
    assert re.fullmatch(rf"wfa-report-wf_07_t_x_[0-9a-f]{{8}}-{STAMP}-{STAMP}\.pdf", m.group(1))

    resp = await report.client.post(
        path_of(HOSTILE_ID, "/export"), params={**q, "format": "pdf"}, headers=auth("a_export")
    )
    assert resp.status == 202
    job = await resp.json()
    for _ in range(300):
        status = await report.client.get(job["status_url"], headers=auth("a_export"))
        job = await status.json()
        if job["status"] not in ("queued", "running"):
            break
        await asyncio.sleep(0.05)
    assert job["status"] == "succeeded", job
    resp = await report.client.get(job["download_url"], headers=auth("a_export"))
    assert resp.status == 200 and (await resp.read()).startswith(b"%PDF-")
    assert resp.headers["Content-Disposition"] == names[HOSTILE_ID, "pdf", tz]


def test_safe_ids_are_bounded_and_distinct() -> None:
    assert safe_id("wf-01") == "wf-01"
    assert safe_id("a/b") != safe_id("a:b")
    assert re.fullmatch(r"a_b_[0-9a-f]{8}", safe_id("a/b"))
    long = "x" * 256
    assert len(safe_id(long)) <= 60 and safe_id(long) != safe_id(long[:-1])
    assert re.fullmatch(r"[0-9a-f]{8}", safe_id('"\r\n/'))
    for hostile in ('"; filename=evil.exe', "../../etc/passwd", "\u202egnp.exe", "é" * 300):
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,60}", safe_id(hostile)), hostile


def test_render_time_of_a_worst_case_report() -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(days=400)
    steps = [Step(f"s{k}", k, "Étape " + "très longue " * 300, "send_email") for k in range(12)]
    wf = Workflow("wf", TENANT, LONG_NAME, now, steps)
    spec = ExportSpec(TENANT, "wf", "summary", "pdf", start, now, "day", "Europe/Paris")
    n = 100_000
    reached = [n - k * 7000 for k in range(12)]
    funnel_steps = [
        {"index": k, "name": s.name, "reached": reached[k], "in_progress": 500,
         "dropped": 6500, "dropoff_ratio": 6500 / reached[k], "bottleneck": k == 11}
        for k, s in enumerate(steps)
    ]
    stats = {"avg": 1.0, "p50": 0.5, "p95": 3.0, "p99": 9.0}
    data = {
        "summary": {
            "enrollments": n, "completions": 20_000, "conversions": 9_000, "exits": 30_000,
            "failures": 1_000, "completion_rate": 0.2, "conversion_rate": 0.09,
            "time_to_complete_seconds": stats, "time_to_convert_seconds": stats,
            "series": [
                {"bucket": local_midnight(start, "Europe/Paris", k), "enrollments": 250 + k,
                 "completions": 50, "conversions": k % 30}
                for k in range(401)
            ],
        },
        "funnel": {
            "enrolled": n, "completed": 16_000, "converted": 9_000, "exited": 30_000,
            "failed": 1_000, "in_progress": 6_000, "completion_rate": 0.16,
            "conversion_rate": 0.09, "steps": funnel_steps,
        },
        "actions": {
            "actions": [
                {"index": k, "name": s.name, "action_type": "send_email", "executions": n,
                 "succeeded": n - 10, "failed": 10, "success_rate": 0.9999,
                 "duration_seconds": stats,
                 "top_errors": [{"error": "x" * 5000, "count": 10}]}
                for k, s in enumerate(steps)
            ]
        },
    }
    took = time.perf_counter()
    body = render_pdf(wf, spec, data, now)
    took = time.perf_counter() - took
    assert body.startswith(b"%PDF-")
    assert took < 1.5, took

