"""storage stage of gridwatch: telemetry, registry, dead letters and checkpoints in
PostgreSQL (production) or SQLite (embedded default), chosen by one URL.

Start-up::

    storage = open_storage(url)             # "sqlite:///./data/gridwatch.db" or "postgresql://..."
    storage.migrate()                       # idempotent
    keys = storage.save_registry(registry)  # stable device keys by dense index
    with ReadingWriter(storage, keys, spill_dir=...) as writer:
        writer.submit(batch)                # async, bounded, durable (see storage.writer)

See docs/storage.md.
"""

from __future__ import annotations

from storage.engine import DEFAULT_URL, PostgresStorage, SqliteStorage, Storage, open_storage
from storage.partitions import PartitionPolicy
from storage.writer import ReadingWriter, WriterFullError, WriterStats

__all__ = [
    "DEFAULT_URL",
    "PartitionPolicy",
    "PostgresStorage",
    "ReadingWriter",
    "SqliteStorage",
    "Storage",
    "WriterFullError",
    "WriterStats",
    "open_storage",
]
