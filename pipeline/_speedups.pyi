# Types of the compiled extension (pipeline/_speedups.pyx); the pure modules named in
# its docstring are the reference for every signature here.
import socket
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.hep.packet import HepPacket
from pipeline.records.codec import RecordCodec
from pipeline.records.mapping import ReceiveContext
from pipeline.sip import SipSummary
from pipeline.storage.batch import RowFailure
from pipeline.storage.headers import HeaderExtraction
from pipeline.storage.rows import CaptureRow
from pipeline.storage.wire import WireFormat

def decode_packet(data: bytes | memoryview) -> HepPacket: ...
def scan_call_id(payload: bytes, limit: int = 4096) -> bytes | None: ...
def record_key(packet: HepPacket) -> bytes | None: ...

class PacketEncoder:
    def __init__(self, header: bytes) -> None: ...
    @property
    def header(self) -> bytes: ...
    def encode(
        self, packet: HepPacket, record_id: bytes, receive_time_us: int, context: ReceiveContext
    ) -> bytes: ...
    def encode_datagram(
        self, data: bytes, record_id: bytes, receive_time_us: int, context: ReceiveContext
    ) -> tuple[bytes | None, bytes]: ...
    def encode_datagrams(
        self,
        datagrams: Sequence[bytes],
        contexts: Sequence[ReceiveContext],
        receive_time_us: int,
        next_id: Callable[[], bytes],
        auth_key: bytes | None = None,
    ) -> list[tuple[bytes | None, bytes] | str]: ...

def packet_encoder(
    codec: RecordCodec,
) -> Callable[[HepPacket, bytes, int, ReceiveContext], bytes] | None: ...
def datagram_encoder(codec: RecordCodec) -> PacketEncoder | None: ...
def receive_datagrams(
    sock: socket.socket, limit: int, packets: list[bytes], senders: list[tuple[Any, ...]]
) -> bool: ...
def record_batch(
    records: list[tuple[bytes | None, bytes]],
    start: int,
    batch_size: int,
    timestamp_ms: int,
    compress: Callable[[bytes], bytes] | None = None,
) -> tuple[int, bytes]: ...
def murmur2(data: bytes) -> int: ...

# The consumer's per-record path (_speedups_rows.pxi): pipeline.storage.batch.build_rows
# and pipeline.storage.wire.copy_tuple.
def build_rows(
    values: Sequence[bytes | None],
    partition: int,
    offsets: Sequence[int],
    *,
    codec: RecordCodec,
    store_auth_key: bool = False,
    headers: HeaderExtraction | None = None,
    wire_format: WireFormat | None = None,
) -> tuple[list[CaptureRow], list[RowFailure]]: ...
def copy_tuple(values: Sequence[object], wire_format: WireFormat | None = None) -> bytes: ...
def summarise_sip(payload: bytes) -> SipSummary: ...
def fused_row_builder_problem(codec: RecordCodec) -> str | None: ...
