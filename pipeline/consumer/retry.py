"""Which Kafka errors are worth retrying, the backoff used for them, and how a stop
request ends a retry: by cancelling it (`unless_stopped`) or by waking its sleep
(`sleep_unless_stopped`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

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

T = TypeVar("T")

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
    return wait_exponential_jitter(
        multiplier=policy.initial, max=policy.maximum, jitter=policy.jitter
    )


# How long a stop waits for a cancelled start-up operation to unwind.
UNWIND_TIMEOUT = 2.0


class StopRequested(Exception):
    """The stop event was set before the operation finished; it was cancelled."""


async def unless_stopped(operation: Coroutine[Any, Any, T], stop: asyncio.Event) -> T:
    """Run `operation` to its end, or cancel it as soon as `stop` is set.

    Start-up retries (PostgreSQL or the broker unreachable) may sleep for seconds and
    each attempt may wait for a connect timeout: cancelling is the only way a stop
    request ends them at once. Raises StopRequested when it did.
    """
    task = asyncio.ensure_future(operation)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
            # Bounded: an operation that swallows its cancellation (Python 3.11's
            # wait_for can, see ConsumerWorker.run) must not hold the stop; it is left
            # behind unfinished. Whatever it raises while unwinding is moot now.
            unwound, _ = await asyncio.wait({task}, timeout=UNWIND_TIMEOUT)
            for finished in unwound:
                if not finished.cancelled():
                    finished.exception()  # retrieved, not reported
    raise StopRequested


def sleep_unless_stopped(stop: asyncio.Event) -> Callable[[float], Awaitable[None]]:
    """A tenacity `sleep` that returns early when `stop` is set."""

    async def sleep(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    return sleep
