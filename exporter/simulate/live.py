"""Live workload: enroll contacts at a rate and move running executions along as time passes.

Every execution gets a script when it enters the live workload: its whole future,
drawn once with `simulate_execution` (new enrollments) or `advance` (executions
already active in the source). A tick at time `now` reveals what each script shows
at `now` and writes the executions that changed since the previous tick. Scripts
wait in a heap keyed by their next event, so a tick costs what changed, not what is
active. Given the seed, the starting data and the tick times, the rows written are
always the same.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import copy
import heapq
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from random import Random

import asyncpg

from exporter.db import Backoff, describe, is_unreachable
from exporter.simulate.generate import advance, generate, profile_for, simulate_execution
from exporter.simulate.incident import Incident, stage
from exporter.simulate.model import (
    SimAttempt,
    SimData,
    SimExecution,
    SimStep,
    SimWorkflow,
    from_ms,
    to_ms,
)
from exporter.simulate.writer import (
    EXECUTIONS_TABLE,
    WORKFLOWS_TABLE,
    upsert_executions,
    upsert_workflows,
)
from exporter.source.reader import quote_ident

log = logging.getLogger(__name__)

HORIZON = timedelta(days=365)
"""How far ahead a script is drawn; every simulated execution ends well within it."""

_RATE_RE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*")
_PER = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


def parse_rate(text: str) -> float:
    """Enrollments per second from "20/s", "300/m", "5000/h" or a plain number per second."""
    m = _RATE_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"rate must look like 20/s, 300/m or 5000/h, got {text!r}")
    rate = float(m.group(1)) / _PER[m.group(2) or "s"]
    if rate < 0:
        raise ValueError("rate must not be negative")
    return rate


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


@dataclass(slots=True)
class _Script:
    """One execution's whole future and the instants at which what it shows changes."""

    full: SimExecution
    events: list[int]
    end_ms: int | None


def _copy(ex: SimExecution) -> SimExecution:
    """A copy that `advance` may change without touching the original."""
    c = copy.copy(ex)
    c.step_progress = list(ex.step_progress)
    return c


def _script(ex: SimExecution) -> _Script:
    times = {to_ms(ex.enrolled_at)}
    for a in ex.step_progress:
        times.add(to_ms(a.entered_at))
        if a.finished_at is not None:
            times.add(to_ms(a.finished_at))
    if ex.converted_at is not None:
        times.add(to_ms(ex.converted_at))
    end = ex.completed_at or ex.exited_at or ex.failed_at
    return _Script(ex, sorted(times), None if end is None else to_ms(end))


def view_at(script: _Script, now_ms: int) -> SimExecution:
    """What the execution looks like at `now_ms` (its enrollment must not be after it)."""
    ex = script.full
    shown: list[SimAttempt] = []
    for a in ex.step_progress:
        if to_ms(a.entered_at) > now_ms:
            break
        if a.finished_at is not None and to_ms(a.finished_at) <= now_ms:
            shown.append(a)
        else:
            shown.append(SimAttempt(a.step_id, a.entered_at, None, "running", None))
    ended = script.end_ms is not None and script.end_ms <= now_ms
    status = ex.status if ended else "active"
    converted = ex.converted_at
    if converted is not None and to_ms(converted) > now_ms:
        converted = None
    k = bisect.bisect_right(script.events, now_ms)
    return SimExecution(
        ex.id,
        ex.tenant_id,
        ex.workflow_id,
        ex.contact_id,
        status,
        ex.enrolled_at,
        ex.completed_at if ended else None,
        converted,
        ex.exited_at if ended else None,
        ex.exit_reason if ended else None,
        shown[-1].step_id if status in ("active", "failed") else None,
        shown,
        from_ms(script.events[k - 1]),
    )


