"""The receiver's per-packet functions: compiled when built, else the pure reference.

`pipeline._speedups` (Cython, built by `pip install` when a C compiler and the Python
headers are present) and the pure-Python modules it mirrors give identical packets,
decode errors, Kafka keys and record bytes; the compiled one spends a fraction of the
CPU. HEP_INGEST_PURE_PYTHON=1 (or true, yes, on) forces the pure implementation (then
the extension is not even imported). Every hot-path caller imports these names from here;
`IMPLEMENTATION` says which one is active ("compiled" or "pure") for the startup logs,
/metrics and `hep-ingest --version`.

    pure reference                            compiled
    pipeline.hep.decode.decode_packet         _speedups.decode_packet
    pipeline.sip.callid.scan_call_id          _speedups.scan_call_id
    pipeline.records.mapping.record_key       _speedups.record_key
    pipeline.records.packetwrite.packet_encoder    _speedups.packet_encoder
    pipeline.records.datagrams.datagram_encoder    _speedups.datagram_encoder
    pipeline.datagram_read.receive_datagrams  _speedups.receive_datagrams
    pipeline.kafka_batch.record_batch         _speedups.record_batch
    pipeline.kafka_batch.murmur2              _speedups.murmur2
    pipeline.storage.batch.build_rows         _speedups.build_rows
    pipeline.storage.wire.copy_tuple          _speedups.copy_tuple

The consumer's functions are looked up on first use (`build_rows`, `copy_tuple`): the
pure ones import the storage modules, which import this one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

__all__ = [
    "IMPLEMENTATION",
    "PURE_ENV",
    "DatagramEncoder",
    "build_rows",
    "copy_tuple",
    "datagram_encoder",
    "decode_packet",
    "murmur2",
    "packet_encoder",
    "receive_datagrams",
    "record_batch",
    "record_key",
    "scan_call_id",
]

PURE_ENV = "HEP_INGEST_PURE_PYTHON"


def _compiled_module() -> ModuleType | None:
    if os.environ.get(PURE_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    try:
        from pipeline import _speedups
    except ImportError:  # installed without a C compiler: the pure path
        return None
    return _speedups


_compiled = _compiled_module()

if _compiled is not None:
    IMPLEMENTATION = "compiled"
    from pipeline._speedups import (
        PacketEncoder as DatagramEncoder,
    )
    from pipeline._speedups import (
        datagram_encoder,
        decode_packet,
        murmur2,
        packet_encoder,
        receive_datagrams,
        record_batch,
        record_key,
        scan_call_id,
    )
else:
    IMPLEMENTATION = "pure"
    from pipeline.datagram_read import receive_datagrams
    from pipeline.hep.decode import decode_packet
    from pipeline.kafka_batch import murmur2, record_batch
    from pipeline.records.datagrams import (  # type: ignore[assignment]
        DatagramEncoder,
        datagram_encoder,
    )
    from pipeline.records.mapping import record_key
    from pipeline.records.packetwrite import packet_encoder
    from pipeline.sip.callid import scan_call_id


if TYPE_CHECKING:
    from pipeline.records import RecordCodec
    from pipeline.storage.batch import RowFailure
    from pipeline.storage.headers import HeaderExtraction
    from pipeline.storage.rows import CaptureRow
    from pipeline.storage.wire import WireFormat


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
    """`pipeline.storage.batch.build_rows`, compiled when built."""
    built: tuple[list[CaptureRow], list[RowFailure]] = _consumer_functions()[0](
        values, partition, offsets, codec=codec, store_auth_key=store_auth_key,
        headers=headers, wire_format=wire_format,
    )
    return built


def copy_tuple(values: Sequence[Any], wire_format: WireFormat | None = None) -> bytes:
    """`pipeline.storage.wire.copy_tuple`, compiled when built."""
    encoded: bytes = _consumer_functions()[1](values, wire_format)
    return encoded


_consumer: tuple[Callable[..., Any], Callable[..., Any]] | None = None


def _consumer_functions() -> tuple[Callable[..., Any], Callable[..., Any]]:
    global _consumer
    if _consumer is None:
        if _compiled is not None:
            _consumer = (_compiled.build_rows, _compiled.copy_tuple)
        else:
            from pipeline.storage.batch import build_rows as pure_build_rows
            from pipeline.storage.wire import copy_tuple as pure_copy_tuple

            _consumer = (pure_build_rows, pure_copy_tuple)
    return _consumer
