"""One definition of every rollup, rendered as PostgreSQL tables and views or TimescaleDB caggs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

ORIGIN = "'2000-01-03 00:00:00+00'::timestamptz"


@dataclass(frozen=True, slots=True)
class Dim:
    """A grouping column: its name, the expression over the raw table, and its SQL type."""

    name: str
    expr: str
    type: str


@dataclass(frozen=True, slots=True)
class Measure:
    """An additive measure: aggregate over raw rows, and the same value for a single raw row."""

    name: str
    agg: str
    per_row: str


@dataclass(frozen=True, slots=True)
class Rollup:
    """A rollup family `wfa.<name>_1h` / `wfa.<name>_1d` over one raw table."""

    name: str
    raw: str
    time: str
    dims: tuple[Dim, ...]
    measures: tuple[Measure, ...]

    def relation(self, level: str) -> str:
        """Name of the readable relation at `level` ('1h' or '1d')."""
        return f"wfa.{self.name}_{level}"

    @property
    def table_columns(self) -> str:
        """Column definitions of a materialized table: bucket, dimensions, measures."""
        return ", ".join(
            ["bucket timestamptz NOT NULL", *(f"{d.name} {d.type}" for d in self.dims)]
            + [f"{m.name} bigint" for m in self.measures]
        )

    @property
    def covered(self) -> str:
        """Columns a covering (workflow_id, bucket) read index includes."""
        dims = [d.name for d in self.dims if d.name != "workflow_id"]
        return ", ".join([*dims, *(m.name for m in self.measures)])


@dataclass(frozen=True, slots=True)
class Coarse:
    """A level above the daily one: whole periods of `days` days aligned with ORIGIN (a
    Monday), summed from the level below, in a plain table `wfa.<rollup>_<suffix>_mat` on
    both backends; `mark` names its watermark's row in `wfa.weekly_marks`."""

    suffix: str
    days: int
    mark: str

    def table(self, r: Rollup) -> str:
        """The table of rollup `r` at this level."""
        return f"wfa.{r.name}_{self.suffix}_mat"

    def key(self, r: Rollup) -> str:
        """The watermark row of rollup `r` at this level."""
        return self.mark.format(name=r.name)

    @property
    def period(self) -> timedelta:
        """The length of one period."""
        return timedelta(days=self.days)

    @property
    def width(self) -> str:
        """The period as an SQL interval literal."""
        return f"{self.days} days"


COARSE: tuple[Coarse, ...] = (Coarse("1w", 7, "{name}"), Coarse("4w", 28, "{name}_4w"))
"""Weeks, then blocks of four weeks: each period nests whole in the next level's."""

_TEXT = "text"
_COMMON = (Dim("tenant_id", "tenant_id", _TEXT), Dim("workflow_id", "workflow_id", _TEXT))

ROLLUPS: tuple[Rollup, ...] = (
    Rollup(
        name="events",
        raw="wfa.workflow_events",
        time="occurred_at",
        dims=(
            *_COMMON,
            Dim("event", "event", _TEXT),
            Dim("reason", "reason", _TEXT),
            Dim("duration_le", "duration_le", "double precision"),
        ),
        measures=(
            Measure("events", "count(*)", "1::bigint"),
            Measure("duration_ms_sum", "sum(duration_ms)::bigint", "duration_ms"),
        ),
    ),
    Rollup(
        name="step_runs",
        raw="wfa.step_runs",
        time="entered_at",
        dims=(
            *_COMMON,
            Dim("step_id", "step_id", _TEXT),
            Dim("action_type", "action_type", _TEXT),
            Dim("status", "status", _TEXT),
            Dim("duration_le", "duration_le", "double precision"),
            Dim("error", "error", _TEXT),
        ),
        measures=(
            Measure("runs", "count(*)", "1::bigint"),
            Measure("duration_ms_sum", "sum(duration_ms)::bigint", "duration_ms"),
        ),
    ),
    Rollup(
        name="cohort",
        raw="wfa.executions",
        time="enrolled_at",
        dims=(
            *_COMMON,
            Dim("status", "status", _TEXT),
            Dim(
                "current_step_id",
                "CASE WHEN status = 'active' THEN current_step_id END",
                _TEXT,
            ),
        ),
        measures=(
            Measure("executions", "count(*)", "1::bigint"),
            Measure("converted", "count(converted_at)", "(converted_at IS NOT NULL)::int::bigint"),
            Measure(
                "converted_in_window",
                "count(*) FILTER (WHERE converted_in_window)",
                "converted_in_window::int::bigint",
            ),
        ),
    ),
    Rollup(
        name="cohort_steps",
        raw="wfa.execution_steps",
        time="enrolled_at",
        dims=(*_COMMON, Dim("step_id", "step_id", _TEXT)),
        measures=(Measure("reached", "count(*)", "1::bigint"),),
    ),
)