class LiveWorkload:
    """Enrollments at `rate` per second and the progress of running executions, tick by tick."""

    def __init__(
        self,
        workflows: list[SimWorkflow],
        *,
        rate: float,
        seed: int,
        start: datetime,
        active: Iterable[SimExecution] = (),
        contacts: int = 100_000,
        incidents: Sequence[Incident] = (),
    ) -> None:
        if not workflows:
            raise ValueError("the live workload needs at least one workflow")
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self.workflows = sorted(workflows, key=lambda w: w.id)
        self.rate = rate
        self.seed = seed
        self.now_ms = to_ms(start)
        self.contacts = contacts
        self.rng = Random(f"live-{seed}-{self.now_ms}")
        self.enrolled = 0
        self.finished = 0
        """Executions whose last event has been revealed (completed, exited or failed)."""
        self.advanced = 0
        """Times a running execution moved on (a step entered or finished, a conversion)."""
        self.ticks = 0
        self.written = 0
        self._prefix = f"lv-{_base36(self.now_ms)}-"
        self._profiles = {w.id: profile_for(w) for w in self.workflows}
        self.staged = stage(incidents, self.workflows, self.now_ms)
        """Incidents by workflow id, with their windows (IncidentError raised above if bad)."""
        self._announced: set[tuple[int, str]] = set()
        self._weights = [self.rng.uniform(0.3, 3.0) for _ in self.workflows]
        self._next_arrival = self.now_ms + self._gap()
        self._heap: list[tuple[int, int, _Script]] = []
        self._seq = 0
        known = {w.id for w in self.workflows}
        resumed = sorted(
            (_copy(ex) for ex in active if ex.workflow_id in known and ex.status == "active"),
            key=lambda e: e.id,
        )
        if resumed:
            data = SimData(self.workflows, resumed, start)
            advance(data, start + HORIZON, seed, self.staged)
            for ex in resumed:
                self._push(_script(ex))

    @property
    def active(self) -> int:
        """Executions whose script still has events to reveal."""
        return len(self._heap)

    def _gap(self) -> int:
        """Milliseconds to the next enrollment (exponential gaps: a Poisson stream)."""
        if self.rate <= 0:
            return 2**62
        return max(1, round(self.rng.expovariate(self.rate) * 1000))

    def _push(self, script: _Script) -> bool:
        """Queue the script's next event; False when it has none left (the execution is over)."""
        k = bisect.bisect_right(script.events, self.now_ms)
        if k < len(script.events):
            self._seq += 1
            heapq.heappush(self._heap, (script.events[k], self._seq, script))
            return True
        return False

    def _enroll(self, at_ms: int) -> _Script:
        rng = self.rng
        wf = rng.choices(self.workflows, self._weights)[0]
        self.enrolled += 1
        at = from_ms(at_ms)
        ex = simulate_execution(
            rng,
            wf,
            at,
            at + HORIZON,
            execution_id=f"{self._prefix}{self.enrolled:07d}",
            contact_id=f"contact-{rng.randrange(self.contacts):07d}",
            profile=self._profiles[wf.id],
            incidents=self.staged.get(wf.id),
        )
        return _script(ex)

    def announcements(self) -> list[str]:
        """Incidents that started or ended since the last call, one line each."""
        out = []
        for staged in (s for group in self.staged.values() for s in group):
            for at, what in ((staged.start_ms, "starts"), (staged.end_ms, "ends")):
                key = (id(staged), what)
                if at <= self.now_ms and key not in self._announced:
                    self._announced.add(key)
                    out.append(f"incident {what}: {staged.incident.describe()}")
        return out

    def step(self, now: datetime) -> list[SimExecution]:
        """Advance to `now`: the executions (as seen at `now`) that changed since the last step."""
        now_ms = to_ms(now)
        if now_ms < self.now_ms:
            raise ValueError("the clock went backwards")
        due: list[_Script] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ms:
            due.append(heapq.heappop(heap)[2])
        self.advanced += len(due)
        while self._next_arrival <= now_ms:
            due.append(self._enroll(self._next_arrival))
            self._next_arrival += self._gap()
        self.now_ms = now_ms
        out = [view_at(s, now_ms) for s in due]
        for s in due:
            if not self._push(s):
                self.finished += 1
        self.ticks += 1
        self.written += len(out)
        return out


async def load_workflows(
    conn: asyncpg.Connection, workflows_table: str = WORKFLOWS_TABLE
) -> list[SimWorkflow]:
    """The workflow definitions in the source table."""
    rows = await conn.fetch(
        f"SELECT id::text AS id, tenant_id::text AS tenant_id, name, steps::text AS steps, "
        f"updated_at FROM {quote_ident(workflows_table)} ORDER BY id"
    )
    out = []
    for r in rows:
        try:
            steps = [SimStep(s["id"], s.get("name", s["id"]), s["action_type"])
                     for s in json.loads(r["steps"])]
        except (ValueError, TypeError, KeyError):
            continue
        if steps:
            out.append(SimWorkflow(r["id"], r["tenant_id"], r["name"], steps, r["updated_at"]))
    return out


def _attempt(d: dict) -> SimAttempt:
    finished = d.get("finished_at")
    return SimAttempt(
        d["step_id"],
        datetime.fromisoformat(d["entered_at"]),
        None if finished is None else datetime.fromisoformat(finished),
        d["status"],
        d.get("error"),
    )


