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
    proto_type N in 0..255                                              -> hep_proto_N_default
    anything else (not a HEP u8)                                        -> hep_proto_unknown_default

Responses route by their CSeq method. The typed ``method`` column holds the request
method and is NULL for responses; ``status`` holds the status code; ``cseq_method``
is always filled. HOMER's ``data_header.method`` holds the status code as text for
responses, as heplify-server writes it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, Final

from pipeline.hep.chunks import proto_type_name
from pipeline.sip import SipMessage, SipParseError, parse_sip, scan_call_id

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
)

CALL_TABLE: Final = "hep_proto_1_call"
REGISTRATION_TABLE: Final = "hep_proto_1_registration"
SIP_DEFAULT_TABLE: Final = "hep_proto_1_default"
UNKNOWN_TYPE_TABLE: Final = "hep_proto_unknown_default"

CALL_METHODS: Final = frozenset(
    {"INVITE", "ACK", "BYE", "CANCEL", "UPDATE", "PRACK", "REFER", "INFO", "NOTIFY"}
)
REGISTRATION_METHODS: Final = frozenset({"REGISTER"})

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SMALLINT_MAX: Final = 32767
_INT_MAX: Final = 2**31 - 1
_BIGINT_MAX: Final = 2**63 - 1
_dumps = json.dumps
_escape = encode_basestring_ascii


@dataclass(slots=True)
class CaptureRow:
    """One row for `table`; `values` follow `COLUMNS`."""

    table: str
    values: tuple[Any, ...]

    def value(self, column: str) -> Any:
        """A value by column name (for tests and error reports, not the hot path)."""
        return self.values[COLUMNS.index(column)]


def table_for(proto_type: int | None, sip_method: str | None = None) -> str:
    """The capture table of a record: SIP by (CSeq) method, others by protocol type."""
    if proto_type is None or proto_type == 1:
        if sip_method in CALL_METHODS:
            return CALL_TABLE
        if sip_method in REGISTRATION_METHODS:
            return REGISTRATION_TABLE
        return SIP_DEFAULT_TABLE
    if 0 <= proto_type <= 255:
        return f"hep_proto_{proto_type}_default"
    return UNKNOWN_TYPE_TABLE


def _micros_to_datetime(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _clean(text: str | None) -> str | None:
    """PostgreSQL text and jsonb cannot hold NUL; drop it from strings."""
    if text is None or "\x00" not in text:
        return text
    return text.replace("\x00", "")


def _bounded(value: int | None, limit: int) -> int | None:
    """An integer that fits its column, else NULL (the jsonb headers keep the value)."""
    if value is None or -limit - 1 <= value <= limit:
        return value
    return None


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
    '"timeSeconds":%d,"timeUseconds":%d,"payloadType":%d,"captureId":%s,"correlation_id":%s,'
    '"transport":%s,"receiverId":%s'
)
_SIP_DATA_KEYS: Final = (
    # heplify-server's default data_header template names.
    "callid", "method", "cseq", "ruri_user", "ruri_domain", "from_user", "from_domain",
    "from_tag", "to_user", "to_domain", "to_tag", "contact_user", "contact_domain",
    "user_agent", "pid_user", "content_type", "reason", "expires",
)
_SIP_DATA_HEADER: Final = "{" + ",".join(f'"{key}":%s' for key in _SIP_DATA_KEYS) + "}"
_EMPTY_JSON_STRING: Final = '""'


def _json_string(text: str | None) -> str:
    return _escape(text) if text else _EMPTY_JSON_STRING


def _protocol_header(record: dict[str, Any], correlation_id: str | None,
                     node_name: str | None, store_auth_key: bool) -> str:
    """HOMER's protocol_header as JSON text (heplify-server's keys and types)."""
    capture_time = record["capture_time"]
    capture_id = record.get("capture_id")
    text = _PROTOCOL_HEADER % (
        record.get("ip_family") or 0,
        record.get("ip_proto") or 0,
        _json_string(record.get("src_ip")),
        _json_string(record.get("dst_ip")),
        record.get("src_port") or 0,
        record.get("dst_port") or 0,
        capture_time // 1_000_000,
        capture_time % 1_000_000,
        record.get("proto_type") if record.get("proto_type") is not None else 1,
        # heplify-server writes the capture id as a string.
        _escape(str(capture_id)) if capture_id is not None else _EMPTY_JSON_STRING,
        _json_string(correlation_id),
        _json_string(record.get("transport")),
        _json_string(record.get("receiver_id")),
    )
    if node_name:
        text += ',"nodeName":' + _escape(node_name)
    if store_auth_key and record.get("auth_key") is not None:
        text += ',"capturePass":' + _escape(_clean(record["auth_key"]) or "")
    return text + "}"


