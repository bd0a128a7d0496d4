"""Parse the start line and headers of a SIP message (RFC 3261).

Hot path: this runs once per captured packet, so it sticks to ``str`` methods
(split/partition/find), which run in C, keeps regular expressions off the
per-line path, and tries the common spelling of each construct before the
general one.
"""

from __future__ import annotations

import re
from typing import Final

from .errors import (
    BAD_CSEQ,
    BAD_START_LINE,
    BAD_STATUS_CODE,
    EMPTY,
    MISSING_CALL_ID,
    MISSING_CSEQ,
    SipParseError,
)
from .message import SipMessage, SipSummary, _SipMessageBuilder

__all__ = ["COMPACT_HEADERS", "parse_sip", "summarise_sip", "summarise_sip_headers"]

#: Compact header forms (RFC 3261 7.3.3 plus the ones extensions registered).
COMPACT_HEADERS: Final[dict[str, str]] = {
    "i": "call-id",
    "f": "from",
    "t": "to",
    "v": "via",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "e": "content-encoding",
    "s": "subject",
    "k": "supported",
    "o": "event",
    "u": "allow-events",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
}

_is_token = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+").fullmatch
# RFC 3261 allows LWS around the slashes of a Via's sent-protocol.
_VIA_SLASH = re.compile(r"[ \t]*/[ \t]*")
_WS: Final = " \t"
_WS_CR: Final = " \t\r"

# Raw header name as written -> canonical name. Senders use a handful of
# spellings, so this saves the strip/lower/compact lookups on almost every
# line; the cap keeps hostile traffic from growing it without bound.
_NAME_CACHE: dict[str, str] = {}
_NAME_CACHE_MAX: Final = 2048

_Party = tuple[str | None, str | None, str | None, str | None]


def _to_int(text: str, max_digits: int) -> int | None:
    # The length cap keeps int() away from its huge-number ValueError and from
    # values no SIP field can hold; isascii() because isdigit() accepts
    # digits int() refuses (superscripts).
    if 0 < len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None


def _host_port(hostport: str) -> tuple[str | None, int | None]:
    """Split ``host[:port]`` / ``[v6]:port``; the brackets are dropped."""
    if hostport[:1] == "[":
        close = hostport.find("]")
        if close < 0:
            return hostport[1:] or None, None
        host = hostport[1:close]
        port_text = hostport[close + 2 :] if hostport[close + 1 : close + 2] == ":" else ""
    else:
        host, sep, port_text = hostport.partition(":")
        if not sep:
            return host or None, None
        if ":" in port_text:
            # An IPv6 literal someone forgot to bracket: no port can be told apart.
            return hostport, None
    if 0 < len(port_text) <= 5 and port_text.isascii() and port_text.isdigit():
        port = int(port_text)
        return host or None, port if port <= 65535 else None
    return host or None, None


def _parse_uri(uri: str) -> tuple[str | None, str | None, int | None]:
    """Return (user, host, port) of a sip:, sips: or tel: URI; Nones otherwise."""
    if uri[:4] == "sip:":
        rest = uri[4:]
    elif uri[:5] == "sips:":
        rest = uri[5:]
    else:
        scheme, sep, rest = uri.partition(":")
        if not sep:
            return None, None, None
        scheme = scheme.strip(_WS).lower()
        if scheme == "tel":
            # RFC 3966: the subscriber number plays the user's part; no host.
            return rest.partition(";")[0].strip(_WS) or None, None, None
        if scheme != "sip" and scheme != "sips":
            return None, None, None
    user: str | None = None
    at = rest.find("@")
    if at >= 0:
        user = rest[:at]
        if ":" in user:
            user = user.partition(":")[0]  # drop a password
        user = user or None
        rest = rest[at + 1 :]
    hostport = rest.partition(";")[0]
    if "?" in hostport:
        hostport = hostport.partition("?")[0]
    host, port = _host_port(hostport.strip(_WS))
    return user, host, port


