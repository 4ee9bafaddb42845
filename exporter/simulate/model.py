"""Plain data model of simulated workflows and executions, shaped like the source contract."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

ACTION_TYPES = ("send_email", "wait", "branch", "webhook", "update_field", "send_sms")
ATTEMPT_STATUSES = ("running", "succeeded", "failed", "skipped")
EXECUTION_STATUSES = ("active", "completed", "exited", "failed")
EXIT_REASONS = ("unsubscribed", "goal_met_elsewhere", "manual_removal", "contact_deleted")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)


def to_ms(t: datetime) -> int:
    """Whole milliseconds since the Unix epoch of an aware datetime (floored)."""
    return (t - EPOCH) // MS


def from_ms(ms: int) -> datetime:
    """The aware UTC datetime `ms` milliseconds after the Unix epoch (exact)."""
    return datetime.fromtimestamp(ms / 1000, UTC)


def iso(t: datetime | None) -> str | None:
    """ISO-8601 text with milliseconds and offset, as written into step_progress."""
    return None if t is None else t.isoformat(timespec="milliseconds")


@dataclass(slots=True)
class SimStep:
    """One step of a workflow definition."""

    id: str
    name: str
    action_type: str

    def to_json(self) -> dict[str, str]:
        """The step as an element of `workflows.steps`."""
        return {"id": self.id, "name": self.name, "action_type": self.action_type}


@dataclass(slots=True)
class SimWorkflow:
    """A workflow definition: ordered, linear steps."""

    id: str
    tenant_id: str
    name: str
    steps: list[SimStep]
    updated_at: datetime

    def steps_json(self) -> list[dict[str, str]]:
        """The `steps` column value."""
        return [s.to_json() for s in self.steps]

    @property
    def step_ids(self) -> list[str]:
        """Step ids in workflow order."""
        return [s.id for s in self.steps]


@dataclass(slots=True)
class SimAttempt:
    """One attempt of one step, an element of `step_progress`."""

    step_id: str
    entered_at: datetime
    finished_at: datetime | None
    status: str
    error: str | None

    @property
    def duration_ms(self) -> int | None:
        """Whole milliseconds from entered to finished, None while running."""
        if self.finished_at is None:
            return None
        return (self.finished_at - self.entered_at) // MS

    def to_json(self) -> dict[str, Any]:
        """The attempt as an element of `step_progress`."""
        return {
            "step_id": self.step_id,
            "entered_at": iso(self.entered_at),
            "finished_at": iso(self.finished_at),
            "status": self.status,
            "error": self.error,
        }


@dataclass(slots=True)
class SimExecution:
    """One enrollment of a contact into a workflow, a row of the executions table."""

    id: str
    tenant_id: str
    workflow_id: str
    contact_id: str
    status: str
    enrolled_at: datetime
    completed_at: datetime | None
    converted_at: datetime | None
    exited_at: datetime | None
    exit_reason: str | None
    current_step_id: str | None
    step_progress: list[SimAttempt]
    updated_at: datetime

    @property
    def failed_at(self) -> datetime | None:
        """For a failed execution, the finish of its last failed attempt; else None."""
        if self.status != "failed":
            return None
        for a in reversed(self.step_progress):
            if a.status == "failed":
                return a.finished_at
        return None

    def step_progress_json(self) -> list[dict[str, Any]]:
        """The `step_progress` column value."""
        return [a.to_json() for a in self.step_progress]


@dataclass(slots=True)
class SimData:
    """A generated data set: workflows, their executions, and the instant it was generated for."""

    workflows: list[SimWorkflow]
    executions: list[SimExecution]
    now: datetime

    def workflow(self, workflow_id: str) -> SimWorkflow:
        """The workflow with this id (KeyError if none)."""
        for wf in self.workflows:
            if wf.id == workflow_id:
                return wf
        raise KeyError(workflow_id)
