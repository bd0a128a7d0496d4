"""Composition: wire settings, metrics, intake, listeners and publisher; run until `stop`.

`run_receiver` runs inside a loop it does not own (the CLI's, or `hep-ingest up`'s): it
installs no signal handlers and picks no event loop policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from pipeline.accel import IMPLEMENTATION
from pipeline.observability import get_logger
from pipeline.receiver.intake import Intake
from pipeline.receiver.listen import bind_error, format_address
from pipeline.receiver.metrics import ReceiverMetrics
from pipeline.receiver.publisher import KafkaPublisher
from pipeline.receiver.settings import ReceiverSettings
from pipeline.receiver.socket_drops import UdpSocketDrops
from pipeline.receiver.tcp import TcpListener
from pipeline.receiver.tls import HandshakeFailures, report_handshake_failures
from pipeline.receiver.udp import (
    UdpReader,
    batch_limit_for,
    bind_udp_socket,
    longest_interval,
    receive_buffer,
)
from pipeline.records import load_codec

log = get_logger("pipeline.receiver")


async def run_receiver(
    settings: ReceiverSettings,
    registry: CollectorRegistry,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
) -> None:
    """Receive HEP into Kafka until `stop` is set, then publish what was accepted.

    Raises OSError when a listen address cannot be bound; broker trouble never raises.
    """
    metrics = ReceiverMetrics(registry)
    publisher = KafkaPublisher(settings, metrics)
    metrics.bind_queue_depth(lambda: publisher.depth)
    intake = Intake(
        codec=load_codec(),
        metrics=metrics,
        receiver_id=settings.receiver_id,
        auth_key=settings.auth_key,
        forward_auth_key=settings.forward_auth_key,
    )
    tcp = TcpListener(
        intake,
        publisher.offer_batch,
        publisher.above_high_water,
        metrics,
        max_connections=settings.tcp_max_connections,
        idle_timeout_s=settings.tcp_idle_timeout_s,
        frame_timeout_s=settings.tcp_frame_timeout_s,
        read_interval_s=settings.tcp_read_interval_ms / 1000,
    )
    publisher.set_low_water_callback(tcp.resume_all)

    socket_drops = UdpSocketDrops()
    metrics.bind_socket_drops(socket_drops.read)

    loop = asyncio.get_running_loop()
    udp_readers: list[UdpReader] = []
    servers: list[asyncio.AbstractServer] = []
    publisher.start()
    progress: asyncio.Task[None] | None = None
    drops: asyncio.Task[None] | None = None
    try:
        udp_bound: list[str] = []
        for host, port in settings.udp:
            sock = bind_udp_socket(host, port, settings.udp_rcvbuf_bytes, settings.reuse_port)
            granted, kernel_limit = receive_buffer(sock)
            longest_s = longest_interval(
                settings.udp_drain_interval_ms / 1000, kernel_limit, settings.udp_peak_rate
            )
            reader = UdpReader(
                sock,
                intake,
                publisher.offer_batch,
                metrics,
                drain_interval_s=longest_s,
                batch_limit=batch_limit_for(kernel_limit),
            )
            udp_readers.append(reader)
            bound = sock.getsockname()
            udp_bound.append(format_address(bound[0], bound[1]))
            socket_drops.watch(sock.fileno(), udp_bound[-1])
            (log.warning if granted < settings.udp_rcvbuf_bytes else log.info)(
                "udp_receive_buffer",
                listen=udp_bound[-1],
                requested=settings.udp_rcvbuf_bytes,
                granted=granted,
                kernel_limit=kernel_limit,
                drain_interval_ms=round(longest_s * 1000, 3),
                peak_rate=settings.udp_peak_rate,
                **(
                    {"hint": "run with CAP_NET_ADMIN (SO_RCVBUFFORCE) or raise net.core.rmem_max"}
                    if granted < settings.udp_rcvbuf_bytes
                    else {}
                ),
            )
            reader.start()
        tcp_bound: list[str] = []
        for host, port in settings.tcp:
            try:
                server = await loop.create_server(
                    tcp.protocol,
                    host,
                    port,
                    reuse_address=True,
                    reuse_port=settings.reuse_port or None,
                )
            except OSError as exc:
                raise bind_error("tcp", host, port, exc) from exc
            servers.append(server)
            tcp_bound.extend(
                f"{sock.getsockname()[0]}:{sock.getsockname()[1]}" for sock in server.sockets
            )
        tls_bound: list[str] = []
        if settings.tls_context is not None:
            report_handshake_failures(settings.tls_context, HandshakeFailures(metrics))
        for host, port in settings.tls:
            # The same protocol as TCP: the loop decrypts, the framer sees plain HEP.
            try:
                server = await loop.create_server(
                    tcp.tls_protocol,
                    host,
                    port,
                    ssl=settings.tls_context,
                    reuse_address=True,
                    reuse_port=settings.reuse_port or None,
                )
            except OSError as exc:
                raise bind_error("tls", host, port, exc) from exc
            servers.append(server)
            tls_bound.extend(
                f"{sock.getsockname()[0]}:{sock.getsockname()[1]}" for sock in server.sockets
            )
        log.info(
            "receiver_started",
            udp=udp_bound,
            tcp=tcp_bound,
            tls=tls_bound,
            tls_client_cert_required=(
                settings.tls_context is not None
                and settings.tls_context.verify_mode == ssl.CERT_REQUIRED
            ),
            bootstrap_servers=settings.bootstrap_servers,
            topic=settings.topic,
            receiver_id=settings.receiver_id,
            implementation=IMPLEMENTATION,
            auth_key_required=settings.auth_key is not None,
            compression=settings.compression,
        )
        tcp.start()
        progress = loop.create_task(_log_progress(metrics, publisher, settings.progress_interval_s))
        drops = loop.create_task(_log_queue_full(metrics, publisher, settings.queue_size))
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("receiver_stopping", backlog=publisher.depth, grace_s=settings.shutdown_timeout_s)
    finally:
        socket_drops.read()  # the last figures, before the sockets leave /proc/net/udp
        # The whole stop, listeners included, fits in the shutdown timeout.
        deadline = loop.time() + settings.shutdown_timeout_s
        for reader in udp_readers:
            reader.close()
        for listening in servers:
            listening.close()
        tcp.close_all()
        for listening in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    listening.wait_closed(), max(0.0, min(1.0, deadline - loop.time()))
                )
        for task in (progress, drops):
            if task is not None:
                task.cancel()
        await publisher.close(max(0.0, deadline - loop.time()))
        totals = metrics.totals()
        if metrics.dropped["shutdown"]:
            log.error("receiver_stopped", **totals, dropped_at_shutdown=metrics.dropped["shutdown"])
        else:
            log.info("receiver_stopped", **totals)


async def _log_progress(metrics: ReceiverMetrics, publisher: KafkaPublisher, every: float) -> None:
    last = metrics.totals()
    last_time = time.monotonic()
    while True:
        await asyncio.sleep(every)
        now = metrics.totals()
        now_time = time.monotonic()
        elapsed = max(now_time - last_time, 1e-9)
        log.info(
            "progress",
            **now,
            received_per_s=round((now["received"] - last["received"]) / elapsed, 1),
            published_per_s=round((now["published"] - last["published"]) / elapsed, 1),
            dropped_per_s=round((now["dropped"] - last["dropped"]) / elapsed, 1),
            backlog=publisher.depth,
            backlog_bytes=publisher.backlog_bytes,
        )
        last, last_time = now, now_time


@dataclass
class DropWatch:
    """Turns the queue_full drop counter into a few log events, never one per packet.

    `observe` is called about once a second with the counter's value: the first
    increase is `queue_full_drops_started`; while drops go on, one
    `queue_full_drops_continuing` every `repeat_s`; the first quiet observation ends
    the episode with `queue_full_drops_stopped` and its total.
    """

    repeat_s: float = 10.0
    _last: int = 0
    _base: int | None = None  # the counter when the episode began; None: no drops
    _started: float = 0.0
    _reported: tuple[float, int] = field(default=(0.0, 0))

    def observe(self, total: int, now: float) -> tuple[str, dict[str, Any]] | None:
        previous, self._last = self._last, total
        if self._base is None:
            if total <= previous:
                return None
            self._base, self._started, self._reported = previous, now, (now, total)
            return "queue_full_drops_started", {"dropped": total - previous}
        episode = {"dropped": total - self._base, "duration_s": round(now - self._started, 1)}
        if total <= previous:
            self._base = None
            return "queue_full_drops_stopped", episode
        reported_at, reported_total = self._reported
        if now - reported_at < self.repeat_s:
            return None
        self._reported = (now, total)
        return "queue_full_drops_continuing", {**episode, "since_last": total - reported_total}


async def _log_queue_full(
    metrics: ReceiverMetrics, publisher: KafkaPublisher, queue_size: int, every: float = 1.0
) -> None:
    watch = DropWatch()
    watch.observe(metrics.dropped["queue_full"], time.monotonic())
    while True:
        await asyncio.sleep(every)
        seen = watch.observe(metrics.dropped["queue_full"], time.monotonic())
        if seen is not None:
            event, fields = seen
            (log.info if event.endswith("stopped") else log.warning)(
                event,
                **fields,
                total=metrics.dropped["queue_full"],
                backlog=publisher.depth,
                backlog_bytes=publisher.backlog_bytes,
                queue_size=queue_size,
            )
