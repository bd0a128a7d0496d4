"""TCP listener: a HEPv3 stream per connection, framed by the sans-IO HepStreamFramer.

TLS connections use the same protocol (transport label "tls"): the event loop runs the
handshake and hands the decrypted stream to `data_received`.

Backpressure instead of loss: after each read a connection asks whether the backlog
is above its high-water mark and, if so, stops reading (`pause_reading()`), which lets
the kernel's buffers and then TCP flow control hold the sender back. The publisher calls
`TcpListener.resume_all()` once the backlog is below low water. A stream that breaks
HEP framing is closed and counted (invalid{reason} and connections_closed{broken_stream}).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast

from pipeline.hep.errors import HepDecodeError
from pipeline.hep.framer import HepStreamFramer
from pipeline.observability import get_logger
from pipeline.receiver.intake import Intake
from pipeline.receiver.metrics import ReceiverMetrics
from pipeline.records import ReceiveContext

log = get_logger("pipeline.receiver.tcp")

# offer(key, value, force) -> queued; TCP always forces (it pauses instead of dropping).
Sink = Callable[[bytes | None, bytes, bool], bool]


class TcpListener:
    """The connections of every TCP listen address, and their flow control."""

    def __init__(
        self,
        intake: Intake,
        sink: Sink,
        above_high_water: Callable[[], bool],
        metrics: ReceiverMetrics,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.intake = intake
        self.sink = sink
        self.above_high_water = above_high_water
        self.metrics = metrics
        self.clock_ns = clock_ns
        self.connections: set[TcpConnection] = set()
        self.paused: set[TcpConnection] = set()

    def protocol(self) -> TcpConnection:
        return TcpConnection(self)

    def tls_protocol(self) -> TcpConnection:
        """For a listener created with `ssl=`: the same framing, labelled "tls"."""
        return TcpConnection(self, transport="tls")

    def resume_all(self) -> None:
        paused, self.paused = self.paused, set()
        for connection in paused:
            connection.resume()

    def close_all(self) -> None:
        for connection in list(self.connections):
            connection.close()


class TcpConnection(asyncio.Protocol):
    def __init__(self, listener: TcpListener, transport: str = "tcp") -> None:
        self._listener = listener
        self._transport_label = transport
        self._framer = HepStreamFramer()
        self._transport: asyncio.Transport | None = None
        self._context: ReceiveContext | None = None
        self._paused = False
        self._close_reason = "peer_closed"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername") or ("", 0)
        self._context = self._listener.intake.context(
            self._transport_label, str(peer[0]), int(peer[1])
        )
        self._listener.connections.add(self)
        if self._transport_label == "tls":
            cert = transport.get_extra_info("peercert") or {}
            ssl_object = transport.get_extra_info("ssl_object")
            log.debug(
                "tls_connected",
                peer=f"{peer[0]}:{peer[1]}",
                version=ssl_object.version() if ssl_object is not None else None,
                client_subject=dict(item[0] for item in cert.get("subject", ())) or None,
            )
        else:
            log.debug("tcp_connected", peer=f"{peer[0]}:{peer[1]}")

    def data_received(self, data: bytes) -> None:
        listener = self._listener
        try:
            frames = self._framer.feed(data)
        except HepDecodeError as exc:
            listener.metrics.invalid[exc.reason] += 1
            self._close_reason = "broken_stream"
            assert self._context is not None
            log.warning(
                "tcp_stream_broken",
                peer=f"{self._context.sender_ip}:{self._context.sender_port}",
                transport=self._transport_label,
                reason=exc.reason,
            )
            self.close()
            return
        if frames:
            accept = listener.intake.accept
            sink = listener.sink
            context = self._context
            assert context is not None
            now_us = listener.clock_ns() // 1000
            for frame in frames:
                record = accept(frame, context, now_us)
                if record is not None:
                    sink(record[0], record[1], True)
        if not self._paused and listener.above_high_water():
            self._pause()

    def _pause(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._paused = True
            self._listener.paused.add(self)
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self._transport is not None and not self._transport.is_closing():
            self._paused = False
            self._transport.resume_reading()

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            if self._close_reason == "peer_closed":
                self._close_reason = "receiver_closed"
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        listener = self._listener
        listener.connections.discard(self)
        listener.paused.discard(self)
        reason = self._close_reason if exc is None else "error"
        listener.metrics.tcp_connections_closed[reason] += 1
        if self._framer.buffered:
            # A frame cut off by the close: counted like any other malformed packet.
            listener.metrics.invalid["truncated"] += 1
