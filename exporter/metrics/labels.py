"""Bounded values of free-text labels: each exit reason is its own `reason` label only once
promoted (listed in `metrics.exit_reasons`, or among the `metrics.top_reasons` most frequent
when first seen); every other reason is counted in `reason="other"`.

Promotions are stored and never undone, so every replica and restart exposes the same label
set. A value promoted after `other` was served starts its own series at 0 (the count so far
stays in `other`, recorded as a baseline): no series ever goes down.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg

from exporter.store import locks
from exporter.store.sqlfiles import named

Q = named("metrics.sql")
EXITS = "exits"
"""The family (and wfa.counters metric) of exit reasons."""
OTHER = "other"
"""The label value of every reason that is not promoted."""
UNSPECIFIED = "unspecified"
"""The label value of exits without a reason."""
RESERVED = frozenset({OTHER, UNSPECIFIED})
MAX_CHARS = 64
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f]+")


def eligible(label: str) -> bool:
    """Whether a source value may become a label value: short, printable, not reserved."""
    return (
        0 < len(label) <= MAX_CHARS and label not in RESERVED and bool(_PRINTABLE.fullmatch(label))
    )


@dataclass(frozen=True, slots=True)
class LabelPlan:
    """The promoted values of a family and the baselines of their series."""

    promoted: frozenset[str] = frozenset()
    baselines: Mapping[tuple[str, str, str], int] = field(default_factory=dict)

    def fold(self, tenant: str, workflow: str, counts: Mapping[str, int]) -> dict[str, int]:
        """Counts by raw value -> counts by exposed value (promoted values, unspecified, other)."""
        out: dict[str, int] = {}
        other = 0
        spill = False
        for label, n in counts.items():
            if label == "":
                out[UNSPECIFIED] = out.get(UNSPECIFIED, 0) + n
            elif label in self.promoted:
                base = self.baselines.get((label, tenant, workflow), 0)
                out[label] = n - base
                other += base
                spill = spill or base > 0
            else:
                other += n
                spill = True
        if spill:
            out[OTHER] = other
        return out


def choose(
    totals: Mapping[str, int], have: Mapping[str, str], allow: Iterable[str], top: int
) -> list[tuple[str, str]]:
    """(value, source) to promote now: missing allowlisted values, then the most frequent."""
    allow = list(dict.fromkeys(allow))
    new = [(a, "allow") for a in allow if a not in have]
    free = top - sum(1 for source in have.values() if source == "top")
    if free > 0:
        taken = set(have) | set(allow)
        candidates = sorted(
            (v for v in totals if v not in taken and eligible(v)),
            key=lambda v: (-totals[v], v),
        )
        new += [(v, "top") for v in candidates[:free]]
    return new


async def promote(
    conn: asyncpg.Connection, family: str, metric: str, allow: Sequence[str], top: int
) -> list[str]:
    """Promote what `choose` picks (one transaction, serialised); return the values promoted."""
    async with conn.transaction():
        await conn.execute(Q["label_lock"], locks.REFRESH)
        have = {r["label"]: r["source"] for r in await conn.fetch(Q["label_promotions"], family)}
        served = await conn.fetchval(Q["label_served"], family)
        totals = {r["label"]: r["total"] for r in await conn.fetch(Q["label_totals"], metric)}
        new = choose(totals, have, allow, top)
        if new:
            values = [v for v, _ in new]
            await conn.execute(Q["promote_labels"], family, values, [s for _, s in new])
            if served:
                await conn.execute(Q["label_baselines_now"], family, metric, values)
        if not served:
            await conn.execute(Q["label_mark_served"], family)
    return [v for v, _ in new]


async def read_plan(conn: asyncpg.Connection, family: str) -> LabelPlan:
    """The promoted values of `family` and their baselines."""
    promoted: set[str] = set()
    baselines: dict[tuple[str, str, str], int] = {}
    for r in await conn.fetch(Q["label_plan"], family):
        promoted.add(r["label"])
        if r["tenant_id"] is not None:
            baselines[(r["label"], r["tenant_id"], r["workflow_id"])] = r["value"]
    return LabelPlan(frozenset(promoted), baselines)
