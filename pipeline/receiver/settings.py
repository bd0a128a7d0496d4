"""Every knob of the receiver, in one typed object built once (by the CLI) and passed down."""

from __future__ import annotations

import math
import os
import socket
import ssl
from dataclasses import dataclass, field

from pipeline.observability.metrics import parse_host_port

COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
DEFAULT_LISTEN = "0.0.0.0:9060"


def default_receiver_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def parse_listen(values: list[str] | tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """['HOST:PORT', ...] -> ((host, port), ...); raises ValueError on a bad address."""
    return tuple(parse_host_port(value) for value in values)


@dataclass(frozen=True, slots=True)
class ReceiverSettings:
    """What `hep-ingest receive` (or `up`) runs with. Validated on construction."""

    bootstrap_servers: str = "localhost:9092"
    topic: str = "hep"
    udp: tuple[tuple[str, int], ...] = (("0.0.0.0", 9060),)
    tcp: tuple[tuple[str, int], ...] = (("0.0.0.0", 9060),)
    # HEP over TLS: TCP listeners with this server context (pipeline.receiver.tls), built
    # once by the CLI so that a bad certificate is a startup error.
    tls: tuple[tuple[str, int], ...] = ()
    tls_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    auth_key: bytes | None = None
    forward_auth_key: bool = False
    receiver_id: str = field(default_factory=default_receiver_id)
    # Kafka producer
    compression: str = "zstd"
    # zstd level of the Kafka batches (aiokafka's own is 3; see publisher.set_zstd_level).
    zstd_level: int = 1
    batch_bytes: int = 1_000_000
    # A publish cycle costs about the same for 10 records as for 1,000 (a batch per
    # partition, a produce request, its acknowledgement): at working rates (5-20k/s)
    # lingering 50 ms instead of 5 ms cut the receiver's CPU per packet by a fifth, and
    # 200 ms instead of 50 ms by another ~30% at 5k/s (about the same at 20k/s, where
    # batch_bytes queued ends the linger sooner), for 200 ms of latency next to the
    # consumer's 1 s flush interval. A cycle with a full batch queued does not linger.
    linger_ms: int = 200
    enable_idempotence: bool = False
    request_timeout_ms: int = 30_000
    create_topic: bool = True
    partitions: int = 12
    replication_factor: int = 1
    # Bounded memory: the backlog held while the broker is slow or away.
    queue_size: int = 1_000_000
    max_backlog_bytes: int = 256 * 1024 * 1024
    # TCP reading pauses above high water and resumes below low water (fractions of
    # the bound); UDP drops only when the bound itself is reached.
    tcp_high_water: float = 0.8
    tcp_low_water: float = 0.5
    udp_rcvbuf_bytes: int = 8 * 1024 * 1024
    # The UDP socket is read in batches, at most this far apart (pipeline.receiver.udp:
    # the interval follows the rate, shorter when batches grow). At 5,000 packets/s,
    # drains 50 ms apart took ~0.6x the CPU per packet of drains 5 ms apart: a wakeup
    # costs about as much as a hundred packets' work.
    udp_drain_interval_ms: float = 50.0
    # The rate (datagrams/s) that the UDP receive buffer must absorb for one longest
    # drain interval: the interval is cut to what half the granted buffer holds at it.
    udp_peak_rate: int = 100_000
    # A TCP or TLS connection is read in batches this far apart (0: as data arrives);
    # meanwhile the kernel buffers, and TCP flow control holds a sender that outruns it.
    tcp_read_interval_ms: float = 20.0
    # TCP and TLS connections, together, per process: more are closed when accepted.
    # A connection holds at most one partial frame (64 KB), plus 256 KB of TLS buffer.
    tcp_max_connections: int = 1024
    # Nothing read for this long closes a connection (0: never). Agents reconnect when
    # they next send; Kamailio closes its own idle TCP connections after 120 s.
    tcp_idle_timeout_s: float = 300.0
    # A frame begun and not completed within this long closes the connection: a sender
    # trickling bytes cannot hold a buffer for ever.
    tcp_frame_timeout_s: float = 30.0
    # SO_REUSEPORT on every listen socket: set by `receive --workers N` (N > 1) in each
    # worker so that N processes share the ports and the kernel spreads the load.
    reuse_port: bool = False
    # Broker retries: bounded exponential backoff with jitter.
    retry_initial_s: float = 0.2
    retry_max_s: float = 5.0
    shutdown_timeout_s: float = 30.0
    progress_interval_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.bootstrap_servers.strip():
            raise ValueError("bootstrap servers must not be empty")
        if not self.topic:
            raise ValueError("topic must not be empty")
        if not self.udp and not self.tcp and not self.tls:
            raise ValueError("at least one --udp, --tcp or --tls listener is needed")
        if self.tls and self.tls_context is None:
            raise ValueError("--tls listeners need a TLS context (--tls-cert and --tls-key)")
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}")
        if self.auth_key is not None and not self.auth_key:
            raise ValueError("auth key must not be empty")
        positive = {
            "batch_bytes": self.batch_bytes,
            "queue_size": self.queue_size,
            "max_backlog_bytes": self.max_backlog_bytes,
            "partitions": self.partitions,
            "replication_factor": self.replication_factor,
            "request_timeout_ms": self.request_timeout_ms,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if not 1 <= self.zstd_level <= 22:
            raise ValueError(f"zstd level must be 1..22, got {self.zstd_level}")
        if self.linger_ms < 0:
            raise ValueError("linger_ms must not be negative")
        if not (math.isfinite(self.udp_drain_interval_ms) and self.udp_drain_interval_ms > 0):
            raise ValueError(
                f"udp drain interval must be > 0 ms, got {self.udp_drain_interval_ms}"
            )
        if self.udp_peak_rate < 1:
            raise ValueError(f"udp peak rate must be at least 1/s, got {self.udp_peak_rate}")
        if not (math.isfinite(self.tcp_read_interval_ms) and self.tcp_read_interval_ms >= 0):
            raise ValueError(
                f"tcp read interval must be >= 0 ms, got {self.tcp_read_interval_ms}"
            )
        if self.tcp_max_connections < 1:
            raise ValueError(
                f"tcp_max_connections must be at least 1, got {self.tcp_max_connections}"
            )
        if not (math.isfinite(self.tcp_idle_timeout_s) and self.tcp_idle_timeout_s >= 0):
            raise ValueError(
                f"tcp idle timeout must be >= 0 seconds (0: never), got {self.tcp_idle_timeout_s}"
            )
        if not (math.isfinite(self.tcp_frame_timeout_s) and self.tcp_frame_timeout_s > 0):
            raise ValueError(
                f"tcp frame timeout must be > 0 seconds, got {self.tcp_frame_timeout_s}"
            )
        if not 0 < self.tcp_low_water < self.tcp_high_water <= 1:
            raise ValueError("need 0 < tcp_low_water < tcp_high_water <= 1")
        if not 0 < self.retry_initial_s <= self.retry_max_s:
            raise ValueError("need 0 < retry_initial_s <= retry_max_s")
        if self.shutdown_timeout_s < 0 or self.progress_interval_s <= 0:
            raise ValueError("shutdown timeout must be >= 0 and progress interval > 0")

    @property
    def compression_type(self) -> str | None:
        """The value aiokafka takes (None for no compression)."""
        return None if self.compression == "none" else self.compression
