"""A Kafka client that does not finish closing cannot hold the consumer's stop."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from pipeline.consumer import service
from pipeline.observability.tasks import pending_task_frames


async def deaf_to_cancel(release: asyncio.Event) -> None:
    """Waits for ever; once cancelled, until `release` is set: what a swallowed
    cancellation looks like to whoever awaits it."""
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        await release.wait()


async def _leave_group_that_never_answers() -> None:
    await asyncio.Event().wait()


async def test_a_close_that_hangs_is_given_up_with_where_it_waited(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(service, "KAFKA_CLOSE_TIMEOUT", 0.2)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="pipeline.consumer"):
        await service._bounded_close("kafka_consumer", _leave_group_that_never_answers)
    assert time.monotonic() - started < 2
    [record] = [r for r in caplog.records if r.getMessage() == "kafka_close_timeout"]
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["client"] == "kafka_consumer"
    assert any("_leave_group_that_never_answers" in line for line in fields["waiting_in"])


async def test_a_close_that_finishes_in_time_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed: list[bool] = []

    async def close() -> None:
        await asyncio.sleep(0)
        closed.append(True)

    with caplog.at_level(logging.WARNING, logger="pipeline.consumer"):
        await service._bounded_close("dead_letter_producer", close)
    assert closed == [True]
    assert not [r for r in caplog.records if r.getMessage() == "kafka_close_timeout"]


async def test_a_close_that_fails_raises_its_error() -> None:
    async def close() -> None:
        raise RuntimeError("socket gone")

    with pytest.raises(RuntimeError, match="socket gone"):
        await service._bounded_close("kafka_consumer", close)


async def test_pending_task_frames_names_each_waiting_task_and_its_frame() -> None:
    waiter = asyncio.create_task(_leave_group_that_never_answers(), name="leave-group")
    await asyncio.sleep(0)
    try:
        lines = pending_task_frames()
    finally:
        waiter.cancel()
    [line] = [line for line in lines if line.startswith("leave-group: ")]
    assert "_leave_group_that_never_answers (test_consumer_close.py:" in line


async def test_a_close_that_ignores_its_cancellation_still_cannot_hold_the_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(service, "KAFKA_CLOSE_TIMEOUT", 0.2)
    release = asyncio.Event()
    started = time.monotonic()
    await service._bounded_close("kafka_consumer", lambda: deaf_to_cancel(release))
    assert time.monotonic() - started < 2
    release.set()  # let the leftover task end before the loop closes
    await asyncio.sleep(0)