async def load_active(
    conn: asyncpg.Connection,
    workflows: list[SimWorkflow],
    executions_table: str = EXECUTIONS_TABLE,
) -> list[SimExecution]:
    """Active source executions whose step progress the live workload can continue."""
    steps = {w.id: set(w.step_ids) for w in workflows}
    rows = await conn.fetch(
        "SELECT id::text AS id, tenant_id::text AS tenant_id, workflow_id::text AS workflow_id, "
        "contact_id::text AS contact_id, enrolled_at, converted_at, current_step_id, "
        f"step_progress::text AS step_progress, updated_at FROM {quote_ident(executions_table)} "
        "WHERE status = 'active' ORDER BY id"
    )
    out = []
    for r in rows:
        known = steps.get(r["workflow_id"])
        try:
            progress = [_attempt(d) for d in json.loads(r["step_progress"])]
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
        if not known or not progress or progress[-1].status != "running":
            continue
        if any(a.step_id not in known for a in progress):
            continue
        out.append(
            SimExecution(
                r["id"], r["tenant_id"], r["workflow_id"], r["contact_id"], "active",
                r["enrolled_at"], None, r["converted_at"], None, None,
                progress[-1].step_id, progress, r["updated_at"],
            )
        )
    return out


def default_workflows(
    seed: int, now: datetime, workflows: int = 5, tenants: int = 2
) -> list[SimWorkflow]:
    """Workflow definitions for a source that has none yet (as `generate` makes them)."""
    return generate(
        executions=0, days=1, workflows=workflows, tenants=tenants, seed=seed, now=now
    ).workflows


async def open_live(
    conn: asyncpg.Connection,
    *,
    rate: float,
    seed: int,
    start: datetime,
    executions_table: str = EXECUTIONS_TABLE,
    workflows_table: str = WORKFLOWS_TABLE,
    incidents: Sequence[Incident] = (),
) -> LiveWorkload:
    """A live workload over the source: its workflows (made if none) and active executions."""
    workflows = await load_workflows(conn, workflows_table)
    if not workflows:
        workflows = default_workflows(seed, start)
        await upsert_workflows(conn, workflows, workflows_table=workflows_table)
    active = await load_active(conn, workflows, executions_table)
    return LiveWorkload(
        workflows, rate=rate, seed=seed, start=start, active=active, incidents=incidents
    )


def progress_line(live: LiveWorkload, rate: float) -> str:
    """One line on the live workload: the enrollment rate just measured and the totals."""
    return (
        f"live: {rate:.1f} enrollments/s; {live.enrolled:,} enrolled, {live.advanced:,} "
        f"advanced, {live.finished:,} finished, {live.active:,} running"
    )


def utc_now() -> datetime:
    """The current time (the default clock)."""
    return datetime.now(UTC)


async def run_live(
    conn: asyncpg.Connection,
    live: LiveWorkload,
    *,
    tick: float = 1.0,
    stop: asyncio.Event | None = None,
    duration: float | None = None,
    clock: Callable[[], datetime] = utc_now,
    executions_table: str = EXECUTIONS_TABLE,
    report_every: float = 60.0,
    report: Callable[[str], None] | None = None,
    reconnect: Callable[[], Awaitable[asyncpg.Connection]] | None = None,
    announce: Callable[[str], None] | None = None,
) -> int:
    """Tick until `stop` is set (or `duration` seconds passed); returns the rows written.

    With `reconnect`, a source that goes away (a restart) is reconnected with backoff: the
    changes of the ticks in between are kept and written once it is back (the latest state of
    each execution). Connections opened that way are closed here; `conn` stays the caller's.
    Incident starts and ends go to `announce` (and the log) when they happen; every
    `report_every` seconds a `progress_line` goes to `report` (else to the log).
    """
    stop = stop or asyncio.Event()
    started = last_report = time.monotonic()
    enrolled_then = live.enrolled
    written = 0
    current: asyncpg.Connection | None = conn
    pending: dict[str, SimExecution] = {}
    backoff = Backoff(min(max(tick, 0.1), 1.0), 30.0)
    down_since: float | None = None
    try:
        while not stop.is_set():
            began = time.monotonic()
            for ex in live.step(clock()):
                pending[ex.id] = ex
            for line in live.announcements():
                log.info("%s", line)
                if announce is not None:
                    announce(line)
            wait = tick
            try:
                if current is None:
                    assert reconnect is not None
                    current = await reconnect()
                if pending:
                    written += await upsert_executions(
                        current, list(pending.values()), executions_table=executions_table
                    )
                    pending.clear()
                if down_since is not None:
                    log.info(
                        "live: source reachable again after %.1f s; caught up",
                        time.monotonic() - down_since,
                    )
                    down_since = None
                    backoff.reset()
            except Exception as exc:
                if reconnect is None or not is_unreachable(exc):
                    raise
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning(
                        "live: source unreachable (%s); keeping changes and reconnecting "
                        "with backoff",
                        describe(exc),
                    )
                if current is not None and current is not conn:
                    current.terminate()
                current = None
                wait = backoff.next_delay()
            now = time.monotonic()
            if now - last_report >= report_every:
                line = progress_line(live, (live.enrolled - enrolled_then) / (now - last_report))
                (report or log.info)(line)
                last_report, enrolled_then = now, live.enrolled
            if duration is not None and now - started >= duration:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, wait - (now - began)))
    finally:
        if current is not None and current is not conn:
            await current.close()
    return written
