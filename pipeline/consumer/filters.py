"""Capture filters: which built rows are stored, dropped, or stored with a blank body.

Pure code: no I/O, clock or logging. The consumer applies a `CaptureFilter` to a batch
of built rows (`screen`) before writing it; what is dropped is a decision, not a loss,
so the records' offsets advance like those of stored rows.

The settings are heplify-server's, under the names its operators know
(config/config.go: ``DiscardMethod``, ``CensorMethod``): a SIP message is dropped or
censored by its **CSeq** method, so that the responses of a discarded OPTIONS go with
it, as heplify-server's decoder matches ``h.SIP.CseqMethod``. On top of that, rows are
dropped by source or destination address range and by HEP protocol type.

Censoring replaces each byte of the SIP body with ``x``, as heplify-server does
(decoder.go: ``strings.Repeat("x", len(body))``): the headers, the Content-Length and
the payload's length stay true, the content is gone. It is a transform of a row's
values (`censor_values`), so a row builder that is not this module (the compiled one)
can apply it to its own output.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pipeline.storage.rows import COLUMNS, FACTS, CaptureRow

#: Reasons of ``hep_ingest_records_discarded_total`` (checked in this order).
DISCARD_REASONS: Final = ("hep_type", "method", "source", "destination")

_RAW: Final = COLUMNS.index("raw")
_RAW_BYTES: Final = COLUMNS.index("raw_bytes")
# What a filter reads of a row: its facts (`CaptureRow.facts`), not its values.
_HEP_TYPE: Final = FACTS.index("hep_type")
_CSEQ_METHOD: Final = FACTS.index("cseq_method")
_SRC_IP: Final = FACTS.index("src_ip")
_DST_IP: Final = FACTS.index("dst_ip")

# Addresses already judged, per direction; cleared when full (the set of agents'
# addresses is small, a flood of distinct ones must not grow memory).
_ADDRESS_CACHE_MAX: Final = 65_536

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_methods(text: str) -> frozenset[str]:
    """``"OPTIONS, notify"`` -> ``{"OPTIONS", "NOTIFY"}`` (SIP methods are
    case-sensitive, but every method in use is upper case: a lower-case setting is a
    typo, not a wish to match nothing)."""
    methods = frozenset(part.strip().upper() for part in text.split(",") if part.strip())
    for method in methods:
        if not method.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"not a SIP method: {method!r}")
    return methods


def parse_networks(text: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 192.0.2.7, 2001:db8::/32"`` -> networks (a bare address is a /32
    or /128). Raises ValueError naming the bad entry."""
    networks = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError as exc:
            raise ValueError(f"not an address or a network: {part!r}") from exc
    return tuple(networks)


def parse_hep_types(text: str) -> frozenset[int]:
    """``"5, 100"`` -> ``{5, 100}``."""
    types = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or not 0 <= int(part) <= 255:
            raise ValueError(f"not a HEP protocol type (0-255): {part!r}")
        types.add(int(part))
    return frozenset(types)


@dataclass(frozen=True, slots=True)
class CaptureFilter:
    """What to drop and what to censor; empty (the default) keeps everything as is."""

    discard_methods: frozenset[str] = frozenset()
    discard_hep_types: frozenset[int] = frozenset()
    discard_sources: tuple[Network, ...] = ()
    discard_destinations: tuple[Network, ...] = ()
    censor_methods: frozenset[str] = frozenset()

    @property
    def active(self) -> bool:
        return bool(
            self.discard_methods or self.discard_hep_types or self.discard_sources
            or self.discard_destinations or self.censor_methods
        )


@dataclass(slots=True)
class ScreenResult:
    """What `screen` did to one batch: `kept[i]` is the index of a kept row."""

    kept: list[int] = field(default_factory=list)
    discarded: dict[str, int] = field(default_factory=dict)
    # Censored rows by CSeq method (a configured method: a bounded label).
    censored: dict[str, int] = field(default_factory=dict)


def _body_start(crlf: int, lf: int) -> int:
    """Where the body starts, from the first CRLF CRLF and the first LF LF; -1: none."""
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf + 4
    return lf + 2 if lf >= 0 else -1


