"""receive_datagrams: the compiled recvmmsg reader reads what the pure recvfrom loop reads.

Both read real loopback sockets that were sent the same datagrams from the same
senders (IPv4 and, where the host has it, IPv6): the same bytes, the same sender
tuples (the compiled one reuses the last sender's tuple while it does not change), the
same outcome (True: the limit was reached; False: the socket is empty) and the same
error for a closed socket.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.datagram_read import receive_datagrams as pure_receive
from pipeline.receiver.udp import bind_udp_socket

try:
    from pipeline._speedups import receive_datagrams as compiled_receive
except ImportError:  # installed without the extension: the pure path alone is tested
    compiled_receive = None

Reader = Callable[[socket.socket, int, list[bytes], list[tuple[Any, ...]]], bool]
READERS: list[Reader] = [pure_receive] + ([compiled_receive] if compiled_receive else [])


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


HOSTS = ["127.0.0.1"] + (["::1"] if _has_ipv6() else [])


@contextmanager
def _sockets(host: str, receivers: int, senders: int) -> Iterator[tuple[list[Any], list[Any]]]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    inbound = [bind_udp_socket(host, 0, 4 * 1024 * 1024) for _ in range(receivers)]
    outbound = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(senders)]
    for sock in outbound:
        sock.bind((host, 0))
    try:
        yield inbound, outbound
    finally:
        for sock in inbound + outbound:
            sock.close()


def _read_all(reader: Reader, sock: socket.socket, limit: int) -> list[Any]:
    """Every call's (outcome, packets, senders) until one finds the socket empty."""
    calls = []
    while True:
        packets: list[bytes] = []
        senders: list[tuple[Any, ...]] = []
        full = reader(sock, limit, packets, senders)
        calls.append((full, packets, senders))
        if not full:
            return calls


datagrams = st.lists(
    st.tuples(
        st.integers(0, 2),  # which sender
        st.one_of(
            st.binary(max_size=1500),
            # Large datagrams, cheap to generate: a repeated byte.
            st.integers(8000, 9000).map(lambda n: bytes([n % 251]) * n),
        ),
    ),
    max_size=150,
)


@pytest.mark.skipif(compiled_receive is None, reason="pipeline._speedups is not built")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sent=datagrams, limit=st.integers(1, 200), host=st.sampled_from(HOSTS))
def test_compiled_reads_what_pure_reads(
    sent: list[tuple[int, bytes]], limit: int, host: str
) -> None:
    with _sockets(host, 2, 3) as (inbound, outbound):
        for sender, data in sent:
            for sock in inbound:
                outbound[sender].sendto(data, sock.getsockname())
        time.sleep(0.02)  # loopback has delivered; margin for a loaded machine
        pure_calls = _read_all(pure_receive, inbound[0], limit)
        compiled_calls = _read_all(compiled_receive, inbound[1], limit)  # type: ignore[arg-type]
        addresses = [sock.getsockname() for sock in outbound]
    assert compiled_calls == pure_calls
    read = [data for _full, packets, _senders in pure_calls for data in packets]
    assert read == [data for _sender, data in sent]
    from_ = [address for _full, _packets, senders in pure_calls for address in senders]
    assert from_ == [addresses[sender] for sender, _data in sent]


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.__module__)
def test_an_empty_socket_reads_nothing(reader: Reader) -> None:
    with _sockets("127.0.0.1", 1, 0) as (inbound, _):
        packets: list[bytes] = []
        senders: list[tuple[Any, ...]] = []
        assert reader(inbound[0], 10, packets, senders) is False
    assert packets == [] and senders == []


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.__module__)
def test_the_limit_is_exact_and_reported(reader: Reader) -> None:
    with _sockets("127.0.0.1", 1, 1) as (inbound, outbound):
        for i in range(130):  # more than two recvmmsg batches of 64
            outbound[0].sendto(b"%d" % i, inbound[0].getsockname())
        time.sleep(0.05)
        calls = _read_all(reader, inbound[0], 65)
    assert [(full, len(packets)) for full, packets, _ in calls] == [
        (True, 65),
        (True, 65),
        (False, 0),
    ]
    assert [p for _, packets, _ in calls for p in packets] == [b"%d" % i for i in range(130)]


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.__module__)
def test_a_closed_socket_is_an_oserror(reader: Reader) -> None:
    with _sockets("127.0.0.1", 1, 0) as (inbound, _):
        inbound[0].close()
        with pytest.raises(OSError) as raised:
            reader(inbound[0], 10, [], [])
    assert raised.value.errno == 9  # EBADF
