"""`hep-ingest consume`: Kafka consumer-group workers that store HEP records.

Each worker fetches Avro records in batches, turns them into rows, hands them to a
sink (PostgreSQL or stdout) and commits a partition's offset only once everything
before it is durable: rows committed in the database, undecodable or rejected records
acknowledged by the broker on the dead-letter topic.
"""

from pipeline.consumer.service import run_consumer
from pipeline.consumer.settings import ConsumerSettings, RetryPolicy

__all__ = ["ConsumerSettings", "RetryPolicy", "run_consumer"]
