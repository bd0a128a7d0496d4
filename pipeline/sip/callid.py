"""Find a SIP message's Call-ID without parsing it.

The receiver runs this on every datagram to pick a partition, so it does a
bounded scan and gives up (returns None) rather than raise on anything odd. It
agrees with ``parse_sip``'s ``call_id`` on every message ``parse_sip`` accepts
whose Call-ID lies within ``limit`` bytes (after decoding the bytes as UTF-8).

One compiled regular expression, searched from the start line's newline,
finds whichever comes first: a ``Call-ID``/``i`` header line (any case,
optional SP/HT before the colon) or the empty line that ends the headers. The
search runs in C over the payload itself (``pos``/``endpos`` bound it to the
first ``limit`` bytes), with no lower-cased or sliced copy.
"""

from __future__ import annotations

import re

__all__ = ["scan_call_id"]

_SP = 0x20
_HT = 0x09

# Group 1 is set for a header (its end is just past the colon); otherwise the
# match is an empty line (LF LF or LF CR LF): the headers ended first.
# IGNORECASE on a bytes pattern folds ASCII letters only, like bytes.lower().
_HEADER_OR_END = re.compile(rb"\n(?:(call-id|i)[ \t]*:|\r?\n)", re.IGNORECASE).search


def scan_call_id(payload: bytes, limit: int = 4096) -> bytes | None:
    """Return the raw Call-ID value (full or compact ``i`` form) or None.

    Only the first ``limit`` bytes are looked at, and only up to the empty line
    that ends the headers. A value cut off by ``limit`` gives None rather than
    a truncated Call-ID.
    """
    size = len(payload)
    if limit <= 0 or size == 0:
        return None
    if limit < size:
        wend = limit
        truncated = True
    else:
        wend = size
        truncated = False
    start = 0
    first = payload[0]
    if first == 0x0D or first == 0x0A:  # leading empty lines (RFC 3261 7.5)
        start = wend - len(payload[:wend].lstrip(b"\r\n"))
    first_nl = payload.find(b"\n", start, wend)
    if first_nl < 0:
        return None
    match = _HEADER_OR_END(payload, first_nl, wend)
    if match is None or match.start(1) < 0:
        return None
    # No empty line precedes the header; if the value's line has no newline
    # within the window, there is no empty line in the window at all, so a
    # window shorter than the payload may have cut the value.
    colon = match.end() - 1
    eol = payload.find(b"\n", colon, wend)
    if eol < 0:
        if truncated:
            return None
        eol = wend
    value = payload[colon + 1 : eol].strip(b" \t\r")
    # Folded continuation lines belong to the value (parse_sip unfolds them).
    while eol + 1 < wend and payload[eol + 1] in (_SP, _HT):
        next_eol = payload.find(b"\n", eol + 1, wend)
        if next_eol < 0:
            if truncated:
                return None
            next_eol = wend
        cont = payload[eol + 1 : next_eol].strip(b" \t\r")
        if cont:
            value = value + b" " + cont if value else cont
        eol = next_eol
    return value or None
