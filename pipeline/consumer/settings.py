"""Consumer settings: one frozen object built by the command (or `hep-ingest up`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.consumer.dedup import DedupSettings
from pipeline.consumer.filters import CaptureFilter
from pipeline.sip.kpi import KpiLimits
from pipeline.storage.headers import HeaderExtraction

SinkName = Literal["postgres", "stdout"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter for transient Kafka failures.

    Tests make it instant with ``RetryPolicy(initial=0, maximum=0)``.
    """

    initial: float = 0.2
    maximum: float = 10.0
    jitter: float = 0.2
    # Offset commits give up after this many attempts: the rows are durable already
    # and the next commit carries the offsets again, so a lost commit costs a replay
    # (deduplicated by the sink), never data.
    commit_attempts: int = 5


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "hep"
    group: str = "hep-ingest"
    sink: SinkName = "postgres"
    dsn: str | None = None
    batch_size: int = 10_000
    flush_interval: float = 1.0
    # The group's session timeout (heartbeats every third of it). tansu holds a new
    # member's JoinGroup for half of it, so it is also the start-up wait.
    session_timeout: float = 10.0
    retention_days: int = 14
    partition_interval: str = "daily"
    partitions_ahead: int = 2
    dead_letter_topic: str | None = None
    migrate: bool = True
    store_auth_key: bool = False
    # Custom and A-leg SIP headers (--custom-header, --a-leg-header): what build_row keeps.
    headers: HeaderExtraction = field(default_factory=HeaderExtraction)
    client_id: str = "hep-ingest-consumer"
    maintain_interval: float = 3600.0
    progress_interval: float = 10.0
    # On stop, how long the in-flight write may take before it is abandoned (its
    # offsets are then not committed; the records are read again on restart).
    shutdown_timeout: float = 30.0
    # One offset-commit attempt; a timed-out attempt is retried like any transient error.
    commit_timeout: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    dedup: DedupSettings = field(default_factory=DedupSettings)
    # Freeze the start-up heap and raise the generation-0 GC threshold once started
    # (process-wide; see service.tune_gc).
    tune_gc: bool = True
    # What is dropped or censored before storage (empty: everything stored as is).
    capture_filter: CaptureFilter = field(default_factory=CaptureFilter)
    # SIP KPIs from the stored rows, within these bounds; None: not computed.
    sip_kpi: KpiLimits | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.flush_interval <= 0:
            raise ValueError("flush_interval must be positive")
        if self.session_timeout < 1:
            raise ValueError("session_timeout must be at least 1 second")
        if self.sink == "postgres" and not self.dsn:
            raise ValueError("the postgres sink needs a DSN")

    @property
    def dead_letter_topic_name(self) -> str:
        return self.dead_letter_topic or f"{self.topic}.dlq"
