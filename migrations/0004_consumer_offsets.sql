-- Exactly once through offsets stored in PostgreSQL (issue 10, item 1).
--
-- Per consumer group and partition, the offset of the next record to store. A batch's
-- rows and the advance of its partitions' rows commit in one transaction, and the
-- advance is a compare-and-set (UPDATE ... WHERE next_offset = <what the worker read>):
-- a worker that lost its partitions in a rebalance (and does not know yet) cannot
-- commit a stale batch, and a worker sent back in the log (a reset of Kafka's committed
-- offsets, a replay) writes nothing. On assignment the consumer seeks to these offsets;
-- a partition without a row here starts at Kafka's committed offset, as before this
-- migration, so existing deployments upgrade without replaying or skipping anything.
-- Kafka commits continue, after the PostgreSQL commit, for lag tooling only.
--
-- Only the consumer writes here. Moving a group elsewhere in a topic is a plain UPDATE
-- while its consumers are stopped (or DELETE the rows to fall back to Kafka's
-- committed offsets).

CREATE TABLE IF NOT EXISTS hep_ingest_consumer_offsets (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL CHECK (partition >= 0),
    next_offset    bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
