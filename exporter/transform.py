"""Turn source rows into store rows: validation, diffing against stored state, counter deltas."""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from bisect import bisect_left
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from exporter.histogram import BOUNDS, bucket_le
from exporter.source.reader import SourceExecution
from exporter.store.rows import EventRow, ExecutionRow, ExecutionStepRow, StepRunRow

EXECUTION_STATUSES = frozenset({"active", "completed", "exited", "failed"})
ATTEMPT_STATUSES = frozenset({"running", "succeeded", "failed", "skipped"})
TERMINAL = frozenset({"succeeded", "failed", "skipped"})
EVENTS = ("enrolled", "completed", "converted", "exited", "failed")
_MS = timedelta(milliseconds=1)
_SEP = "\x1f"

MAX_ID_BYTES = 200
"""Ids become store keys: one longer than this (UTF-8 bytes) is rejected, never truncated."""
MAX_TEXT_BYTES = 1000
"""Free text (exit reasons, step errors, names) is cut to this many UTF-8 bytes for storage,
well below the ~2.7 kB a btree entry may hold even with four ids beside it."""
TRUNCATED = "…[truncated]"
"""The end of a text cut to MAX_TEXT_BYTES."""
_TRUNCATED_BYTES = len(TRUNCATED.encode())


class Rejected(Exception):
    """A source row that cannot be ingested; `reason` is a stable label."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def bounded_text(value: str | None, cap: int = MAX_TEXT_BYTES) -> str | None:
    """`value` when it fits in `cap` UTF-8 bytes, else its head ending in TRUNCATED."""
    if value is None or len(value) * 4 <= cap:
        return value
    raw = value.encode()
    if len(raw) <= cap:
        return value
    return raw[: cap - _TRUNCATED_BYTES].decode(errors="ignore") + TRUNCATED


def bounded_key(value: str) -> str:
    """A key that fits MAX_ID_BYTES: `value` itself, or its head and a digest of it."""
    if len(value.encode()) <= MAX_ID_BYTES:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()
    head = value.encode()[: MAX_ID_BYTES - len(digest) - 1].decode(errors="ignore")
    return f"{head}~{digest}"


def check_id(value: str | None, what: str) -> None:
    """Reject an id longer than MAX_ID_BYTES."""
    if value is not None and len(value) * 4 > MAX_ID_BYTES and len(value.encode()) > MAX_ID_BYTES:
        raise Rejected("id_too_long", f"{what} is longer than {MAX_ID_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class Plausible:
    """The window every source timestamp must fall in: [earliest, latest]."""

    earliest: datetime
    latest: datetime

    def check(self, t: datetime | None, what: str) -> None:
        """Reject a timestamp outside the window."""
        if t is not None and not self.earliest <= t <= self.latest:
            raise Rejected(
                "implausible_time",
                f"{what} {t.isoformat()} is outside [{self.earliest.isoformat()}, "
                f"{self.latest.isoformat()}]",
            )


def le_label(le: float) -> str:
    """Prometheus text of a bucket bound."""
    return "+Inf" if math.isinf(le) else repr(float(le))


LE_LABELS = {b: le_label(b) for b in BOUNDS}


@dataclass(frozen=True, slots=True)
class WorkflowInfo:
    """What ingestion needs to know of a workflow definition."""

    workflow_id: str
    tenant_id: str
    action_types: Mapping[str, str]


@dataclass(slots=True)
class Attempt:
    """One attempt of a step, parsed from `step_progress`."""

    step_id: str
    entered_at: datetime
    finished_at: datetime | None
    status: str
    error: str | None

    @property
    def duration_ms(self) -> int | None:
        """Whole milliseconds from entered to finished."""
        return None if self.finished_at is None else (self.finished_at - self.entered_at) // _MS

    def signature(self, entered_us: int) -> str:
        """Compact text kept in the store to diff the next version of this attempt against."""
        fin = "" if self.finished_at is None else str(_us(self.finished_at))
        err = "" if self.error is None else str(zlib.crc32(self.error.encode()))
        return _SEP.join((self.step_id, str(entered_us), self.status, fin, err))


@dataclass(frozen=True, slots=True)
class OldAttempt:
    """An attempt as stored last time: enough to diff, delete and count."""

    step_id: str
    entered_at: datetime
    status: str
    finished: bool
    signature: str

    @classmethod
    def parse(cls, sig: str) -> OldAttempt:
        """Read a signature written by `Attempt.signature`."""
        step_id, us, status, fin, _ = sig.rsplit(_SEP, 4)
        return cls(step_id, _from_us(int(us)), status, fin != "", sig)


@dataclass(slots=True)
class OldExecution:
    """The stored state of an execution before this batch."""

    enrolled_at: datetime
    source_updated_at: datetime
    times: dict[str, datetime | None]
    reason: str | None
    failed_at: datetime | None
    attempts: list[str]


@dataclass(slots=True)
class Batch:
    """Everything one batch writes, built row by row, written in one transaction."""

    executions: list[ExecutionRow] = field(default_factory=list)
    executions_new: set[str] = field(default_factory=set)
    steps_new: list[ExecutionStepRow] = field(default_factory=list)
    steps_del: list[tuple] = field(default_factory=list)
    events_new: list[EventRow] = field(default_factory=list)
    events_upd: list[EventRow] = field(default_factory=list)
    events_del: list[tuple] = field(default_factory=list)
    runs_new: list[StepRunRow] = field(default_factory=list)
    runs_upd: list[StepRunRow] = field(default_factory=list)
    runs_del: list[tuple] = field(default_factory=list)
    invalid: set[tuple[str, int]] = field(default_factory=set)
    counters: Counter = field(default_factory=Counter)
    counted: list[tuple] = field(default_factory=list)  # keys of counters to add 1 to
    spans: dict[str, list[datetime]] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)
    rejected: list[tuple] = field(default_factory=list)
    skipped: int = 0

    def deltas(self) -> Counter:
        """The batch's counter increments: `counters` plus one per key in `counted`."""
        out = Counter(self.counters)
        out.update(self.counted)
        return out

    def span(self, table: str, t: datetime) -> None:
        """Widen the time span written to `table`."""
        s = self.spans.get(table)
        if s is None:
            self.spans[table] = [t, t]
        elif t < s[0]:
            s[0] = t
        elif t > s[1]:
            s[1] = t


