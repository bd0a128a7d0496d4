"""TCP listener: a HEP stream per connection, framed by the sans-IO HepStreamFramer.

TLS connections use the same protocol (transport label "tls"): the event loop runs the
handshake and hands the decrypted stream to `data_received`.

Backpressure instead of loss: after each read a connection asks whether the backlog
is above its high-water mark and, if so, stops reading (`pause_reading()`), which lets
the kernel's buffers and then TCP flow control hold the sender back. The publisher calls
`TcpListener.resume_all()` once the backlog is below low water.

Every byte is accounted for: each complete frame goes through the intake (received,
then decoded or invalid); bytes that never make a frame (a stream that breaks HEP
framing, a frame cut off by the close) count once as a received, invalid packet with
the reason. A broken stream is closed after the frames before the break are delivered
(connections_closed{broken_stream}).

Read in batches, as UDP: after a read, a connection rests for `read_interval_s`
(reading paused; the kernel buffers what arrives, and past its buffer TCP flow control
holds the sender) and then reads everything buffered at once. One wakeup then serves
a few hundred frames instead of one or two, at the cost of that much latency. A read
of FULL_READ bytes or more is followed by the next at once (resting would cap a busy
stream's throughput). One timer per listener wakes every resting connection.

Bounded resources: at most `max_connections` (TCP and TLS together; more are closed
when accepted and counted in connections_refused{max_connections}); a connection that
reads nothing for `idle_timeout_s`, or holds a partial frame for `frame_timeout_s`, is
closed (connections_closed{idle_timeout|frame_timeout}). One timer per listener checks
them; a connection paused by backpressure is not timed, since it is the receiver that
is not reading.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast

from pipeline.hep.framer import HepStreamFramer
from pipeline.observability import get_logger
from pipeline.receiver.intake import Address, Encoded, Intake
from pipeline.receiver.memory import release_free_memory
from pipeline.receiver.metrics import ReceiverMetrics
from pipeline.records import ReceiveContext

log = get_logger("pipeline.receiver.tcp")

# A read this large (the event loops read up to 256 KiB at a time) is followed by the
# next read at once rather than by a rest: the stream is busy.
FULL_READ = 64 * 1024

# offer_batch(records, force) -> queued; TCP always forces (it pauses instead of dropping).
Sink = Callable[[list[Encoded], bool], int]


class TcpListener:
    """The connections of every TCP listen address, their limits and flow control."""

    def __init__(
        self,
        intake: Intake,
        sink: Sink,
        above_high_water: Callable[[], bool],
        metrics: ReceiverMetrics,
        clock_ns: Callable[[], int] = time.time_ns,
        *,
        max_connections: int = 1024,
        idle_timeout_s: float = 300.0,
        frame_timeout_s: float = 30.0,
        read_interval_s: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.intake = intake
        self.sink = sink
        self.above_high_water = above_high_water
        self.metrics = metrics
        self.clock_ns = clock_ns
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.frame_timeout_s = frame_timeout_s
        self.read_interval_s = read_interval_s
        self.monotonic = monotonic
        self.connections: set[TcpConnection] = set()
        self.paused: set[TcpConnection] = set()
        # Connections between two batch reads, and the timer that wakes them all.
        self.resting: set[TcpConnection] = set()
        self._wake: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._release: asyncio.TimerHandle | None = None
        self._refused_since_log = 0
        self._refusal_logged_at: float | None = None
        metrics.bind_tcp_connections_open(lambda: len(self.connections))

    def protocol(self) -> TcpConnection:
        return TcpConnection(self)

    def tls_protocol(self) -> TcpConnection:
        """For a listener created with `ssl=`: the same framing, labelled "tls"."""
        return TcpConnection(self, transport="tls")

    def start(self) -> None:
        """Start timing connections out (call inside the running loop)."""
        self._timer = asyncio.get_running_loop().call_later(self._check_every(), self._expire)

    def _check_every(self) -> float:
        timeouts = [t for t in (self.idle_timeout_s, self.frame_timeout_s) if t > 0]
        return min(max(min(timeouts) / 4, 0.05), 1.0)

    def _expire(self) -> None:
        now = self.monotonic()
        for connection in list(self.connections):
            connection.expire(now)
        self._timer = asyncio.get_running_loop().call_later(self._check_every(), self._expire)

    def admit(self, connection: TcpConnection, peer: str) -> bool:
        """Whether `connection` may stay open; a refusal is counted (and logged, sampled)."""
        if len(self.connections) < self.max_connections:
            self.connections.add(connection)
            return True
        self.metrics.tcp_connections_refused["max_connections"] += 1
        self._refused_since_log += 1
        now = self.monotonic()
        if self._refusal_logged_at is None or now - self._refusal_logged_at >= 60.0:
            log.warning(
                "tcp_connection_refused",
                reason="max_connections",
                peer=peer,
                max_connections=self.max_connections,
                refused_since_last_sample=self._refused_since_log,
                hint="raise --tcp-max-connections, or find the agent opening connections",
            )
            self._refusal_logged_at = now
            self._refused_since_log = 0
        return False

    def rest(self, connection: TcpConnection) -> None:
        """Have `connection` read again at the next wake (within read_interval_s)."""
        self.resting.add(connection)
        if self._wake is None:
            self._wake = asyncio.get_running_loop().call_later(
                self.read_interval_s, self._wake_resting
            )

    def _wake_resting(self) -> None:
        self._wake = None
        resting, self.resting = self.resting, set()
        for connection in resting:
            connection.wake()

    def connection_closed(self, connection: TcpConnection) -> None:
        self.connections.discard(connection)
        self.paused.discard(connection)
        self.resting.discard(connection)
        # Once a burst of closes is over (at most once a second), give what their
        # buffers held back to the system: the heap would keep it otherwise.
        if self._release is None:
            self._release = asyncio.get_running_loop().call_later(1.0, self._release_memory)

    def _release_memory(self) -> None:
        self._release = None
        release_free_memory()

    def resume_all(self) -> None:
        paused, self.paused = self.paused, set()
        for connection in paused:
            connection.resume()

    def close_all(self) -> None:
        for timer in (self._timer, self._release, self._wake):
            if timer is not None:
                timer.cancel()
        self._timer = self._release = self._wake = None
        self.resting.clear()
        for connection in list(self.connections):
            connection.close()


class TcpConnection(asyncio.Protocol):
    def __init__(self, listener: TcpListener, transport: str = "tcp") -> None:
        self._listener = listener
        self._transport_label = transport
        self._framer = HepStreamFramer()
        self._transport: asyncio.Transport | None = None
        self._context: ReceiveContext | None = None
        self._sender: Address = ("", 0)
        self._paused = False  # by backpressure (above high water)
        self._resting = False  # between two batch reads
        self._admitted = False
        self._close_reason = "peer_closed"
        self._last_read = listener.monotonic()
        # When the partial frame held by the framer began (None: none held).
        self._frame_since: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername") or ("", 0)
        if not self._listener.admit(self, f"{peer[0]}:{peer[1]}"):
            transport.close()
            return
        self._admitted = True
        self._last_read = self._listener.monotonic()
        self._sender = (str(peer[0]), int(peer[1]))
        self._context = self._listener.intake.context(
            self._transport_label, self._sender[0], self._sender[1]
        )
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
        if not self._admitted or self._close_reason == "broken_stream":
            # Refused, or broken and closing (TLS may still hand over decrypted bytes):
            # what follows was counted with the break, or is not ours to count.
            return
        listener = self._listener
        framer = self._framer
        frames = framer.feed(data)
        context = self._context
        assert context is not None
        if frames:
            # The frames of one read are one batch, as the datagrams of one UDP drain.
            records = listener.intake.accept_batch(
                frames,
                [self._sender] * len(frames),
                self._transport_label,
                listener.clock_ns() // 1000,
            )
            if records:
                listener.sink(records, True)
        error = framer.error
        if error is not None:
            listener.intake.count_unframed(self._transport_label, framer.error_head, error.reason)
            log.warning(
                "tcp_stream_broken",
                peer=f"{context.sender_ip}:{context.sender_port}",
                transport=self._transport_label,
                reason=error.reason,
                detail=error.detail[:200],
                frames_before=len(frames),
            )
            self._close_reason = "broken_stream"
            self.close()
            return
        now = self._last_read = listener.monotonic()
        if not framer.buffered:
            self._frame_since = None
        elif frames or self._frame_since is None:
            self._frame_since = now
        if not self._paused and listener.above_high_water():
            self._pause()
        elif not self._paused and listener.read_interval_s > 0 and len(data) < FULL_READ:
            # A large read says more is waiting: read on (as a full UDP drain does).
            self._rest()

    def expire(self, now: float) -> None:
        """Close the connection if it has been idle, or held a partial frame, too long."""
        if self._paused or not self._admitted:
            return
        listener = self._listener
        since = self._frame_since
        if since is not None and now - since >= listener.frame_timeout_s:
            reason = "frame_timeout"
        elif listener.idle_timeout_s and now - self._last_read >= listener.idle_timeout_s:
            reason = "idle_timeout"
        else:
            return
        context = self._context
        assert context is not None
        # An idle agent is normal; a frame left unfinished is not.
        emit = log.warning if reason == "frame_timeout" else log.debug
        emit(
            "tcp_timed_out",
            peer=f"{context.sender_ip}:{context.sender_port}",
            transport=self._transport_label,
            reason=reason,
            buffered=self._framer.buffered,
        )
        self._close_reason = reason
        self.close()

    def _pause(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._paused = True
            self._listener.paused.add(self)
            self._transport.pause_reading()

    def _rest(self) -> None:
        transport = self._transport
        # TLS may hand over decrypted bytes already read while resting: one rest.
        if not self._resting and transport is not None and not transport.is_closing():
            self._resting = True
            transport.pause_reading()
            self._listener.rest(self)

    def wake(self) -> None:
        """The end of a rest: read what arrived meanwhile (unless paused by backpressure)."""
        transport = self._transport
        if self._resting and transport is not None and not transport.is_closing():
            self._resting = False
            if not self._paused:
                transport.resume_reading()

    def resume(self) -> None:
        if self._paused and self._transport is not None and not self._transport.is_closing():
            self._paused = False
            # The time spent paused was the receiver's, not the sender's.
            now = self._last_read = self._listener.monotonic()
            if self._frame_since is not None:
                self._frame_since = now
            if not self._resting:  # else the wake resumes it
                self._transport.resume_reading()

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            if self._close_reason == "peer_closed":
                self._close_reason = "receiver_closed"
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        listener = self._listener
        reason = self._close_reason if exc is None else "error"
        listener.metrics.tcp_connections_closed[reason] += 1
        framer = self._framer
        if framer.buffered:
            # A frame cut off by the close: counted like any other malformed packet.
            listener.intake.count_unframed(self._transport_label, framer.head, "truncated")
        # Drop the partial frame now, not when the transport lets go of the protocol.
        self._framer = HepStreamFramer()
        listener.connection_closed(self)
