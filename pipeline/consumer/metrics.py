"""Consumer metrics, bound to the registry handed in."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from pipeline.consumer.filters import DISCARD_REASONS, ScreenResult
from pipeline.observability.metrics import register_build_info
from pipeline.sip.kpi import EXPIRED_REASONS, Observations
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
        self.duplicates = Counter(
            "hep_ingest_duplicates_total",
            "Duplicate captures of a SIP message (same payload within --dedup-window-ms), "
            "dropped or kept in hep_capture_duplicates (--dedup-keep).",
            ["action"],
            registry=registry,
        )
        self.dedup_evicted = Counter(
            "hep_ingest_dedup_evicted_total",
            "Messages the duplicate check forgot before their window ended because "
            "--dedup-max-entries was reached (a later copy of them is stored again).",
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
        # Capture filters (pipeline.consumer.filters): decisions, not losses.
        self.records_discarded = Counter(
            "hep_ingest_records_discarded",
            "Records not stored because a capture filter drops them, by reason "
            "(hep_type, method, source, destination); their offsets advance.",
            ["reason"],
            registry=registry,
        )
        for reason in DISCARD_REASONS:
            self.records_discarded.labels(reason=reason)
        self.rows_censored = Counter(
            "hep_ingest_rows_censored",
            "Rows stored with their SIP body blanked (--censor-methods), by CSeq method.",
            ["method"],
            registry=registry,
        )
        # SIP KPIs (pipeline.sip.kpi), from the rows stored.
        self.sip_messages = Counter(
            "hep_ingest_sip_messages",
            "SIP messages stored, by node, CSeq method, type (request or response) and "
            "response code (common codes, else the class, e.g. 4xx).",
            ["node", "method", "type", "code"],
            registry=registry,
        )
        self.sip_registrations = Counter(
            "hep_ingest_sip_registrations",
            "REGISTER transactions by outcome (success, auth_challenge, failure, "
            "no_final_response).",
            ["node", "outcome"],
            registry=registry,
        )
        self.sip_call_setups = Counter(
            "hep_ingest_sip_call_setups",
            "Initial INVITE transactions by outcome (answered, busy, cancelled, ...).",
            ["node", "outcome"],
            registry=registry,
        )
        self.sip_session_request_delay = Histogram(
            "hep_ingest_sip_session_request_delay_seconds",
            "Session request delay: an initial INVITE to its first 18x or 2xx response "
            "(capture times).",
            ["node"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60),
            registry=registry,
        )
        self.sip_registration_request_delay = Histogram(
            "hep_ingest_sip_registration_request_delay_seconds",
            "Registration request delay: a REGISTER to its 2xx response (capture times).",
            ["node"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
            registry=registry,
        )
        self.sip_kpi_expired = Counter(
            "hep_ingest_sip_kpi_expired",
            "Transactions the KPI state dropped without a final response: timeout (closed "
            "as no_final_response) or capacity (--sip-kpi-max-pending).",
            ["reason"],
            registry=registry,
        )
        for reason in EXPIRED_REASONS:
            self.sip_kpi_expired.labels(reason=reason)
        self.sip_kpi_pending = Gauge(
            "hep_ingest_sip_kpi_pending",
            "Transactions awaiting a final response in the KPI state.",
            registry=registry,
        )

    def record_screen(self, result: ScreenResult) -> None:
        """Count what the capture filters did to one batch."""
        for reason, count in result.discarded.items():
            self.records_discarded.labels(reason=reason).inc(count)
        for method, count in result.censored.items():
            self.rows_censored.labels(method=method).inc(count)

    def record_kpi(self, observations: Observations, pending: int) -> None:
        """Turn one batch's SIP observations into samples."""
        for (node, method, kind, code), count in observations.messages.items():
            self.sip_messages.labels(node=node, method=method, type=kind, code=code).inc(count)
        for (node, outcome), count in observations.registrations.items():
            self.sip_registrations.labels(node=node, outcome=outcome).inc(count)
        for (node, outcome), count in observations.call_setups.items():
            self.sip_call_setups.labels(node=node, outcome=outcome).inc(count)
        for node, seconds in observations.session_delays:
            self.sip_session_request_delay.labels(node=node).observe(seconds)
        for node, seconds in observations.registration_delays:
            self.sip_registration_request_delay.labels(node=node).observe(seconds)
        for reason, count in observations.expired.items():
            self.sip_kpi_expired.labels(reason=reason).inc(count)
        self.sip_kpi_pending.set(pending)


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
