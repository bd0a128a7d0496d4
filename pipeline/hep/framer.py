"""Sans-IO framing of a HEP TCP/TLS stream into packets (HEPv3, HEPv2 and HEPv1).

The version is told per frame by its first byte, as in the decoder: ``HEP3``/``EEP1``
is HEPv3, framed by the u16 total length of its header. 0x01/0x02 is HEPv1/HEPv2
(Kamailio's siptrace with ``hep_version`` 1 or 2 and a TCP ``duplicate_uri``), which has
no length field: its header (version, header length, family, protocol, ports,
addresses, and for v2 the timestamp and capture id; the family byte gives the address
size) is followed by the SIP message it carries, which ends after its headers (the
first empty line) and ``Content-Length`` bytes of body (compact form ``l``, names
case-insensitive; none means 0, as RFC 3261 says for stream transports).

A frame larger than ``max_frame`` (v3: a declared length; v2: a header block without
its end, or headers plus body) is ``frame_too_large``; no frame needs more.

When the bytes at a frame boundary cannot start a frame (``bad_stream_magic``), or a
frame's own framing fields are wrong (``bad_length``, ``bad_address_family``,
``bad_content_length``, ``frame_too_large``), ``feed()`` still returns every frame
completed before that point and the framer records the error in ``error`` and stays
failed: later bytes are ignored. We do not resync by scanning for the next ``HEP3``:
a HEPv1/v2 frame has no magic to find, ``HEP3`` may occur inside a payload, and once
a boundary was wrong every later one is a guess; a sender that lost framing (or
speaks TLS on a plain port) is better disconnected and counted than silently
half-decoded. The caller counts the error once and closes the connection.
"""

from __future__ import annotations

import re

from pipeline.hep.errors import HepDecodeError

__all__ = ["MAX_FRAME", "HepStreamFramer"]

MAX_FRAME = 0xFFFF

# The end of a SIP message's headers: the first empty line (CRLF, or bare LF as some
# stacks send).
_HEADERS_END = re.compile(rb"\n\r?\n")
# Content-Length or its compact form at the start of a header line, case-insensitive.
_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*)", re.I | re.M)
_V2_FIXED = 12  # HEPv2 after the addresses: seconds, microseconds, capture id, padding


class HepStreamFramer:
    """Split a byte stream into complete HEP frames.

    ``feed()`` returns the frames completed by the new bytes (possibly none) and keeps
    a partial frame for the next call. ``buffered`` is the number of bytes held: at
    most ``max_frame`` (the buffer is released whenever it empties, so an idle
    connection holds nothing). A partial HEPv2 frame is not scanned again from its
    start at each read, so a sender trickling bytes costs linear work.
    """

    __slots__ = ("_buf", "_frame_len", "_scanned", "error", "error_head", "max_frame")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        if max_frame < 6:
            raise ValueError("max_frame must hold at least a HEP3 header (6 bytes)")
        self.max_frame = max_frame
        self._buf = bytearray()
        # The partial frame at the start of the buffer: its length once known, and how
        # far a HEPv2 frame was searched for the end of its SIP headers.
        self._frame_len = 0
        self._scanned = 0
        self.error: HepDecodeError | None = None
        # First byte of the frame that broke the stream (its HEP version label).
        self.error_head: int | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def head(self) -> int | None:
        """First byte of the partial frame held, if any."""
        return self._buf[0] if self._buf else None

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        if self.error is not None:
            return []
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
            while pos < n:
                end = self._frame_end(src, pos, n)
                if end == 0 or end > n:
                    break
                frames.append(bytes(src[pos:end]))
                self._frame_len = self._scanned = 0
                pos = end
        except HepDecodeError as exc:
            self.error = exc
            self.error_head = src[pos]
            self._buf = bytearray()
            return frames
        if pos == n:
            # Released rather than cleared: a bytearray keeps its capacity.
            self._buf = bytearray()
        elif src is buf:
            if pos:
                del buf[:pos]
        else:
            self._buf = bytearray(src[pos:])
        return frames

    def _frame_end(self, src: bytes | bytearray, pos: int, n: int) -> int:
        """Where the frame starting at `pos` ends, or 0 while that is not known yet.

        What is known of a partial frame (its length, how far it was searched) is kept
        relative to its start and reset when a frame completes, so it applies to the
        frame at the start of the buffer in the next call.
        """
        if self._frame_len:
            return pos + self._frame_len
        first = src[pos]
        if first == 0x48 or first == 0x45:  # "H", "E"
            end = self._hep3_end(src, pos, n)
        elif first == 1 or first == 2:
            end = self._hep2_end(src, pos, n, first)
        else:
            raise HepDecodeError("bad_stream_magic", f"first byte 0x{first:02x} at frame start")
        if end:
            self._frame_len = end - pos
        return end

    def _hep3_end(self, src: bytes | bytearray, pos: int, n: int) -> int:
        if n - pos < 6:
            # Fail fast on a partial header that already cannot be HEP3.
            head = bytes(src[pos : pos + min(n - pos, 4)])
            if not (b"HEP3".startswith(head) or b"EEP1".startswith(head)):
                raise HepDecodeError("bad_stream_magic", f"{head!r} at frame start")
            return 0
        if not (src.startswith(b"HEP3", pos) or src.startswith(b"EEP1", pos)):
            head = bytes(src[pos : pos + 4])
            raise HepDecodeError("bad_stream_magic", f"{head!r} at frame start")
        length = src[pos + 4] << 8 | src[pos + 5]
        if length < 6:
            raise HepDecodeError("bad_length", f"frame length {length} < 6")
        if length > self.max_frame:
            raise HepDecodeError("frame_too_large", f"frame length {length} > {self.max_frame}")
        return pos + length

    def _hep2_end(self, src: bytes | bytearray, pos: int, n: int, version: int) -> int:
        if n - pos < 3:
            return 0
        family = src[pos + 2]
        if family == 2:
            header = 8 + 2 * 4
        elif family == 10:
            header = 8 + 2 * 16
        else:
            raise HepDecodeError("bad_address_family", f"HEPv{version} family {family}")
        if version == 2:
            header += _V2_FIXED
        # The search resumes where the previous read's stopped (less 2 bytes: the empty
        # line may straddle reads), and never looks past the largest frame.
        start = pos + max(header, self._scanned - 2)
        limit = min(n, pos + self.max_frame)
        found = _HEADERS_END.search(src, start, limit)
        if found is None:
            if n - pos >= self.max_frame:
                raise HepDecodeError(
                    "frame_too_large", f"no end of SIP headers in {self.max_frame} bytes"
                )
            self._scanned = max(limit - pos, header)
            return 0
        headers_end = found.end()
        body = _content_length(src, pos + header, headers_end)
        end = headers_end + body
        if end - pos > self.max_frame:
            raise HepDecodeError(
                "frame_too_large", f"HEPv{version} frame {end - pos} bytes > {self.max_frame}"
            )
        return end


def _content_length(src: bytes | bytearray, start: int, end: int) -> int:
    """The body size a SIP message's headers declare (0 without Content-Length)."""
    values = {m.group(1).strip() for m in _CONTENT_LENGTH.finditer(src, start, end)}
    if not values:
        return 0
    if len(values) > 1:
        raise HepDecodeError("bad_content_length", f"conflicting Content-Length {sorted(values)}")
    value = values.pop()
    if not value.isdigit() or len(value) > 9:
        raise HepDecodeError("bad_content_length", f"Content-Length {value[:20]!r}")
    return int(value)
