"""Retention policies and runs, shared by the API and the scheduler.

A dataset's period comes from the store when one was set over the API, else from the
config; a workflow may have its own period (config `retention.workflows` or the store).
A store-wide run (the scheduler's, or an operator's) drops whole partitions or chunks older
than the longest period in force for the dataset (the backend's `drop_before`, which never
drops what the rollups above have not materialized), then deletes by row what shorter
per-workflow periods, or the dataset period when some workflow keeps data longer, allow.
A tenant's run drops no partition (they hold every tenant's rows): it deletes by row, and
only rows whose `tenant_id` is the tenant's, what the periods of its workflows allow.
A dry run does exactly the same in a transaction that is rolled back, so it reports what
the real run would do.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from exporter.config import Config
from exporter.config.config import MIN_RAW_RETENTION
from exporter.config.durations import format_duration
from exporter.config.schema import DATASETS, OPERATOR, RAW_DATASETS
from exporter.store import locks
from exporter.store.backend import Backend, retention_cutoffs
from exporter.store.sqlfiles import named

log = logging.getLogger(__name__)

Q = named("retention.sql")
LOCK_TIMEOUT = "5s"
"""How long a run waits for a table lock (an export reading old rows) before giving up."""
STATEMENT_TIMEOUT = "10min"
REFRESH_BOUND = (*RAW_DATASETS, "rollups_1h")
"""Datasets a rollup refresh reads: their period must outlast the refresh window."""


class PolicyError(ValueError):
    """A policy change that is refused; `param` names the offending input."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class RetentionBusy(RuntimeError):
    """Another retention run holds the lock."""


@dataclass(frozen=True, slots=True)
class Policy:
    """The period of a dataset, for one workflow or all, and where it comes from."""

    dataset: str
    workflow_id: str | None
    period: timedelta
    source: str
    updated_at: datetime | None = None
    updated_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The policy as the API shows it."""
        out: dict[str, Any] = {
            "dataset": self.dataset,
            "period": format_duration(self.period),
            "period_seconds": int(self.period.total_seconds()),
            "source": self.source,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
        }
        if self.workflow_id is not None:
            out = {"workflow_id": self.workflow_id, **out}
        return out


@dataclass(slots=True)
class Policies:
    """Every policy in force: per dataset, and per dataset and workflow."""

    datasets: dict[str, Policy]
    workflows: dict[str, dict[str, Policy]] = field(default_factory=dict)

    def period(self, dataset: str, workflow_id: str | None = None) -> timedelta:
        """The period in force for a dataset (of one workflow when it has its own)."""
        own = self.workflows.get(dataset, {}).get(workflow_id or "")
        return (own or self.datasets[dataset]).period


def minimum_period(cfg: Config, backend: Backend | None = None) -> timedelta:
    """The shortest period of a dataset a refresh reads: longer than the refresh window."""
    minimum = max(2 * cfg.exporter.refresh_interval, MIN_RAW_RETENTION)
    reach = backend.policy_reach if backend is not None else None
    return minimum if reach is None else max(minimum, reach)


def check_period(dataset: str, period: timedelta, minimum: timedelta) -> None:
    """PolicyError unless `period` may be set for `dataset`."""
    if period <= timedelta(0):
        raise PolicyError("must be a positive duration such as 90d", "period")
    if dataset in REFRESH_BOUND and period < minimum:
        raise PolicyError(
            f"must be at least {format_duration(minimum)}: {dataset} is read by the rollup "
            f"refresh, whose window reaches {format_duration(minimum)} back; a shorter "
            "retention would drop rows before they are rolled up and empty the rollups",
            "period",
        )


async def load(conn: asyncpg.Connection, cfg: Config) -> Policies:
    """The policies in force: stored ones over the config's."""
    r = cfg.retention
    out = Policies({d: Policy(d, None, getattr(r, d), "config") for d in DATASETS})
    for wid, override in r.workflows.items():
        for d in DATASETS:
            value = getattr(override, d)
            if value is not None:
                out.workflows.setdefault(d, {})[wid] = Policy(d, wid, value, "config")
    for row in await conn.fetch(Q["policies"]):
        d, wid = row["dataset"], row["workflow_id"]
        if d not in DATASETS:
            continue
        p = Policy(d, wid or None, row["period"], "store", row["updated_at"], row["updated_by"])
        if wid:
            out.workflows.setdefault(d, {})[wid] = p
        else:
            out.datasets[d] = p
    return out


