"""Dead-letter topic: records the consumer cannot store, kept for inspection.

Each dead letter is the original value bytes and key, with headers saying why
(``hep_ingest_reason``, a metric label; ``hep_ingest_detail``, free text) and where it
came from (``hep_ingest_source`` = ``topic/partition/offset``). Publishing waits for
the broker's acknowledgement of every letter: the worker commits past a record only
once its dead letter is durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from tenacity import AsyncRetrying, retry_if_exception

from pipeline.consumer.retry import backoff, is_transient, sleep_unless_stopped
from pipeline.consumer.settings import RetryPolicy
from pipeline.observability import get_logger

log = get_logger("pipeline.consumer.dead_letter")

MAX_DETAIL = 1000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    detail: str = ""

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            ("hep_ingest_reason", self.reason.encode()),
            ("hep_ingest_detail", self.detail[:MAX_DETAIL].encode("utf-8", "replace")),
            ("hep_ingest_source", f"{self.topic}/{self.partition}/{self.offset}".encode()),
        ]


class DeadLetterPublisher:
    """Owns the producer of the dead-letter topic."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        retry: RetryPolicy,
        on_retry: Callable[[], None] = lambda: None,
        client_id: str = "hep-ingest-dead-letter",
        stop: asyncio.Event | None = None,
    ) -> None:
        self.topic = topic
        # Once set, retries give up (publish raises): the worker then leaves the
        # records' offsets uncommitted.
        self._stop = stop or asyncio.Event()
        self._bootstrap_servers = bootstrap_servers
        self._retry = retry
        self._on_retry = on_retry
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        await self._ensure_topic()
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap_servers,
            client_id=self._client_id,
            acks="all",
            linger_ms=5,
        )
        self._producer = producer  # stop() closes it even if starting is cancelled
        await self._retrying(producer.start)

    async def _ensure_topic(self) -> None:
        async def create() -> None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self._bootstrap_servers, client_id=self._client_id
            )
            await admin.start()
            try:
                if self.topic in await admin.list_topics():
                    return
                await admin.create_topics([NewTopic(self.topic, 1, 1)])
                log.info("dead_letter_topic_created", topic=self.topic)
            except TopicAlreadyExistsError:
                pass
            finally:
                await admin.close()

        await self._retrying(create)

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        """Send every letter and wait until the broker has acknowledged all of them.

        Transient failures are retried with backoff for as long as it takes, or until
        the stop event is set (the caller may also cancel): a letter that is not
        acknowledged must keep its offset uncommitted.
        """
        if not letters:
            return
        producer = self._producer
        if producer is None:
            raise RuntimeError("DeadLetterPublisher.publish before start")
        pending = list(letters)
        async for attempt in self._attempts():
            with attempt:
                futures = [
                    await producer.send(self.topic, value=d.value, key=d.key, headers=d.headers())
                    for d in pending
                ]
                results = await asyncio.gather(*futures, return_exceptions=True)
                failed = [
                    d for d, r in zip(pending, results, strict=True) if isinstance(r, BaseException)
                ]
                if failed:
                    error = next(r for r in results if isinstance(r, BaseException))
                    pending = failed
                    raise error

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def _retrying(self, fn: Callable[[], object]) -> None:
        async for attempt in self._attempts():
            with attempt:
                result = fn()
                if asyncio.iscoroutine(result):
                    await result

    def _attempts(self) -> AsyncRetrying:
        def before_sleep(state: object) -> None:
            self._on_retry()
            outcome = getattr(state, "outcome", None)
            error = outcome.exception() if outcome is not None else None
            log.warning("dead_letter_retry", topic=self.topic, error=repr(error))

        return AsyncRetrying(
            retry=retry_if_exception(lambda e: is_transient(e) or isinstance(e, KafkaError)),
            wait=backoff(self._retry),
            stop=lambda _state: self._stop.is_set(),
            sleep=sleep_unless_stopped(self._stop),
            before_sleep=before_sleep,
            reraise=True,
        )
