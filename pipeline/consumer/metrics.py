"""Consumer metrics, bound to the registry handed in."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from pipeline.observability.metrics import register_build_info
from pipeline.storage.headers import HeaderExtraction


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


class _HeaderCounts(Collector):
    """What the configured SIP headers did, read from the row builder's counts at scrape
    time (the row builder is pure and counts in a plain dict)."""

    def __init__(self, headers: HeaderExtraction) -> None:
        self._headers = headers

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "hep_ingest_sip_headers",
            "Configured SIP headers found in stored messages, by use (custom: kept in "
            "data_header and custom_headers; a_leg: HOMER's correlation_id), header and "
            "outcome (extracted, or regex_miss: present but its regex did not match).",
            labels=["use", "header", "outcome"],
        )
        for rule_use, rules in (("custom", self._headers.custom), ("a_leg", self._headers.a_leg)):
            for rule in rules:
                for outcome in ("extracted", "regex_miss"):
                    count = self._headers.counts.get((rule_use, rule.key, outcome), 0)
                    family.add_metric([rule_use, rule.key, outcome], count)
        yield family


def register_header_metrics(registry: CollectorRegistry, headers: HeaderExtraction) -> None:
    """hep_ingest_sip_headers_total for the configured headers (none when none are)."""
    if headers.custom or headers.a_leg:
        registry.register(_HeaderCounts(headers))
