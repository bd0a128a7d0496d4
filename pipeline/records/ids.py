"""Record ids: unique per packet, cheap enough for the receive hot path."""

from __future__ import annotations

import os
import uuid


class RecordIdGenerator:
    """16-byte ids: 8 random bytes per generator, then a 64-bit counter.

    A random prefix per process keeps receivers apart without coordination, and a
    counter costs no system call per packet (os.urandom would). Two receivers collide
    only if their 64-bit prefixes do.
    """

    __slots__ = ("_counter", "_prefix")

    def __init__(self, prefix: bytes | None = None) -> None:
        self._prefix = prefix if prefix is not None else os.urandom(8)
        if len(self._prefix) != 8:
            raise ValueError("prefix must be 8 bytes")
        self._counter = 0

    def next(self) -> bytes:
        self._counter += 1
        return self._prefix + self._counter.to_bytes(8, "big")


def record_id_text(record_id: bytes) -> str:
    return str(uuid.UUID(bytes=bytes(record_id)))
