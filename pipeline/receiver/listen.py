"""Who may share a listen port, and a bind failure that names the address.

A port is shared only among the processes of one ``receive --workers N``; any other
process that binds it fails with EADDRINUSE:

- UDP sockets never set SO_REUSEADDR. On Linux it lets a second socket bind the same
  address, and unicast datagrams then go to the newest socket only: a second receiver
  would silently take all the traffic of the first.
- SO_REUSEPORT is set only by the workers of ``--workers N``. A socket without it (a
  second ``receive``, any other program) cannot join their group.
- TCP and TLS listeners keep SO_REUSEADDR, so that a restart is not refused while old
  connections sit in TIME_WAIT; on Linux it never lets a second socket listen on a port
  already in LISTEN.
- Before it starts the workers, the supervisor binds every listen address once without
  SO_REUSEPORT and closes it (`check_addresses_free`). That bind fails if anyone holds
  the address, even a socket with SO_REUSEPORT (another ``--workers`` receiver), so the
  workers never join a foreign group. The workers then bind with SO_REUSEPORT; only a
  process that sets SO_REUSEPORT itself, as the same user, could still join later.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable

__all__ = ["bind_error", "check_addresses_free", "format_address"]


def format_address(host: str, port: int) -> str:
    """``HOST:PORT``, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_error(transport: str, host: str, port: int, exc: OSError) -> OSError:
    """`exc` as one line that names the transport and the address that could not be bound."""
    code = exc.errno
    reason = os.strerror(code) if code else str(exc)
    text = f"cannot bind {transport.upper()} {format_address(host, port)}: {reason}"
    if code == errno.EADDRINUSE:
        text += " (another process holds it; only --workers shares a port among its own)"
    return OSError(code, text)


def check_addresses_free(
    udp: Iterable[tuple[str, int]], tcp: Iterable[tuple[str, int]]
) -> None:
    """Bind each address once without SO_REUSEPORT and close it; OSError naming the first
    address another process holds."""
    for host, port in udp:
        _probe("udp", socket.SOCK_DGRAM, host, port)
    for host, port in tcp:
        _probe("tcp", socket.SOCK_STREAM, host, port)


def _probe(transport: str, kind: socket.SocketKind, host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as sock:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as the listeners
        if kind == socket.SOCK_STREAM:
            # As the TCP listeners set it: TIME_WAIT connections do not count as holders.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise bind_error(transport, host, port, exc) from exc