def _config_policy(cfg: Config, dataset: str, workflow_id: str | None) -> Policy | None:
    r = cfg.retention
    if workflow_id is None:
        return Policy(dataset, None, getattr(r, dataset), "config")
    override = r.workflows.get(workflow_id)
    value = getattr(override, dataset) if override is not None else None
    return Policy(dataset, workflow_id, value, "config") if value is not None else None


async def set_policy(
    conn: asyncpg.Connection,
    cfg: Config,
    backend: Backend | None,
    *,
    dataset: str,
    workflow_id: str | None,
    period: timedelta | None,
    actor: str,
    tenant: str,
    capped: bool = False,
) -> dict[str, Any]:
    """Store (or with None, remove) a policy and record the change; the audit entry.

    With `capped` (a tenant's change) a workflow's period may not exceed the dataset's: a
    longer one would hold back the partitions of every tenant.
    """
    if period is not None:
        check_period(dataset, period, minimum_period(cfg, backend))
    key = workflow_id or ""
    async with conn.transaction():
        await conn.execute(Q["policy_lock"], locks.POLICY)
        current = await load(conn, cfg)
        ceiling = current.datasets[dataset].period
        if capped and period is not None and period > ceiling:
            raise PolicyError(
                f"must not exceed the store-wide period of {dataset}, "
                f"{format_duration(ceiling)}: a tenant may shorten its retention, "
                "the operator sets the longest",
                "period",
            )
        old = (
            current.workflows.get(dataset, {}).get(key)
            if workflow_id
            else current.datasets[dataset]
        )
        if period is None:
            await conn.execute(Q["policy_delete"], dataset, key)
            new = _config_policy(cfg, dataset, workflow_id)
        else:
            await conn.execute(Q["policy_upsert"], dataset, key, period, actor)
            new = Policy(dataset, workflow_id, period, "store")
        return dict(
            await conn.fetchrow(
                Q["audit_insert"],
                actor,
                tenant,
                dataset,
                key,
                old.period if old else None,
                new.period if new else None,
                old.source if old else "none",
                new.source if new else "none",
            )
        )


async def audit(
    conn: asyncpg.Connection, tenant: str | None, limit: int
) -> list[dict[str, Any]]:
    """Newest policy changes first: all of them (None), or those of a tenant's workflows."""
    if tenant is None:
        return [dict(r) for r in await conn.fetch(Q["audit_all"], limit)]
    return [dict(r) for r in await conn.fetch(Q["audit_tenant"], tenant, limit)]


async def last_run(conn: asyncpg.Connection, tenant: str | None = None) -> dict[str, Any] | None:
    """The latest real run over the whole store (None), or over one tenant's workflows."""
    row = await conn.fetchrow(Q["last_run"], tenant if tenant is not None else OPERATOR)
    return dict(row) if row is not None else None


async def tenant_workflows(conn: asyncpg.Connection, tenant: str) -> list[str]:
    """Ids of a tenant's workflows."""
    return [r["workflow_id"] for r in await conn.fetch(Q["tenant_workflows"], tenant)]


async def workflow_tenants(conn: asyncpg.Connection, ids: list[str]) -> dict[str, str]:
    """Tenant of each known workflow id."""
    return {r["workflow_id"]: r["tenant_id"] for r in await conn.fetch(Q["workflow_tenants"], ids)}


# runs ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class DatasetRun:
    """What a run did (or would do) to one dataset."""

    dataset: str
    period: timedelta
    cutoff: datetime
    applied_cutoff: datetime | None = None
    dropped: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def rows(self) -> int:
        """Rows dropped and deleted."""
        return sum(p["rows"] for p in self.dropped) + sum(d["rows"] for d in self.deleted)

    def to_json(self) -> dict[str, Any]:
        """The dataset's part of a run result."""
        return {
            "dataset": self.dataset,
            "period": format_duration(self.period),
            "cutoff": self.cutoff,
            "applied_cutoff": self.applied_cutoff,
            "held": self.applied_cutoff is not None and self.applied_cutoff < self.cutoff,
            "dropped": self.dropped,
            "deleted": self.deleted,
            "rows": self.rows,
            "error": self.error,
        }


