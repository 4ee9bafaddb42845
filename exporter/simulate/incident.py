"""Incidents the live workload can stage: a drop-off, a failure burst or a slowdown at one step.

Grammar (`--incident`), comma-separated `key=value`, keys in any order:

    workflow=ID      required: a workflow id of the source
    step=N|ID        required: the step, 1-based position or step id
    dropoff=SHARE    of the executions entering the step, this share leave during it (the
                     step's attempt ends early, with no wait; they never reach the next step)
    failure=SHARE    attempts of the step fail, with this share (retried or fatal as usual)
    slowdown=FACTOR  attempts of the step take FACTOR times as long (above 1)
    after=DURATION   start this long after the live workload starts (default 0s)
    for=DURATION     last this long (default 10m)

Exactly one of dropoff, failure and slowdown. A share is a number in (0, 1] or a percentage
("80%"); a factor may end in "x" ("10x"). Durations as in the config: 30s, 2m, 1h30m.

Example: workflow=wf-01,step=3,dropoff=0.8,after=2m,for=10m
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from exporter.config import format_duration, parse_duration
from exporter.simulate.model import SimWorkflow

KINDS = ("dropoff", "failure", "slowdown")
KEYS = ("workflow", "step", *KINDS, "after", "for")
DEFAULT_FOR = timedelta(minutes=10)
INCIDENT_ERROR = "incident: {action_type} failing"
"""The error text of attempts failed by a failure incident."""
_PAIR = re.compile(r"\s*([a-z]+)\s*=\s*(.*?)\s*")


class IncidentError(ValueError):
    """An incident spec that cannot be staged; the message says which part and why."""


@dataclass(frozen=True, slots=True)
class Incident:
    """A parsed incident, not yet bound to a workflow definition."""

    workflow: str
    step: str
    kind: str
    value: float
    after: timedelta
    duration: timedelta

    def describe(self) -> str:
        """One line for people: what, where, when."""
        what = {
            "dropoff": f"{self.value:.0%} drop-off at",
            "failure": f"{self.value:.0%} of the attempts failing at",
            "slowdown": f"{self.value:g}x slower attempts at",
        }[self.kind]
        return (
            f"{what} step {self.step} of {self.workflow}, from {format_duration(self.after)} "
            f"for {format_duration(self.duration)}"
        )


@dataclass(frozen=True, slots=True)
class Staged:
    """An incident bound to a workflow: 0-based step index and a window in epoch ms."""

    incident: Incident
    step_index: int
    start_ms: int
    end_ms: int

    def active(self, t_ms: int) -> bool:
        """Whether the incident is on at `t_ms`."""
        return self.start_ms <= t_ms < self.end_ms


def _share(key: str, text: str) -> float:
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise IncidentError(f"{key}={text!r}: must be a share such as 0.8 or 80%") from None
    if not 0 < value <= 1:
        raise IncidentError(f"{key}={text!r}: must be above 0 and at most 1 (100%)")
    return value


def _factor(text: str) -> float:
    try:
        value = float(text.removesuffix("x"))
    except ValueError:
        raise IncidentError(f"slowdown={text!r}: must be a factor such as 10 or 10x") from None
    if not 1 < value <= 1000:
        raise IncidentError(f"slowdown={text!r}: must be above 1 and at most 1000")
    return value


def _duration(key: str, text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError:
        raise IncidentError(f"{key}={text!r}: must be a duration such as 30s, 2m or 1h") from None


def parse_incident(spec: str) -> Incident:
    """Parse a `--incident` spec (IncidentError names the bad part)."""
    fields: dict[str, str] = {}
    for part in spec.split(","):
        m = _PAIR.fullmatch(part)
        if m is None:
            raise IncidentError(f"{part.strip()!r}: expected key=value (keys: {', '.join(KEYS)})")
        key, value = m.groups()
        if key not in KEYS:
            raise IncidentError(f"unknown key {key!r} (keys: {', '.join(KEYS)})")
        if key in fields:
            raise IncidentError(f"{key} is given twice")
        if not value:
            raise IncidentError(f"{key} has no value")
        fields[key] = value
    for key in ("workflow", "step"):
        if key not in fields:
            raise IncidentError(f"{key}= is required")
    kinds = [k for k in KINDS if k in fields]
    if len(kinds) != 1:
        raise IncidentError("give exactly one of dropoff=, failure= or slowdown=")
    kind = kinds[0]
    value = _factor(fields[kind]) if kind == "slowdown" else _share(kind, fields[kind])
    duration = _duration("for", fields.get("for", format_duration(DEFAULT_FOR)))
    if duration <= timedelta(0):
        raise IncidentError("for= must be longer than 0s")
    return Incident(
        fields["workflow"],
        fields["step"],
        kind,
        value,
        _duration("after", fields.get("after", "0s")),
        duration,
    )


def stage(
    incidents: Iterable[Incident], workflows: Sequence[SimWorkflow], start_ms: int
) -> dict[str, tuple[Staged, ...]]:
    """Bind incidents to the workflows (IncidentError when one cannot apply): by workflow id."""
    by_id = {w.id: w for w in workflows}
    out: dict[str, list[Staged]] = {}
    for inc in incidents:
        wf = by_id.get(inc.workflow)
        if wf is None:
            known = ", ".join(sorted(by_id)) or "none"
            raise IncidentError(f"workflow={inc.workflow!r}: not in the source (known: {known})")
        ids = wf.step_ids
        if inc.step.isdigit() and 1 <= int(inc.step) <= len(ids):
            k = int(inc.step) - 1
        elif inc.step in ids:
            k = ids.index(inc.step)
        else:
            raise IncidentError(
                f"step={inc.step!r}: {inc.workflow} has steps 1 to {len(ids)} ({', '.join(ids)})"
            )
        if inc.kind == "dropoff" and k == len(ids) - 1:
            raise IncidentError(
                f"step={inc.step!r} is the last step of {inc.workflow}: "
                "a drop-off needs a next step"
            )
        begin = start_ms + int(inc.after.total_seconds() * 1000)
        end = begin + int(inc.duration.total_seconds() * 1000)
        out.setdefault(wf.id, []).append(Staged(inc, k, begin, end))
    return {k: tuple(v) for k, v in out.items()}