def _unquote(value: str) -> tuple[str, int]:
    """Read the quoted string at value[0]; return its text and the index after it."""
    close = value.find('"', 1)
    if close < 0:
        return value[1:], len(value)
    if "\\" not in value[1:close]:
        return value[1:close], close + 1
    out: list[str] = []
    i = 1
    n = len(value)
    while i < n:
        ch = value[i]
        if ch == "\\" and i + 1 < n:
            out.append(value[i + 1])
            i += 2
            continue
        if ch == '"':
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    return "".join(out), n


def _parse_addr(value: str, first_only: bool) -> tuple[str | None, str | None, str]:
    """Split a From/To/Contact-style value into (display, uri, header params).

    The params string keeps its leading ';'. In addr-spec form (no angle
    brackets) everything after the first ';' belongs to the header, not the
    URI (RFC 3261 20.10). With ``first_only`` the value may be a
    comma-separated list and only its first element is read.
    """
    value = value.strip(_WS)
    display: str | None
    if value[:1] == '"':
        display, after = _unquote(value)
        rest = value[after:]
        lt = rest.find("<")
        if lt < 0:
            return display or None, None, ""
    else:
        lt = value.find("<")
        if first_only:
            comma = value.find(",")
            if comma >= 0 and (lt < 0 or comma < lt):
                value = value[:comma]
                lt = -1
        if lt < 0:
            semi = value.find(";")
            if semi < 0:
                return None, value.strip(_WS) or None, ""
            return None, value[:semi].strip(_WS) or None, value[semi:]
        display = value[:lt].strip(_WS)
        rest = value
    gt = rest.find(">", lt)
    if gt < 0:
        return display or None, rest[lt + 1 :].strip(_WS) or None, ""
    params = rest[gt + 1 :]
    if first_only and "," in params:
        params = params.partition(",")[0]
    return display or None, rest[lt + 1 : gt].strip(_WS) or None, params


def _param(params: str, needle: str) -> str | None:
    """Value of a header/URI parameter; ``needle`` is ``";name="`` in lower case."""
    if not params:
        return None
    at = params.find(needle)
    if at >= 0:
        return params[at + len(needle) :].partition(";")[0].strip(_WS) or None
    # Not in the usual spelling: parameter names are case-insensitive and LWS
    # may surround ';' and '='.
    name = needle[1:-1]
    for item in params.split(";"):
        key, _, val = item.partition("=")
        if key.strip(_WS).lower() == name:
            return val.strip(_WS) or None
    return None


def _parse_party(value: str | None) -> _Party:
    """Return (display, user, domain, tag) of a From or To value."""
    if not value:
        return None, None, None, None
    display, uri, params = _parse_addr(value, False)
    user = domain = None
    if uri:
        user, domain, _ = _parse_uri(uri)
    return display, user, domain, _param(params, ";tag=")


def _parse_via(value: str) -> tuple[str | None, str | None, int | None, str | None]:
    """Return (transport, host, port, branch) of the first via in a Via value."""
    first = value.partition(",")[0] if "," in value else value
    parts = first.split(None, 1)
    if len(parts) != 2 or parts[0].count("/") != 2:
        parts = _VIA_SLASH.sub("/", first).split(None, 1)
        if len(parts) != 2:
            return None, None, None, None
    proto, rest = parts
    transport = proto[proto.rfind("/") + 1 :].upper() or None
    semi = rest.find(";")
    if semi < 0:
        host, port = _host_port(rest.strip(_WS))
        return transport, host, port, None
    host, port = _host_port(rest[:semi].strip(_WS))
    return transport, host, port, _param(rest[semi:], ";branch=")


def _split_head(payload: bytes) -> bytes:
    """The start line and headers: everything before the first empty line."""
    lead = payload[:1]
    data = payload.lstrip(b"\r\n") if lead == b"\r" or lead == b"\n" else payload
    end = data.find(b"\n\r\n")
    bare = data.find(b"\n\n", 0, end if end >= 0 else len(data))
    if bare >= 0:
        end = bare
    return data if end < 0 else data[:end]


