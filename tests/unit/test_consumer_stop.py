"""The consume loop's stop cannot be held by its lag reporter, nor by a start-up
operation that does not unwind when cancelled.

Python 3.11's asyncio.wait_for returns the inner result and drops a cancellation that
arrives as the inner await finishes; the lag reporter's end-offsets query runs under
wait_for every second, so a stop could cancel it at that instant. Here the lag query
swallows the cancellation every time, the worst case of that race.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import pytest
from aiokafka import TopicPartition

from pipeline.consumer import retry
from pipeline.consumer.settings import ConsumerSettings
from tests.unit.test_consumer_close import deaf_to_cancel
from tests.unit.test_consumer_offsets import TP0, _Consumer, _OffsetSink, _worker


class _IdleConsumer(_Consumer):
    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, Any]:
        await asyncio.sleep(timeout_ms / 1000)
        return {}


class _MaintainedSink(_OffsetSink):
    async def maintain(self, now: datetime) -> tuple[list[str], list[str]]:
        return [], []


def test_stop_ends_the_loop_even_when_the_lag_query_swallows_its_cancellation() -> None:
    async def scenario() -> None:
        worker, _ = _worker(_MaintainedSink({}), _IdleConsumer({TP0}))
        queries: list[str] = []

        async def lag_query_that_ignores_cancel() -> None:
            queries.append("started")
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if "swallowed" in queries:  # once is the race; then let cleanup work
                    raise
                queries.append("swallowed")

        worker._update_lag = lag_query_that_ignores_cancel  # type: ignore[method-assign]
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        await asyncio.sleep(0.3)
        stop.set()
        # Before the fix the reporter went on forever: the run never returned.
        done, _ = await asyncio.wait({running}, timeout=5)
        assert done == {running}, "the stop was held by the lag reporter"
        running.result()
        assert queries == ["started", "swallowed"]

    asyncio.run(scenario())


def test_a_session_timeout_below_one_second_is_refused() -> None:
    with pytest.raises(ValueError, match="session_timeout"):
        ConsumerSettings(sink="stdout", session_timeout=0.5)
    assert ConsumerSettings(sink="stdout").session_timeout == 10.0


async def test_a_stop_during_a_start_that_ignores_its_cancellation_is_not_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """unless_stopped cancels the start-up retries; one that swallows the cancellation
    (Python 3.11's wait_for can) is left behind after UNWIND_TIMEOUT, not awaited."""
    monkeypatch.setattr(retry, "UNWIND_TIMEOUT", 0.2)
    release = asyncio.Event()
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    started = time.monotonic()
    with pytest.raises(retry.StopRequested):
        await retry.unless_stopped(deaf_to_cancel(release), stop)
    # Before the bound the stop waited for the start for ever.
    assert time.monotonic() - started < 2
    release.set()  # let the leftover task end before the loop closes
    await asyncio.sleep(0)
