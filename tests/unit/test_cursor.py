"""The pass plan of the cursor, run against a model source with late commits and kills."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from exporter.cursor import Bounds, CursorState, Key, Part, Pass

T0 = datetime(2030, 1, 1, tzinfo=UTC)
OVERLAP = timedelta(seconds=30)
PAGE = 7


@dataclass
class Version:
    """A row version: stamped `updated_at`, visible from `committed`."""

    id: str
    updated_at: datetime
    committed: datetime

    @property
    def key(self) -> tuple[datetime, str]:
        return (self.updated_at, self.id)


class ModelSource:
    """Rows in (updated_at, id) order, each visible once committed; a clock that moves."""

    def __init__(self) -> None:
        self.rows: dict[str, Version] = {}
        self.now = T0

    def page(self, b: Bounds, after: Key | None) -> list[Version]:
        after = after or b.after
        out = []
        for v in sorted(self.rows.values(), key=lambda v: v.key):
            if v.committed > self.now:
                continue
            if b.since is not None and v.updated_at < b.since:
                continue
            if after is not None and v.key <= (after.updated_at, after.id):
                continue
            if b.upto is not None and v.key > (b.upto.updated_at, b.upto.id):
                continue
            out.append(v)
            if len(out) == PAGE:
                break
        self.now += timedelta(milliseconds=200)
        return out


def run_pass(
    src: ModelSource, state: CursorState, seen: set, kill_after: int | None, probe: bool = False
):
    """One pass (with `probe`, first the steady-state probe, as the ingest runs it); returns
    (persisted state, pages read, finished)."""
    p = Pass(state, src.now, OVERLAP)
    one = p.probe() if probe else None
    if one is not None and not src.page(one, None):
        return (p.window_done() if p.window_due(False) else state), 0, True
    pages = 0
    reread = False
    for b in p.reads():
        if b.part is Part.FORWARD and p.window_due(reread):
            state = p.window_done()
        after = None
        while True:
            rows = src.page(b, after)
            if not rows:
                break
            reread = reread or b.part is not Part.FORWARD
            pages += 1
            seen.update((v.id, v.updated_at) for v in rows)
            after = Key(rows[-1].updated_at, rows[-1].id)
            state = p.after(b.part, after)
            if kill_after is not None and pages >= kill_after:
                return state, pages, False
            if len(rows) < PAGE:
                break
    return state, pages, True


def test_steady_state_reads_nothing_once_idle_longer_than_the_overlap():
    src = ModelSource()
    for i in range(200):  # one bulk update: the same updated_at
        src.rows[f"r{i:03d}"] = Version(f"r{i:03d}", T0, T0)
    src.now = T0 + timedelta(seconds=1)
    state, seen = CursorState(), set()
    state, _, _ = run_pass(src, state, seen, None)
    assert len(seen) == 200
    reread = []
    for _ in range(8):
        src.now += timedelta(seconds=10)
        before = set()
        state, _, _ = run_pass(src, state, before, None)
        reread.append(len(before))
    # re-read while a previous pass began within the overlap of the update, then never
    assert reread[-4:] == [0, 0, 0, 0]
    assert all(n in (0, 200) for n in reread)


@pytest.mark.parametrize("probe", [False, True], ids=["reads", "probe-first"])
def test_every_version_is_read_despite_kills_and_late_commits(probe: bool):
    for seed in range(120):
        rng = random.Random(seed)
        src = ModelSource()
        state, seen = CursorState(), set()
        written: list[Version] = []
        for step in range(60):
            # the application: bulk updates (one stamp), single updates, late commits
            for _ in range(rng.choice([0, 1, 1, 3, 40])):
                rid = f"r{rng.randrange(120):03d}"
                stamp = src.now - timedelta(seconds=rng.uniform(0, 1))
                late = timedelta(seconds=rng.choice([0, 0, 0, rng.uniform(0, 29)]))
                v = Version(rid, stamp, stamp + late)
                old = src.rows.get(rid)
                if old is None or old.committed <= v.committed:
                    src.rows[rid] = v
                    written.append(v)
            kill = rng.choice([None, 1, 1, 2, 5]) if step < 50 else None
            state, _, _ = run_pass(src, state, seen, kill, probe)
            src.now += timedelta(seconds=rng.uniform(0, 12))
        src.now += 2 * OVERLAP
        for _ in range(3):
            state, _, done = run_pass(src, state, seen, None, probe)
            assert done
        current = {(v.id, v.updated_at) for v in src.rows.values()}
        assert current <= seen, (seed, sorted(current - seen)[:3])


def test_killed_passes_always_progress():
    """A pass killed after each page still moves the persisted state forward."""
    src = ModelSource()
    for i in range(300):
        src.rows[f"r{i:03d}"] = Version(f"r{i:03d}", T0, T0)
    src.now = T0 + timedelta(seconds=1)
    state, seen = CursorState(), set()
    passes = 0
    done = False
    while not done:
        passes += 1
        before = state
        state, _, done = run_pass(src, state, seen, None if passes > 500 else 1)
        assert state != before or done
        src.now += timedelta(seconds=2)
    assert len(seen) == 300
    # each killed pass re-reads at most what changed within the overlap: it ends in time
    assert passes < 300 / PAGE + 2 * OVERLAP.total_seconds() / 2 + 5


def test_legacy_head_rereads_the_overlap_once():
    head = Key(T0, "r9")
    p = Pass(CursorState.legacy(head, OVERLAP), T0 + timedelta(minutes=5), OVERLAP)
    reads = p.reads()
    assert [b.part for b in reads] == [Part.REST, Part.FORWARD]
    assert reads[0].since == T0 - OVERLAP and reads[0].upto == head and reads[0].after is None
    assert p.window_done() == CursorState(head, head, T0 + timedelta(minutes=5))


def _all_rows(src: ModelSource, b: Bounds) -> set[str]:
    out: set[str] = set()
    after = None
    while rows := src.page(b, after):
        out |= {v.id for v in rows}
        after = Key(rows[-1].updated_at, rows[-1].id)
    return out


def test_probe_reads_exactly_what_the_steady_state_reads_read():
    """The probe's rows are the re-read's and the forward read's together, whatever the head,
    the last read and the rows; outside the steady state there is no probe."""
    rng = random.Random(7)
    checked = 0
    for _ in range(400):
        src = ModelSource()
        for i in range(rng.randrange(0, 40)):
            t = T0 + timedelta(seconds=rng.uniform(0, 120))
            src.rows[f"r{i:02d}"] = Version(f"r{i:02d}", t, T0)
        src.now = T0 + timedelta(seconds=200)
        head = Key(T0 + timedelta(seconds=rng.uniform(0, 120)), f"r{rng.randrange(40):02d}")
        read_at = head.updated_at + timedelta(seconds=rng.uniform(-5, 90))
        p = Pass(CursorState(head, head, read_at), src.now, OVERLAP)
        probe = p.probe()
        assert probe is not None
        reads = p.reads()
        assert [b.part for b in reads] == [Part.RECHECK, Part.FORWARD]
        expected = set().union(*(_all_rows(src, b) for b in reads))
        assert _all_rows(src, probe) == expected
        checked += bool(expected)
        behind = CursorState(head, Key(head.updated_at - OVERLAP, head.id), read_at, read_at)
        assert Pass(behind, src.now, OVERLAP).probe() is None
        assert Pass(CursorState(), src.now, OVERLAP).probe() is None
    assert checked > 100