@dataclass(slots=True)
class RunResult:
    """A whole run over every dataset."""

    dry_run: bool
    started_at: datetime
    finished_at: datetime | None = None
    datasets: list[DatasetRun] = field(default_factory=list)
    run_id: int | None = None
    tenant: str | None = None

    @property
    def rows(self) -> int:
        """Rows dropped and deleted over all datasets."""
        return sum(d.rows for d in self.datasets)

    def to_json(self) -> dict[str, Any]:
        """The run as the API shows it."""
        return {
            "run_id": self.run_id,
            "scope": "store" if self.tenant is None else "tenant",
            "dry_run": self.dry_run,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "rows": self.rows,
            "datasets": [d.to_json() for d in self.datasets],
        }


async def _pieces(
    conn: asyncpg.Connection, backend: Backend, dataset: str, cutoff: datetime
) -> dict[str, dict[str, Any]]:
    """Partitions or chunks of a dataset ending by `cutoff`, with row counts, by name."""
    out = {}
    for r in await backend.pieces(conn, dataset):
        if r["range_end"] is None or r["range_end"] > cutoff:
            continue
        n = r["estimate"]
        if n is None or n < 0 or r["compressed"]:
            n = await conn.fetchval(f"SELECT count(*) FROM {r['relation']}")
        out[r["relation"]] = {
            "relation": r["relation"],
            "table": r["tbl"],
            "from": r["range_start"],
            "to": r["range_end"],
            "rows": int(n),
        }
    return out


async def _bucket_rows(
    conn: asyncpg.Connection, tables: list[tuple[str, str]], cutoff: datetime
) -> dict[str, tuple[int, datetime | None]]:
    out = {}
    for table, col in tables:
        row = await conn.fetchrow(
            f"SELECT count(*) AS n, min({col}) AS lo FROM {table} WHERE {col} < $1", cutoff
        )
        out[table] = (row["n"], row["lo"])
    return out


async def _delete_rows(
    conn: asyncpg.Connection,
    backend: Backend,
    dataset: str,
    now: datetime,
    policies: Policies,
    longest: timedelta,
    tenant: str | None = None,
) -> list[dict[str, Any]]:
    """Row deletes, of every tenant or of one (`tenant`, whose rows alone are touched).

    Store-wide: for periods shorter than the longest one (partitions hold every workflow).
    For a tenant: every period of its workflows, since no partition is dropped for it.
    """
    own = policies.workflows.get(dataset, {})
    default = policies.datasets[dataset].period
    jobs: list[tuple[str | None, timedelta]] = []
    if tenant is None:
        if default < longest:
            jobs.append((None, default))
        jobs += [(wid, p.period) for wid, p in sorted(own.items()) if p.period < longest]
    else:
        mine = set(await tenant_workflows(conn, tenant))
        jobs.append((None, default))
        jobs += [(wid, p.period) for wid, p in sorted(own.items()) if wid in mine]
    if not jobs:
        return []
    safe = await backend.rolled_up_until(conn, dataset)
    if safe is None:
        log.warning("row retention of %s skipped: nothing is rolled up from it yet", dataset)
        return []
    tables = await backend.row_tables(conn, dataset)
    # The tenant is a bound parameter of every statement: no other tenant's row can match.
    scope = ("", ()) if tenant is None else (" AND tenant_id = $3", (tenant,))
    out = []
    for wid, period in jobs:
        before = min(now - period, safe)
        rows = 0
        if wid is None:
            where, args = f"workflow_id <> ALL($2::text[]){scope[0]}", (list(own), *scope[1])
        else:
            where, args = f"workflow_id = $2{scope[0]}", (wid, *scope[1])
        for table, col in tables:
            status = await conn.execute(
                f"DELETE FROM {table} WHERE {col} < $1 AND {where}", before, *args
            )
            rows += int(status.split()[-1])
        if dataset == "rollups_1d":
            await backend.resum_weeks(conn, before, where, *args)
        out.append(
            {
                "workflow_id": wid,
                "period": format_duration(period),
                "before": before,
                "rows": rows,
            }
        )
    return out


