"""Workload generator for the source tables (the tests hold its exact expected numbers)."""

from exporter.simulate.generate import (
    WorkflowProfile,
    advance,
    generate,
    profile_for,
    simulate_execution,
)
from exporter.simulate.model import (
    ACTION_TYPES,
    ATTEMPT_STATUSES,
    EXECUTION_STATUSES,
    EXIT_REASONS,
    SimAttempt,
    SimData,
    SimExecution,
    SimStep,
    SimWorkflow,
)
from exporter.simulate.writer import (
    create_source_schema,
    execution_record,
    insert_bad_rows,
    schema_sql,
    upsert_executions,
    upsert_workflows,
    workflow_record,
    write,
)

__all__ = [
    "ACTION_TYPES",
    "ATTEMPT_STATUSES",
    "EXECUTION_STATUSES",
    "EXIT_REASONS",
    "SimAttempt",
    "SimData",
    "SimExecution",
    "SimStep",
    "SimWorkflow",
    "WorkflowProfile",
    "advance",
    "create_source_schema",
    "execution_record",
    "generate",
    "insert_bad_rows",
    "profile_for",
    "schema_sql",
    "simulate_execution",
    "upsert_executions",
    "upsert_workflows",
    "workflow_record",
    "write",
]