def censor_payload(payload: str) -> str:
    """The SIP message with every byte of its body replaced by ``x``; no body, no
    change. The body starts after the first empty line (CRLF CRLF, or a bare LF LF
    that lenient senders use)."""
    start = _body_start(payload.find("\r\n\r\n"), payload.find("\n\n"))
    if start < 0:
        return payload
    body = payload[start:]
    if not body:
        return payload
    # Content-Length counts bytes: one x per byte keeps the message consistent.
    return payload[:start] + "x" * len(body.encode())


def censor_payload_bytes(payload: bytes) -> bytes:
    """`censor_payload` for the exact bytes (``raw_bytes``)."""
    start = _body_start(payload.find(b"\r\n\r\n"), payload.find(b"\n\n"))
    if start < 0:
        return payload
    return payload[:start] + b"x" * (len(payload) - start)


def censor_values(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row's values (in `COLUMNS` order) with the body of its payload censored, in
    ``raw`` and, when the payload is kept as bytes, in ``raw_bytes``."""
    raw = values[_RAW]
    raw_bytes = values[_RAW_BYTES]
    censored = list(values)
    if raw_bytes is not None:
        exact = censor_payload_bytes(raw_bytes)
        censored[_RAW_BYTES] = exact
        # `raw` is the lossy rendering of the same bytes: render the censored ones.
        censored[_RAW] = exact.decode("utf-8", "replace").replace("\x00", "")
    elif raw is not None:
        censored[_RAW] = censor_payload(raw)
    return tuple(censored)


class _AddressMatcher:
    """Is an address (as stored: text) in one of the networks? Remembers its answers."""

    __slots__ = ("_known", "_networks")

    def __init__(self, networks: Sequence[Network]) -> None:
        self._networks = tuple(networks)
        self._known: dict[str | None, bool] = {}

    def __call__(self, address: str | None) -> bool:
        known = self._known.get(address)
        if known is None:
            known = self._match(address)
            if len(self._known) >= _ADDRESS_CACHE_MAX:
                self._known.clear()
            self._known[address] = known
        return known

    def _match(self, address: str | None) -> bool:
        if not address:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)


class Screen:
    """A `CaptureFilter` ready to apply to batches (it caches address decisions)."""

    __slots__ = ("_destination", "_source", "filter")

    def __init__(self, capture_filter: CaptureFilter) -> None:
        self.filter = capture_filter
        self._source = _AddressMatcher(capture_filter.discard_sources)
        self._destination = _AddressMatcher(capture_filter.discard_destinations)

    def reason(self, facts: tuple[Any, ...]) -> str | None:
        """Why the row with these facts (`CaptureRow.facts`) is dropped, or None to
        keep it."""
        f = self.filter
        if f.discard_hep_types and facts[_HEP_TYPE] in f.discard_hep_types:
            return "hep_type"
        if f.discard_methods and facts[_CSEQ_METHOD] in f.discard_methods:
            return "method"
        if f.discard_sources and self._source(facts[_SRC_IP]):
            return "source"
        if f.discard_destinations and self._destination(facts[_DST_IP]):
            return "destination"
        return None

    def screen(self, rows: Iterable[CaptureRow]) -> ScreenResult:
        """Decide each row: kept rows' indexes in order; censored rows are changed in
        place (their values replaced)."""
        result = ScreenResult()
        kept = result.kept
        discarded = result.discarded
        censored = result.censored
        censor = self.filter.censor_methods
        reason = self.reason
        for i, row in enumerate(rows):
            facts = row.facts
            why = reason(facts)
            if why is not None:
                discarded[why] = discarded.get(why, 0) + 1
                continue
            if censor:
                method = facts[_CSEQ_METHOD]
                if method in censor:
                    # Its COPY tuple holds the values before censoring (setting values
                    # drops it): the sink encodes the censored ones instead.
                    row.values = censor_values(row.values)
                    censored[method] = censored.get(method, 0) + 1
            kept.append(i)
        return result