def hourly_select(r: Rollup, bucket_fn: str, where: str = "") -> str:
    """SELECT aggregating the raw table into hour buckets (`bucket_fn`: date_bin or time_bucket)."""
    dims = ", ".join(f"{d.expr} AS {d.name}" for d in r.dims)
    measures = ", ".join(f"{m.agg} AS {m.name}" for m in r.measures)
    groups = ", ".join(str(i) for i in range(1, len(r.dims) + 2))
    bucket = (
        f"date_bin('1 hour', {r.time}, {ORIGIN})"
        if bucket_fn == "date_bin"
        else f"time_bucket('1 hour', {r.time})"
    )
    return (
        f"SELECT {bucket} AS bucket, {dims}, {measures} FROM {r.raw}"
        f"{' WHERE ' + where if where else ''} GROUP BY {groups}"
    )


def daily_select(
    r: Rollup, source: str, bucket_fn: str, where: str = "", width: str = "1 day"
) -> str:
    """SELECT summing an hourly relation into day buckets (or a daily one into `width`)."""
    dims = ", ".join(d.name for d in r.dims)
    measures = ", ".join(f"sum({m.name})::bigint AS {m.name}" for m in r.measures)
    groups = ", ".join(str(i) for i in range(1, len(r.dims) + 2))
    bucket = (
        f"date_bin('{width}', bucket, {ORIGIN})"
        if bucket_fn == "date_bin"
        else f"time_bucket('{width}', bucket)"
    )
    return (
        f"SELECT {bucket} AS bucket, {dims}, {measures} FROM {source}"
        f"{' WHERE ' + where if where else ''} GROUP BY {groups}"
    )


@dataclass(frozen=True, slots=True)
class ReadSource:
    """Where a backend's range functions find materialized buckets and their watermarks.

    `hourly` and `daily` are relation name templates (`{name}` is the rollup's name); the
    coarser levels are the same on every backend (`COARSE`); `watermarks` is a PL/pgSQL
    statement that sets `wm_h` and `wm_d`, the times below which those relations hold every
    bucket, or None when they answer for any time themselves (real-time continuous
    aggregates): then no bucket is read from raw rows.
    """

    hourly: str
    daily: str
    watermarks: str | None


