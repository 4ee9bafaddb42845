"""The exporter's INFO log: what a person wants to know, at most once a minute when all is well.

Poll results are summed and written as one line per `every` (batches, rows by table,
rejected rows, lag, rollup refreshes); leadership changes are written when they happen.
Errors are logged where they occur.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from exporter.ingest import PollResult
from exporter.service import ExporterState

log = logging.getLogger("exporter.activity")


class ActivityLog:
    """A poll listener that summarises ingestion in one INFO line per interval."""

    def __init__(
        self,
        exporter: ExporterState,
        every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.exporter = exporter
        self.every = every
        self.clock = clock
        self._since = clock()
        self._leader: bool | None = None
        self._reset()

    def _reset(self) -> None:
        self.polls = self.failed = self.batches = self.refreshes = 0
        self.rows: Counter = Counter()
        self.rejected: Counter = Counter()
        self._refresh = self.exporter.last_refresh

    def leadership(self, leader: bool) -> None:
        """Log when this replica becomes the leader, and when it stops being it."""
        if leader and not self._leader:
            log.info("leader: this replica holds the poll lock and serves the workflow series")
        elif not leader and self._leader:
            log.info("standby: this replica lost the poll lock; serving self-metrics only")
        self._leader = leader

    def on_poll(self, result: PollResult | None, exc: BaseException | None) -> None:
        """Count one poll; log the summary when it is due."""
        if result is None and exc is None:
            return
        self.polls += 1
        if exc is not None:
            self.failed += 1
        if result is not None:
            self.batches += result.batches
            self.rows.update(result.rows)
            self.rejected.update(result.rejected)
        if self.exporter.last_refresh is not self._refresh:
            self.refreshes += 1
            self._refresh = self.exporter.last_refresh
        now = self.clock()
        if now - self._since >= self.every:
            log.info("%s", self.summary(now - self._since))
            self._since = now
            self._reset()

    def summary(self, seconds: float) -> str:
        """The line for the last `seconds`."""
        rows = sum(self.rows.values())
        tables = ", ".join(f"{t} {n:,}" for t, n in sorted(self.rows.items()))
        parts = [
            f"last {seconds:.0f}s: {self.polls} polls",
            f"{self.batches} batches",
            f"{rows:,} rows" + (f" ({tables})" if tables else ""),
        ]
        if self.rejected:
            parts.append(f"{sum(self.rejected.values()):,} rejected")
        if self.failed:
            parts.append(f"{self.failed} failed polls")
        parts.append(f"{self.refreshes} rollup refreshes")
        newest = self.exporter.newest_updated_at
        if newest is not None:
            parts.append(f"newest source row {time.time() - newest.timestamp():.1f}s old")
        return ", ".join(parts)
