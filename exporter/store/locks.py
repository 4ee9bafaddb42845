"""Every PostgreSQL advisory lock id of the store database, in one place.

They share one key space with whatever else runs in that database: keep them together so
that a new one cannot collide with an old one.
"""

from __future__ import annotations

MIGRATE = 727_273
"""Session lock held while the schema is created or upgraded."""
POLL = 727_274
"""Default of `exporter.lock_id`: the session lock that elects the one polling replica."""
REFRESH = 727_275
"""Transaction or session lock of a rollup refresh, a retention drop and a label promotion."""
PARTITIONS = 727_276
"""Transaction lock held while raw-table partitions are created (plain PostgreSQL)."""
EXPORT_OWNERS = 727_280
"""First key of the two-key session locks export workers hold (the second is the owner)."""
RETENTION = 727_281
"""Session lock held for the whole of a retention run: one run at a time per store."""
POLICY = 727_282
"""Transaction lock serializing retention policy changes."""
