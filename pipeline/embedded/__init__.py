"""Real servers the project runs itself when no external ones are given.

Used by `hep-ingest up` (the embedded default) and by the integration tests, so both
exercise the same start, stop and outage code.
"""

from pipeline.embedded.kafka import EmbeddedKafka
from pipeline.embedded.net import free_tcp_port, free_udp_port, wait_for_tcp
from pipeline.embedded.postgres import EmbeddedPostgres

__all__ = ["EmbeddedKafka", "EmbeddedPostgres", "free_tcp_port", "free_udp_port", "wait_for_tcp"]
