"""PostgreSQL adapter: migrations, partition maintenance and the idempotent sink."""

from pipeline.postgres.migrate import MigrationError, apply_migrations
from pipeline.postgres.partitions import (
    PartitionInfo,
    PartitionInterval,
    drop_expired_partitions,
    ensure_partitions,
    list_partitions,
)
from pipeline.postgres.sink import (
    PostgresSink,
    RejectedRow,
    RetryPolicy,
    SinkError,
    SinkSettings,
    SinkStoppedError,
)

__all__ = [
    "MigrationError",
    "PartitionInfo",
    "PartitionInterval",
    "PostgresSink",
    "RejectedRow",
    "RetryPolicy",
    "SinkError",
    "SinkSettings",
    "SinkStoppedError",
    "apply_migrations",
    "drop_expired_partitions",
    "ensure_partitions",
    "list_partitions",
]
