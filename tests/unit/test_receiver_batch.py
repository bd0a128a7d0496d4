"""The batch-shaped receive path: Intake.accept_batch, the UDP drain loop, offer_batch.

accept_batch must be `accept` applied to each packet in turn (the same records, in
order, and the same counters), whatever the packets are: the hypothesis property runs
it over the vectors and mutated copies of them, with several senders. The drain loop
reads a real non-blocking UDP socket.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from typing import Any

import pytest
from conftest import load_vectors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from pipeline.receiver import udp
from pipeline.receiver.intake import Address, Encoded, Intake
from pipeline.receiver.metrics import ReceiverMetrics
from pipeline.receiver.publisher import KafkaPublisher
from pipeline.receiver.settings import ReceiverSettings
from pipeline.receiver.tcp import TcpListener
from pipeline.receiver.udp import (
    UdpReader,
    batch_limit_for,
    bind_udp_socket,
    longest_interval,
    next_interval,
    receive_buffer,
    set_receive_buffer,
)
from pipeline.records import RecordIdGenerator, load_codec

NOW_US = 1_800_000_000_000_000
CODEC = load_codec()
VECTORS = [
    packet
    for name in ("kamailio_hep3_udp", "kamailio_hep3_tcp", "kamailio_hep2_udp", "hepjs_hep3_udp")
    for packet in load_vectors(name)[0]
]
SENDERS: list[Address] = [
    ("127.0.0.1", 5060),
    ("10.0.0.2", 5062),
    ("::1", 9060, 0, 0),
]


def _intake(auth_key: bytes | None = None) -> tuple[Intake, ReceiverMetrics]:
    metrics = ReceiverMetrics(CollectorRegistry())
    intake = Intake(
        codec=CODEC,
        metrics=metrics,
        receiver_id="test:1",
        auth_key=auth_key,
        ids=RecordIdGenerator(b"\x01" * 8),
    )
    return intake, metrics


def _counts(metrics: ReceiverMetrics) -> dict[str, Any]:
    return {
        "received": +Counter(metrics.received),
        "decoded": metrics.decoded,
        "invalid": +Counter(metrics.invalid),
        "rejected": +Counter(metrics.rejected),
    }


def _without_id(records: list[Encoded]) -> list[tuple[bytes | None, dict[str, Any]]]:
    out = []
    for key, value in records:
        record = CODEC.decode(value)
        del record["record_id"]
        out.append((key, record))
    return out


def _one_by_one(
    intake: Intake, packets: list[bytes], senders: list[Address], transport: str
) -> list[Encoded]:
    records = []
    for data, sender in zip(packets, senders, strict=True):
        record = intake.accept(data, intake.context(transport, sender[0], sender[1]), NOW_US)
        if record is not None:
            records.append(record)
    return records


def _mutate(data: bytes, position: int, value: int, cut: int) -> bytes:
    if not data:
        return data
    changed = bytearray(data)
    changed[position % len(changed)] = value
    return bytes(changed[: max(0, len(changed) - cut)])


mutated_packet = st.one_of(
    st.sampled_from(VECTORS),
    st.builds(
        _mutate, st.sampled_from(VECTORS), st.integers(0, 2000), st.integers(0, 255),
        st.sampled_from([0, 0, 1, 7, 100]),
    ),
    st.binary(max_size=64),
)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    packets=st.lists(mutated_packet, max_size=40),
    sender_picks=st.lists(st.integers(0, len(SENDERS) - 1), min_size=40, max_size=40),
    transport=st.sampled_from(["udp", "tcp", "tls"]),
    auth_key=st.sampled_from([None, b"acceptanceKey", b"myHep"]),
)
def test_accept_batch_is_accept_of_each_packet(
    packets: list[bytes],
    sender_picks: list[int],
    transport: str,
    auth_key: bytes | None,
) -> None:
    senders = [SENDERS[i] for i in sender_picks[: len(packets)]]
    one, one_metrics = _intake(auth_key)
    batch, batch_metrics = _intake(auth_key)
    expected = _one_by_one(one, packets, senders, transport)
    got = batch.accept_batch(packets, senders, transport, NOW_US)
    assert [key for key, _ in got] == [key for key, _ in expected]
    assert _without_id(got) == _without_id(expected)
    assert _counts(batch_metrics) == _counts(one_metrics)
    assert len({value[10:26] for _, value in got}) == len(got), "record ids are distinct"


def test_accept_batch_of_the_vectors_counts_every_packet_once() -> None:
    intake, metrics = _intake()
    senders = [SENDERS[i % len(SENDERS)] for i in range(len(VECTORS))]
    records = intake.accept_batch(VECTORS, senders, "udp", NOW_US)
    assert len(records) == len(VECTORS) == metrics.decoded
    assert sum(metrics.received.values()) == len(VECTORS)
    # The sender of each packet is the one written into its record.
    decoded = [CODEC.decode(value) for _, value in records]
    assert [(r["sender_ip"], r["sender_port"]) for r in decoded] == [s[:2] for s in senders]
    with pytest.raises(ValueError):  # one sender per packet, no silent truncation
        intake.accept_batch(VECTORS[:2], SENDERS[:1], "udp", NOW_US)


# -- the UDP drain loop ------------------------------------------------------------


class _Sink:
    """offer_batch stand-in: takes up to `room` records in all, remembers each batch."""

    def __init__(self, room: int = 1_000_000) -> None:
        self.room = room
        self.batches: list[list[Encoded]] = []

    def __call__(self, records: list[Encoded]) -> int:
        self.batches.append(records)
        taken = min(self.room, len(records))
        self.room -= taken
        return taken

    @property
    def records(self) -> list[Encoded]:
        return [record for batch in self.batches for record in batch]


def _send(port: int, packets: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for packet in packets:
            sender.sendto(packet, ("127.0.0.1", port))


def _reader(
    sink: _Sink, interval_s: float = 0.005, batch_limit: int = 1024
) -> tuple[UdpReader, ReceiverMetrics]:
    intake, metrics = _intake()
    sock = bind_udp_socket("127.0.0.1", 0, 4 * 1024 * 1024)
    reader = UdpReader(
        sock, intake, sink, metrics, drain_interval_s=interval_s, batch_limit=batch_limit
    )
    return reader, metrics


def test_a_drain_reads_up_to_the_batch_limit_in_one_batch() -> None:
    packets, _ = load_vectors("kamailio_hep3_udp")
    sink = _Sink()
    reader, metrics = _reader(sink, batch_limit=64)
    try:
        _send(reader.socket.getsockname()[1], packets[:100])
        time.sleep(0.2)  # loopback delivers at once; margin for a loaded machine
        assert reader.drain() == 64
        assert reader.drain() == 36
        assert reader.drain() == 0
    finally:
        reader.close()
    assert [len(batch) for batch in sink.batches] == [64, 36]
    assert [key for key, _ in sink.records] == [
        key for key, _ in _one_by_one(_intake()[0], packets[:100], [SENDERS[0]] * 100, "udp")
    ]
    assert metrics.udp_batches == 2 and metrics.decoded == 100


def test_the_reader_drains_on_its_timer_and_parks_when_idle() -> None:
    packets, _ = load_vectors("kamailio_hep3_udp")
    garbage = [b"not hep", b""]

    async def run() -> tuple[_Sink, ReceiverMetrics, bool]:
        sink = _Sink(room=150)
        reader, metrics = _reader(sink, interval_s=0.005)
        port = reader.socket.getsockname()[1]
        reader.start()
        try:
            for start in range(0, 170, 10):  # bursts of 10, like steady traffic
                _send(port, packets[start : start + 10] + garbage)
                await asyncio.sleep(0.01)
            deadline = time.monotonic() + 30
            while sum(metrics.received.values()) < 170 + 2 * 17:
                assert time.monotonic() < deadline, metrics.totals()
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # an empty drain follows: the reader waits for data
            parked = reader._waiting_readable and reader._timer is None
        finally:
            reader.close()
        assert reader.socket.fileno() == -1
        return sink, metrics, parked

    sink, metrics, parked = asyncio.run(run())
    assert parked
    assert metrics.decoded == 170
    assert sum(metrics.invalid.values()) == 34
    # Batches, not one call per datagram: at most one per burst and drain.
    assert len(sink.batches) <= metrics.udp_batches <= 204 // 4
    # The sink refused what did not fit: each one counted as dropped, none lost silently.
    assert len(sink.records) == 170 and sink.room == 0
    assert metrics.dropped["queue_full"] == 20


def test_a_full_drain_is_followed_by_another_at_once() -> None:
    packets, _ = load_vectors("kamailio_hep3_udp")

    async def run() -> list[int]:
        sink = _Sink()
        # An interval longer than the test: only a drain at once after each full
        # batch can read all 100 (the reader starts with a drain).
        reader, metrics = _reader(sink, interval_s=3600.0, batch_limit=16)
        _send(reader.socket.getsockname()[1], packets[:100])
        await asyncio.sleep(0.2)
        reader.start()
        try:
            deadline = time.monotonic() + 60
            while metrics.decoded < 100:
                assert time.monotonic() < deadline, metrics.totals()
                await asyncio.sleep(0.01)
        finally:
            reader.close()
        return [len(batch) for batch in sink.batches]

    assert asyncio.run(run()) == [16] * 6 + [4]


def test_batch_limit_is_a_quarter_of_the_buffer_within_bounds() -> None:
    assert batch_limit_for(16 * 1024 * 1024) == udp.DEFAULT_BATCH_LIMIT
    assert batch_limit_for(425_984) == 425_984 // udp.DATAGRAM_TRUESIZE // 4
    assert batch_limit_for(1) == 16


def test_the_drain_interval_follows_the_rate() -> None:
    # 5,000/s: half a batch takes 100 ms, more than the longest interval.
    assert next_interval(25, 0.005, 1024, 0.05) == 0.05
    # 20,000/s: 512 datagrams arrive in 25.6 ms.
    assert next_interval(100, 0.005, 1024, 0.05) == pytest.approx(0.0256)
    # 100,000/s: 5.12 ms; far beyond, the shortest interval.
    assert next_interval(500, 0.005, 1024, 0.05) == pytest.approx(0.00512)
    assert next_interval(1000, 0.0001, 1024, 0.05) == udp.MIN_DRAIN_INTERVAL_S
    # The longest wins when it is below the shortest (a tiny buffer); no elapsed time
    # (a clock that did not move) reads again soon.
    assert next_interval(1, 10.0, 1024, 0.0005) == 0.0005
    assert next_interval(10, 0.0, 1024, 0.05) == udp.MIN_DRAIN_INTERVAL_S


@settings(max_examples=200, deadline=None)
@given(
    read=st.integers(1, 10_000),
    more=st.integers(0, 10_000),
    elapsed=st.floats(0, 10),
    limit=st.integers(16, 1024),
    longest=st.floats(0.0001, 1),
)
def test_the_drain_interval_is_bounded_and_shrinks_as_batches_grow(
    read: int, more: int, elapsed: float, limit: int, longest: float
) -> None:
    wait = next_interval(read, elapsed, limit, longest)
    assert min(udp.MIN_DRAIN_INTERVAL_S, longest) <= wait <= longest
    assert next_interval(read + more, elapsed, limit, longest) <= wait


def test_the_longest_interval_fits_half_the_buffer_at_the_peak_rate() -> None:
    kernel = 16 * 1024 * 1024  # 8 MiB granted
    holds = kernel / udp.DATAGRAM_TRUESIZE / 2  # ~3,640 datagrams
    assert longest_interval(0.05, kernel, 100_000) == pytest.approx(holds / 100_000)
    assert longest_interval(0.05, kernel, 10_000) == 0.05
    # Without CAP_NET_ADMIN and rmem_max at 208 KiB: about 1 ms at 100,000/s.
    assert longest_interval(0.05, 2 * 212_992, 100_000) == pytest.approx(0.000924, rel=0.01)


def test_a_reader_waits_as_the_rate_it_saw_says() -> None:
    packets, _ = load_vectors("kamailio_hep3_udp")

    def run(loop: asyncio.AbstractEventLoop) -> list[float]:
        waits: list[float] = []
        now = [100.0]
        sink = _Sink()
        intake, metrics = _intake()
        sock = bind_udp_socket("127.0.0.1", 0, 4 * 1024 * 1024)
        reader = UdpReader(
            sock, intake, sink, metrics, drain_interval_s=0.05, batch_limit=64,
            monotonic=lambda: now[0],
        )  # fmt: skip
        reader._loop = loop  # never run: the timers it is handed are only recorded
        call_later = loop.call_later

        def record(delay: float, callback: Any) -> asyncio.TimerHandle:
            waits.append(delay)
            return call_later(3600, callback)

        loop.call_later = record  # type: ignore[method-assign]
        try:
            port = reader.socket.getsockname()[1]
            reader._drain_and_schedule()  # the start: nothing there yet
            assert reader._waiting_readable
            reader._readable()
            for count, elapsed in ((4, 0.05), (16, 0.01), (32, 0.001)):
                _send(port, packets[:count])
                time.sleep(0.05)  # loopback delivers at once; margin for a loaded machine
                now[0] += elapsed
                reader._drain_and_schedule()
        finally:
            loop.call_later = call_later  # type: ignore[method-assign]
            reader.close()
        return waits

    loop = asyncio.new_event_loop()
    try:
        waits = run(loop)
    finally:
        loop.close()
    # After the wakeup, the longest interval; then 4 in 50 ms (too slow: the longest),
    # 16 in 10 ms (32 arrive in 20 ms), 32 in 1 ms (the shortest).
    assert waits == pytest.approx([0.05, 0.05, 0.02, udp.MIN_DRAIN_INTERVAL_S])


# -- --udp-rcvbuf ------------------------------------------------------------------


def _rmem_max() -> int:
    with open("/proc/sys/net/core/rmem_max") as value:
        return int(value.read())


def test_rcvbuf_is_forced_past_rmem_max_when_permitted() -> None:
    try:
        wanted = _rmem_max() * 2
    except OSError:
        pytest.skip("no /proc/sys/net/core/rmem_max")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        forced = set_receive_buffer(sock, wanted)
        granted, kernel = receive_buffer(sock)
    if not forced:
        pytest.skip("no CAP_NET_ADMIN here: SO_RCVBUFFORCE not permitted")
    assert udp.SO_RCVBUFFORCE == 33
    assert granted == wanted and kernel == 2 * wanted


class _NoForceSocket:
    """A socket whose SO_RCVBUFFORCE is refused (EPERM), as for an unprivileged process."""

    def __init__(self) -> None:
        self.options: list[tuple[int, int]] = []

    def setsockopt(self, level: int, option: int, value: int) -> None:
        if option == udp.SO_RCVBUFFORCE:
            raise PermissionError(1, "Operation not permitted")
        self.options.append((option, value))


def test_rcvbuf_falls_back_to_so_rcvbuf_when_force_is_refused() -> None:
    fake = _NoForceSocket()
    assert set_receive_buffer(fake, 1 << 20) is False  # type: ignore[arg-type]
    assert fake.options == [(socket.SO_RCVBUF, 1 << 20)]


# -- the publisher's batch enqueue --------------------------------------------------


def _publisher(**overrides: Any) -> KafkaPublisher:
    return KafkaPublisher(
        ReceiverSettings(udp=(("127.0.0.1", 0),), tcp=(), **overrides),
        ReceiverMetrics(CollectorRegistry()),
    )


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 300), max_size=60),
    queue_size=st.integers(1, 40),
    max_bytes=st.integers(1, 5_000),
    split=st.integers(1, 60),
)
def test_offer_batch_queues_what_offer_record_would(
    sizes: list[int], queue_size: int, max_bytes: int, split: int
) -> None:
    async def run() -> None:
        records: list[Encoded] = [(b"k%d" % i, b"v" * size) for i, size in enumerate(sizes)]
        one = _publisher(queue_size=queue_size, max_backlog_bytes=max_bytes)
        batch = _publisher(queue_size=queue_size, max_backlog_bytes=max_bytes)
        taken_one = [r for r in records if one.offer_record(r)]
        taken = 0
        for start in range(0, len(records), split):
            taken += batch.offer_batch(records[start : start + split])
        assert taken == len(taken_one)
        assert batch._queue == one._queue == taken_one
        assert (batch.depth, batch.backlog_bytes) == (one.depth, one.backlog_bytes)
        assert batch.depth <= queue_size and batch.backlog_bytes <= max_bytes

    asyncio.run(run())


def test_offer_batch_wakes_the_publisher_and_force_passes_the_bound() -> None:
    async def run() -> None:
        publisher = _publisher(queue_size=3)
        assert publisher.offer_batch([]) == 0
        assert not publisher._wakeup.is_set()
        assert publisher.offer_batch([(b"a", b"1"), (b"b", b"22")]) == 2
        assert publisher._wakeup.is_set()
        assert publisher.offer_batch([(b"c", b"3"), (b"d", b"4")]) == 1  # one left
        assert publisher.offer_batch([(b"e", b"5"), (None, b"66")], force=True) == 2
        assert publisher.depth == 5 and publisher.backlog_bytes == 7

    asyncio.run(run())


@settings(max_examples=300, deadline=None)
@given(key=st.binary(max_size=300))
def test_murmur2_is_aiokafkas_partitioner_hash(key: bytes) -> None:
    from aiokafka.partitioner import murmur2 as aiokafka_murmur2

    from pipeline.kafka_batch import murmur2

    assert murmur2(key) == aiokafka_murmur2(key)
    try:
        from pipeline._speedups import murmur2 as compiled_murmur2
    except ImportError:  # installed without the extension
        return
    assert compiled_murmur2(key) == aiokafka_murmur2(key)


def test_zstd_level_reaches_aiokafkas_batch_builders(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    import cramjam
    from aiokafka.codec import zstd_decode
    from aiokafka.producer.message_accumulator import BatchBuilder
    from aiokafka.record.default_records import DefaultRecordBatch
    from aiokafka.record.memory_records import MemoryRecords

    from pipeline.receiver import publisher

    modules = [importlib.import_module(name) for name in publisher._ZSTD_MODULES]
    for module in modules:  # restored after the test: the level is process-wide
        monkeypatch.setattr(module, "zstd_encode", module.zstd_encode)
    assert publisher.set_zstd_level(1)
    data = b"INVITE sip:bob@example.com SIP/2.0\r\n" * 200
    for module in modules:
        compressed = module.zstd_encode(data)
        assert compressed == bytes(cramjam.zstd.compress(data, level=1))
        assert zstd_decode(compressed) == data
    records = [(b"k%d" % i, data[: 100 + i]) for i in range(50)]
    builder = BatchBuilder(1_000_000, DefaultRecordBatch.CODEC_ZSTD)
    for key, value in records:
        builder.append(timestamp=1, key=key, value=value)
    batch = next(iter([MemoryRecords(bytes(builder._build())).next_batch()]))
    assert [(r.key, r.value) for r in batch] == records


# -- TCP: batch reads ---------------------------------------------------------------


def _tcp_listener(
    interval_s: float, high: list[bool]
) -> tuple[TcpListener, list[list[Encoded]], ReceiverMetrics]:
    intake, metrics = _intake()
    batches: list[list[Encoded]] = []

    def sink(records: list[Encoded], force: bool) -> int:
        batches.append(records)
        return len(records)

    listener = TcpListener(
        intake, sink, lambda: high[0], metrics, read_interval_s=interval_s
    )
    return listener, batches, metrics


def test_a_tcp_connection_is_read_in_batches_one_interval_apart() -> None:
    packets, _ = load_vectors("kamailio_hep3_tcp")
    frames = packets[:40]

    async def run() -> tuple[list[list[Encoded]], ReceiverMetrics, int]:
        listener, batches, metrics = _tcp_listener(0.2, [False])
        server = await asyncio.get_running_loop().create_server(
            listener.protocol, "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for frame in frames:  # 40 writes over ~0.2 s
                writer.write(frame)
                await writer.drain()
                await asyncio.sleep(0.005)
            deadline = time.monotonic() + 30
            while metrics.decoded < len(frames):
                assert time.monotonic() < deadline, metrics.totals()
                await asyncio.sleep(0.01)
            resting = len(listener.resting)
        finally:
            writer.close()
            listener.close_all()
            server.close()
        return batches, metrics, resting

    batches, metrics, resting = asyncio.run(run())
    assert sum(len(batch) for batch in batches) == len(frames) == metrics.decoded
    # Reads 0.2 s apart: a handful of batches, not one per write.
    assert len(batches) <= 6
    assert resting == 1


def test_a_connection_paused_by_backpressure_stays_paused_through_a_wake() -> None:
    packets, _ = load_vectors("kamailio_hep3_tcp")

    async def run() -> list[tuple[bool, bool]]:
        high = [True]
        listener, _batches, metrics = _tcp_listener(0.01, high)
        server = await asyncio.get_running_loop().create_server(
            listener.protocol, "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        states = []
        try:
            writer.write(packets[0])
            await writer.drain()
            deadline = time.monotonic() + 30
            while metrics.decoded < 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            (connection,) = listener.connections
            states.append((connection._paused, connection._transport.is_reading()))  # type: ignore[union-attr]
            listener._wake_resting()  # a wake does not undo backpressure
            states.append((connection._paused, connection._transport.is_reading()))  # type: ignore[union-attr]
            high[0] = False
            listener.resume_all()
            states.append((connection._paused, connection._transport.is_reading()))  # type: ignore[union-attr]
        finally:
            writer.close()
            listener.close_all()
            server.close()
        return states

    # (paused by backpressure, reading): the wake leaves it paused, low water resumes it.
    assert asyncio.run(run()) == [(True, False), (True, False), (False, True)]


def test_a_busy_tcp_connection_reads_on_without_resting() -> None:
    frame = load_vectors("kamailio_hep3_tcp")[0][0]
    count = 3 * 256 * 1024 // len(frame) + 1  # three of the event loop's largest reads

    async def run() -> tuple[int, float]:
        listener, _batches, metrics = _tcp_listener(3600.0, [False])
        server = await asyncio.get_running_loop().create_server(
            listener.protocol, "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        try:
            writer.write(frame * count)  # at once: reads of FULL_READ bytes or more
            await writer.drain()
            deadline = time.monotonic() + 30
            # A rest of an hour after each read: only reading on after a large read
            # gets most of the stream in.
            while metrics.decoded < count:
                assert time.monotonic() < deadline, metrics.totals()
                await asyncio.sleep(0.01)
        finally:
            writer.close()
            listener.close_all()
            server.close()
        return metrics.decoded, time.monotonic() - started

    decoded, took = asyncio.run(run())
    assert decoded == count and took < 30