async def _in_transaction(
    conn: asyncpg.Connection,
    backend: Backend,
    result: DatasetRun,
    dry_run: bool,
    work: Callable[[], Awaitable[None]],
) -> DatasetRun:
    """Run `work` for one dataset in its own retention transaction, rolled back on a dry run;
    busy tables (a lock or statement timeout) skip the dataset until the next run."""
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        await conn.execute(f"SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT}'")
        await conn.execute("SELECT pg_advisory_xact_lock($1)", locks.REFRESH)
        await backend.retention_settings(conn)
        await work()
    except (asyncpg.LockNotAvailableError, asyncpg.QueryCanceledError) as exc:
        await tx.rollback()
        result.error = f"skipped: {exc.__class__.__name__} (tables busy); tried again next run"
        result.dropped, result.deleted = [], []
        return result
    except BaseException:
        await tx.rollback()
        raise
    if dry_run:
        await tx.rollback()
    else:
        await tx.commit()
    return result


async def _run_dataset(
    conn: asyncpg.Connection,
    backend: Backend,
    dataset: str,
    policies: Policies,
    now: datetime,
    dry_run: bool,
) -> DatasetRun:
    own = policies.workflows.get(dataset, {})
    longest = max([policies.datasets[dataset].period, *(p.period for p in own.values())])
    result = DatasetRun(dataset, policies.datasets[dataset].period, now - longest)

    async def work() -> None:
        by_rows = backend.drop_deletes_rows(dataset)
        tables = await backend.row_tables(conn, dataset) if by_rows else []
        pieces = await _pieces(conn, backend, dataset, result.cutoff)
        counted = await _bucket_rows(conn, tables, result.cutoff)
        names = await backend.drop_before(conn, dataset, result.cutoff)
        result.applied_cutoff = (await retention_cutoffs(conn)).get(dataset)
        if tables:
            after = await _bucket_rows(conn, tables, result.cutoff)
            for table, (n, lo) in counted.items():
                if n > after[table][0]:
                    result.dropped.append(
                        {
                            "relation": table,
                            "table": table.removeprefix("wfa."),
                            "from": lo,
                            "to": result.applied_cutoff,
                            "rows": n - after[table][0],
                        }
                    )
        else:
            result.dropped = [pieces[n] for n in names if n in pieces]
            result.dropped += [
                {"relation": n, "table": None, "from": None, "to": None, "rows": 0}
                for n in names
                if n not in pieces
            ]
        result.deleted = await _delete_rows(conn, backend, dataset, now, policies, longest)

    return await _in_transaction(conn, backend, result, dry_run, work)


async def _run_tenant_dataset(
    conn: asyncpg.Connection,
    backend: Backend,
    dataset: str,
    policies: Policies,
    now: datetime,
    dry_run: bool,
    tenant: str,
) -> DatasetRun:
    period = policies.datasets[dataset].period
    result = DatasetRun(dataset, period, now - period)

    async def work() -> None:
        result.deleted = await _delete_rows(
            conn, backend, dataset, now, policies, period, tenant=tenant
        )

    return await _in_transaction(conn, backend, result, dry_run, work)


async def run(
    conn: asyncpg.Connection,
    cfg: Config,
    backend: Backend,
    *,
    dry_run: bool,
    trigger: str,
    actor: str,
    tenant: str | None = None,
    now: datetime | None = None,
) -> RunResult:
    """Apply (or with `dry_run`, report) retention; RetentionBusy if a run is in progress.

    Without `tenant` the run covers the whole store; with it, only that tenant's rows.
    Cutoffs are counted from `now` rounded down to the hour, so a dry run and the real run
    that follows within the hour compute the same plan.
    """
    if tenant == OPERATOR:
        raise ValueError(f"{OPERATOR!r} is not a tenant: pass tenant=None for the whole store")
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", locks.RETENTION):
        raise RetentionBusy("a retention run is already in progress")
    try:
        now = (now or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0)
        result = RunResult(dry_run, datetime.now(UTC), tenant=tenant)
        policies = await load(conn, cfg)
        for dataset in DATASETS:
            if tenant is None:
                done = await _run_dataset(conn, backend, dataset, policies, now, dry_run)
            else:
                done = await _run_tenant_dataset(
                    conn, backend, dataset, policies, now, dry_run, tenant
                )
            result.datasets.append(done)
        result.finished_at = datetime.now(UTC)
        result.run_id = await conn.fetchval(
            Q["run_insert"],
            result.started_at,
            result.finished_at,
            trigger,
            actor,
            dry_run,
            result.rows,
            json.dumps(result.to_json(), default=_json_default),
            tenant if tenant is not None else OPERATOR,
        )
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", locks.RETENTION)
    if not dry_run:
        log.info("retention run %s removed %d rows", result.run_id, result.rows)
    return result


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)
