"""Which Kafka errors are worth retrying, and the backoff used for them."""

from __future__ import annotations

from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    RequestTimedOutError,
    UnknownTopicOrPartitionError,
)
from tenacity import wait_exponential_jitter
from tenacity.wait import wait_base

from pipeline.consumer.settings import RetryPolicy

# Errors a worker outlives: the broker went away, a request timed out, the group
# rebalanced under a commit. Anything aiokafka marks retriable counts too.
TRANSIENT_KAFKA_ERRORS: tuple[type[BaseException], ...] = (
    CommitFailedError,
    KafkaConnectionError,
    KafkaTimeoutError,
    RequestTimedOutError,
    UnknownTopicOrPartitionError,
    ConnectionError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, IllegalStateError):
        return False
    if isinstance(exc, TRANSIENT_KAFKA_ERRORS):
        return True
    return isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False))


def backoff(policy: RetryPolicy) -> wait_base:
    return wait_exponential_jitter(initial=policy.initial, max=policy.maximum, jitter=policy.jitter)
