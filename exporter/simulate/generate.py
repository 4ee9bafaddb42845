"""Deterministic workload generator: workflows, then executions walked through their steps.

Times are whole milliseconds internally; every execution is simulated up to `now`
and anything whose next event would fall after `now` stays active with its current
step running. Rules of the walk (also what `advance` continues with):

- step 1 is entered at enrollment; each next step is entered when the previous one
  finishes; before entering step k >= 2 the contact may exit (at that instant);
- the step after a branch may be skipped (an attempt with status skipped, 0 ms);
- an attempt may fail; a failed attempt is retried at once (a new attempt of the
  same step, which then succeeds) or the execution fails;
- a conversion may happen some time after enrollment; it is recorded only if it
  happens no later than the execution's end (or `now` while still active).
"""

from __future__ import annotations

import bisect
import gc
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import accumulate
from random import Random
from statistics import NormalDist

from exporter.simulate.incident import INCIDENT_ERROR, Staged
from exporter.simulate.model import (
    EXIT_REASONS,
    SimAttempt,
    SimData,
    SimExecution,
    SimStep,
    SimWorkflow,
    from_ms,
    to_ms,
)

_SECOND = 1000
_MINUTE = 60 * _SECOND
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR

# action type -> (median ms, lognormal sigma, cap ms) of the active part of a step
_TIMING: dict[str, tuple[float, float, int]] = {
    "send_email": (1500.0, 0.8, 2 * _MINUTE),
    "send_sms": (1200.0, 0.7, _MINUTE),
    "webhook": (250.0, 1.2, 29 * _SECOND),
    "update_field": (40.0, 0.9, 10 * _SECOND),
    "branch": (15.0, 0.6, 5 * _SECOND),
    "wait": (20 * _SECOND, 1.5, _HOUR),
}
WEBHOOK_TIMEOUT = "webhook timeout after 30s"
# action type -> (failure probability per attempt, ((error text, weight), ...))
_FAILURES: dict[str, tuple[float, tuple[tuple[str, float], ...]]] = {
    "send_email": (
        0.04,
        (
            ("SMTP 550 mailbox unavailable", 5.0),
            ("SMTP 421 service not available", 2.0),
            ("invalid recipient address", 1.0),
        ),
    ),
    "webhook": (
        0.08,
        (
            (WEBHOOK_TIMEOUT, 4.0),
            ("HTTP 500 from endpoint", 4.0),
            ("HTTP 429 too many requests", 2.0),
        ),
    ),
    "send_sms": (0.05, (("carrier rejected message", 3.0), ("invalid phone number", 2.0))),
    "update_field": (0.01, (("field validation failed: lifecycle_stage", 1.0),)),
    "branch": (0.0, ()),
    "wait": (0.0, ()),
}
_EXIT_WEIGHTS = (0.45, 0.25, 0.2, 0.1)
_EXIT_CUM = tuple(c / sum(_EXIT_WEIGHTS) for c in accumulate(_EXIT_WEIGHTS))[:-1]
_WAITS_MS = (_HOUR, 4 * _HOUR, 12 * _HOUR, _DAY, 2 * _DAY, 3 * _DAY)
_STEP_TYPE_WEIGHTS = {
    "send_email": 30,
    "wait": 30,
    "branch": 10,
    "webhook": 12,
    "update_field": 10,
    "send_sms": 8,
}
_FIRST_TYPES = ("send_email", "send_email", "webhook", "update_field")
_STEP_LABELS = {
    "send_email": "Send email",
    "send_sms": "Send SMS",
    "webhook": "Call webhook",
    "update_field": "Update field",
    "branch": "Branch on engagement",
    "wait": "Wait",
}
_WORKFLOW_NAMES = (
    "Welcome series",
    "Trial nurture",
    "Cart abandonment",
    "Re-engagement",
    "Onboarding",
    "Renewal reminder",
    "Webinar follow-up",
    "Lead qualification",
)
# standard normal quantiles at evenly spaced probabilities: a cheap, deterministic normal draw
_NORMAL_SIZE = 4096
_NORMAL = tuple(NormalDist().inv_cdf((i + 0.5) / _NORMAL_SIZE) for i in range(_NORMAL_SIZE))
_RUNNING, _SUCCEEDED, _FAILED, _SKIPPED = "running", "succeeded", "failed", "skipped"
_ACTIVE, _COMPLETED, _EXITED = "active", "completed", "exited"