def _us(t: datetime) -> int:
    return (t - _EPOCH) // _US


_US = timedelta(microseconds=1)
_US_PER_HOUR = 3_600_000_000


def hour_of(t: datetime) -> int:
    """Hours since the epoch of the hour bucket holding `t` (cheap to hash)."""
    return _us(t) // _US_PER_HOUR


def hour_start(hour: int) -> datetime:
    """The bucket start of an hour from `hour_of`."""
    return _EPOCH + timedelta(hours=hour)


def _from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time(value: object, what: str) -> datetime:
    """An ISO-8601 timestamp from JSON; naive values are taken as UTC."""
    t = _time(value)
    if t is None:
        if not isinstance(value, str):
            raise Rejected("invalid_step_progress", f"{what} is not a timestamp string")
        raise Rejected("invalid_step_progress", f"{what} {value!r} is not ISO 8601")
    return t


def _time(value: object) -> datetime | None:
    """`parse_time` without the message: None when `value` is not an ISO-8601 string."""
    if type(value) is not str:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    tz = t.tzinfo
    if tz is UTC:
        return t
    return t.replace(tzinfo=UTC) if tz is None else t.astimezone(UTC)


def parse_progress(text: str | None, window: Plausible | None = None) -> list[Attempt]:
    """Parse and validate `step_progress` (JSON array of attempt objects)."""
    if text is None:
        return []
    try:
        data = json.loads(text)
    except (ValueError, TypeError):
        raise Rejected("invalid_step_progress", "not valid JSON") from None
    if not isinstance(data, list):
        raise Rejected("invalid_step_progress", "not a JSON array")
    out = []
    seen: set[tuple[str, datetime]] = set()
    earliest, latest = (window.earliest, window.latest) if window is not None else (None, None)
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise Rejected("invalid_step_progress", f"entry {i} is not an object")
        get = item.get
        step_id = get("step_id")
        if step_id is None or isinstance(step_id, (dict, list)):
            raise Rejected("invalid_step_progress", f"entry {i} has no step_id")
        status = get("status")
        if status not in ATTEMPT_STATUSES:
            raise Rejected("invalid_step_progress", f"entry {i} has status {status!r}")
        entered_raw = get("entered_at")
        entered = _time(entered_raw)
        if entered is None:
            parse_time(entered_raw, f"entry {i} entered_at")
        fin_raw = get("finished_at")
        finished = None
        if fin_raw is not None:
            finished = _time(fin_raw)
            if finished is None:
                parse_time(fin_raw, f"entry {i} finished_at")
        sid = step_id if type(step_id) is str else str(step_id)
        if len(sid) * 4 > MAX_ID_BYTES:
            check_id(sid, f"entry {i} step_id")
        if finished is not None and finished < entered:
            raise Rejected("finished_before_entered", f"entry {i} of step {sid}")
        if earliest is not None and not (
            earliest <= entered <= latest
            and (finished is None or earliest <= finished <= latest)
        ):
            window.check(entered, f"entry {i} entered_at")
            window.check(finished, f"entry {i} finished_at")
        key = (sid, entered)
        if key in seen:
            raise Rejected("duplicate_attempt", f"entry {i}: step {sid} entered twice at {entered}")
        seen.add(key)
        error = get("error")
        err = None if error is None else bounded_text(str(error))
        out.append(Attempt(sid, entered, finished, status, err))
    return out


