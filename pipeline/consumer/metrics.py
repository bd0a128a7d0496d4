"""Consumer metrics, bound to the registry handed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from pipeline.observability.metrics import register_build_info


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        register_build_info(registry)
        self.records_consumed = Counter(
            "hep_ingest_records_consumed_total",
            "Kafka records fetched by this consumer (before decoding).",
            registry=registry,
        )
        self.dead_letters = Counter(
            "hep_ingest_dead_letter_total",
            "Records sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        )
        # No type label: a sender chooses the type, and labels must stay bounded.
        self.rows_unknown_type = Counter(
            "hep_ingest_rows_unknown_type_total",
            "Records of a HEP protocol type without a table of its own, routed to "
            "hep_proto_unknown_default (its hep_type column holds the type).",
            registry=registry,
        )
        self.lag = Gauge(
            "hep_ingest_consumer_lag",
            "Records of the partition not yet stored or dead-lettered (its end offset "
            "minus the offset after the last record stored), kept current while paused.",
            ["partition"],
            registry=registry,
        )
        self.lag_total = Gauge(
            "hep_ingest_consumer_lag_total",
            "Sum of hep_ingest_consumer_lag over the assigned partitions.",
            registry=registry,
        )
        self.commits = Counter(
            "hep_ingest_commit_total",
            "Successful offset commits.",
            registry=registry,
        )
        self.offsets_fenced = Counter(
            "hep_ingest_offsets_fenced_total",
            "Partition batches not written because the offset stored in PostgreSQL was "
            "not the one this worker expected (another worker stored them, or this one "
            "was sent back in the log); the worker seeks to the stored offset.",
            registry=registry,
        )
        self.kafka_retries = Counter(
            "hep_ingest_kafka_retries_total",
            "Retries after transient Kafka errors (fetch, commit, dead-letter publish).",
            registry=registry,
        )
        self.assigned_partitions = Gauge(
            "hep_ingest_consumer_assigned_partitions",
            "Partitions currently assigned to this consumer.",
            registry=registry,
        )
