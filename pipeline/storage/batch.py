"""A fetched partition chunk of Kafka values to capture rows: the readable reference.

`build_rows` is the consumer's whole per-record path in one call per chunk: Avro
decode, row building (the SIP summary included) and, when the sink wants them, the
rows' binary COPY tuples. `pipeline._speedups.build_rows` is the compiled twin with the
same signature and output (`pipeline.accel` picks one; tests/unit/test_accel_rows.py
proves them identical). For a sink that takes COPY tuples, the compiled one returns
rows in wire form: tuple, facts and source, their values built here (`ChunkOrigin`)
only if something reads them.

A value that cannot become a row is a `RowFailure` (its position in `values`) with
the dead-letter reason the consumer always gave: ``no_value`` (tombstone), the
`RecordDecodeError` reason, or ``row_build_error``. A row whose values the encoder
refuses keeps ``wire = None``: the sink then encodes it itself, which fails, and
isolates and rejects it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from pipeline.records import RecordCodec, RecordDecodeError
from pipeline.storage.headers import HeaderExtraction
from pipeline.storage.rows import CaptureRow, build_row, epoch_micros
from pipeline.storage.wire import WireFormat, copy_tuple


class RowFailure(NamedTuple):
    """The value at `position` gave no row: why (a dead-letter reason) and details."""

    position: int
    reason: str
    detail: str


def times_to_micros(record: dict[str, Any]) -> None:
    """fastavro reads timestamp-micros as datetime; build_row takes epoch microseconds."""
    for name in ("capture_time", "receive_time"):
        value = record.get(name)
        if isinstance(value, datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            record[name] = epoch_micros(value)


class ChunkOrigin:
    """The `RowOrigin` of the rows of one chunk: their values, built on demand from a
    Kafka value of `partition` as `build_rows` builds them (headers are never
    configured for rows in wire form)."""

    __slots__ = ("codec", "partition", "store_auth_key")

    def __init__(self, codec: RecordCodec, partition: int, store_auth_key: bool) -> None:
        self.codec = codec
        self.partition = partition
        self.store_auth_key = store_auth_key

    def values_of(self, value: bytes, offset: int) -> tuple[Any, ...]:
        record = self.codec.decode(value)
        if type(record["capture_time"]) is not int:
            times_to_micros(record)
        return build_row(
            record, kafka_partition=self.partition, kafka_offset=offset,
            store_auth_key=self.store_auth_key,
        ).values


def build_rows(
    values: Sequence[bytes | None],
    partition: int,
    offsets: Sequence[int],
    *,
    codec: RecordCodec,
    store_auth_key: bool = False,
    headers: HeaderExtraction | None = None,
    wire_format: WireFormat | None = None,
) -> tuple[list[CaptureRow], list[RowFailure]]:
    """The rows of `values` (Kafka values of `partition` at `offsets`), in order, and
    the failures; with `wire_format` every row also carries its COPY tuple. `headers`
    is build_row's (configured custom and A-leg headers)."""
    rows: list[CaptureRow] = []
    failures: list[RowFailure] = []
    decode = codec.decode
    for index, value in enumerate(values):
        try:
            if value is None:
                raise RecordDecodeError("no_value", "tombstone or empty record")
            record = decode(value)
            if type(record["capture_time"]) is not int:
                times_to_micros(record)
            row = build_row(
                record,
                kafka_partition=partition,
                kafka_offset=offsets[index],
                store_auth_key=store_auth_key,
                headers=headers,
            )
        except RecordDecodeError as exc:
            failures.append(RowFailure(index, exc.reason, exc.detail))
            continue
        except Exception as exc:  # a record we decoded but cannot map: keep it aside
            failures.append(RowFailure(index, "row_build_error", f"{type(exc).__name__}: {exc}"))
            continue
        if wire_format is not None:
            # Left None if a value cannot be encoded: the sink's path then refuses the
            # row with the encoder's message.
            with contextlib.suppress(ValueError, TypeError, OverflowError):
                row.wire = copy_tuple(row.values, wire_format)
        rows.append(row)
    return rows, failures
