"""A sink for debugging: each row as one JSON line (column name -> value)."""

from __future__ import annotations

import base64
import ipaddress
import json
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TextIO

from pipeline.storage.offsets import BatchOffsets, BatchOutcome
from pipeline.storage.rows import COLUMNS, CaptureRow


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID | ipaddress.IPv4Address | ipaddress.IPv6Address | Decimal):
        return str(value)
    return str(value)


def row_to_json(row: CaptureRow) -> str:
    line: dict[str, Any] = {"table": row.table}
    line.update(zip(COLUMNS, row.values, strict=True))
    return json.dumps(line, default=_json_value, ensure_ascii=False, separators=(",", ":"))


class StdoutSink:
    """Prints rows instead of storing them; never rejects any. It stores no offsets:
    the consumer relies on Kafka's committed offsets alone."""

    stores_offsets = False

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    async def start(self) -> None:
        return None

    @property
    def wire_format(self) -> None:
        return None  # it prints the rows' values

    async def write(self, rows: Sequence[CaptureRow]) -> list[Any]:
        stream = self._stream or sys.stdout
        if rows:
            stream.write("\n".join(row_to_json(r) for r in rows) + "\n")
            stream.flush()
        return []

    async def write_batch(
        self,
        rows: Sequence[CaptureRow],
        offsets: BatchOffsets | None = None,
        before_commit: Callable[[list[Any]], Awaitable[None]] | None = None,
    ) -> BatchOutcome:
        await self.write(rows)
        if before_commit is not None:
            await before_commit([])
        return BatchOutcome()

    async def stored_offsets(
        self, group: str, topic: str, partitions: Sequence[int]
    ) -> dict[int, int]:
        return {}

    async def maintain(self, now: datetime) -> None:
        return None

    def stop(self) -> None:
        return None

    async def close(self) -> None:
        (self._stream or sys.stdout).flush()