def _event_times(
    row: SourceExecution, attempts: list[Attempt], old: OldExecution | None
) -> dict[str, datetime | None]:
    failed_at = None
    if row.status == "failed":
        if row.failed_at is not None:
            failed_at = row.failed_at
        elif old is not None and old.failed_at is not None:
            failed_at = old.failed_at
        else:
            ends = [a.finished_at for a in attempts if a.status == "failed" and a.finished_at]
            failed_at = max(ends) if ends else row.updated_at
    return {
        "enrolled": row.enrolled_at,
        "completed": row.completed_at,
        "converted": row.converted_at,
        "exited": row.exited_at,
        "failed": failed_at,
    }


_AFTER_ENROLLED = ("completed_at", "converted_at", "exited_at", "failed_at")


def validate_execution(row: SourceExecution, window: Plausible | None) -> None:
    """Reject what the store would refuse or count wrong: long ids, implausible or disordered
    times (the attempts are checked by `parse_progress`)."""
    check_id(row.id, "id")
    check_id(row.contact_id, "contact_id")
    check_id(row.current_step_id, "current_step_id")
    if window is not None:
        window.check(row.updated_at, "updated_at")
        window.check(row.enrolled_at, "enrolled_at")
        for name in _AFTER_ENROLLED:
            window.check(getattr(row, name), name)
    for name in _AFTER_ENROLLED:
        t = getattr(row, name)
        if t is not None and t < row.enrolled_at:
            raise Rejected("before_enrolled", f"{name} is before enrolled_at")


def apply_execution(
    batch: Batch,
    row: SourceExecution,
    wf: WorkflowInfo | None,
    old: OldExecution | None,
    conversion_window: timedelta | None,
    window: Plausible | None = None,
) -> None:
    """Validate one source row and add its store changes to `batch` (raises Rejected)."""
    if wf is None:
        check_id(row.workflow_id, "workflow_id")
        raise Rejected("unknown_workflow", f"workflow {row.workflow_id!r} is not known")
    if row.tenant_id != wf.tenant_id:
        check_id(row.tenant_id, "tenant_id")
        raise Rejected("tenant_mismatch", f"row tenant {row.tenant_id!r} != workflow tenant")
    if row.status not in EXECUTION_STATUSES:
        raise Rejected("unknown_status", f"status {bounded_text(row.status, 100)!r}")
    if old is not None and old.source_updated_at == row.updated_at:
        batch.skipped += 1
        return
    validate_execution(row, window)
    attempts = parse_progress(row.step_progress, window)
    times = _event_times(row, attempts, old)
    batch.touched.add(wf.workflow_id)
    exit_reason = bounded_text(row.exit_reason)
    _diff_events(batch, row, wf, old, times, exit_reason)
    signatures, old_steps = _diff_attempts(batch, row, wf, old, attempts)
    _diff_reached(batch, row, wf, attempts, old_steps)
    in_window = row.converted_at is not None and (
        conversion_window is None or row.converted_at - row.enrolled_at <= conversion_window
    )
    batch.executions.append(
        ExecutionRow(
            execution_id=row.id,
            enrolled_at=row.enrolled_at,
            tenant_id=wf.tenant_id,
            workflow_id=wf.workflow_id,
            contact_id=row.contact_id,
            status=row.status,
            completed_at=row.completed_at,
            converted_at=row.converted_at,
            converted_in_window=in_window,
            exited_at=row.exited_at,
            exit_reason=exit_reason,
            failed_at=times["failed"],
            current_step_id=row.current_step_id if row.status == "active" else None,
            attempts=signatures,
            source_updated_at=row.updated_at,
        )
    )
    if old is None:
        batch.executions_new.add(row.id)
    batch.span("executions", row.enrolled_at)
    h = hour_of(row.enrolled_at)
    batch.invalid.add(("cohort", h))
    batch.invalid.add(("cohort_steps", h))


