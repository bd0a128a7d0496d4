"""Sans-IO framing of a HEPv3 TCP/TLS stream into packets.

A stream carries HEPv3 packets back to back; the u16 total length in each header is the
only framing. When a header is not ``HEP3``/``EEP1`` or declares fewer than 6 bytes, the
framer raises HepDecodeError and stays failed: we do not scan for the next ``HEP3``,
because once a length was wrong every later boundary is a guess (``HEP3`` may also occur
inside a payload), and a sender that lost framing (or speaks HEPv2 or TLS on a plain
port) is better disconnected and counted than silently half-decoded. The caller closes
the connection.
"""

from __future__ import annotations

from pipeline.hep.errors import HepDecodeError

__all__ = ["MAX_FRAME", "HepStreamFramer"]

MAX_FRAME = 0xFFFF


class HepStreamFramer:
    """Split a byte stream into complete HEPv3 frames.

    ``feed()`` returns the frames completed by the new bytes (possibly none) and keeps a
    partial frame for the next call. ``buffered`` is the number of bytes held; at most
    one frame minus one byte (a frame larger than ``max_buffer`` is refused with
    ``frame_too_large``), so a client cannot make the framer grow without bound.
    """

    __slots__ = ("_buf", "_error", "max_buffer")

    def __init__(self, max_buffer: int = MAX_FRAME) -> None:
        if max_buffer < 6:
            raise ValueError("max_buffer must hold at least a HEP3 header (6 bytes)")
        self.max_buffer = max_buffer
        self._buf = bytearray()
        self._error: HepDecodeError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        if self._error is not None:
            raise HepDecodeError(self._error.reason, "stream already failed")
        buf = self._buf
        if buf:
            buf += data
            src: bytes | bytearray = buf
        else:
            # Common case on a quiet link: the read holds whole frames, so slice them
            # straight out of the input without copying it into the buffer first.
            src = data if isinstance(data, bytes) else bytes(data)
        frames: list[bytes] = []
        n = len(src)
        pos = 0
        try:
            with memoryview(src) as view:
                while n - pos >= 6:
                    if not (src.startswith(b"HEP3", pos) or src.startswith(b"EEP1", pos)):
                        raise HepDecodeError(
                            "bad_stream_magic", f"{bytes(src[pos : pos + 4])!r} at frame start"
                        )
                    length = src[pos + 4] << 8 | src[pos + 5]
                    if length < 6:
                        raise HepDecodeError("bad_length", f"frame length {length} < 6")
                    if length > self.max_buffer:
                        raise HepDecodeError(
                            "frame_too_large", f"frame length {length} > {self.max_buffer}"
                        )
                    if n - pos < length:
                        break
                    frames.append(bytes(view[pos : pos + length]))
                    pos += length
                # Fail fast on a partial header that already cannot be HEP3.
                rest = n - pos
                if 0 < rest < 6:
                    head = bytes(src[pos : pos + min(rest, 4)])
                    if not (b"HEP3".startswith(head) or b"EEP1".startswith(head)):
                        raise HepDecodeError("bad_stream_magic", f"{head!r} at frame start")
        except HepDecodeError as exc:
            self._error = exc
            buf.clear()
            raise
        # One compaction per feed() call, not per frame.
        if src is buf:
            if pos:
                del buf[:pos]
        elif pos < n:
            buf += src[pos:]
        return frames