@dataclass(frozen=True, slots=True)
class StepProfile:
    """Timing and outcome parameters of one step."""

    step_id: str
    action_type: str
    base_ms: int
    mu: float
    sigma: float
    cap_ms: int
    fail_p: float
    errors: tuple[str, ...]
    error_cum: tuple[float, ...]
    exit_p: float
    skippable: bool

    def pick_error(self, u: float) -> str:
        """The error text for a uniform draw `u` in [0, 1)."""
        return self.errors[min(bisect.bisect_right(self.error_cum, u), len(self.errors) - 1)]


@dataclass(frozen=True, slots=True)
class WorkflowProfile:
    """Parameters of the walk through one workflow, derived from its definition alone."""

    steps: tuple[StepProfile, ...]
    index: dict[str, int]
    skip_p: float
    retry_p: float
    convert_p: float
    convert_mu: float
    convert_sigma: float


def profile_for(workflow: SimWorkflow) -> WorkflowProfile:
    """Derive the (deterministic) simulation parameters of a workflow from its id and steps."""
    key = "|".join([workflow.id, *(s.action_type for s in workflow.steps)])
    prng = Random(zlib.crc32(key.encode()))
    n = len(workflow.steps)
    bottleneck = prng.randint(1, n - 1) if n > 1 else -1
    steps = []
    for k, step in enumerate(workflow.steps):
        median, sigma, cap = _TIMING.get(step.action_type, _TIMING["update_field"])
        fail_p, errors = _FAILURES.get(step.action_type, (0.0, ()))
        total = sum(w for _, w in errors) or 1.0
        cum = tuple(sum(w for _, w in errors[: i + 1]) / total for i in range(len(errors)))
        base = prng.choice(_WAITS_MS) if step.action_type == "wait" else 0
        exit_p = 0.0
        if k > 0:
            prev = workflow.steps[k - 1].action_type
            exit_p = prng.uniform(0.01, 0.06) + (0.05 if prev == "wait" else 0.0)
            exit_p += 0.15 if k == bottleneck else 0.0
        skippable = k > 0 and workflow.steps[k - 1].action_type == "branch"
        steps.append(
            StepProfile(
                step.id,
                step.action_type,
                base,
                math.log(median),
                sigma,
                cap,
                fail_p,
                tuple(e for e, _ in errors),
                cum,
                exit_p,
                skippable,
            )
        )
    waits = sum(s.base_ms for s in steps)
    return WorkflowProfile(
        steps=tuple(steps),
        index={s.id: k for k, s in enumerate(workflow.steps)},
        skip_p=prng.uniform(0.2, 0.5),
        retry_p=0.6,
        convert_p=prng.uniform(0.1, 0.35),
        convert_mu=math.log(prng.uniform(0.2, 0.9) * (10 * _MINUTE + waits)),
        convert_sigma=1.0,
    )


# (step index, entered ms, finished ms, status, error)
_Raw = tuple[int, int, int | None, str, str | None]
Incidents = tuple[Staged, ...] | None
"""Staged incidents of one workflow (None: none, the walk's random stream is untouched)."""


def _incident(incidents: Incidents, kind: str, k: int, t: int) -> Staged | None:
    """The incident of `kind` on step `k` at `t`, if one is on."""
    if incidents:
        for inc in incidents:
            if inc.incident.kind == kind and inc.step_index == k and inc.active(t):
                return inc
    return None