# Parsed header values, keyed by the raw (stripped) value. The same From, To,
# Contact, Via and request URI recur across the messages of a dialog or
# transaction, and re-parsing them is most of a message's cost on CPython. The
# results are immutable tuples, so sharing them is safe; each cache is emptied
# when full, which bounds memory under hostile traffic.
_CACHE_MAX: Final = 4096
# Longer values are parsed but not kept: at most 4096 x 512 characters per cache.
_CACHE_VALUE_MAX: Final = 512
_PARTY_CACHE: dict[str, _Party] = {}
_VIA_CACHE: dict[str, tuple[str | None, str | None, int | None, str | None]] = {}
_CONTACT_CACHE: dict[str, tuple[str | None, str | None, int | None, int | None]] = {}
_URI_CACHE: dict[str, tuple[str | None, str | None, int | None]] = {}
_PAI_CACHE: dict[str, str | None] = {}


def _party(value: str) -> _Party:
    result = _PARTY_CACHE.get(value)
    if result is None:
        result = _parse_party(value)
        if len(value) <= _CACHE_VALUE_MAX:
            if len(_PARTY_CACHE) >= _CACHE_MAX:
                _PARTY_CACHE.clear()
            _PARTY_CACHE[value] = result
    return result


def _via(value: str) -> tuple[str | None, str | None, int | None, str | None]:
    result = _VIA_CACHE.get(value)
    if result is None:
        result = _parse_via(value)
        if len(value) <= _CACHE_VALUE_MAX:
            if len(_VIA_CACHE) >= _CACHE_MAX:
                _VIA_CACHE.clear()
            _VIA_CACHE[value] = result
    return result


def _uri(value: str) -> tuple[str | None, str | None, int | None]:
    result = _URI_CACHE.get(value)
    if result is None:
        result = _parse_uri(value)
        if len(value) <= _CACHE_VALUE_MAX:
            if len(_URI_CACHE) >= _CACHE_MAX:
                _URI_CACHE.clear()
            _URI_CACHE[value] = result
    return result


def _parse_contact(value: str) -> tuple[str | None, str | None, int | None, int | None]:
    """Return (user, host, port, expires parameter) of the first Contact."""
    user = host = None
    port: int | None = None
    _, uri, params = _parse_addr(value, True)
    if uri:
        user, host, port = _parse_uri(uri)
    expires_param = _param(params, ";expires=")
    expires = _to_int(expires_param, 10) if expires_param is not None else None
    return user, host, port, expires


def _contact(value: str) -> tuple[str | None, str | None, int | None, int | None]:
    result = _CONTACT_CACHE.get(value)
    if result is None:
        result = _parse_contact(value)
        if len(value) <= _CACHE_VALUE_MAX:
            if len(_CONTACT_CACHE) >= _CACHE_MAX:
                _CONTACT_CACHE.clear()
            _CONTACT_CACHE[value] = result
    return result


def _parse_pai(value: str) -> str | None:
    _, uri, _ = _parse_addr(value, True)
    return _parse_uri(uri)[0] if uri else None


def _pai(value: str) -> str | None:
    if value in _PAI_CACHE:
        return _PAI_CACHE[value]
    result = _parse_pai(value)
    if len(value) <= _CACHE_VALUE_MAX:
        if len(_PAI_CACHE) >= _CACHE_MAX:
            _PAI_CACHE.clear()
        _PAI_CACHE[value] = result
    return result


_Start = tuple[bool, str | None, int | None, str | None, str | None, str | None, str | None]