@dataclass(frozen=True, slots=True)
class _Sql:
    """Pieces of the range read SQL of one rollup over one backend's relations."""

    r: Rollup
    hourly: str
    daily: str
    live: bool

    def bound(self, name: str) -> str:
        """A bound of what is materialized; without watermarks, the segment's own end."""
        return name if self.live else {"v_dm": "p_d2", "v_h1": "p_d1", "v_h2": "p_h2"}[name]

    @property
    def dims(self) -> list[Dim]:
        return [d for d in self.r.dims if d.name != "tenant_id"]

    @property
    def names(self) -> str:
        return ", ".join(d.name for d in self.dims)

    @property
    def rolled(self) -> str:
        return ", ".join([self.names, *(m.name for m in self.r.measures)])

    @property
    def raw(self) -> str:
        """One raw row's dimensions and measures, named like the rollup's columns."""
        return ", ".join(
            [
                *(f"{d.expr} AS {d.name}" for d in self.dims),
                *(f"{m.per_row} AS {m.name}" for m in self.r.measures),
            ]
        )

    @property
    def sums(self) -> str:
        return ", ".join(f"sum({m.name})::bigint AS {m.name}" for m in self.r.measures)

    def mat(self, table: str, lo: str, hi: str, timed: bool = True, tenant: bool = False) -> str:
        """Materialized rows of buckets [lo, hi), one (workflow_id, bucket) range per workflow.

        Each workflow is its own range of the covering index: with `workflow_id = ANY(...)`
        a generic plan costs the bucket-only index of the hourly tables the same and may
        take it, filtering every workflow's rows of those hours through the heap.
        """
        cols = ("bucket, " if timed else "") + ("tenant_id, " if tenant else "") + self.rolled
        return (
            f"SELECT {cols} FROM {_WORKFLOWS} CROSS JOIN LATERAL (\n"
            f"        SELECT {cols} FROM {table}\n"
            f"         WHERE {_TENANT} AND workflow_id = w.id AND bucket >= {lo} AND bucket < {hi}"
            " OFFSET 0) m"
        )

    def raw_rows(self, *ranges: tuple[str, str], timed: bool = True) -> str:
        """Raw rows whose time falls in any of `ranges`, one row each."""
        t = self.r.time
        cols = f"{t}, {self.raw}" if timed else self.raw
        cond = " OR ".join(f"({t} >= {lo} AND {t} < {hi})" for lo, hi in ranges)
        return f"SELECT {cols} FROM {self.r.raw}\n     WHERE {_SCOPE} AND ({cond})"

    def per_bucket(self) -> tuple[str, str, str]:
        """Statements of the range read: settled buckets and raw edges, live days, live hours."""
        t, groups = self.r.time, ", ".join(str(i) for i in range(1, len(self.dims) + 3))
        raw_dims = ", ".join(["tenant_id", *(f"{d.expr} AS {d.name}" for d in self.dims)])
        raw_aggs = ", ".join(f"{m.agg} AS {m.name}" for m in self.r.measures)
        b = self.bound
        settled = "\n    UNION ALL\n    ".join(
            [
                self.mat(self.daily, "p_d1", b("v_dm")),
                self.mat(self.hourly, "p_h1", b("v_h1")),
                self.mat(self.hourly, "p_d2", b("v_h2")),
                self.raw_rows(("p_from", "p_h1"), ("p_h2", "p_to")),
            ]
        )
        live_days = f"""
    SELECT b, {self.rolled} FROM (
        SELECT date_bin('1 day', bucket, {ORIGIN}) AS b, tenant_id, {self.names}, {self.sums}
          FROM ({self.mat(self.hourly, "v_dm", "v_dh", tenant=True)}
                UNION ALL
                SELECT {t}, tenant_id, {self.raw} FROM {self.r.raw}
                 WHERE {_SCOPE} AND {t} >= v_dh AND {t} < p_d2) live
         GROUP BY {groups}) d"""
        live_hours = f"""
    SELECT b, {self.rolled} FROM (
        SELECT date_bin('1 hour', {t}, {ORIGIN}) AS b, {raw_dims}, {raw_aggs} FROM {self.r.raw}
         WHERE {_SCOPE} AND (({t} >= v_h1 AND {t} < p_d1) OR ({t} >= v_h2 AND {t} < p_h2))
         GROUP BY {groups}) h"""
        return f"\n    {settled}", live_days, live_hours

    def totals(self) -> tuple[str, str]:
        """Statements of the totals read: settled buckets and raw edges, live buckets."""
        b = self.bound
        # Each level reads the whole periods [lo, hi) of its own within the range of the
        # level below; what is left on either side comes from the level below.
        below, lo, hi = self.daily, "p_d1", b("v_dm")
        leading: list[str] = []
        trailing: list[str] = []
        for c in COARSE:
            leading.append(self.mat(below, lo, f"v_{c.suffix}_lo", timed=False))
            trailing.insert(0, self.mat(below, f"v_{c.suffix}_hi", hi, timed=False))
            below, lo, hi = c.table(self.r), f"v_{c.suffix}_lo", f"v_{c.suffix}_hi"
        arms = [
            *leading,
            self.mat(below, lo, hi, timed=False),
            *trailing,
            self.mat(self.hourly, "p_h1", b("v_h1"), timed=False),
            self.mat(self.hourly, "p_d2", b("v_h2"), timed=False),
            self.raw_rows(("p_from", "p_h1"), ("p_h2", "p_to"), timed=False),
        ]
        if self.live:
            arms.insert(-1, self.mat(self.hourly, "v_dm", "v_dh", timed=False))
        settled = "\n        UNION ALL\n        ".join(arms)
        live = self.raw_rows(("v_h1", "p_d1"), ("v_dh", "p_d2"), ("v_h2", "p_h2"), timed=False)
        return (
            f"\n    SELECT {self.names}, {self.sums} FROM (\n        {settled}) x\n"
            f"     GROUP BY {self.names}",
            f"\n    SELECT {self.names}, {self.sums} FROM (\n        {live}) x\n"
            f"     GROUP BY {self.names}",
        )


