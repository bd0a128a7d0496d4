"""What the worker needs from a sink; PostgresSink and StdoutSink both fit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from pipeline.storage.offsets import BatchOffsets, BatchOutcome
from pipeline.storage.rows import CaptureRow
from pipeline.storage.wire import WireFormat


class Rejected(Protocol):
    @property
    def row(self) -> CaptureRow: ...

    @property
    def reason(self) -> str: ...


class Sink(Protocol):
    # Whether write_batch stores the offsets it claims (stored_offsets then reads them).
    stores_offsets: bool

    async def start(self) -> None: ...

    async def write_batch(
        self,
        rows: Sequence[CaptureRow],
        offsets: BatchOffsets | None = None,
        before_commit: Callable[[list[Any]], Awaitable[None]] | None = None,
    ) -> BatchOutcome:
        """Store `rows` durably and, in the same commit, move the stored offsets as
        `offsets` claims; `before_commit(rejected)` runs last before that commit.
        Rejected rows are objects shaped like Rejected. When a claim is fenced nothing
        is stored and the outcome says which partitions, with their stored offsets."""
        ...

    async def stored_offsets(
        self, group: str, topic: str, partitions: Sequence[int]
    ) -> dict[int, int]:
        """partition -> stored next_offset; a sink that stores none returns {} (the
        consumer then starts at Kafka's committed offsets)."""
        ...

    # The binary COPY form the sink writes rows in, once started (None: it uses only the
    # rows' values); the worker encodes each row as it builds it.
    @property
    def wire_format(self) -> WireFormat | None: ...

    async def maintain(self, now: datetime) -> object: ...

    def stop(self) -> None:
        """Make writes still retrying give up (they raise); one in progress may finish."""
        ...

    async def close(self) -> None: ...