def _diff_events(
    batch: Batch,
    row: SourceExecution,
    wf: WorkflowInfo,
    old: OldExecution | None,
    times: dict[str, datetime | None],
    exit_reason: str | None,
) -> None:
    """Event rows that appeared, moved or vanished since the stored state; new ones counted."""
    eid, tenant, wfid, enrolled = row.id, wf.tenant_id, wf.workflow_id, row.enrolled_at
    reason = exit_reason if row.exited_at is not None else None
    for event in EVENTS:
        t_new = times[event]
        t_old = old.times.get(event) if old else None
        ev_reason = reason if event == "exited" else None
        same_reason = old is None or event != "exited" or old.reason == ev_reason
        if t_new == t_old and same_reason:
            continue
        if t_old is not None and t_old != t_new:
            batch.events_del.append((eid, event, t_old))
            batch.invalid.add(("events", hour_of(t_old)))
        if t_new is None:
            continue
        dur = le = None
        if event in ("completed", "converted"):
            dur = (t_new - enrolled) // _MS
            le = bucket_le(dur / 1000)
        rec = EventRow(eid, event, t_new, tenant, wfid, ev_reason, dur, le)
        (batch.events_upd if old is not None else batch.events_new).append(rec)
        batch.invalid.add(("events", hour_of(t_new)))
        batch.span("workflow_events", t_new)
        if t_old is None:
            _count_event(batch, tenant, wfid, event, ev_reason, dur, le)