def _walk(
    rng: Random,
    prof: WorkflowProfile,
    k: int,
    t: int,
    now_ms: int,
    out: list[_Raw],
    retrying: bool = False,
    resume: bool = False,
    floor_ms: int = -(2**62),
    incidents: Incidents = None,
) -> tuple[str, int, str | None]:
    """Walk from entering step `k` at `t` up to `now_ms`; append attempts to `out`.

    Returns (status, time of the last change, exit reason). With `resume`, the first
    attempt was already seen running at `floor_ms` and must finish after it. Staged
    `incidents` change a step's failures, durations or drop-off while they are on.
    """
    steps = prof.steps
    n = len(steps)
    random, exp, z = rng.random, math.exp, _NORMAL
    skip_p, retry_p = prof.skip_p, prof.retry_p
    while True:
        sp = steps[k]
        leaving = False
        if incidents and not retrying:
            drop = _incident(incidents, "dropoff", k, t)
            leaving = drop is not None and random() < drop.incident.value
        if not leaving and not resume and not retrying and sp.skippable and random() < skip_p:
            out.append((k, t, t, _SKIPPED, None))
        else:
            err = None
            if not retrying and sp.fail_p and random() < sp.fail_p:
                err = sp.pick_error(random())
            if err == WEBHOOK_TIMEOUT:
                d = 30 * _SECOND
            else:
                d = int(exp(sp.mu + sp.sigma * z[int(random() * _NORMAL_SIZE)]))
                d = sp.base_ms + (1 if d < 1 else sp.cap_ms if d > sp.cap_ms else d)
            if incidents:
                failing = None if retrying else _incident(incidents, "failure", k, t)
                if failing is not None:
                    hit = random() < failing.incident.value
                    err = INCIDENT_ERROR.format(action_type=sp.action_type) if hit else None
                slow = _incident(incidents, "slowdown", k, t)
                if slow is not None:
                    d = max(1, int(d * slow.incident.value))
                if leaving:  # the contact leaves during the step: no wait, no failure
                    err, d = None, max(1, d - sp.base_ms)
            f = t + d
            if resume:
                if f <= floor_ms:
                    f = floor_ms + 1 + int(d * random())
                resume = False
            if f > now_ms:
                out.append((k, t, None, _RUNNING, None))
                return _ACTIVE, t, None
            if err is not None:
                out.append((k, t, f, _FAILED, err))
                if random() < retry_p:
                    retrying = True
                    t = f
                    continue
                return _FAILED, f, None
            out.append((k, t, f, _SUCCEEDED, None))
            t = f
        retrying = False
        k += 1
        if k == n:
            return _COMPLETED, t, None
        if leaving:
            return _EXITED, t, EXIT_REASONS[bisect.bisect_right(_EXIT_CUM, random())]
        if random() < steps[k].exit_p:
            u = random()
            return _EXITED, t, EXIT_REASONS[bisect.bisect_right(_EXIT_CUM, u)]


def _attempts(prof: WorkflowProfile, raw: list[_Raw]) -> list[SimAttempt]:
    """Model attempts from raw tuples, sharing equal datetime objects."""
    steps = prof.steps
    out = []
    fromts = datetime.fromtimestamp
    last_ms, last_dt = -1, None
    for k, a, f, status, err in raw:
        if a != last_ms:
            last_ms, last_dt = a, fromts(a / 1000, UTC)
        entered = last_dt
        finished = None
        if f is not None:
            if f != last_ms:
                last_ms, last_dt = f, fromts(f / 1000, UTC)
            finished = last_dt
        out.append(SimAttempt(steps[k].step_id, entered, finished, status, err))
    return out


def _conversion_ms(rng: Random, prof: WorkflowProfile, start_ms: int, p: float) -> int | None:
    """A conversion instant drawn after `start_ms` with probability `p`, else None."""
    if rng.random() >= p:
        return None
    z = _NORMAL[int(rng.random() * _NORMAL_SIZE)]
    delay = int(math.exp(prof.convert_mu + prof.convert_sigma * z))
    return start_ms + (_MINUTE if delay < _MINUTE else delay)


