"""Read what a non-blocking UDP socket holds, datagram by datagram: the pure reference.

The compiled `_speedups.receive_datagrams` does the same with recvmmsg (up to 64
datagrams per system call on Linux) and reuses the sender's address tuple while the
sender does not change; `pipeline.accel` picks one, and the unit tests check that both
read the same datagrams, senders and outcome from the same socket contents.
"""

from __future__ import annotations

import socket
from typing import Any

# The largest UDP payload (IPv4: 65,507 bytes; IPv6 without jumbograms: 65,527).
MAX_DATAGRAM = 65535


def receive_datagrams(
    sock: socket.socket, limit: int, packets: list[bytes], senders: list[tuple[Any, ...]]
) -> bool:
    """Append up to `limit` datagrams and their senders; True when the limit was reached.

    False when the socket has nothing left (EAGAIN). Any other error of the socket
    (EBADF, an ICMP error reported to the socket) is raised as OSError, after the
    datagrams read before it were appended.
    """
    recvfrom = sock.recvfrom
    add_packet = packets.append
    add_sender = senders.append
    try:
        for _ in range(limit):
            data, sender = recvfrom(MAX_DATAGRAM)
            add_packet(data)
            add_sender(sender)
    except BlockingIOError:
        return False
    return True