def _diff_attempts(
    batch: Batch,
    row: SourceExecution,
    wf: WorkflowInfo,
    old: OldExecution | None,
    attempts: list[Attempt],
) -> tuple[list[str], set[str]]:
    """Step attempts new, changed or gone since the stored state, with their counter deltas;
    the new signatures and the steps of the stored attempts."""
    if old is None or not old.attempts:
        return _new_attempts(batch, row.id, wf, attempts), set()
    eid, tenant, wfid = row.id, wf.tenant_id, wf.workflow_id
    entered_us = [_us(a.entered_at) for a in attempts]
    new_sigs = [a.signature(us) for a, us in zip(attempts, entered_us, strict=True)]
    old_sigs = old.attempts
    old_steps = {sig.rsplit(_SEP, 4)[0] for sig in old_sigs}
    if new_sigs == old_sigs:
        return new_sigs, old_steps
    # An attempt whose signature is stored as is did not change: only the others are keyed.
    same = set(old_sigs).intersection(new_sigs)
    old_by_key = {}
    for sig in old_sigs:
        if sig not in same:
            oa = OldAttempt.parse(sig)
            old_by_key[(oa.step_id, oa.entered_at)] = oa
    c = batch.counters
    invalid = batch.invalid
    for a, sig, us in zip(attempts, new_sigs, entered_us, strict=True):
        if sig in same:
            continue
        oa = old_by_key.pop((a.step_id, a.entered_at), None)
        action = wf.action_types.get(a.step_id, "unknown")
        dur = a.duration_ms
        le = None if dur is None else bucket_le(dur / 1000)
        rec = StepRunRow(
            eid, a.step_id, a.entered_at, tenant, wfid, action, a.status, a.finished_at,
            dur, le, a.error,
        )
        (batch.runs_upd if oa is not None else batch.runs_new).append(rec)
        invalid.add(("step_runs", us // _US_PER_HOUR))
        if oa is None:
            c[("step_runs", tenant, wfid, a.step_id, action, "")] += 1
        if a.status in TERMINAL and (oa is None or oa.status != a.status):
            c[("step_outcomes", tenant, wfid, a.step_id, action, a.status)] += 1
        if dur is not None and (oa is None or not oa.finished):
            c[("step_duration_bucket", tenant, wfid, a.step_id, action, LE_LABELS[le])] += 1
            c[("step_duration_sum_ms", tenant, wfid, a.step_id, action, "")] += dur
    if attempts:
        batch.span("step_runs", min(a.entered_at for a in attempts))
        batch.span("step_runs", max(a.entered_at for a in attempts))
    # What is left is stored under a key the source no longer has.
    for oa in old_by_key.values():
        batch.runs_del.append((eid, oa.step_id, oa.entered_at))
        batch.invalid.add(("step_runs", hour_of(oa.entered_at)))
    return new_sigs, old_steps


def _new_attempts(batch: Batch, eid: str, wf: WorkflowInfo, attempts: list[Attempt]) -> list[str]:
    """`_diff_attempts` of an execution with no stored attempts: every attempt is new."""
    if not attempts:
        return []
    tenant, wfid, types = wf.tenant_id, wf.workflow_id, wf.action_types
    sigs = []
    keys = batch.counted
    sums = batch.counters
    runs = batch.runs_new
    hours = set()
    for a in attempts:
        sid, entered, fin, status = a.step_id, a.entered_at, a.finished_at, a.status
        us = (entered - _EPOCH) // _US
        hours.add(us // _US_PER_HOUR)
        err = a.error
        sigs.append(
            _SEP.join(
                (
                    sid,
                    str(us),
                    status,
                    "" if fin is None else str((fin - _EPOCH) // _US),
                    "" if err is None else str(zlib.crc32(err.encode())),
                )
            )
        )
        action = types.get(sid, "unknown")
        keys.append(("step_runs", tenant, wfid, sid, action, ""))
        if status in TERMINAL:
            keys.append(("step_outcomes", tenant, wfid, sid, action, status))
        if fin is None:
            dur = le = None
        else:
            dur = (fin - entered) // _MS
            le = BOUNDS[bisect_left(BOUNDS, dur / 1000)]
            keys.append(("step_duration_bucket", tenant, wfid, sid, action, LE_LABELS[le]))
            sums[("step_duration_sum_ms", tenant, wfid, sid, action, "")] += dur
        runs.append(
            StepRunRow(eid, sid, entered, tenant, wfid, action, status, fin, dur, le, err)
        )
    batch.invalid.update(("step_runs", h) for h in hours)
    batch.span("step_runs", min(a.entered_at for a in attempts))
    batch.span("step_runs", max(a.entered_at for a in attempts))
    return sigs


def _diff_reached(
    batch: Batch,
    row: SourceExecution,
    wf: WorkflowInfo,
    attempts: list[Attempt],
    old_reached: set[str],
) -> None:
    """Steps the execution reached (the cohort funnel), added or removed."""
    eid, enrolled = row.id, row.enrolled_at
    reached = {a.step_id for a in attempts}
    for step_id in reached - old_reached:
        batch.steps_new.append(
            ExecutionStepRow(eid, step_id, enrolled, wf.tenant_id, wf.workflow_id)
        )
    for step_id in old_reached - reached:
        batch.steps_del.append((eid, step_id, enrolled))
    if reached - old_reached:
        batch.span("execution_steps", enrolled)


_EVENT_METRICS = {
    "enrolled": "enrollments",
    "completed": "completions",
    "converted": "conversions",
    "exited": "exits",
    "failed": "failures",
}


def _count_event(
    batch: Batch,
    tenant: str,
    wfid: str,
    event: str,
    reason: str | None,
    dur: int | None,
    le: float | None,
) -> None:
    label = (reason or "") if event == "exited" else ""
    batch.counted.append((_EVENT_METRICS[event], tenant, wfid, "", "", label))
    if dur is not None and le is not None:
        name = "time_to_complete" if event == "completed" else "time_to_convert"
        batch.counted.append((f"{name}_bucket", tenant, wfid, "", "", LE_LABELS[le]))
        batch.counters[(f"{name}_sum_ms", tenant, wfid, "", "", "")] += dur


def parse_workflow(r: Mapping[str, Any], window: Plausible) -> list[tuple[str, str, str]]:
    """Validate a workflow row; its steps as (id, name, action type)."""
    for what in ("id", "tenant_id"):
        if r[what] is None:
            raise Rejected("invalid_row", f"{what} is required")
        check_id(r[what], what)
    # Definitions are not partitioned by time: only a stamp from the future is refused (it
    # would carry the cursor past every change to come).
    updated = r["updated_at"]
    Plausible(updated or window.earliest, window.latest).check(updated, "updated_at")
    steps = parse_steps(r["steps"])
    for sid, _name, action in steps:
        check_id(sid, "step id")
        check_id(action, "action_type")
    return steps


def parse_steps(raw: str | None) -> list[tuple[str, str, str]]:
    """Parse and validate `workflows.steps`: (id, name, action type) in order."""
    try:
        data = json.loads(raw) if raw is not None else None
    except ValueError:
        raise Rejected("invalid_steps", "steps is not valid JSON") from None
    if not isinstance(data, list):
        raise Rejected("invalid_steps", "steps is not a JSON array")
    out = []
    seen = set()
    for i, s in enumerate(data):
        if not isinstance(s, dict) or s.get("id") is None:
            raise Rejected("invalid_steps", f"step {i} has no id")
        sid = str(s["id"])
        check_id(sid, f"step {i} id")
        if sid in seen:
            raise Rejected("invalid_steps", f"step id {sid!r} repeats")
        seen.add(sid)
        name = bounded_text(str(s.get("name") or sid))
        out.append((sid, name or sid, str(s.get("action_type") or "unknown")))
    return out