_TENANT = "(p_tenant IS NULL OR tenant_id = p_tenant)"
_SCOPE = f"{_TENANT} AND workflow_id = ANY(p_workflows)"
# The workflows read, each once (a repeated id must not count its rows twice).
_WORKFLOWS = "(SELECT DISTINCT unnest(p_workflows)) AS w(id)"
_ARGS = """p_tenant text, p_workflows text[], p_from timestamptz, p_h1 timestamptz,
    p_d1 timestamptz, p_d2 timestamptz, p_h2 timestamptz, p_to timestamptz"""
# Bounds of what is materialized, from the watermarks (see `_function`).
_BOUNDS = """
    -- Days [p_d1, v_dm) are materialized; days [v_dm, p_d2) are summed from materialized
    -- hours [v_dm, v_dh) and raw rows [v_dh, p_d2).
    v_dm := least(greatest(wm_d, p_d1), p_d2);
    v_dh := least(greatest(wm_h, v_dm), p_d2);
    -- Hours [p_h1, v_h1) and [p_d2, v_h2) are materialized; [v_h1, p_d1) and [v_h2, p_h2)
    -- are aggregated from raw rows.
    v_h1 := least(p_d1, greatest(wm_h, p_h1));
    v_h2 := least(p_h2, greatest(wm_h, p_d2));"""
_LIVE = "v_dm < p_d2 OR v_h1 < p_d1 OR v_h2 < p_h2"


def _coarse_bounds(r: Rollup, end: str) -> str:
    """Bounds of each coarser level's whole periods: [v_1w_lo, v_1w_hi) within [p_d1, end),
    [v_4w_lo, v_4w_hi) within the weeks, each below its level's watermark."""
    marks = ", ".join(f"max(watermark) FILTER (WHERE rollup = '{c.key(r)}')" for c in COARSE)
    keys = ", ".join(f"'{c.key(r)}'" for c in COARSE)
    into = ", ".join(f"wm_{c.suffix}" for c in COARSE)
    out = f"""
    SELECT {marks}
      INTO {into} FROM wfa.weekly_marks WHERE rollup IN ({keys});"""
    lo, hi = "p_d1", end
    for c in COARSE:
        v_lo, v_hi = f"v_{c.suffix}_lo", f"v_{c.suffix}_hi"
        out += f"""
    {v_lo} := least(date_bin('{c.width}', {lo} - interval '1 microsecond', {ORIGIN})
                  + interval '{c.width}', {hi});
    {v_hi} := greatest({v_lo}, least(date_bin('{c.width}', {hi}, {ORIGIN}),
                                   coalesce(wm_{c.suffix}, '-infinity')));"""
        lo, hi = v_lo, v_hi
    return out


