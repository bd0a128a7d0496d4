"""UDP listener: drains a non-blocking socket in batches, on a timer that follows the rate.

One wakeup per datagram (asyncio's DatagramProtocol) costs more than the datagram's
own work below saturation, and so does a wakeup every few milliseconds at a few
thousand packets/s: a wakeup costs about as much as decoding a hundred packets. `UdpReader`
reads whatever the socket holds (until EAGAIN or `batch_limit` datagrams; recvmmsg,
64 datagrams per system call, in the compiled module) and hands the whole batch to the
intake and the publisher in one call each:

    timer --> drain: read until EAGAIN or batch_limit --> intake.accept_batch
      ^          |                                                   |
      |          | batch_limit reached: drain again at once          v
      |          | nothing read: wait until the socket is readable   publisher.offer_batch
      +----------+ otherwise: the next drain after next_interval()   (refused: counted
                                                                      dropped{queue_full})

The drain interval rule (`next_interval`): the next drain comes when, at the rate the
last drain saw, half a batch (`batch_limit / 2` datagrams) will have arrived, but no
sooner than `MIN_DRAIN_INTERVAL_S` and no later than the longest interval. So a quiet
socket is read every longest interval (few wakeups), a busy one more often (batches of
about half the limit), and a drain that fills the batch is followed by another at once.
The longest interval is `--udp-drain-interval-ms`, cut (`longest_interval`) to what half
of the granted receive buffer holds at `--udp-peak-rate`: a burst at the peak rate that
starts right after a drain still fits, with as much again to spare for a stall. The
kernel buffers what arrives between two drains (README: "Sizing the UDP receive
buffer"); `batch_limit` is kept to a quarter of what the granted buffer holds.
An idle socket costs nothing: after a drain that found nothing the reader waits for
the socket to become readable, then drains after one longest interval.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Callable

from pipeline.accel import receive_datagrams
from pipeline.observability import get_logger
from pipeline.receiver.intake import Address, Encoded, Intake
from pipeline.receiver.listen import bind_error
from pipeline.receiver.metrics import ReceiverMetrics

log = get_logger("pipeline.receiver.udp")

# Queues the intake's records in order; returns how many it took (the rest are drops).
BatchSink = Callable[[list[Encoded]], int]

# SO_RCVBUFFORCE (Linux, asm-generic/socket.h): SO_RCVBUF past net.core.rmem_max, for a
# process with CAP_NET_ADMIN. Python's socket module does not define it.
SO_RCVBUFFORCE: int | None = getattr(
    socket, "SO_RCVBUFFORCE", 33 if sys.platform.startswith("linux") else None
)
# What one datagram of an ordinary HEP packet (up to ~1.5 KB) takes of the receive
# buffer on Linux (its skb "truesize"), measured on loopback: ~2.1 KB.
DATAGRAM_TRUESIZE = 2304
DEFAULT_BATCH_LIMIT = 1024
# The shortest wait between two drains that did not fill a batch.
MIN_DRAIN_INTERVAL_S = 0.001


def read_datagrams(
    sock: socket.socket, limit: int, packets: list[bytes], senders: list[Address]
) -> bool:
    """Append up to `limit` datagrams and their senders; True when the limit was reached.

    Stops at the first EAGAIN (nothing left) or socket error (ICMP errors and the like:
    nothing to do for a receive-only socket, the next drain reads on).
    """
    try:
        return receive_datagrams(sock, limit, packets, senders)
    except OSError as exc:
        log.debug("udp_error", error=repr(exc))
        return False


def batch_limit_for(rcvbuf_kernel_bytes: int, most: int = DEFAULT_BATCH_LIMIT) -> int:
    """A quarter of the datagrams the buffer holds (at least 16, at most `most`)."""
    return max(16, min(most, rcvbuf_kernel_bytes // DATAGRAM_TRUESIZE // 4))


def longest_interval(longest_s: float, rcvbuf_kernel_bytes: int, peak_rate: float) -> float:
    """`longest_s`, or less: the time half the buffer takes to fill at `peak_rate`/s."""
    holds = rcvbuf_kernel_bytes / DATAGRAM_TRUESIZE / 2
    return min(longest_s, holds / peak_rate)


def next_interval(read: int, elapsed_s: float, batch_limit: int, longest_s: float) -> float:
    """Seconds to the next drain after one that read `read` (> 0) datagrams in `elapsed_s`.

    The time half a batch takes to arrive at that rate, within
    [MIN_DRAIN_INTERVAL_S, longest_s] (the longest wins when they cross).
    """
    if elapsed_s <= 0:
        return min(MIN_DRAIN_INTERVAL_S, longest_s)
    wait = elapsed_s * (batch_limit / 2) / read
    return min(longest_s, max(MIN_DRAIN_INTERVAL_S, wait))


class UdpReader:
    """Owns one bound, non-blocking UDP socket; reads it in batches until `close()`.

    Nothing here awaits: a drain is a timer callback that reads, decodes, encodes and
    queues one batch. The receive time is read once per batch (the batch is what
    arrived within one interval, a few milliseconds).
    """

    def __init__(
        self,
        sock: socket.socket,
        intake: Intake,
        sink: BatchSink,
        metrics: ReceiverMetrics,
        *,
        drain_interval_s: float,
        batch_limit: int = DEFAULT_BATCH_LIMIT,
        clock_ns: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._accept_batch = intake.accept_batch
        self._sink = sink
        self._metrics = metrics
        self._dropped = metrics.dropped
        self._longest = drain_interval_s  # the longest interval (see longest_interval)
        self._batch_limit = batch_limit
        self._clock_ns = clock_ns
        self._monotonic = monotonic
        self._last_drain = 0.0  # monotonic time of the last drain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._waiting_readable = False
        self._full = False  # the last drain stopped at batch_limit
        self._closed = False

    @property
    def socket(self) -> socket.socket:
        return self._sock

    def start(self) -> None:
        """Begin reading (call inside the running loop): a first drain at once."""
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_soon(self._drain_and_schedule)

    def close(self) -> None:
        """Stop reading and close the socket; datagrams still in its buffer are the kernel's."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiting_readable and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._waiting_readable = False
        self._sock.close()

    def drain(self) -> int:
        """Read, accept and queue one batch now; returns the datagrams read."""
        packets: list[bytes] = []
        senders: list[Address] = []
        self._full = read_datagrams(self._sock, self._batch_limit, packets, senders)
        if packets:
            self._metrics.udp_batches += 1
            records = self._accept_batch(packets, senders, "udp", self._clock_ns() // 1000)
            if records:
                refused = len(records) - self._sink(records)
                if refused:
                    self._dropped["queue_full"] += refused
        return len(packets)

    def _drain_and_schedule(self) -> None:
        self._timer = None
        self._full = False
        read = 0
        now = self._monotonic()
        elapsed, self._last_drain = now - self._last_drain, now
        try:
            read = self.drain()
        finally:
            # Scheduled even if the batch raised (a bug): the socket keeps being read.
            if not self._closed:
                self._schedule(read, elapsed)

    def _schedule(self, read: int, elapsed: float) -> None:
        loop = self._loop
        assert loop is not None
        if self._full:
            self._timer = loop.call_soon(self._drain_and_schedule)
        elif read:
            wait = next_interval(read, elapsed, self._batch_limit, self._longest)
            self._timer = loop.call_later(wait, self._drain_and_schedule)
        else:
            self._wait_readable()

    def _wait_readable(self) -> None:
        assert self._loop is not None
        self._waiting_readable = True
        self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        loop = self._loop
        assert loop is not None
        loop.remove_reader(self._fd)
        self._waiting_readable = False
        if not self._closed:
            # Traffic (re)starts at an unknown rate: let the longest interval's worth
            # gather before the first drain (the buffer holds it at the peak rate).
            self._timer = loop.call_later(self._longest, self._drain_and_schedule)


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
            set_receive_buffer(sock, rcvbuf_bytes)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise bind_error("udp", host, port, exc) from exc
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def set_receive_buffer(sock: socket.socket, size: int) -> bool:
    """Ask for a `size`-byte receive buffer; True when SO_RCVBUFFORCE was allowed.

    SO_RCVBUFFORCE passes net.core.rmem_max for a process with CAP_NET_ADMIN (root, or
    the capability granted by systemd/compose); without it, SO_RCVBUF is capped there.
    """
    if SO_RCVBUFFORCE is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
            return True
        except OSError:  # EPERM: not permitted; SO_RCVBUF below
            pass
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return False


def receive_buffer(sock: socket.socket) -> tuple[int, int]:
    """(granted, kernel limit) of the receive buffer, in bytes.

    Linux doubles the size set (the other half pays for bookkeeping) and getsockopt
    returns the doubled value: the limit that the datagrams' truesize is held to.
    `granted` is comparable with the size asked for.
    """
    kernel = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return (kernel // 2 if sys.platform.startswith("linux") else kernel), kernel