def _simulate(
    rng: Random,
    workflow: SimWorkflow,
    prof: WorkflowProfile,
    e_ms: int,
    now_ms: int,
    execution_id: str,
    contact_id: str,
    incidents: Incidents = None,
) -> SimExecution:
    """`simulate_execution` on millisecond integers."""
    conv = _conversion_ms(rng, prof, e_ms, prof.convert_p)
    raw: list[_Raw] = []
    status, end, reason = _walk(rng, prof, 0, e_ms, now_ms, raw, incidents=incidents)
    attempts = _attempts(prof, raw)
    last = attempts[-1]
    end_dt = last.entered_at if last.finished_at is None else last.finished_at
    converted, updated = None, end_dt
    if conv is not None and conv <= (now_ms if status == _ACTIVE else end):
        converted = datetime.fromtimestamp(conv / 1000, UTC)
        if conv > end:
            updated = converted
    return SimExecution(
        execution_id,
        workflow.tenant_id,
        workflow.id,
        contact_id,
        status,
        attempts[0].entered_at,
        end_dt if status == _COMPLETED else None,
        converted,
        end_dt if status == _EXITED else None,
        reason,
        last.step_id if status in (_ACTIVE, _FAILED) else None,
        attempts,
        updated,
    )


def simulate_execution(
    rng: Random,
    workflow: SimWorkflow,
    enrolled_at: datetime,
    now: datetime,
    *,
    execution_id: str,
    contact_id: str,
    profile: WorkflowProfile | None = None,
    incidents: Incidents = None,
) -> SimExecution:
    """Simulate one execution enrolled at `enrolled_at` (floored to ms) as seen at `now`."""
    e_ms, now_ms = to_ms(enrolled_at), to_ms(now)
    if e_ms > now_ms:
        raise ValueError("enrolled_at is after now")
    prof = profile or profile_for(workflow)
    return _simulate(rng, workflow, prof, e_ms, now_ms, execution_id, contact_id, incidents)


def _continue(
    rng: Random,
    ex: SimExecution,
    prof: WorkflowProfile,
    old_ms: int,
    new_ms: int,
    incidents: Incidents = None,
) -> bool:
    """Progress one active execution from `old_ms` to `new_ms` in place; True if it changed."""
    progress = ex.step_progress
    last = progress[-1]
    k = prof.index[last.step_id]
    retrying = (
        len(progress) >= 2
        and progress[-2].step_id == last.step_id
        and progress[-2].status == _FAILED
    )
    conv = None
    if ex.converted_at is None:
        conv = _conversion_ms(rng, prof, old_ms, prof.convert_p / 2)
    raw: list[_Raw] = []
    status, end, reason = _walk(
        rng,
        prof,
        k,
        to_ms(last.entered_at),
        new_ms,
        raw,
        retrying=retrying,
        resume=True,
        floor_ms=old_ms,
        incidents=incidents,
    )
    limit = new_ms if status == _ACTIVE else end
    if conv is not None and conv > limit:
        conv = None
    if status == _ACTIVE and len(raw) == 1 and conv is None:
        return False
    new = _attempts(prof, raw)
    new[0].entered_at = last.entered_at
    progress[-1:] = new
    end_dt = new[-1].finished_at or new[-1].entered_at
    if conv is not None:
        ex.converted_at = from_ms(conv)
    ex.status = status
    ex.completed_at = end_dt if status == _COMPLETED else None
    ex.exited_at = end_dt if status == _EXITED else None
    ex.exit_reason = reason
    ex.current_step_id = prof.steps[raw[-1][0]].step_id if status in (_ACTIVE, _FAILED) else None
    ex.updated_at = ex.converted_at if conv is not None and conv > end else end_dt
    return True