def _start_line(start: str) -> _Start:
    """(is_request, method, status_code, reason, request_uri, ruri_user, ruri_domain)."""
    if start[:4].upper() == "SIP/":
        parts = start.split(None, 2)
        if len(parts) < 2 or parts[0].upper() != "SIP/2.0":
            raise SipParseError(BAD_START_LINE, "not a SIP/2.0 status line")
        code = parts[1]
        if len(code) != 3 or not (code.isascii() and code.isdigit()) or code[0] in "0789":
            raise SipParseError(BAD_STATUS_CODE, code[:16])
        reason = (parts[2].strip(_WS_CR) or None) if len(parts) == 3 else None
        return False, None, int(code), reason, None, None, None
    parts = start.split()
    if (
        len(parts) != 3
        or parts[2].upper() != "SIP/2.0"
        or ":" not in parts[1]
        or not _is_token(parts[0])
    ):
        raise SipParseError(BAD_START_LINE, "not a SIP/2.0 request line")
    request_uri = parts[1]
    ruri_user, ruri_domain, _ = _uri(request_uri)
    return True, parts[0], None, None, request_uri, ruri_user, ruri_domain


def _head_lines(payload: bytes) -> list[str]:
    head = _split_head(payload)
    if not head or head.isspace():
        raise SipParseError(EMPTY)
    return head.decode("utf-8", "replace").split("\n")


def _collect(lines: list[str]) -> tuple[list[str], list[str]]:
    """Canonical names and values of the header lines (``lines[1:]``), unfolded."""
    names: list[str] = []
    values: list[str] = []
    can_fold = False
    cached_name = _NAME_CACHE.get
    for line in lines[1:]:
        raw_name, sep, value = line.partition(":")
        # Cached raw names never start with SP/HT, so a hit is a header line.
        name = cached_name(raw_name)
        if name is None or not sep:
            if line[:1] in (" ", "\t"):
                cont = line.strip(_WS_CR)
                if can_fold and cont:
                    prev = values[-1]
                    values[-1] = f"{prev} {cont}" if prev else cont
                continue
            name = raw_name.strip(_WS).lower()
            if not sep or not name:
                # Not a header: skip it (and its continuation lines) rather
                # than lose the whole message.
                can_fold = False
                continue
            name = COMPACT_HEADERS.get(name, name)
            if len(_NAME_CACHE) < _NAME_CACHE_MAX:
                _NAME_CACHE[raw_name] = name
        names.append(name)
        values.append(value.strip(_WS_CR))
        can_fold = True
    return names, values


def _call_id_cseq(first: dict[str, str]) -> tuple[str, int, str]:
    call_id = first.get("call-id")
    if not call_id:
        raise SipParseError(MISSING_CALL_ID)
    cseq = first.get("cseq")
    if cseq is None:
        raise SipParseError(MISSING_CSEQ)
    cseq_parts = cseq.split()
    if len(cseq_parts) != 2 or not _is_token(cseq_parts[1]):
        raise SipParseError(BAD_CSEQ, cseq[:64])
    cseq_number = _to_int(cseq_parts[0], 10)
    if cseq_number is None:
        raise SipParseError(BAD_CSEQ, cseq[:64])
    return call_id, cseq_number, cseq_parts[1]


_NO_PARTY: Final[_Party] = (None, None, None, None)
_NO_VIA: Final = (None, None, None, None)
_NO_CONTACT: Final = (None, None, None, None)


