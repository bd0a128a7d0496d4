"""UDP listener: one datagram is one HEP packet, handed to the intake without awaiting."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

from pipeline.observability import get_logger
from pipeline.receiver.intake import Intake
from pipeline.receiver.listen import bind_error
from pipeline.receiver.metrics import ReceiverMetrics
from pipeline.records import ReceiveContext

log = get_logger("pipeline.receiver.udp")

# Takes the intake's (key, value) tuple as is; False when the backlog is full.
Sink = Callable[[tuple[bytes | None, bytes]], bool]
_SENDER_CACHE_LIMIT = 4096


class UdpProtocol(asyncio.DatagramProtocol):
    """decode -> auth -> Avro -> queue, all in `datagram_received`; a full queue is a drop.

    The intake catches and counts the codec's errors; nothing here awaits, so the event
    loop reads the next datagram as soon as this one is queued.

    The receive time is read per datagram (time.time_ns, ~0.1 us): a clock cached per
    loop iteration would save little and could lag by a whole publisher cycle.
    """

    def __init__(
        self,
        intake: Intake,
        sink: Sink,
        metrics: ReceiverMetrics,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._accept = intake.acceptor("udp")
        self._context_of = intake.context
        self._sink = sink
        self._dropped = metrics.dropped
        self._clock_ns = clock_ns
        self._contexts: dict[Any, ReceiveContext] = {}
        # The per-datagram handler as a closure over locals: the event loop finds it as
        # an instance attribute, ahead of the method below (which does the same).
        self.datagram_received = self._handler()  # type: ignore[method-assign,assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        context = self._contexts.get(addr)
        if context is None:
            context = self._new_sender(addr)
        record = self._accept(data, context, self._clock_ns() // 1000)
        if record is not None and not self._sink(record):
            self._dropped["queue_full"] += 1

    def _handler(self) -> Callable[[bytes, Any], None]:
        get_context = self._contexts.get
        new_sender = self._new_sender
        accept = self._accept
        clock_ns = self._clock_ns
        sink = self._sink
        dropped = self._dropped

        def datagram_received(data: bytes, addr: Any) -> None:
            context = get_context(addr)
            if context is None:
                context = new_sender(addr)
            record = accept(data, context, clock_ns() // 1000)
            if record is not None and not sink(record):
                dropped["queue_full"] += 1

        return datagram_received

    def _new_sender(self, addr: Any) -> ReceiveContext:
        if len(self._contexts) >= _SENDER_CACHE_LIMIT:
            self._contexts.clear()
        context = self._contexts[addr] = self._context_of("udp", addr[0], addr[1])
        return context

    def error_received(self, exc: Exception) -> None:
        # ICMP errors and the like: nothing to do for a receive-only socket.
        log.debug("udp_error", error=repr(exc))


def bind_udp_socket(
    host: str, port: int, rcvbuf_bytes: int, reuse_port: bool = False
) -> socket.socket:
    """A non-blocking UDP socket bound to host:port with a large receive buffer.

    With `reuse_port`, SO_REUSEPORT lets several worker processes bind the same port;
    Linux then hashes each datagram's 4-tuple to pick one of the sockets. Never
    SO_REUSEADDR (see pipeline.receiver.listen): an address another process holds is
    an OSError that names it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            # As asyncio does for TCP: [::]:P and 0.0.0.0:P are two listeners, not one.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if rcvbuf_bytes:
            # SO_RCVBUFFORCE passes net.core.rmem_max when we may (CAP_NET_ADMIN).
            force = getattr(socket, "SO_RCVBUFFORCE", None)
            try:
                if force is None:
                    raise PermissionError
                sock.setsockopt(socket.SOL_SOCKET, force, rcvbuf_bytes)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf_bytes)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise bind_error("udp", host, port, exc) from exc
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_udp_listener(
    host: str,
    port: int,
    *,
    rcvbuf_bytes: int,
    protocol_factory: Callable[[], UdpProtocol],
    reuse_port: bool = False,
) -> tuple[asyncio.DatagramTransport, tuple[str, int], int]:
    """Bind and start listening; returns the transport, the bound address and the buffer size."""
    sock = bind_udp_socket(host, port, rcvbuf_bytes, reuse_port)
    bound = sock.getsockname()
    rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    loop = asyncio.get_running_loop()
    try:
        transport, _ = await loop.create_datagram_endpoint(protocol_factory, sock=sock)
    except BaseException:
        sock.close()
        raise
    return transport, (bound[0], bound[1]), rcvbuf