def _sip_data_header(sip: SipMessage, clean: bool) -> str:
    """HOMER's data_header for SIP: "" for absent values, as HOMER queries expect."""
    # For a response HOMER's `method` is the status code, as heplify-server writes it.
    method = sip.method if sip.is_request else str(sip.status_code)
    values = (
        sip.call_id, method, sip.cseq, sip.ruri_user, sip.ruri_domain, sip.from_user,
        sip.from_domain, sip.from_tag, sip.to_user, sip.to_domain, sip.to_tag,
        sip.contact_user, sip.contact_host, sip.user_agent, sip.p_asserted_identity_user,
        sip.content_type, sip.reason_header,
        str(sip.expires) if sip.expires is not None else None,
    )
    if clean:
        # The parser saw the payload's NUL bytes; jsonb rejects even an escaped \u0000.
        values = tuple(_clean(v) for v in values)
    return _SIP_DATA_HEADER % tuple([_escape(v) if v else _EMPTY_JSON_STRING for v in values])


def _clean_values(values: list[Any]) -> None:
    for i, value in enumerate(values):
        if type(value) is str and "\x00" in value:
            values[i] = value.replace("\x00", "")


def build_row(
    record: dict[str, Any],
    *,
    kafka_partition: int | None,
    kafka_offset: int | None,
    store_auth_key: bool = False,
) -> CaptureRow:
    """The capture-table row of one decoded Avro HEP record."""
    proto_type = record.get("proto_type")
    payload = record["payload"]
    raw, raw_bytes = _payload_text(payload)
    correlation_id = _clean(record.get("correlation_id"))
    node_name = _clean(record.get("node_name"))
    protocol_header = _protocol_header(record, correlation_id, node_name, store_auth_key)

    sip: SipMessage | None = None
    parse_error: str | None = None
    sid = correlation_id or ""
    if proto_type is None or proto_type == 1:
        try:
            sip = parse_sip(payload)
        except SipParseError as exc:
            parse_error = exc.reason
            scanned = scan_call_id(payload)
            if scanned:
                sid = _clean(scanned.decode("utf-8", "replace")) or sid

    if sip is not None:
        table = table_for(proto_type, sip.effective_method)
        sid = sip.call_id
        data_header = _sip_data_header(sip, raw_bytes is not None)
        sip_values: tuple[Any, ...] = (
            sip.call_id,
            sip.method if sip.is_request else None,
            _bounded(sip.status_code, _SMALLINT_MAX),
            sip.reason,
            _bounded(sip.cseq_number, _BIGINT_MAX),
            sip.cseq_method,
            sip.from_user,
            sip.from_domain,
            sip.from_tag,
            sip.to_user,
            sip.to_domain,
            sip.to_tag,
            sip.ruri_user,
            sip.ruri_domain,
            sip.user_agent,
            sip.via_branch,
            sip.contact_user,
            sip.contact_host,
            _bounded(sip.expires, _INT_MAX),
            None,
        )
    else:
        table = table_for(proto_type)
        if parse_error is not None:
            data_header = _dumps({"callid": sid, "parse_error": parse_error})
        else:
            capture_id = record.get("capture_id")
            data_header = _dumps({
                # heplify-server's keys for non-SIP payloads.
                "node": node_name or (str(capture_id) if capture_id is not None else ""),
                "proto": proto_type_name(proto_type).lower() if proto_type is not None else "",
            })
        sip_values = (None,) * 19 + (parse_error,)

    values = [
        sid,
        _micros_to_datetime(record["capture_time"]),
        protocol_header,
        data_header,
        raw,
        raw_bytes,
        uuid.UUID(bytes=bytes(record["record_id"])),
        _bounded(record["hep_version"], _SMALLINT_MAX),
        _bounded(proto_type, _SMALLINT_MAX),
        _bounded(record.get("capture_id"), _BIGINT_MAX),
        node_name,
        correlation_id,
        _bounded(record.get("ip_family"), _SMALLINT_MAX),
        _bounded(record.get("ip_proto"), _SMALLINT_MAX),
        record.get("src_ip"),
        record.get("src_port"),
        record.get("dst_ip"),
        record.get("dst_port"),
        record.get("vlan"),
        _micros_to_datetime(record["receive_time"]),
        *sip_values,
        kafka_partition,
        kafka_offset,
    ]
    if raw_bytes is not None:
        # The SIP parser saw the same bytes: its strings may carry NUL too.
        _clean_values(values)
    return CaptureRow(table, tuple(values))
