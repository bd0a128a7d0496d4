"""Datagrams the kernel dropped before the receiver read them, per UDP listen socket.

When the receive buffer of a UDP socket is full, the kernel drops the datagram and
counts it in the socket's own drop counter; the receiver never sees it, so none of its
own counters can. SO_RXQ_OVFL would report it as ancillary data of recvmsg(), which
asyncio's DatagramProtocol does not expose; the same counter is the ``drops`` column
of /proc/net/udp and /proc/net/udp6, one line per socket, found by the socket's inode.

The files are read when asked (a /metrics scrape, the progress log, the status line of
``up``), never on the hot path. A socket's last value is kept after it is closed, so
the final figures survive shutdown. Where the files do not exist (not Linux) nothing
is reported.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from pipeline.observability import get_logger

log = get_logger("pipeline.receiver.socket_drops")

PROC_FILES = ("/proc/net/udp", "/proc/net/udp6")

# Columns of /proc/net/udp: sl local rem st tx:rx tr:when retrnsmt uid timeout inode
# ref pointer drops.
_INODE = 9
_DROPS = 12


class UdpSocketDrops:
    """The kernel drop counters of the sockets handed to `watch`, by listen address."""

    def __init__(self, proc_files: Sequence[str] = PROC_FILES) -> None:
        self._proc_files = proc_files
        self._listen_of: dict[int, str] = {}
        self._drops: dict[str, int] = {}
        self._unreadable = False

    def watch(self, fileno: int, listen: str) -> None:
        """Follow the socket `fileno` (bound to `listen`, ``HOST:PORT``) from now on."""
        self._listen_of[os.fstat(fileno).st_ino] = listen
        self._drops.setdefault(listen, 0)

    def read(self) -> dict[str, int]:
        """Drops so far by listen address; sockets no longer listed keep their last value."""
        if self._listen_of and not self._unreadable:
            for path in self._proc_files:
                try:
                    with open(path, encoding="ascii", errors="replace") as table:
                        self._scan(table.readlines()[1:])
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    self._unreadable = True
                    log.warning("udp_socket_drops_unreadable", path=path, error=str(exc))
        return dict(self._drops)

    def _scan(self, lines: list[str]) -> None:
        listen_of = self._listen_of
        for line in lines:
            fields = line.split()
            if len(fields) <= _DROPS or not fields[_INODE].isdigit():
                continue
            listen = listen_of.get(int(fields[_INODE]))
            if listen is not None:
                # One socket per listen address in a process; max() keeps it monotonic.
                self._drops[listen] = max(self._drops[listen], int(fields[_DROPS]))