def _function(
    name: str, returns: str, src: ReadSource, r: Rollup, body: str, coarse: bool = False
) -> str:
    # Generic plans estimate a handful of rows per range, so the planner would group by
    # sorting text keys (several times slower than hashing them) and might start parallel
    # workers for a query of a few milliseconds: both are switched off for these reads.
    names: list[str] = []
    bounds = ""
    if src.watermarks is not None:
        names += ["wm_h", "wm_d", "v_dm", "v_dh", "v_h1", "v_h2"]
        bounds = f"\n    {src.watermarks.format(name=r.name)}{_BOUNDS}"
    if coarse:
        for c in COARSE:
            names += [f"wm_{c.suffix}", f"v_{c.suffix}_lo", f"v_{c.suffix}_hi"]
        bounds += _coarse_bounds(r, "v_dm" if src.watermarks is not None else "p_d2")
    declare = "\nDECLARE" + "".join(f"\n    {v} timestamptz;" for v in names) if names else ""
    return f"""
CREATE OR REPLACE FUNCTION wfa.{name}(
    {_ARGS})
RETURNS TABLE ({returns})
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan SET max_parallel_workers_per_gather = 0
SET enable_sort = off AS $fn$
#variable_conflict use_column{declare}
BEGIN{bounds}
{body}
END
$fn$;"""


def _sql(r: Rollup, src: ReadSource) -> _Sql:
    hourly, daily = src.hourly.format(name=r.name), src.daily.format(name=r.name)
    return _Sql(r, hourly, daily, src.watermarks is not None)


def _columns(r: Rollup) -> list[str]:
    dims = [d for d in r.dims if d.name != "tenant_id"]
    return [*(f"{d.name} {d.type}" for d in dims), *(f"{m.name} bigint" for m in r.measures)]


def range_function(r: Rollup, src: ReadSource) -> str:
    """PL/pgSQL function `wfa.<name>_range`: rows of [from, to) by bucket, raw at the edges.

    The segments come from `exporter.timerange.plan`: [p_from, p_h1) and [p_h2, p_to) are
    raw rows, [p_h1, p_d1) and [p_d2, p_h2) hour buckets, [p_d1, p_d2) day buckets. Buckets
    below the watermarks are read as materialized; above them they are aggregated from the
    raw rows (a statement of its own, run only then), so the rows equal those of the
    real-time relations `wfa.<name>_1h/_1d`. Each statement runs a generic plan cached per
    session: no planning per call, partitions and chunks outside the bounds are pruned
    when it starts, and the covering (workflow_id, bucket) indexes serve the buckets.
    """
    settled, live_days, live_hours = _sql(r, src).per_bucket()
    body = f"""    RETURN QUERY{settled};"""
    if src.watermarks is not None:
        body += f"""
    IF v_dm < p_d2 THEN
        RETURN QUERY{live_days};
    END IF;
    IF v_h1 < p_d1 OR v_h2 < p_h2 THEN
        RETURN QUERY{live_hours};
    END IF;"""
    returns = ", ".join(["t timestamptz", *_columns(r)])
    return _function(f"{r.name}_range", returns, src, r, body)


def totals_function(r: Rollup, src: ReadSource) -> str:
    """PL/pgSQL function `wfa.<name>_totals`: the range read summed by dimension.

    Same segments and sources as `range_function`, summed in the store (one row per
    dimension combination and statement; callers sum again), so a long range does not
    ship one row per bucket; its whole weeks and four-week blocks below their watermarks are
    read from the coarser levels (`COARSE`, maintained by `exporter.store.weekly`).
    """
    settled, live = _sql(r, src).totals()
    body = f"""    RETURN QUERY{settled};"""
    if src.watermarks is not None:
        body += f"""
    IF {_LIVE} THEN
        RETURN QUERY{live};
    END IF;"""
    return _function(f"{r.name}_totals", ", ".join(_columns(r)), src, r, body, coarse=True)