def parse_sip(payload: bytes) -> SipMessage:
    """Parse one SIP message; raise ``SipParseError`` (and nothing else) if unusable.

    Only the start line and headers are read; the body is ignored. Bytes that
    are not UTF-8 become U+FFFD rather than failing the parse, so a message
    with a Latin-1 display name is still indexed and every string it yields
    can be encoded again (``surrogateescape`` strings cannot).
    """
    lines = _head_lines(payload)
    is_request, method, status_code, reason, request_uri, ruri_user, ruri_domain = (
        _start_line(lines[0])
    )
    names, values = _collect(lines)
    # Built back to front so that the first occurrence of each header wins.
    first = dict(zip(reversed(names), reversed(values), strict=True))
    call_id, cseq_number, cseq_method = _call_id_cseq(first)

    value = first.get("from")
    from_display, from_user, from_domain, from_tag = _party(value) if value else _NO_PARTY
    value = first.get("to")
    to_display, to_user, to_domain, to_tag = _party(value) if value else _NO_PARTY
    value = first.get("via")
    via_transport, via_host, via_port, via_branch = _via(value) if value else _NO_VIA
    value = first.get("contact")
    contact_user, contact_host, contact_port, contact_expires = (
        _contact(value) if value else _NO_CONTACT
    )

    value = first.get("expires")
    expires = _to_int(value, 10) if value is not None else None
    if expires is None:
        expires = contact_expires

    value = first.get("content-length")
    content_length = _to_int(value, 10) if value is not None else None

    value = first.get("p-asserted-identity")
    pai_user = _pai(value) if value else None

    msg = _SipMessageBuilder(
        is_request=is_request,
        method=method,
        status_code=status_code,
        reason=reason,
        request_uri=request_uri,
        ruri_user=ruri_user,
        ruri_domain=ruri_domain,
        call_id=call_id,
        cseq_number=cseq_number,
        cseq_method=cseq_method,
        from_display=from_display,
        from_user=from_user,
        from_domain=from_domain,
        from_tag=from_tag,
        to_display=to_display,
        to_user=to_user,
        to_domain=to_domain,
        to_tag=to_tag,
        via_transport=via_transport,
        via_host=via_host,
        via_port=via_port,
        via_branch=via_branch,
        contact_user=contact_user,
        contact_host=contact_host,
        contact_port=contact_port,
        expires=expires,
        user_agent=first.get("user-agent") or first.get("server") or None,
        content_type=first.get("content-type") or None,
        content_length=content_length,
        reason_header=first.get("reason") or None,
        p_asserted_identity_user=pai_user,
        headers=tuple(zip(names, values, strict=True)),
    )
    msg.__class__ = SipMessage  # see _SipMessageBuilder
    result: SipMessage = msg
    return result


def summarise_sip(payload: bytes) -> SipSummary:
    """The fields a capture row needs, as `parse_sip` would give them.

    Same acceptance rules and errors as `parse_sip`, and every field equals the
    `SipMessage` field of the same name; it skips the rest (the ``headers``
    tuple, displays, Via host and port, Content-Length), which the row builder
    never reads.
    """
    lines = _head_lines(payload)
    start = _start_line(lines[0])
    names, values = _collect(lines)
    return _summary(start, dict(zip(reversed(names), reversed(values), strict=True)))


def summarise_sip_headers(
    payload: bytes, wanted: frozenset[str]
) -> tuple[SipSummary, dict[str, str]]:
    """`summarise_sip`, and the first value of each header named in `wanted` (names as
    the parser gives them: lower case, compact forms expanded) that the message has."""
    lines = _head_lines(payload)
    start = _start_line(lines[0])
    names, values = _collect(lines)
    first = dict(zip(reversed(names), reversed(values), strict=True))
    return _summary(start, first), {name: first[name] for name in wanted if name in first}


def _summary(start: _Start, first: dict[str, str]) -> SipSummary:
    is_request, method, status_code, reason, _, ruri_user, ruri_domain = start
    call_id, cseq_number, cseq_method = _call_id_cseq(first)
    get = first.get

    value = get("from")
    _, from_user, from_domain, from_tag = _party(value) if value else _NO_PARTY
    value = get("to")
    _, to_user, to_domain, to_tag = _party(value) if value else _NO_PARTY
    value = get("via")
    via_branch = _via(value)[3] if value else None
    value = get("contact")
    contact_user, contact_host, _, contact_expires = _contact(value) if value else _NO_CONTACT
    value = get("expires")
    expires = _to_int(value, 10) if value is not None else None
    if expires is None:
        expires = contact_expires
    value = get("p-asserted-identity")

    return SipSummary(
        is_request,
        method,
        status_code,
        reason,
        ruri_user,
        ruri_domain,
        call_id,
        cseq_number,
        cseq_method,
        from_user,
        from_domain,
        from_tag,
        to_user,
        to_domain,
        to_tag,
        via_branch,
        contact_user,
        contact_host,
        expires,
        get("user-agent") or get("server") or None,
        get("content-type") or None,
        get("reason") or None,
        _pai(value) if value else None,
    )