def _make_workflow(rng: Random, i: int, tenants: int, updated_ms: int) -> SimWorkflow:
    """A workflow of 3-8 linear steps with one branch that is neither first nor last."""
    wf_id = f"wf-{i + 1:02d}"
    n = rng.randint(3, 8)
    kinds = list(_STEP_TYPE_WEIGHTS)
    weights = list(_STEP_TYPE_WEIGHTS.values())
    types = [rng.choice(_FIRST_TYPES), *rng.choices(kinds, weights, k=n - 1)]
    if types[-1] == "branch":
        types[-1] = "send_email"
    if "branch" not in types[1:-1]:
        types[rng.randint(1, n - 2)] = "branch"
    steps = [
        SimStep(f"{wf_id}-s{k + 1}", f"{_STEP_LABELS[t]} {k + 1}", t) for k, t in enumerate(types)
    ]
    base = _WORKFLOW_NAMES[i % len(_WORKFLOW_NAMES)]
    name = base if i < len(_WORKFLOW_NAMES) else f"{base} {i // len(_WORKFLOW_NAMES) + 1}"
    return SimWorkflow(wf_id, f"tenant-{i % tenants + 1}", name, steps, from_ms(updated_ms))


def generate(
    *,
    executions: int,
    days: float,
    workflows: int,
    tenants: int = 2,
    seed: int = 0,
    now: datetime,
    id_prefix: str = "ex-",
    given: Sequence[SimWorkflow] = (),
) -> SimData:
    """Generate workflows and executions enrolled uniformly over [now - days, now).

    Execution ids are `id_prefix` and a number; with `given` workflows (those already in a
    source) the executions go to them and no new ones are made.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if executions < 0 or workflows < 1 or tenants < 1 or days <= 0:
        raise ValueError("need executions >= 0, workflows >= 1, tenants >= 1, days > 0")
    rng = Random(seed)
    now_ms = to_ms(now)
    span = max(1, int(days * _DAY))
    start_ms = now_ms - span
    wfs = list(given) or [
        _make_workflow(rng, i, tenants, start_ms - rng.randint(_DAY, 60 * _DAY))
        for i in range(workflows)
    ]
    profs = [profile_for(wf) for wf in wfs]
    cum, total = [], 0.0
    for _ in wfs:
        total += rng.uniform(0.3, 3.0)
        cum.append(total)
    random = rng.random
    enrolled = sorted(start_ms + int(random() * span) for _ in range(executions))
    contacts = max(1, executions * 2 // 3)
    width = max(7, len(str(executions)))
    last_wf = len(wfs) - 1
    out = []
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of acyclic objects: collections would only rescan them
    try:
        for i, e_ms in enumerate(enrolled):
            w = bisect.bisect_right(cum, random() * total)
            w = last_wf if w > last_wf else w
            contact = f"contact-{int(random() * contacts):0{width}d}"
            ex_id = f"{id_prefix}{i + 1:0{width}d}"
            out.append(_simulate(rng, wfs[w], profs[w], e_ms, now_ms, ex_id, contact))
    finally:
        if gc_was_enabled:
            gc.enable()
    return SimData(workflows=wfs, executions=out, now=now)


def advance(
    data: SimData,
    new_now: datetime,
    seed: int,
    incidents: Mapping[str, tuple[Staged, ...]] | None = None,
) -> list[SimExecution]:
    """Progress the active executions of `data` in place up to `new_now`; return those changed."""
    if new_now.tzinfo is None:
        raise ValueError("new_now must be timezone-aware")
    old_ms, new_ms = to_ms(data.now), to_ms(new_now)
    if new_ms < old_ms:
        raise ValueError("new_now is before data.now")
    rng = Random(seed)
    profs = {wf.id: profile_for(wf) for wf in data.workflows}
    changed = [
        ex
        for ex in data.executions
        if ex.status == _ACTIVE
        and _continue(
            rng,
            ex,
            profs[ex.workflow_id],
            old_ms,
            new_ms,
            incidents.get(ex.workflow_id) if incidents else None,
        )
    ]
    data.now = new_now
    return changed
