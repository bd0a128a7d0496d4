"""What the worker needs from a sink; PostgresSink and StdoutSink both fit."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from pipeline.storage.rows import CaptureRow
from pipeline.storage.wire import WireFormat


class Rejected(Protocol):
    @property
    def row(self) -> CaptureRow: ...

    @property
    def reason(self) -> str: ...


class Sink(Protocol):
    async def start(self) -> None: ...

    @property
    def wire_format(self) -> WireFormat | None:
        """The binary COPY form the sink writes rows in, once started (None: it uses
        only the rows' values); the worker encodes each row as it builds it."""
        ...

    async def write(self, rows: Sequence[CaptureRow]) -> Sequence[Any]:
        """Store `rows` durably; return the rejected ones (objects shaped like Rejected)."""
        ...

    async def maintain(self, now: datetime) -> object: ...

    def stop(self) -> None:
        """Make writes still retrying give up (they raise); one in progress may finish."""
        ...

    async def close(self) -> None: ...
