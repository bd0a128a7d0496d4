"""From a decoded HEP record to one row of a HOMER-compatible capture table.

Pure code: no I/O, clock, logging or configuration. `build_row` never raises for a
record that matches the Avro schema, whatever its payload holds: SIP that cannot be
parsed is stored in ``hep_proto_1_default`` with ``parse_error`` set, and payloads
that PostgreSQL ``text`` cannot hold (NUL bytes, invalid UTF-8) keep their exact bytes
in ``raw_bytes`` (``hep_payload(raw, raw_bytes)`` gives them back).

Routing (HOMER 7 table names):

    proto_type 1 or None (HEPv1/v2 carry SIP)
        CSeq method INVITE ACK BYE CANCEL UPDATE PRACK REFER INFO NOTIFY -> hep_proto_1_call
        CSeq method REGISTER                                            -> hep_proto_1_registration
        any other method, or SIP that cannot be parsed                  -> hep_proto_1_default
    a known proto_type N (pipeline.hep.chunks.PROTO_TYPE_NAMES: HEP3 REV 37 and what
    heplify-server routes)                                              -> hep_proto_N_default
    any other value                                                     -> hep_proto_unknown_default

Every table exists from the migrations (0001, 0003): no record can make the database
create a table. ``hep_type`` tells the types in ``hep_proto_unknown_default`` apart.

``sid`` (HOMER's session id: the Call-ID, else the correlation id) holds `index_key` of
that value, so that its btree index never meets an over-long value; the ``call_id`` and
``correlation_id`` columns keep the full values.

Responses route by their CSeq method. The typed ``method`` column holds the request
method and is NULL for responses; ``status`` holds the status code; ``cseq_method``
is always filled. HOMER's ``data_header.method`` holds the status code as text for
responses, as heplify-server writes it.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring_ascii
from typing import Any, Final, Protocol, cast

from pipeline.accel import scan_call_id
from pipeline.hep.chunks import PROTO_TYPE_NAMES, proto_type_name
from pipeline.sip import SipParseError, SipSummary, summarise_sip, summarise_sip_headers
from pipeline.storage.headers import HeaderExtraction

try:
    # asyncpg's own UUID: a uuid.UUID subclass (equal, hashable, str() alike) built
    # from 16 bytes about ten times faster, and the one its binary codec writes
    # without a conversion.
    from asyncpg.pgproto.pgproto import UUID as _UUID
except ImportError:  # pragma: no cover - asyncpg is a dependency
    def _UUID(raw: bytes) -> uuid.UUID:
        return uuid.UUID(bytes=raw)

#: Every column a sink writes, in the order of `CaptureRow.values` (all of the
#: capture table's columns except the bigserial ``id``).
COLUMNS: Final[tuple[str, ...]] = (
    "sid",
    "create_date",
    "protocol_header",
    "data_header",
    "raw",
    "raw_bytes",
    "record_id",
    "hep_version",
    "hep_type",
    "capture_id",
    "node_name",
    "correlation_id",
    "ip_family",
    "ip_proto",
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "vlan",
    "receive_time",
    "call_id",
    "method",
    "status",
    "reason",
    "cseq_num",
    "cseq_method",
    "from_user",
    "from_domain",
    "from_tag",
    "to_user",
    "to_domain",
    "to_tag",
    "ruri_user",
    "ruri_domain",
    "user_agent",
    "via_branch",
    "contact_user",
    "contact_host",
    "expires",
    "parse_error",
    "kafka_partition",
    "kafka_offset",
    "custom_headers",
)

CALL_TABLE: Final = "hep_proto_1_call"
REGISTRATION_TABLE: Final = "hep_proto_1_registration"
SIP_DEFAULT_TABLE: Final = "hep_proto_1_default"
UNKNOWN_TYPE_TABLE: Final = "hep_proto_unknown_default"
#: Duplicate captures kept aside by the consumer's --dedup-keep (never a routing result).
DUPLICATES_TABLE: Final = "hep_capture_duplicates"

CALL_METHODS: Final = frozenset(
    {"INVITE", "ACK", "BYE", "CANCEL", "UPDATE", "PRACK", "REFER", "INFO", "NOTIFY"}
)
REGISTRATION_METHODS: Final = frozenset({"REGISTER"})

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SMALLINT_MAX: Final = 32767
_INT_MAX: Final = 2**31 - 1
_BIGINT_MAX: Final = 2**63 - 1
_dumps = json.dumps
_timedelta = timedelta
_NO_SIP_VALUES: Final = (None,) * 19
_CALL_ID_COLUMN: Final = COLUMNS.index("call_id")
_escape = encode_basestring_ascii


#: What the consumer reads of a row besides writing it (duplicate check, capture
#: filters, SIP KPIs): `CaptureRow.facts`, in this order. Each is the value of the
#: column of that name, except ``capture_time`` (``create_date`` as microseconds since
#: 1970) and ``payload`` (``raw_bytes`` when set, else ``raw``: the payload exactly).
FACTS: Final[tuple[str, ...]] = (
    "hep_type", "capture_time", "payload", "capture_id", "node_name", "src_ip", "dst_ip",
    "call_id", "method", "status", "cseq_num", "cseq_method", "to_tag", "kafka_partition",
)
_FACT_COLUMNS: Final = tuple(
    COLUMNS.index(name) for name in FACTS if name not in ("capture_time", "payload")
)
_CREATE_DATE: Final = COLUMNS.index("create_date")
_RAW: Final = COLUMNS.index("raw")
_RAW_BYTES: Final = COLUMNS.index("raw_bytes")


def epoch_micros(moment: datetime) -> int:
    """Microseconds since 1970 of an aware datetime (exact, unlike timestamp())."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def facts_of(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """The `FACTS` of a row with these values."""
    (hep_type, capture_id, node_name, src_ip, dst_ip, call_id, method, status, cseq_num,
     cseq_method, to_tag, kafka_partition) = [values[i] for i in _FACT_COLUMNS]
    create_date = values[_CREATE_DATE]
    raw_bytes = values[_RAW_BYTES]
    return (
        hep_type,
        epoch_micros(create_date) if isinstance(create_date, datetime) else create_date,
        raw_bytes if raw_bytes is not None else values[_RAW],
        capture_id, node_name, src_ip, dst_ip, call_id, method, status, cseq_num,
        cseq_method, to_tag, kafka_partition,
    )


class RowOrigin(Protocol):
    """Builds the values of a row from its Kafka value (`pipeline.storage.batch`)."""

    def values_of(self, value: bytes, offset: int) -> tuple[Any, ...]: ...


class CaptureRow:
    """One row for `table`; `values` follow `COLUMNS`. `wire` is the row's binary COPY
    tuple (`pipeline.storage.wire`) when the consumer encoded it as it built the row;
    a sink encodes the values of a row without it.

    A row in wire form (what the compiled `build_rows` makes for a sink that takes
    COPY tuples) holds only its tuple, its `facts` and its source (Kafka value,
    offset and the `RowOrigin` that reads it): the ~40 objects of its values are only
    made, by the pure builder, when something reads `values` (the stdout sink, a
    censoring filter, an error report). Setting `values` sets `wire` to None (the
    tuple would still hold the old values).
    """

    __slots__ = ("_facts", "_offset", "_origin", "_source", "_values", "table", "wire")

    def __init__(
        self,
        table: str,
        values: tuple[Any, ...] | None,
        wire: bytes | None = None,
        facts: tuple[Any, ...] | None = None,
        source: bytes | None = None,
        offset: int = -1,
        origin: RowOrigin | None = None,
    ) -> None:
        if values is None and (source is None or origin is None):
            raise ValueError("a row without values needs its source and origin")
        self.table = table
        self.wire = wire
        self._values = values
        self._facts = facts
        self._source = source
        self._offset = offset
        self._origin = origin

    @property
    def values(self) -> tuple[Any, ...]:
        values = self._values
        if values is None:
            values = self._values = cast(RowOrigin, self._origin).values_of(
                cast(bytes, self._source), self._offset
            )
        return values

    @values.setter
    def values(self, values: tuple[Any, ...]) -> None:
        self._values = values
        self._facts = None
        self.wire = None

    @property
    def facts(self) -> tuple[Any, ...]:
        """The `FACTS` of the row (what dedup, filters and KPIs read)."""
        facts = self._facts
        if facts is None:
            facts = self._facts = facts_of(self.values)
        return facts

    def value(self, column: str) -> Any:
        """A value by column name (for tests and error reports, not the hot path)."""
        return self.values[COLUMNS.index(column)]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CaptureRow):
            return NotImplemented
        return (self.table, self.values, self.wire) == (other.table, other.values, other.wire)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CaptureRow(table={self.table!r}, values={self.values!r}, wire={self.wire!r})"


#: The table of each known non-SIP protocol type (created by migrations 0001 and 0003).
TYPE_TABLES: Final[dict[int, str]] = {
    proto_type: f"hep_proto_{proto_type}_default" for proto_type in PROTO_TYPE_NAMES
    if proto_type != 1
}
#: Every table a row can be written to: what `table_for` names, and the duplicates table.
CAPTURE_TABLES: Final[frozenset[str]] = frozenset(
    {CALL_TABLE, REGISTRATION_TABLE, SIP_DEFAULT_TABLE, UNKNOWN_TYPE_TABLE,
     DUPLICATES_TABLE, *TYPE_TABLES.values()}
)


def table_for(proto_type: int | None, sip_method: str | None = None) -> str:
    """The capture table of a record: SIP by (CSeq) method, others by protocol type."""
    if proto_type is None or proto_type == 1:
        if sip_method in CALL_METHODS:
            return CALL_TABLE
        if sip_method in REGISTRATION_METHODS:
            return REGISTRATION_TABLE
        return SIP_DEFAULT_TABLE
    return TYPE_TABLES.get(proto_type, UNKNOWN_TYPE_TABLE)


_KEY_MAX_CHARS: Final = 256


def index_key(value: str) -> str:
    """The bounded form in which capture tables index text: the twin of SQL's
    ``hep_index_key`` (migrations/0003), the first 256 characters of `value`."""
    return value[:_KEY_MAX_CHARS]




def _clean(text: str | None) -> str | None:
    """PostgreSQL text and jsonb cannot hold NUL; drop it from strings."""
    if text is None or "\x00" not in text:
        return text
    return text.replace("\x00", "")




def _payload_text(payload: bytes) -> tuple[str, bytes | None]:
    """(raw, raw_bytes): the text when it is valid UTF-8 without NUL, else a lossy
    rendering plus the exact bytes."""
    if b"\x00" not in payload:
        try:
            return payload.decode("utf-8"), None
        except UnicodeDecodeError:
            pass
    text = payload.decode("utf-8", "replace").replace("\x00", "")
    return text, bytes(payload)


_PROTOCOL_HEADER: Final = (
    '{"protocolFamily":%d,"protocol":%d,"srcIp":%s,"dstIp":%s,"srcPort":%d,"dstPort":%d,'
    '"timeSeconds":%d,"timeUseconds":%d,"payloadType":%d,"captureId":"%d","correlation_id":%s,'
    '"transport":%s,"receiverId":%s'
)
_SIP_DATA_KEYS: Final = (
    # heplify-server's default data_header template names.
    "callid", "method", "cseq", "ruri_user", "ruri_domain", "from_user", "from_domain",
    "from_tag", "to_user", "to_domain", "to_tag", "contact_user", "contact_domain",
    "user_agent", "pid_user", "content_type", "reason", "expires",
)
_SIP_DATA_HEADER: Final = "{" + ",".join(f'"{key}":%s' for key in _SIP_DATA_KEYS) + "}"




def _protocol_header(record: dict[str, Any], proto_type: int | None,
                     correlation_id: str | None, node_name: str | None,
                     store_auth_key: bool) -> str:
    """HOMER's protocol_header as JSON text (heplify-server's keys and types).

    `correlation_id` is HOMER's: see `build_row`. homer-app casts captureId to int
    (``(protocol_header->>'captureId')::int``): it is always a decimal string, "0" for
    a packet without one (heplify-server's node id of such a packet), since one
    non-numeric value in the time range fails that search for every user.
    """
    capture_time = record["capture_time"]
    capture_id = record.get("capture_id")
    get = record.get
    # _escape("") is '""': absent strings are written as empty JSON strings.
    text = _PROTOCOL_HEADER % (
        get("ip_family") or 0,
        get("ip_proto") or 0,
        _escape(get("src_ip") or ""),
        _escape(get("dst_ip") or ""),
        get("src_port") or 0,
        get("dst_port") or 0,
        capture_time // 1_000_000,
        capture_time % 1_000_000,
        proto_type if proto_type is not None else 1,
        capture_id or 0,
        _escape(correlation_id or ""),
        _escape(get("transport") or ""),
        _escape(get("receiver_id") or ""),
    )
    if node_name:
        text += ',"nodeName":' + _escape(node_name)
    if store_auth_key and get("auth_key") is not None:
        text += ',"capturePass":' + _escape(_clean(record["auth_key"]) or "")
    return text + "}"


def _clean_values(values: list[Any]) -> None:
    for i, value in enumerate(values):
        if type(value) is str and "\x00" in value:
            values[i] = value.replace("\x00", "")


def _non_sip_data_header(record: dict[str, Any], proto_type: int | None,
                         node_name: str | None, parse_error: str | None, sid: str) -> str:
    if parse_error is not None:
        return _dumps({"callid": sid, "parse_error": parse_error})
    return _dumps({
        # heplify-server's keys for non-SIP payloads; its node is the node name, else
        # the capture id ("0" without one).
        "node": node_name or str(record.get("capture_id") or 0),
        "proto": proto_type_name(proto_type).lower() if proto_type is not None else "",
    })


def build_row(
    record: dict[str, Any],
    *,
    kafka_partition: int | None,
    kafka_offset: int | None,
    store_auth_key: bool = False,
    headers: HeaderExtraction | None = None,
) -> CaptureRow:
    """The capture-table row of one decoded Avro HEP record.

    protocol_header's ``correlation_id`` is HOMER's, as heplify-server derives it (its
    decoder/sip.go): the HEP correlation chunk, else (SIP) the first configured A-leg
    header of `headers`, else the Call-ID; the ``correlation_id`` column keeps the
    chunk alone. `headers` also names the custom headers kept in data_header and in
    ``custom_headers`` (see pipeline.storage.headers); it counts what it did.
    """
    proto_type = record.get("proto_type")
    payload = record["payload"]
    raw_bytes: bytes | None = None
    if b"\x00" not in payload:
        try:
            raw = payload.decode("utf-8")
        except UnicodeDecodeError:
            raw, raw_bytes = _payload_text(payload)
    else:
        raw, raw_bytes = _payload_text(payload)
    correlation_id = record.get("correlation_id")
    if correlation_id is not None and "\x00" in correlation_id:
        correlation_id = correlation_id.replace("\x00", "")
    node_name = record.get("node_name")
    if node_name is not None and "\x00" in node_name:
        node_name = node_name.replace("\x00", "")

    sip: SipSummary | None = None
    parse_error: str | None = None
    found: dict[str, str] | None = None
    if headers is not None and not headers.wanted:
        headers = None
    if proto_type is None or proto_type == 1:
        try:
            if headers is None:
                sip = summarise_sip(payload)
            else:
                sip, found = summarise_sip_headers(payload, headers.wanted)
                if raw_bytes is not None:
                    # jsonb rejects even an escaped \u0000.
                    found = {k: v.replace("\x00", "") for k, v in found.items()}
        except SipParseError as exc:
            parse_error = exc.reason
    homer_correlation = correlation_id
    if sip is not None and not correlation_id:
        if found:
            homer_correlation = cast(HeaderExtraction, headers).a_leg_id(found)
        if not homer_correlation:
            homer_correlation = sip.call_id
            if raw_bytes is not None:
                homer_correlation = homer_correlation.replace("\x00", "")
    protocol_header = _protocol_header(
        record, proto_type, homer_correlation, node_name, store_auth_key
    )

    rid = record["record_id"]
    record_id = _UUID(rid if type(rid) is bytes else bytes(rid))
    hep_version = record["hep_version"]
    capture_id = record.get("capture_id")
    ip_family = record.get("ip_family")
    ip_proto = record.get("ip_proto")
    # Integers that do not fit their column become NULL (the JSON headers keep them).
    if hep_version is not None and not -32768 <= hep_version <= _SMALLINT_MAX:
        hep_version = None
    if capture_id is not None and not -_BIGINT_MAX - 1 <= capture_id <= _BIGINT_MAX:
        capture_id = None
    if ip_family is not None and not -32768 <= ip_family <= _SMALLINT_MAX:
        ip_family = None
    if ip_proto is not None and not -32768 <= ip_proto <= _SMALLINT_MAX:
        ip_proto = None
    # HEPv1/v2 (and a v3 packet without chunk 0x000b) carry SIP and are routed as
    # SIP: the typed column says so too, as protocol_header's payloadType does, so
    # that `WHERE hep_type = 1` finds every SIP row whatever the HEP version.
    hep_type = 1 if proto_type is None else proto_type
    if not -32768 <= hep_type <= _SMALLINT_MAX:
        hep_type = None

    create_date = _EPOCH + _timedelta(0, 0, record["capture_time"])
    # The HEP envelope's columns (record_id .. receive_time), the same for every table.
    envelope = (
        record_id,
        hep_version,
        hep_type,
        capture_id,
        node_name,
        correlation_id,
        ip_family,
        ip_proto,
        record.get("src_ip"),
        record.get("src_port"),
        record.get("dst_ip"),
        record.get("dst_port"),
        record.get("vlan"),
        _EPOCH + _timedelta(0, 0, record["receive_time"]),
    )

    if sip is not None:
        (is_request, method, status_code, reason, ruri_user, ruri_domain, call_id,
         cseq_number, cseq_method, from_user, from_domain, from_tag, to_user, to_domain,
         to_tag, via_branch, contact_user, contact_host, expires, user_agent, content_type,
         reason_header, pai_user) = sip
        if is_request:
            table = table_for(proto_type, method)
            # A request line always has a method (summarise_sip raises otherwise).
            homer_method = cast(str, method)
        else:
            table = table_for(proto_type, cseq_method)
            # For a response HOMER's `method` is the status code, as heplify-server
            # writes it.
            homer_method = str(status_code)
            method = None
        # HOMER's data_header for SIP: "" for absent values, as HOMER queries expect.
        header_values: tuple[str, ...] = (
            call_id, homer_method, f"{cseq_number} {cseq_method}", ruri_user or "",
            ruri_domain or "", from_user or "", from_domain or "", from_tag or "",
            to_user or "", to_domain or "", to_tag or "", contact_user or "",
            contact_host or "", user_agent or "", pai_user or "", content_type or "",
            reason_header or "", str(expires) if expires is not None else "",
        )
        if raw_bytes is not None:
            # The parser saw the payload's NUL bytes; jsonb rejects even an escaped \u0000.
            header_values = tuple([v.replace("\x00", "") for v in header_values])
        data_header = _SIP_DATA_HEADER % tuple(map(_escape, header_values))
        custom = cast(HeaderExtraction, headers).custom_values(found) if found else None
        custom_headers = None
        if custom:
            # heplify-server's CustomHeader: more keys of data_header.
            extra = "".join([f",{_escape(k)}:{_escape(v)}" for k, v in custom.items()])
            data_header = data_header[:-1] + extra + "}"
            custom_headers = "{" + extra[1:] + "}"
        if status_code is not None and not -32768 <= status_code <= _SMALLINT_MAX:
            status_code = None
        if cseq_number is not None and not -_BIGINT_MAX - 1 <= cseq_number <= _BIGINT_MAX:
            cseq_number = None
        if expires is not None and not -_INT_MAX - 1 <= expires <= _INT_MAX:
            expires = None
        values: Any = (
            call_id if len(call_id) <= _KEY_MAX_CHARS else index_key(call_id),
            create_date,
            protocol_header,
            data_header,
            raw,
            raw_bytes,
            *envelope,
            call_id,
            method,
            status_code,
            reason,
            cseq_number,
            cseq_method,
            from_user,
            from_domain,
            from_tag,
            to_user,
            to_domain,
            to_tag,
            ruri_user,
            ruri_domain,
            user_agent,
            via_branch,
            contact_user,
            contact_host,
            expires,
            None,
            kafka_partition,
            kafka_offset,
            custom_headers,
        )
    else:
        table = table_for(proto_type)
        sid = correlation_id or ""
        if parse_error is not None:
            scanned = scan_call_id(payload)
            if scanned:
                sid = _clean(scanned.decode("utf-8", "replace")) or sid
        values = (
            sid if len(sid) <= _KEY_MAX_CHARS else index_key(sid),
            create_date,
            protocol_header,
            _non_sip_data_header(record, proto_type, node_name, parse_error, sid),
            raw,
            raw_bytes,
            *envelope,
            *_NO_SIP_VALUES,
            parse_error,
            kafka_partition,
            kafka_offset,
            None,
        )
    if raw_bytes is not None:
        # The SIP parser saw the same bytes: its strings may carry NUL too.
        cleaned = list(values)
        _clean_values(cleaned)
        if sip is not None:
            # The key of the Call-ID as stored, as hep_index_key(call_id) computes it.
            cleaned[0] = index_key(cleaned[_CALL_ID_COLUMN])
        values = tuple(cleaned)
    return CaptureRow(table, values)
