"""hep-ingest: HEP capture ingestion, from UDP/TCP through Kafka into partitioned PostgreSQL."""

__version__ = "0.1.0"
