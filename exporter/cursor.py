"""Where a poll pass reads: the keyset head for new rows, and the overlap re-read behind it.

A row missing from a read of the source was not yet committed then, so its `updated_at` is
later than (the source clock at that read) - `overlap`. A pass that begins when the source
clock reads R therefore re-reads, behind the head, only the rows updated since the previous
pass's R - overlap, then reads forward from the head. After a bulk update and an idle period
longer than the overlap the re-read is empty, however many rows share one `updated_at`.

The state is persisted with every batch, so a pass killed half-way resumes where it stopped:

- `head`: the keyset position of the newest row read (forward reads continue after it);
- `checked` and `read_at`: every row up to `checked` was (re-)read by a pass that began at
  `read_at`, so only rows updated since `read_at - overlap` need another look;
- `rest_from`: rows between `checked` and `head` need another look from this time on.

In the steady state `checked == head`. Positions are (updated_at, id as text); they are only
ever compared by the source, in its own order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum


@dataclass(frozen=True, slots=True)
class Key:
    """A keyset position: the row's `updated_at` and its id as text."""

    updated_at: datetime
    id: str


@dataclass(frozen=True, slots=True)
class CursorState:
    """The persisted read position of one source table."""

    head: Key | None = None
    checked: Key | None = None
    read_at: datetime | None = None
    rest_from: datetime | None = None

    @classmethod
    def legacy(cls, head: Key, overlap: timedelta) -> CursorState:
        """A head saved without read positions: re-read the overlap behind it once."""
        return cls(head=head, rest_from=head.updated_at - overlap)


class Part(Enum):
    """The three reads of a pass, in order."""

    RECHECK = "recheck"  # rows up to `checked` updated since `read_at - overlap`
    REST = "rest"  # rows after `checked` up to `head`, updated since `rest_from`
    FORWARD = "forward"  # rows after `head`


@dataclass(frozen=True, slots=True)
class Bounds:
    """One read of a pass: rows with updated_at >= `since`, keys in (after, upto]."""

    part: Part
    since: datetime | None
    after: Key | None
    upto: Key | None


@dataclass(frozen=True, slots=True)
class Pass:
    """One pass over a table, begun when the source clock read `started`."""

    start: CursorState
    started: datetime
    overlap: timedelta

    def reads(self) -> list[Bounds]:
        """The reads of this pass, in order; the first two re-read behind the head."""
        s = self.start
        if s.head is None:
            return [Bounds(Part.FORWARD, None, None, None)]
        out = []
        if s.checked is not None and s.read_at is not None:
            out.append(Bounds(Part.RECHECK, s.read_at - self.overlap, None, s.checked))
        if s.checked != s.head and s.rest_from is not None:
            out.append(Bounds(Part.REST, s.rest_from, s.checked, s.head))
        out.append(Bounds(Part.FORWARD, None, s.head, None))
        return out

    def reread_from(self) -> datetime | None:
        """The oldest `updated_at` this pass re-reads behind the head (None: it re-reads none)."""
        since = [b.since for b in self.reads() if b.part is not Part.FORWARD and b.since]
        return min(since) if since else None

    def probe(self) -> Bounds | None:
        """In the steady state (`checked == head`), one read whose rows are exactly those of
        the re-read and the forward read together, so that a single empty answer proves the
        pass has nothing to do; None otherwise."""
        s = self.start
        if s.head is None or s.checked != s.head or s.read_at is None:
            return None
        since = s.read_at - self.overlap
        if s.head.updated_at >= since:
            # Every row after the head was updated at or after the head's time.
            return Bounds(Part.RECHECK, since, None, None)
        # Nothing up to the head was updated since `since`: only the forward read can find rows.
        return Bounds(Part.FORWARD, None, s.head, None)

    def after(self, part: Part, key: Key) -> CursorState:
        """The state once every row of `part` up to `key` has been read and written."""
        s = self.start
        if part is Part.FORWARD:
            return CursorState(head=key, checked=key, read_at=self.started)
        if part is Part.REST:
            return CursorState(s.head, key, self.started, s.rest_from)
        # Re-checked up to `key` now; what lies between `key` and the head keeps the older
        # of its two lower bounds.
        older = [t for t in (self._recheck_since(), self._rest_since()) if t is not None]
        return CursorState(s.head, key, self.started, min(older) if older else None)

    def window_done(self) -> CursorState:
        """The state once both re-reads are complete (nothing behind the head is pending)."""
        s = self.start
        return CursorState(head=s.head, checked=s.head, read_at=self.started)

    def window_due(self, reread: bool) -> bool:
        """Whether to save `window_done()`: after rows were re-read or from a partial state;
        otherwise once `read_at` is half an overlap old (an older one only widens the next
        re-read, so idle polls need not write every time)."""
        s = self.start
        if s.head is None:
            return False
        if reread or s.checked != s.head or s.read_at is None:
            return True
        return self.started - s.read_at >= self.overlap / 2

    def _recheck_since(self) -> datetime | None:
        s = self.start
        return None if s.read_at is None else s.read_at - self.overlap

    def _rest_since(self) -> datetime | None:
        s = self.start
        return s.rest_from if s.checked != s.head else None
