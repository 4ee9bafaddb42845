"""Exact expected analytics numbers, computed from the model objects in plain Python.

Nothing here reads a database or shares code with the store's SQL or the exporter's
validation: it is the independent reference the exporter, the API and the metrics are
checked against. Ranges are half-open [start, end) of aware datetimes.

Rows the exporter must refuse are mirrored here from the documented rules, written again:
an execution whose current row breaks a rule is left out of every number (as if it did
not exist; the store never saw a valid version of it) and listed in `Truth.rejected` with
the reason the exporter must give; over-long free text (exit reasons, step errors) counts
under its stored, truncated form.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from exporter.histogram import bucket_le
from exporter.simulate.model import MS, SimAttempt, SimData, SimExecution

ACTIVITY_FIELDS = ("enrollments", "completions", "conversions", "exits", "failures")
GRANULARITIES = ("hour", "day", "week", "month")
_DAY = timedelta(days=1)


def bucket_start(t: datetime, granularity: str, tz: str = "UTC") -> datetime:
    """Start (in UTC) of the hour/day/ISO week/month of `tz` that contains `t`."""
    if tz == "UTC" and granularity in ("hour", "day"):
        u = t if t.tzinfo is UTC else t.astimezone(UTC)
        if granularity == "hour":
            return u.replace(minute=0, second=0, microsecond=0)
        return u.replace(hour=0, minute=0, second=0, microsecond=0)
    zone = ZoneInfo(tz)
    local = t.astimezone(zone)
    if granularity == "hour":
        return local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    if granularity == "week":
        day -= timedelta(days=day.weekday())
    elif granularity == "month":
        day = day.replace(day=1)
    elif granularity != "day":
        raise ValueError(f"unknown granularity {granularity!r}")
    return day.replace(tzinfo=zone).astimezone(UTC)


ID_BYTES = 200
"""Longest id (UTF-8 bytes) the exporter accepts."""
TEXT_BYTES = 1000
"""Free text is stored cut to this many UTF-8 bytes, ending in TEXT_MARK."""
TEXT_MARK = "…[truncated]"
VALID_FROM = datetime(2000, 1, 1, tzinfo=UTC)
"""Default `source.valid_from`."""


def stored_text(value: str | None) -> str | None:
    """Free text as the store keeps it."""
    if value is None or len(value.encode()) <= TEXT_BYTES:
        return value
    room = TEXT_BYTES - len(TEXT_MARK.encode())
    return value.encode()[:room].decode("utf-8", "ignore") + TEXT_MARK


def rejection(ex: SimExecution, earliest: datetime, latest: datetime) -> str | None:
    """The reason the exporter must reject `ex`, None when it must ingest it.

    Rules in the exporter's order: ids longer than ID_BYTES; any time outside
    [earliest, latest]; completed, converted or exited before enrolled; per attempt, in
    order: its step id too long, finished before entered, times outside the window, the
    same (step, entered_at) twice.
    """

    def too_long(v: str | None) -> bool:
        return v is not None and len(v.encode()) > ID_BYTES

    def outside(t: datetime | None) -> bool:
        return t is not None and not earliest <= t <= latest

    if too_long(ex.id) or too_long(ex.contact_id) or too_long(ex.current_step_id):
        return "id_too_long"
    ends = (ex.completed_at, ex.converted_at, ex.exited_at)  # the source has no failed_at
    if any(outside(t) for t in (ex.updated_at, ex.enrolled_at, *ends)):
        return "implausible_time"
    if any(t is not None and t < ex.enrolled_at for t in ends):
        return "before_enrolled"
    seen = set()
    for a in ex.step_progress:
        if too_long(a.step_id):
            return "id_too_long"
        if a.finished_at is not None and a.finished_at < a.entered_at:
            return "finished_before_entered"
        if outside(a.entered_at) or outside(a.finished_at):
            return "implausible_time"
        if (a.step_id, a.entered_at) in seen:
            return "duplicate_attempt"
        seen.add((a.step_id, a.entered_at))
    return None


def _as_stored(ex: SimExecution) -> SimExecution:
    if stored_text(ex.exit_reason) == ex.exit_reason and all(
        stored_text(a.error) == a.error for a in ex.step_progress
    ):
        return ex
    attempts = [replace(a, error=stored_text(a.error)) for a in ex.step_progress]
    return replace(ex, exit_reason=stored_text(ex.exit_reason), step_progress=attempts)


def le_label(le: float) -> str:
    """Prometheus text of a bucket bound."""
    return "+Inf" if math.isinf(le) else repr(float(le))


def _ms(delta: timedelta) -> int:
    return delta // MS


def _histogram() -> dict[str, Any]:
    return {"count": 0, "sum_ms": 0, "buckets": {}}


def _observe(h: dict[str, Any], ms: int) -> None:
    h["count"] += 1
    h["sum_ms"] += ms
    le = bucket_le(ms / 1000)
    h["buckets"][le] = h["buckets"].get(le, 0) + 1


def _activity_row(with_reasons: bool) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(ACTIVITY_FIELDS, 0)
    if with_reasons:
        row["exits_by_reason"] = {}
    return row


def _action_row() -> dict[str, Any]:
    return {
        "executions": 0,
        "succeeded": 0,
        "failed": 0,
        "skipped": 0,
        "running": 0,
        "duration_ms_sum": 0,
        "duration_count": 0,
        "duration_buckets": {},
        "errors": {},
    }


def _in(start: datetime, end: datetime) -> Callable[[datetime], int | None]:
    return lambda t: 0 if start <= t < end else None


class Truth:
    """Expected numbers for one generated data set (README: "What the numbers mean")."""

    def __init__(
        self,
        data: SimData,
        conversion_window: timedelta | None = None,
        valid_from: datetime = VALID_FROM,
        valid_until: datetime | None = None,
    ) -> None:
        """`valid_until` defaults to one day after the real now (the exporter's default)."""
        self.data = data
        self.conversion_window = conversion_window
        self._steps = {wf.id: wf.step_ids for wf in data.workflows}
        self._execs: dict[str, list[SimExecution]] = defaultdict(list)
        latest = valid_until or datetime.now(UTC) + timedelta(days=1)
        self.rejected: dict[str, str] = {}
        """Execution id -> the reason the exporter must quarantine it with."""
        for ex in data.executions:
            reason = rejection(ex, valid_from, latest)
            if reason is None:
                self._execs[ex.workflow_id].append(_as_stored(ex))
            else:
                self.rejected[ex.id] = reason

    def executions(self, workflow_id: str) -> list[SimExecution]:
        """All executions of a workflow."""
        return self._execs.get(workflow_id, [])

    def step_ids(self, workflow_id: str) -> list[str]:
        """Step ids of a workflow in definition order."""
        return self._steps.get(workflow_id, [])

    # cohort

    def converted_in_window(self, ex: SimExecution) -> bool:
        """Whether the execution counts as converted for cohort rates."""
        if ex.converted_at is None:
            return False
        window = self.conversion_window
        return window is None or ex.converted_at - ex.enrolled_at <= window

    def _cohort(self, step_ids: list[str], execs: Iterable[SimExecution]) -> dict[str, Any]:
        status: Counter[str] = Counter()
        converted = 0
        reached = dict.fromkeys(step_ids, 0)
        in_progress = dict.fromkeys(step_ids, 0)
        for ex in execs:
            status[ex.status] += 1
            converted += self.converted_in_window(ex)
            for sid in {a.step_id for a in ex.step_progress}:
                if sid in reached:
                    reached[sid] += 1
            if ex.status == "active" and ex.current_step_id in in_progress:
                in_progress[ex.current_step_id] += 1
        steps = []
        for k, sid in enumerate(step_ids):
            nxt = reached[step_ids[k + 1]] if k + 1 < len(step_ids) else status["completed"]
            steps.append(
                {
                    "step_id": sid,
                    "reached": reached[sid],
                    "in_progress": in_progress[sid],
                    "dropped": reached[sid] - nxt - in_progress[sid],
                }
            )
        return {
            "enrolled": sum(status.values()),
            "completed": status["completed"],
            "converted": converted,
            "exited": status["exited"],
            "failed": status["failed"],
            "in_progress": status["active"],
            "steps": steps,
        }

    def cohort_funnel(self, workflow_id: str, start: datetime, end: datetime) -> dict[str, Any]:
        """Funnel of the executions enrolled in [start, end), followed to now."""
        execs = (e for e in self.executions(workflow_id) if start <= e.enrolled_at < end)
        return self._cohort(self.step_ids(workflow_id), execs)

    # activity

    def _activity_grouped(
        self,
        execs: Iterable[SimExecution],
        key: Callable[[datetime], Hashable | None],
        with_reasons: bool,
    ) -> dict[Hashable, dict[str, Any]]:
        out: dict[Hashable, dict[str, Any]] = {}
        for ex in execs:
            events = (
                (ex.enrolled_at, "enrollments"),
                (ex.completed_at, "completions"),
                (ex.converted_at, "conversions"),
                (ex.exited_at, "exits"),
                (ex.failed_at if ex.status == "failed" else None, "failures"),
            )
            for t, field in events:
                if t is None:
                    continue
                k = key(t)
                if k is None:
                    continue
                row = out.get(k)
                if row is None:
                    row = out[k] = _activity_row(with_reasons)
                row[field] += 1
                if with_reasons and field == "exits":
                    reasons = row["exits_by_reason"]
                    reasons[ex.exit_reason] = reasons.get(ex.exit_reason, 0) + 1
        return out

    def activity(self, workflow_id: str, start: datetime, end: datetime) -> dict[str, Any]:
        """Events whose time falls in [start, end), whenever the contact enrolled."""
        grouped = self._activity_grouped(self.executions(workflow_id), _in(start, end), True)
        return grouped.get(0) or _activity_row(True)

    def activity_series(
        self, workflow_id: str, start: datetime, end: datetime, granularity: str, tz: str
    ) -> dict[datetime, dict[str, int]]:
        """Activity counts per bucket of `tz`; only buckets with a non-zero count."""
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r}")

        def key(t: datetime) -> datetime | None:
            return bucket_start(t, granularity, tz) if start <= t < end else None

        grouped = self._activity_grouped(self.executions(workflow_id), key, False)
        return dict(sorted(grouped.items(), key=lambda kv: kv[0]))

    def activity_funnel(self, workflow_id: str, start: datetime, end: datetime) -> dict[str, int]:
        """Attempts per step whose entered_at falls in [start, end)."""
        out = dict.fromkeys(self.step_ids(workflow_id), 0)
        for a in self._attempts(workflow_id, start, end):
            out[a.step_id] = out.get(a.step_id, 0) + 1
        return out

    # actions and durations

    def _attempts(self, workflow_id: str, start: datetime, end: datetime) -> Iterable[SimAttempt]:
        for ex in self.executions(workflow_id):
            for a in ex.step_progress:
                if start <= a.entered_at < end:
                    yield a

    @staticmethod
    def _actions(step_ids: list[str], attempts: Iterable[SimAttempt]) -> dict[str, dict]:
        out = {sid: _action_row() for sid in step_ids}
        # (step, status, duration ms, error) tallied first, spread into rows after
        tally: Counter[tuple[str, str, int | None, str | None]] = Counter(
            (
                a.step_id,
                a.status,
                None if a.finished_at is None else (a.finished_at - a.entered_at) // MS,
                a.error,
            )
            for a in attempts
        )
        for (sid, status, ms, error), n in tally.items():
            row = out.get(sid)
            if row is None:
                row = out[sid] = _action_row()
            row["executions"] += n
            row[status] += n
            if ms is not None:
                row["duration_ms_sum"] += ms * n
                row["duration_count"] += n
                le = bucket_le(ms / 1000)
                row["duration_buckets"][le] = row["duration_buckets"].get(le, 0) + n
            if error is not None:
                row["errors"][error] = row["errors"].get(error, 0) + n
        return out

    def actions(self, workflow_id: str, start: datetime, end: datetime) -> dict[str, dict]:
        """Per step: attempt outcomes, durations and errors over attempts entered in range."""
        return self._actions(self.step_ids(workflow_id), self._attempts(workflow_id, start, end))

    def _time_to(self, workflow_id: str, attr: str, start: datetime, end: datetime) -> dict:
        h = _histogram()
        for ex in self.executions(workflow_id):
            t = getattr(ex, attr)
            if t is not None and start <= t < end:
                _observe(h, _ms(t - ex.enrolled_at))
        return h

    def time_to_complete(self, workflow_id: str, start: datetime, end: datetime) -> dict:
        """Enrollment-to-completion histogram over completions in [start, end)."""
        return self._time_to(workflow_id, "completed_at", start, end)

    def time_to_convert(self, workflow_id: str, start: datetime, end: datetime) -> dict:
        """Enrollment-to-conversion histogram over conversions in [start, end)."""
        return self._time_to(workflow_id, "converted_at", start, end)

    # all time

    def totals(self, workflow_id: str) -> dict[str, Any]:
        """All-time counts: what the Prometheus counters must show."""
        return self._totals(workflow_id, self._all_actions(workflow_id))

    def _all_actions(self, workflow_id: str) -> dict[str, dict]:
        attempts = (a for ex in self.executions(workflow_id) for a in ex.step_progress)
        return self._actions(self.step_ids(workflow_id), attempts)

    def _totals(self, workflow_id: str, steps: dict[str, dict]) -> dict[str, Any]:
        execs = self.executions(workflow_id)
        act = self._activity_grouped(execs, lambda t: 0, True).get(0) or _activity_row(True)
        ever = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)
        return {
            **act,
            "time_to_complete": self.time_to_complete(workflow_id, *ever),
            "time_to_convert": self.time_to_convert(workflow_id, *ever),
            "steps": {
                sid: {
                    "attempts": row["executions"],
                    "succeeded": row["succeeded"],
                    "failed": row["failed"],
                    "skipped": row["skipped"],
                    "running": row["running"],
                    "duration_count": row["duration_count"],
                    "duration_ms_sum": row["duration_ms_sum"],
                    "duration_buckets": row["duration_buckets"],
                }
                for sid, row in steps.items()
            },
        }

    # file output

    def report(self, days: float) -> dict[str, Any]:
        """Expected numbers per workflow over the UTC days covering [now - days, now)."""
        now = self.data.now
        first = bucket_start(now - timedelta(days=days), "day")
        last = bucket_start(now, "day")
        stop = last if last == now else last + _DAY
        day_starts = []
        d = first
        while d < stop:
            day_starts.append(d)
            d += _DAY

        def day_key(t: datetime) -> datetime | None:
            return bucket_start(t, "day") if first <= t < stop else None

        workflows: dict[str, Any] = {}
        for wf in self.data.workflows:
            execs = self.executions(wf.id)
            cohorts: dict[datetime, list[SimExecution]] = defaultdict(list)
            outside = 0
            for ex in execs:
                k = day_key(ex.enrolled_at)
                if k is None:
                    outside += 1
                else:
                    cohorts[k].append(ex)
            activity = self._activity_grouped(execs, day_key, True)
            all_actions = self._all_actions(wf.id)
            totals = self._totals(wf.id, all_actions)
            # every attempt and event lies in [enrolled_at, now]: if both ends are
            # inside the range, the range values are the all-time ones
            covered = outside == 0 and now < stop
            workflows[wf.id] = {
                "name": wf.name,
                "tenant_id": wf.tenant_id,
                "steps": [s.to_json() for s in wf.steps],
                "days": [
                    {
                        "from": day.isoformat(),
                        "to": (day + _DAY).isoformat(),
                        "cohort": self._cohort(wf.step_ids, cohorts.get(day, [])),
                        "activity": activity.get(day) or _activity_row(True),
                    }
                    for day in day_starts
                ],
                "actions": all_actions if covered else self.actions(wf.id, first, stop),
                "time_to_complete": totals["time_to_complete"]
                if covered
                else self.time_to_complete(wf.id, first, stop),
                "time_to_convert": totals["time_to_convert"]
                if covered
                else self.time_to_convert(wf.id, first, stop),
                "totals": totals,
            }
        window = self.conversion_window
        return {
            "now": now.isoformat(),
            "range": {"from": first.isoformat(), "to": stop.isoformat()},
            "conversion_window_seconds": None if window is None else window.total_seconds(),
            "executions": len(self.data.executions),
            "workflows": workflows,
        }

    def to_json(self, path: str | Path, days: float) -> dict[str, Any]:
        """Write `report(days)` to `path` as JSON (bucket bounds as Prometheus `le` text)."""
        report = self.report(days)
        Path(path).write_text(json.dumps(_jsonable(report), indent=1, sort_keys=False) + "\n")
        return report


def _jsonable(value: Any) -> Any:
    """Histogram bucket keys as `le` text, recursively."""
    if isinstance(value, dict):
        return {
            (le_label(k) if isinstance(k, float) else k): _jsonable(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value
