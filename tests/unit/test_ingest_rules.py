"""Validation, bounding and fault classification of ingest, against the truth's own rules."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from exporter.ingest import is_row_fault
from exporter.simulate.generate import generate
from exporter.simulate.model import SimExecution
from exporter.simulate.writer import RecordEncoder
from exporter.transform import (
    MAX_ID_BYTES,
    MAX_TEXT_BYTES,
    TRUNCATED,
    Batch,
    Plausible,
    Rejected,
    SourceExecution,
    WorkflowInfo,
    apply_execution,
    bounded_key,
    bounded_text,
    parse_progress,
)
from tests.kit.truth import rejection, stored_text

NOW = datetime.now(UTC).replace(microsecond=0)
WINDOW = Plausible(datetime(2000, 1, 1, tzinfo=UTC), NOW + timedelta(days=1))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a" * MAX_TEXT_BYTES,
        "a" * (MAX_TEXT_BYTES + 1),
        "é" * 500,  # exactly the cap in bytes
        "é" * 501,
        "€" * 10_000,  # three bytes each: the cut falls inside a character
        "𝄞" * 300 + "tail",  # four bytes each
        "x" * 2 + "€" * 400,
    ],
)
def test_bounded_text_cuts_on_characters_under_the_cap(text):
    out = bounded_text(text)
    assert len(out.encode()) <= MAX_TEXT_BYTES
    if len(text.encode()) <= MAX_TEXT_BYTES:
        assert out == text
    else:
        assert out.endswith(TRUNCATED) and text.startswith(out.removesuffix(TRUNCATED))
        assert len(out.encode()) > MAX_TEXT_BYTES - 4
    assert out == stored_text(text)
    assert bounded_text(None) is None


def test_bounded_key_is_short_and_distinct():
    a, b = "k" * 500 + "a", "k" * 500 + "b"
    assert bounded_key("short") == "short"
    assert bounded_key("é" * 100) == "é" * 100  # exactly the bound in bytes
    ka, kb = bounded_key(a), bounded_key(b)
    assert ka != kb and len(ka.encode()) <= MAX_ID_BYTES and len(kb.encode()) <= MAX_ID_BYTES
    assert bounded_key("€" * 300) == bounded_key("€" * 300)


def test_duplicate_attempts_compare_instants_not_text():
    same = (
        '[{"step_id": "s1", "entered_at": "2026-01-01T10:00:00+00:00", "status": "running"},'
        ' {"step_id": "s1", "entered_at": "2026-01-01T11:00:00+01:00", "status": "running"}]'
    )
    with pytest.raises(Rejected) as exc:
        parse_progress(same, WINDOW)
    assert exc.value.reason == "duplicate_attempt"
    other = same.replace('"s1", "entered_at": "2026-01-01T11', '"s2", "entered_at": "2026-01-01T11')
    assert len(parse_progress(other, WINDOW)) == 2


@pytest.mark.parametrize(
    ("exc", "fault"),
    [
        (asyncpg.UniqueViolationError("dup"), True),
        (asyncpg.CheckViolationError("no partition"), True),
        (asyncpg.ProgramLimitExceededError("index row too large"), True),
        (asyncpg.InvalidTextRepresentationError("bad"), True),
        (asyncpg.RaiseError("trigger"), True),
        (OverflowError("date value out of range"), True),
        (asyncpg.QueryCanceledError("statement timeout"), False),
        (asyncpg.ConnectionDoesNotExistError("gone"), False),
        (asyncpg.LockNotAvailableError("lock"), False),
        (asyncpg.DeadlockDetectedError("deadlock"), False),
        (asyncpg.OutOfMemoryError("out of shared memory"), False),
        (asyncpg.UndefinedColumnError("schema drift"), False),
        (ConnectionResetError(), False),
        (RuntimeError("bug"), False),
    ],
)
def test_only_row_caused_errors_split_a_batch(exc, fault):
    assert is_row_fault(exc) is fault


_FAR_PAST = datetime(1900, 1, 1, tzinfo=UTC)
_FAR_FUTURE = datetime(9999, 12, 31, tzinfo=UTC)


def _mutate(rng: random.Random, ex: SimExecution) -> SimExecution:
    """One or two hostile changes, chosen at random."""
    for _ in range(rng.randint(1, 2)):
        kind = rng.randrange(10)
        attempts = list(ex.step_progress)
        if kind == 0 and attempts:
            attempts.insert(rng.randrange(len(attempts) + 1), replace(rng.choice(attempts)))
        elif kind == 1:
            ex = replace(ex, enrolled_at=rng.choice([_FAR_PAST, _FAR_FUTURE]))
        elif kind == 2:
            back = timedelta(seconds=rng.randint(1, 900_000))
            ex = replace(ex, completed_at=ex.enrolled_at - back)
        elif kind == 3:
            ex = replace(ex, status="exited", exited_at=ex.enrolled_at + timedelta(minutes=1),
                         exit_reason=rng.choice(["é", "x", "€"]) * rng.randint(100, 3000))
        elif kind == 4 and attempts:
            i = rng.randrange(len(attempts))
            attempts[i] = replace(attempts[i], error="E" * rng.randint(900, 12_000))
        elif kind == 5:
            ex = replace(ex, id=ex.id + "x" * rng.randint(150, 400))
        elif kind == 6 and attempts:
            i = rng.randrange(len(attempts))
            a = attempts[i]
            attempts[i] = replace(a, finished_at=a.entered_at - timedelta(seconds=5))
        elif kind == 7 and attempts:
            i = rng.randrange(len(attempts))
            attempts[i] = replace(attempts[i], entered_at=_FAR_FUTURE)
        elif kind == 8:
            ex = replace(ex, contact_id="c" * rng.randint(150, 300))
        elif kind == 9:
            ex = replace(ex, updated_at=rng.choice([_FAR_PAST, _FAR_FUTURE]))
        if attempts != ex.step_progress:
            ex = replace(ex, step_progress=attempts)
    return ex


def test_truth_rejects_exactly_what_ingest_rejects():
    """The truth's rules, written separately, agree with transform on hostile rows."""
    data = generate(executions=400, days=3, workflows=3, tenants=2, seed=5, now=NOW)
    infos = {
        wf.id: WorkflowInfo(wf.id, wf.tenant_id, {s.id: s.action_type for s in wf.steps})
        for wf in data.workflows
    }
    rng = random.Random(20)
    encoder = RecordEncoder()
    reasons: set[str | None] = set()
    for i in range(3000):
        base = data.executions[i % len(data.executions)]
        ex = _mutate(rng, base) if i % 4 else base
        r = encoder.execution(ex)
        row = SourceExecution(*r[:10], None, *r[10:])
        batch = Batch()
        try:
            apply_execution(batch, row, infos[ex.workflow_id], None, None, WINDOW)
            got = None
        except Rejected as exc:
            got = exc.reason
        want = rejection(ex, WINDOW.earliest, WINDOW.latest)
        assert got == want, (i, ex.id[:40])
        reasons.add(got)
        if got is None:
            stored = batch.executions[0][10]
            assert stored == stored_text(ex.exit_reason)
            errors = {e[10] for e in batch.runs_new}
            assert errors == {stored_text(a.error) for a in ex.step_progress}
    assert reasons >= {
        None,
        "duplicate_attempt",
        "implausible_time",
        "before_enrolled",
        "id_too_long",
        "finished_before_entered",
    }
