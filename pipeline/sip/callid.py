"""Find a SIP message's Call-ID without parsing it.

The receiver runs this on every datagram to pick a partition, so it does a
bounded scan with ``bytes.find`` over a lower-cased copy of the header block
only, and gives up (returns None) rather than raise on anything odd. It agrees
with ``parse_sip``'s ``call_id`` on every message ``parse_sip`` accepts whose
Call-ID lies within ``limit`` bytes (after decoding the bytes as UTF-8).
"""

from __future__ import annotations

__all__ = ["scan_call_id"]

_SP = 0x20
_HT = 0x09
_COLON = 0x3A


def _find_header(low: bytes, needle: bytes) -> tuple[int, int]:
    """Find ``needle`` (``b"\\n" + name``) followed by optional SP/HT and a colon.

    Returns (index of the newline, index of the colon) or (-1, -1).
    """
    n = len(low)
    i = low.find(needle)
    while i >= 0:
        j = i + len(needle)
        while j < n and (low[j] == _SP or low[j] == _HT):
            j += 1
        if j < n and low[j] == _COLON:
            return i, j
        i = low.find(needle, i + 1)
    return -1, -1


def scan_call_id(payload: bytes, limit: int = 4096) -> bytes | None:
    """Return the raw Call-ID value (full or compact ``i`` form) or None.

    Only the first ``limit`` bytes are looked at, and only up to the empty line
    that ends the headers. A value cut off by ``limit`` gives None rather than
    a truncated Call-ID.
    """
    window = payload[:limit] if limit > 0 else b""
    truncated = len(payload) > len(window)
    start = 0
    if window[:1] in (b"\r", b"\n"):
        start = len(window) - len(window.lstrip(b"\r\n"))
    first_nl = window.find(b"\n", start)
    if first_nl < 0:
        return None
    end = window.find(b"\n\r\n", first_nl)
    bare = window.find(b"\n\n", first_nl, end if end >= 0 else len(window))
    if bare >= 0:
        end = bare
    if end >= 0:
        region_end = end + 1
        truncated = False
    else:
        region_end = len(window)

    # The region starts at the start line's newline, so every header line,
    # and never the start line, is found as b"\n" + name.
    low = window[first_nl:region_end].lower()
    full_at, full_colon = _find_header(low, b"\ncall-id")
    compact_at, compact_colon = _find_header(low, b"\ni")
    if compact_at >= 0 and (full_at < 0 or compact_at < full_at):
        colon = compact_colon
    elif full_at >= 0:
        colon = full_colon
    else:
        return None

    colon += first_nl
    eol = window.find(b"\n", colon, region_end)
    if eol < 0:
        if truncated:
            return None
        eol = region_end
    value = window[colon + 1 : eol].strip(b" \t\r")
    # Folded continuation lines belong to the value (parse_sip unfolds them).
    while eol + 1 < region_end and window[eol + 1] in (_SP, _HT):
        next_eol = window.find(b"\n", eol + 1, region_end)
        if next_eol < 0:
            if truncated:
                return None
            next_eol = region_end
        cont = window[eol + 1 : next_eol].strip(b" \t\r")
        if cont:
            value = value + b" " + cont if value else cont
        eol = next_eol
    return value or None
