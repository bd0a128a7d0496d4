"""The receiver's Prometheus metrics, bound to a registry handed in.

Per-packet counters are plain integers that the hot path bumps without a lock or a
label lookup; a collector turns them into counter families when the registry is
scraped (or read with `registry.get_sample_value`). Per-batch metrics (publish latency)
use prometheus_client's own Histogram.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pipeline.observability.metrics import register_build_info
from pipeline.records.datagrams import AUTH_MISMATCH, AUTH_MISSING

TRANSPORTS = ("udp", "tcp", "tls")
VERSIONS = ("1", "2", "3")
DROP_REASONS = ("queue_full", "shutdown")
REJECT_REASONS = (AUTH_MISSING, AUTH_MISMATCH)
TCP_TIMEOUT_REASONS = ("idle_timeout", "frame_timeout")
TCP_REFUSE_REASONS = ("max_connections",)


class ReceiverMetrics:
    """Counters the receiver's adapters bump; exported under hep_ingest_* names."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.received: Counter[tuple[str, str]] = Counter(
            {(t, v): 0 for t in TRANSPORTS for v in VERSIONS}
        )
        self.decoded = 0
        self.invalid: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter(dict.fromkeys(REJECT_REASONS, 0))
        self.published = 0
        self.dropped: Counter[str] = Counter(dict.fromkeys(DROP_REASONS, 0))
        self.publish_retries = 0
        # Drains of the UDP sockets that found datagrams: received / udp_batches is the
        # mean batch the intake and publisher are handed.
        self.udp_batches = 0
        self.tcp_connections_closed: Counter[str] = Counter(
            dict.fromkeys(TCP_TIMEOUT_REASONS, 0)
        )
        self.tcp_connections_refused: Counter[str] = Counter(
            dict.fromkeys(TCP_REFUSE_REASONS, 0)
        )
        self._queue_depth: Callable[[], int] = lambda: 0
        self._socket_drops: Callable[[], dict[str, int]] = dict
        self._tcp_connections_open: Callable[[], int] = lambda: 0
        self.publish_latency = Histogram(
            "hep_ingest_publish_latency_seconds",
            "Time from handing a batch to the Kafka producer to its acknowledgement.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        registry.register(_Collector(self))
        register_build_info(registry)

    def bind_queue_depth(self, depth: Callable[[], int]) -> None:
        self._queue_depth = depth

    def queue_depth(self) -> int:
        return self._queue_depth()

    def bind_socket_drops(self, drops: Callable[[], dict[str, int]]) -> None:
        """The kernel's drop counters of the UDP sockets, by listen address."""
        self._socket_drops = drops

    def socket_drops(self) -> dict[str, int]:
        return self._socket_drops()
    def bind_tcp_connections_open(self, count: Callable[[], int]) -> None:
        self._tcp_connections_open = count

    def tcp_connections_open(self) -> int:
        return self._tcp_connections_open()

    def totals(self) -> dict[str, int]:
        """A snapshot for progress logs."""
        return {
            "received": sum(self.received.values()),
            "decoded": self.decoded,
            "invalid": sum(self.invalid.values()),
            "rejected": sum(self.rejected.values()),
            "published": self.published,
            "dropped": sum(self.dropped.values()),
            "retries": self.publish_retries,
            "udp_socket_drops": sum(self.socket_drops().values()),
        }


def shutdown_drops(registry: CollectorRegistry) -> int:
    """Records accepted but never published because the shutdown timeout ran out."""
    dropped = registry.get_sample_value("hep_ingest_packets_dropped_total", {"reason": "shutdown"})
    return int(dropped or 0)


class _Collector(Collector):
    def __init__(self, metrics: ReceiverMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        received = CounterMetricFamily(
            "hep_ingest_packets_received",
            "HEP packets read from a socket, by transport and HEP version (first byte).",
            labels=["transport", "version"],
        )
        for (transport, version), value in dict(m.received).items():
            received.add_metric([transport, version], value)
        yield received
        yield CounterMetricFamily(
            "hep_ingest_packets_decoded",
            "Packets that decoded as HEP and were accepted (received = decoded + invalid + "
            "rejected).",
            value=m.decoded,
        )
        yield _labelled(
            "hep_ingest_packets_invalid", "Packets that are not valid HEP, by reason.", m.invalid
        )
        yield _labelled(
            "hep_ingest_packets_rejected",
            "Valid packets refused by the auth key check, by reason.",
            m.rejected,
        )
        yield CounterMetricFamily(
            "hep_ingest_packets_published",
            "Records acknowledged by Kafka.",
            value=m.published,
        )
        yield _labelled(
            "hep_ingest_packets_dropped",
            "Accepted packets that were lost, by reason (queue_full, shutdown).",
            m.dropped,
        )
        yield CounterMetricFamily(
            "hep_ingest_udp_batches",
            "Batches of datagrams read from the UDP sockets, each handed to the intake in "
            "one call (one per drain that found datagrams; --udp-drain-interval-ms).",
            value=m.udp_batches,
        )
        yield CounterMetricFamily(
            "hep_ingest_publish_retries",
            "Publish attempts that failed and were retried.",
            value=m.publish_retries,
        )
        yield _labelled(
            "hep_ingest_tcp_connections_closed",
            "TCP and TLS connections closed by the receiver or the peer, by reason "
            "(tls_handshake: a TLS handshake that failed; idle_timeout: nothing read for "
            "--tcp-idle-timeout; frame_timeout: a frame not completed within "
            "--tcp-frame-timeout; broken_stream: HEP framing lost).",
            m.tcp_connections_closed,
        )
        socket_drops = CounterMetricFamily(
            "hep_ingest_udp_socket_drops",
            "Datagrams the kernel dropped before the receiver read them (UDP receive "
            "buffer full), by listen address: the socket's own counter, /proc/net/udp.",
            labels=["listen"],
        )
        for listen, value in m.socket_drops().items():
            socket_drops.add_metric([listen], value)
        yield socket_drops
        yield _labelled(
            "hep_ingest_tcp_connections_refused",
            "TCP and TLS connections closed as soon as accepted, by reason "
            "(max_connections: --tcp-max-connections were open).",
            m.tcp_connections_refused,
        )
        yield GaugeMetricFamily(
            "hep_ingest_tcp_connections_open",
            "TCP and TLS connections open (TLS: once the handshake is done).",
            value=m.tcp_connections_open(),
        )
        yield GaugeMetricFamily(
            "hep_ingest_queue_depth",
            "Records accepted and not yet acknowledged by Kafka.",
            value=m.queue_depth(),
        )


def _labelled(name: str, documentation: str, values: Counter[str]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=["reason"])
    for reason, value in dict(values).items():
        family.add_metric([reason], value)
    return family
