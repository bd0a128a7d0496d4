# The consumer's per-record work, compiled (included by _speedups.pyx, one module).
#
# Twins of the pure reference: pipeline.storage.wire.copy_tuple and
# pipeline.storage.batch.build_rows, same signatures, outputs and errors
# (tests/unit/test_accel_rows.py).
#
# The pure modules import pipeline.accel, which imports this module: they are
# imported on first use, not at import time.

from cpython.datetime cimport (
    PyDateTime_DATE_GET_HOUR,
    PyDateTime_DATE_GET_MICROSECOND,
    PyDateTime_DATE_GET_MINUTE,
    PyDateTime_DATE_GET_SECOND,
    PyDateTime_GET_DAY,
    PyDateTime_GET_MONTH,
    PyDateTime_GET_YEAR,
    datetime as _datetime_type,
    import_datetime,
)

import_datetime()

DEF _NCOLUMNS = 43
# Column kinds, from pipeline.storage.wire.COLUMN_KINDS.
DEF _K_TEXT = 1
DEF _K_HEADER = 2
DEF _K_INT2 = 3
DEF _K_INT4 = 4
DEF _K_INT8 = 5
DEF _K_TIMESTAMPTZ = 6
DEF _K_INET = 7
DEF _K_UUID = 8
DEF _K_BYTEA = 9
DEF _K_JSONB = 10

cdef int _kinds[_NCOLUMNS]
# False when the columns changed since this code was written (pure encoder then).
cdef bint _encoder_ok = False
cdef Py_ssize_t _protocol_header_index = -1
cdef bint _rows_ready = False
cdef object _wire = None          # pipeline.storage.wire
cdef object _build_row = None     # pipeline.storage.rows.build_row
cdef object _times_to_micros = None
cdef object _RecordDecodeError = None
cdef object _RowFailure = None
cdef object _UTC = None
cdef object _UUID_type = None
cdef dict _inet_cache_rows = None
cdef object _escape_json = None
cdef object _dumps = None
cdef object _summarise_sip = None
cdef object _SipParseError = None
cdef object _table_for = None
cdef object _proto_type_name = None
cdef object _UUID_fast = None
cdef object _CaptureRow = None
cdef object _start_line = None
cdef object _summary_from = None
cdef object _call_id_cseq = None
cdef object _party_py = None
cdef object _via_py = None
cdef object _contact_py = None
cdef object _pai_py = None
cdef object _to_int = None
cdef object _param = None
cdef object _SipSummary = None
cdef object _uri_py = None
cdef frozenset _CALL_METHODS = None
cdef frozenset _REGISTRATION_METHODS = None
cdef str _CALL_TABLE = None
cdef str _REGISTRATION_TABLE = None
cdef str _SIP_DEFAULT_TABLE = None
cdef object _ChunkOrigin = None
cdef object _facts_of = None
cdef bint _wire_layout_ok = False


cdef int _rows_init() except -1:
    global _rows_ready, _wire, _build_row, _times_to_micros, _RecordDecodeError
    global _RowFailure, _encoder_ok, _protocol_header_index, _UTC, _UUID_type, _inet_cache_rows
    global _escape_json, _dumps, _summarise_sip, _SipParseError, _table_for
    global _proto_type_name, _UUID_fast, _CaptureRow, _start_line, _summary_from
    global _call_id_cseq, _party_py, _via_py, _contact_py, _pai_py, _to_int, _param
    global _CALL_METHODS, _REGISTRATION_METHODS, _CALL_TABLE, _REGISTRATION_TABLE
    global _SIP_DEFAULT_TABLE
    global _SipSummary, _uri_py, _ChunkOrigin, _facts_of, _wire_layout_ok
    if _rows_ready:
        return 0
    from datetime import UTC
    from uuid import UUID
    from pipeline.records import RecordDecodeError
    from pipeline.storage import batch, rows, wire
    codes = {"text": _K_TEXT, "header": _K_HEADER, "int2": _K_INT2, "int4": _K_INT4,
             "int8": _K_INT8, "timestamptz": _K_TIMESTAMPTZ, "inet": _K_INET,
             "uuid": _K_UUID, "bytea": _K_BYTEA, "jsonb": _K_JSONB}
    _encoder_ok = (len(wire.COLUMN_KINDS) == _NCOLUMNS
                   and all(kind in codes for kind in wire.COLUMN_KINDS))
    if _encoder_ok:
        for i, kind in enumerate(wire.COLUMN_KINDS):
            _kinds[i] = codes[kind]
    _wire = wire
    _protocol_header_index = wire._PROTOCOL_HEADER_INDEX
    _build_row = rows.build_row
    _times_to_micros = batch.times_to_micros
    _RecordDecodeError = RecordDecodeError
    _RowFailure = batch.RowFailure
    _UTC = UTC
    _UUID_type = UUID
    _inet_cache_rows = wire._inet_cache
    from json import dumps
    from json.encoder import encode_basestring_ascii
    from pipeline.hep.chunks import proto_type_name
    from pipeline.sip import SipParseError, summarise_sip
    _escape_json = encode_basestring_ascii
    _dumps = dumps
    _summarise_sip = summarise_sip
    from pipeline.sip import parser
    _start_line = parser._start_line
    _summary_from = parser._summary
    _call_id_cseq = parser._call_id_cseq
    _party_py = parser._party
    _via_py = parser._via
    _contact_py = parser._contact
    _pai_py = parser._pai
    _to_int = parser._to_int
    _param = parser._param
    _SipSummary = parser.SipSummary
    _uri_py = parser._uri
    _SipParseError = SipParseError
    _table_for = rows.table_for
    _CALL_METHODS = rows.CALL_METHODS
    _REGISTRATION_METHODS = rows.REGISTRATION_METHODS
    _CALL_TABLE = rows.CALL_TABLE
    _REGISTRATION_TABLE = rows.REGISTRATION_TABLE
    _SIP_DEFAULT_TABLE = rows.SIP_DEFAULT_TABLE
    _proto_type_name = proto_type_name
    _UUID_fast = rows._UUID
    _CaptureRow = rows.CaptureRow
    _ChunkOrigin = batch.ChunkOrigin
    _facts_of = rows.facts_of
    _wire_layout_ok = (_encoder_ok and tuple(wire.COLUMN_KINDS) == _WIRE_LAYOUT
                       and rows.FACTS == _FACTS_LAYOUT)
    _rows_ready = True
    return 0


cdef inline void _put_be(char* out, uint64_t value, int size) noexcept:
    cdef int i
    for i in range(size):
        out[i] = <char>((value >> (8 * (size - 1 - i))) & 0xFF)


cdef inline int _put_be_int(Buf* b, uint64_t value, int size) except -1:
    _reserve(b, size)
    _put_be(b.data + b.size, value, size)
    b.size += size
    return 0


cdef inline int _put_null(Buf* b) except -1:
    return _put_be_int(b, 0xFFFFFFFF, 4)


cdef int _put_field_bytes(Buf* b, const char* data, Py_ssize_t n, bint jsonb) except -1:
    if n + jsonb > 0x7FFFFFFF:
        raise OverflowError("value too long for a COPY field")
    _put_be_int(b, <uint64_t>(n + jsonb), 4)
    if jsonb:
        _put_byte(b, 1)
    return _put_raw(b, data, n)


cdef int _put_text_field(Buf* b, object value, bint jsonb) except -1:
    cdef Py_ssize_t n
    cdef const char* s
    if not isinstance(value, str):
        raise TypeError(f"expected str, got {type(value).__name__}")
    s = PyUnicode_AsUTF8AndSize(value, &n)
    return _put_field_bytes(b, s, n, jsonb)


cdef int _put_int_field(Buf* b, object value, int size) except -1:
    cdef int64_t v
    if not isinstance(value, int):
        raise OverflowError(f"int{size}: required argument is not an integer")
    try:
        v = value
    except OverflowError:
        raise OverflowError(f"int{size}: value out of range") from None
    if size == 2 and not -32768 <= v <= 32767:
        raise OverflowError("int2: value out of range")
    if size == 4 and not -2147483648 <= v <= 2147483647:
        raise OverflowError("int4: value out of range")
    _put_be_int(b, <uint64_t>size, 4)
    return _put_be_int(b, <uint64_t>v, size)


cdef inline int64_t _days_from_civil(int64_t y, int64_t m, int64_t d) noexcept:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    cdef int64_t era, yoe, doy, doe
    if m <= 2:
        y -= 1
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


# 2000-01-01 is day 10957 after 1970-01-01.
DEF _PG_EPOCH_DAYS = 10957


cdef int _put_timestamp_field(Buf* b, object value) except -1:
    cdef int64_t micros, days
    if type(value) is _datetime_type and value.tzinfo is _UTC:
        days = _days_from_civil(PyDateTime_GET_YEAR(value), PyDateTime_GET_MONTH(value),
                                PyDateTime_GET_DAY(value)) - _PG_EPOCH_DAYS
        micros = ((days * 86400 + PyDateTime_DATE_GET_HOUR(value) * 3600
                   + PyDateTime_DATE_GET_MINUTE(value) * 60
                   + PyDateTime_DATE_GET_SECOND(value)) * 1000000
                  + PyDateTime_DATE_GET_MICROSECOND(value))
    else:
        micros = _wire._timestamp_micros(value)
    _put_be_int(b, 8, 4)
    return _put_be_int(b, <uint64_t>micros, 8)


cdef int _put_inet_field(Buf* b, object value) except -1:
    encoded = _inet_cache_rows.get(value) if type(value) is str else None
    if encoded is None:
        encoded = _wire.encode_inet(value)
    return _put_field_bytes(b, PyBytes_AS_STRING(encoded), len(encoded), False)


cdef int _put_row(Buf* b, tuple values, bint protocol_jsonb, bint data_jsonb) except -1:
    cdef Py_ssize_t i
    cdef int kind
    if len(values) != _NCOLUMNS:
        raise ValueError(f"{len(values)} values for {_NCOLUMNS} columns")
    _put_be_int(b, _NCOLUMNS, 2)
    for i in range(_NCOLUMNS):
        value = values[i]
        if value is None:
            _put_null(b)
            continue
        kind = _kinds[i]
        if kind == _K_TEXT:
            _put_text_field(b, value, False)
        elif kind == _K_HEADER:
            _put_text_field(b, value, protocol_jsonb if i == _protocol_header_index else data_jsonb)
        elif kind == _K_JSONB:
            _put_text_field(b, value, True)
        elif kind == _K_INT2:
            _put_int_field(b, value, 2)
        elif kind == _K_INT4:
            _put_int_field(b, value, 4)
        elif kind == _K_INT8:
            _put_int_field(b, value, 8)
        elif kind == _K_TIMESTAMPTZ:
            _put_timestamp_field(b, value)
        elif kind == _K_INET:
            _put_inet_field(b, value)
        elif kind == _K_UUID:
            _put_uuid(b, value)
        else:
            _put_bytea_field(b, value)
    return 0


cdef int _put_uuid(Buf* b, object value) except -1:
    if not isinstance(value, _UUID_type):
        raise TypeError(f"expected a UUID, got {type(value).__name__}")
    raw = value.bytes
    return _put_field_bytes(b, PyBytes_AS_STRING(raw), len(raw), False)


cdef int _put_bytea_field(Buf* b, object value) except -1:
    cdef Py_buffer view
    PyObject_GetBuffer(value, &view, PyBUF_SIMPLE)
    try:
        _put_field_bytes(b, <const char*>view.buf, view.len, False)
    finally:
        PyBuffer_Release(&view)
    return 0


cdef bytes _row_tuple(tuple values, bint protocol_jsonb, bint data_jsonb):
    cdef Buf b
    if not _encoder_ok:
        return _wire.copy_tuple(values, _wire.WireFormat(protocol_jsonb, data_jsonb))
    b.data = <char*>PyMem_Malloc(1024)
    if b.data == NULL:
        raise MemoryError()
    b.size = 0
    b.cap = 1024
    try:
        _put_row(&b, values, protocol_jsonb, data_jsonb)
        return PyBytes_FromStringAndSize(b.data, b.size)
    finally:
        PyMem_Free(b.data)


def copy_tuple(values, wire_format=None):
    """Compiled `pipeline.storage.wire.copy_tuple`."""
    _rows_init()
    if wire_format is None:
        wire_format = _wire.JSONB_HEADERS
    return _row_tuple(tuple(values), wire_format.protocol_header_jsonb,
                      wire_format.data_header_jsonb)


cdef object _pure_row(object value, object codec, object partition, object offset,
                      bint store_auth_key, object headers=None):
    """RecordCodec.decode + build_row, as pipeline.storage.batch.build_rows calls them."""
    if value is None:
        raise _RecordDecodeError("no_value", "tombstone or empty record")
    record = codec.decode(value)
    if type(record["capture_time"]) is not int:
        _times_to_micros(record)
    return _build_row(record, kafka_partition=partition, kafka_offset=offset,
                      store_auth_key=store_auth_key, headers=headers)


def build_rows(values, partition, offsets, *, codec, store_auth_key=False, headers=None,
               wire_format=None):
    """Compiled `pipeline.storage.batch.build_rows`."""
    cdef Py_ssize_t index, n = len(values)
    cdef bint encode = wire_format is not None
    cdef bint protocol_jsonb = False, data_jsonb = False
    cdef const uint8_t* p
    cdef _Rec rec
    cdef Buf b
    _rows_init()
    if encode:
        protocol_jsonb = wire_format.protocol_header_jsonb
        data_jsonb = wire_format.data_header_jsonb
    cdef list rows = []
    cdef list failures = []
    # Rows in wire form, for a sink that takes COPY tuples, and when no custom or A-leg
    # headers are configured (build_row extracts and counts those).
    fused = (_fused_fingerprint(codec)
             if encode and _wire_layout_ok and (headers is None or not headers.wanted)
             else None)
    cdef bytes fused_header = b"\xc3\x01" + fused if fused is not None else None
    origin = _ChunkOrigin(codec, partition, store_auth_key) if fused is not None else None
    b.data = <char*>PyMem_Malloc(2048)
    if b.data == NULL:
        raise MemoryError()
    b.size = 0
    b.cap = 2048
    try:
        for index in range(n):
            value = values[index]
            offset = offsets[index]
            row = None
            try:
                if (fused_header is not None and type(value) is bytes
                        and len(<bytes>value) > 10
                        and memcmp(PyBytes_AS_STRING(value), PyBytes_AS_STRING(fused_header),
                                   10) == 0):
                    p = <const uint8_t*>PyBytes_AS_STRING(value)
                    if _read_body(p, len(<bytes>value), &rec) == 0:
                        row = _fused_row(p, &rec, value, partition, offset, store_auth_key,
                                         protocol_jsonb, data_jsonb, &b, origin)
                        if row is not None:
                            rows.append(row)
                            continue
                row = _pure_row(value, codec, partition, offset, store_auth_key, headers)
            except _RecordDecodeError as exc:
                failures.append(_RowFailure(index, exc.reason, exc.detail))
                continue
            except Exception as exc:
                failures.append(
                    _RowFailure(index, "row_build_error", f"{type(exc).__name__}: {exc}"))
                continue
            if encode:
                try:
                    row.wire = _row_tuple(row.values, protocol_jsonb, data_jsonb)
                except (ValueError, TypeError, OverflowError):
                    pass
            rows.append(row)
    finally:
        PyMem_Free(b.data)
    return rows, failures


# -- Fused Avro decode and row build (the common case) --------------------------------
#
# `build_rows` reads values written with the newest writer schema straight from their
# bytes and builds the row of a SIP message that parses, with a UTF-8 payload free of
# NUL, or of a non-SIP payload: a translation of RecordCodec.decode + build_row for
# that case. Anything else (an older schema, a malformed body, a varint beyond 63 bits,
# a payload that is not clean UTF-8, a SIP parse error, a timestamp a datetime cannot
# hold) goes through the pure functions themselves, which give the same rows and
# failures by construction.

from cpython.datetime cimport datetime_new
from libc.stdio cimport snprintf
from libc.string cimport memchr, memcmp, strlen

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8(object unicode) except NULL
    void PyObject_GC_UnTrack(object op)

cdef struct _Span:
    Py_ssize_t off
    Py_ssize_t size
    bint present


cdef struct _OptInt:
    int64_t value
    bint present


cdef struct _Rec:
    Py_ssize_t record_id
    int64_t hep_version
    _OptInt ip_family
    _OptInt ip_proto
    _Span src_ip
    _Span dst_ip
    _OptInt src_port
    _OptInt dst_port
    int64_t capture_time
    _OptInt proto_type
    _OptInt capture_id
    _Span auth_key
    _Span correlation_id
    _OptInt vlan
    _Span node_name
    _Span payload
    int64_t receive_time
    _Span transport
    _Span sender_ip
    _Span receiver_id


# The newest schema's fields as the fused reader expects them: (name, shape).
_FUSED_FIELDS = (
    ("record_id", "fixed16"), ("hep_version", "int"), ("ip_family", "null|int"),
    ("ip_proto", "null|int"), ("src_ip", "null|string"), ("dst_ip", "null|string"),
    ("src_port", "null|int"), ("dst_port", "null|int"), ("capture_time", "long"),
    ("capture_time_from_receiver", "boolean"), ("proto_type", "null|int"),
    ("capture_id", "null|long"), ("keep_alive", "null|int"),
    ("auth_key_present", "boolean"), ("auth_key", "null|string"),
    ("correlation_id", "null|string"), ("vlan", "null|int"), ("node_name", "null|string"),
    ("payload", "bytes"), ("payload_was_compressed", "boolean"),
    ("extra_chunks", "array<int,int,bytes>"), ("receive_time", "long"),
    ("transport", "string"), ("sender_ip", "string"), ("sender_port", "int"),
    ("receiver_id", "string"),
)


def _shape(schema):
    if isinstance(schema, list):
        return "|".join(_shape(branch) for branch in schema)
    if isinstance(schema, str):
        return schema
    kind = schema["type"]
    if kind == "fixed":
        return f"fixed{schema['size']}"
    if kind == "array":
        items = schema["items"]
        if isinstance(items, dict) and items.get("type") == "record":
            return "array<" + ",".join(_shape(f["type"]) for f in items["fields"]) + ">"
        return "array<" + _shape(items) + ">"
    if kind == "record":
        return "record"
    return kind


cdef dict _fused_fingerprints = {}   # id(codec) -> fingerprint the fused reader reads
cdef dict _fused_problems = {}       # id(codec) -> why the fused path is off, or None


cdef object _fused_fingerprint(object codec):
    """The writer fingerprint whose bodies the fused reader can read, or None."""
    key = id(codec)
    found = _fused_fingerprints.get(key, False)
    if found is not False:
        return found
    writer = codec.writer
    shapes = tuple((f["name"], _shape(f["type"])) for f in writer.parsed["fields"])
    fingerprint = None
    if not _wire_layout_ok:
        problem = "the capture columns changed: the compiled code predates them"
    elif shapes != _FUSED_FIELDS:
        problem = "the newest Avro schema is not the one the fused reader reads"
    else:
        fingerprint = writer.fingerprint
        problem = _self_check(codec, b"\xc3\x01" + fingerprint)
        if problem is not None:
            fingerprint = None
    if problem is not None:
        from pipeline.observability import get_logger
        get_logger("pipeline.accel").warning("compiled_row_builder_disabled", reason=problem)
    if len(_fused_fingerprints) > 64:
        _fused_fingerprints.clear()
        _fused_problems.clear()
    _fused_fingerprints[key] = fingerprint
    _fused_problems[key] = problem
    return fingerprint


_SAMPLE_SIP = (
    b"INVITE sip:bob@b.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n"
    b'From: "A" <sip:alice@a.example>;tag=f1\r\nTo: <sip:bob@b.example>\r\n'
    b"Call-ID: abc@h\r\nCSeq: 7 INVITE\r\nContact: <sip:a@10.0.0.1>;expires=60\r\n"
    b"User-Agent: ua\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n",
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK2\r\nFrom: <sip:a@r>;tag=1\r\n"
    b"To: <sip:a@r>;tag=2\r\nCall-ID: reg@h\r\nCSeq: 2 REGISTER\r\nExpires: 300\r\n"
    b"Reason: SIP;cause=200\r\nP-Asserted-Identity: <sip:pai@h>\r\n\r\n",
)


def _sample_records():
    """Records covering the fused builder's branches, for its self-check."""
    base = {
        "record_id": bytes(range(16)), "hep_version": 3, "ip_family": 2, "ip_proto": 17,
        "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "src_port": 5060, "dst_port": 5070,
        "capture_time": 1_700_000_000_123_456, "capture_time_from_receiver": False,
        "proto_type": 1, "capture_id": 2001, "keep_alive": None, "auth_key_present": True,
        "auth_key": "pw", "correlation_id": None, "vlan": 7, "node_name": None,
        "payload": _SAMPLE_SIP[0], "payload_was_compressed": False, "extra_chunks": [],
        "receive_time": 1_700_000_001_000_000, "transport": "udp", "sender_ip": "127.0.0.1",
        "sender_port": 9, "receiver_id": "r1",
    }
    yield base
    yield {**base, "payload": _SAMPLE_SIP[1], "proto_type": None, "capture_id": None,
           "node_name": "node-1", "correlation_id": "corr-1", "auth_key": None}
    yield {**base, "proto_type": 5, "payload": b'{"rtcp": 1}', "capture_id": None,
           "correlation_id": "abc@h"}
    yield {**base, "proto_type": 100, "payload": b"log line", "node_name": "n"}


cdef object _self_check(object codec, bytes header):
    """None if the fused builder gives the pure rows for the samples, else why not.

    It is a translation of build_row and copy_tuple: if they change and it is not
    changed alike, the rows would differ; the pure path then does all the work."""
    cdef const uint8_t* p
    cdef _Rec rec
    cdef Buf b
    b.data = <char*>PyMem_Malloc(2048)
    if b.data == NULL:
        raise MemoryError()
    b.size = 0
    b.cap = 2048
    try:
        for number, record in enumerate(_sample_records()):
            value = codec.encode(record)
            if value[:10] != header:
                return f"sample {number}: not written with the newest schema"
            p = <const uint8_t*>PyBytes_AS_STRING(value)
            if _read_body(p, len(value), &rec) != 0:
                return f"sample {number}: the fused reader cannot read it"
            for store_auth_key in (False, True):
                for protocol_jsonb, data_jsonb in ((True, True), (False, False)):
                    origin = _ChunkOrigin(codec, 3, store_auth_key)
                    mine = _fused_row(p, &rec, value, 3, 42, store_auth_key,
                                      protocol_jsonb, data_jsonb, &b, origin)
                    theirs = _pure_row(value, codec, 3, 42, store_auth_key)
                    if mine is None:
                        return f"sample {number}: not a fused-path record"
                    if mine.table != theirs.table:
                        return f"sample {number}: table {mine.table} != {theirs.table}"
                    if mine.facts != _facts_of(theirs.values):
                        return f"sample {number}: facts {mine.facts} != {theirs.facts}"
                    expected = _row_tuple(theirs.values, protocol_jsonb, data_jsonb)
                    if mine.wire != expected:
                        mine_fields = _tuple_fields(mine.wire)
                        for column, field in enumerate(_tuple_fields(expected)):
                            if column >= len(mine_fields) or mine_fields[column] != field:
                                return (f"sample {number}: column {column} "
                                        f"{mine_fields[column:column + 1]!r} != {field!r}")
                        return f"sample {number}: COPY tuples differ"
    finally:
        PyMem_Free(b.data)
    return None


def _tuple_fields(bytes data):
    """The fields of a binary COPY tuple (None for NULL), for the self-check's report."""
    fields = []
    at = 2
    while at + 4 <= len(data):
        size = int.from_bytes(data[at:at + 4], "big", signed=True)
        at += 4
        fields.append(None if size < 0 else data[at:at + size])
        at += max(size, 0)
    return fields


def fused_row_builder_problem(codec):
    """Why build_rows takes the pure functions for every record of `codec`'s newest
    schema (None: it reads and builds them in C)."""
    _rows_init()
    _fused_fingerprint(codec)
    return _fused_problems.get(id(codec))


# Each reader returns 0, or 1 when the body is not the common case (read it the pure
# way instead).

cdef inline int _rd_long(const uint8_t* p, Py_ssize_t n, Py_ssize_t* pos,
                         int64_t* out) noexcept:
    cdef uint64_t result = 0
    cdef int shift = 0
    cdef uint8_t byte
    while True:
        if pos[0] >= n or shift > 56:
            return 1  # truncated, or wider than 63 bits: the pure reader decides
        byte = p[pos[0]]
        pos[0] += 1
        result |= (<uint64_t>(byte & 0x7F)) << shift
        if not byte & 0x80:
            out[0] = <int64_t>(result >> 1) ^ -(<int64_t>(result & 1))
            return 0
        shift += 7


cdef inline int _rd_opt_long(const uint8_t* p, Py_ssize_t n, Py_ssize_t* pos,
                             _OptInt* out) noexcept:
    cdef int64_t branch
    if _rd_long(p, n, pos, &branch):
        return 1
    if branch == 0:
        out.present = False
        return 0
    if branch != 1:
        return 1
    out.present = True
    return _rd_long(p, n, pos, &out.value)


cdef inline int _rd_span(const uint8_t* p, Py_ssize_t n, Py_ssize_t* pos,
                         _Span* out) noexcept:
    cdef int64_t size
    if _rd_long(p, n, pos, &size):
        return 1
    if size < 0 or size > n - pos[0]:
        return 1
    out.off = pos[0]
    out.size = size
    out.present = True
    pos[0] += size
    return 0


cdef inline int _rd_opt_span(const uint8_t* p, Py_ssize_t n, Py_ssize_t* pos,
                             _Span* out) noexcept:
    cdef int64_t branch
    if _rd_long(p, n, pos, &branch):
        return 1
    if branch == 0:
        out.present = False
        return 0
    if branch != 1:
        return 1
    return _rd_span(p, n, pos, out)


cdef inline int _rd_bool(const uint8_t* p, Py_ssize_t n, Py_ssize_t* pos) noexcept:
    if pos[0] >= n or p[pos[0]] > 1:
        return 1
    pos[0] += 1
    return 0


cdef int _rd_chunks(const uint8_t* p, Py_ssize_t n, Py_ssize_t* pos) noexcept:
    cdef int64_t count, ignored, i
    cdef _Span value
    while True:
        if _rd_long(p, n, pos, &count):
            return 1
        if count == 0:
            return 0
        if count < 0:
            count = -count
            if _rd_long(p, n, pos, &ignored):
                return 1
        if count > n:
            return 1
        for i in range(count):
            if (_rd_long(p, n, pos, &ignored) or _rd_long(p, n, pos, &ignored)
                    or _rd_span(p, n, pos, &value)):
                return 1


cdef int _read_body(const uint8_t* p, Py_ssize_t n, _Rec* r) noexcept:
    """The fields of a body of the newest schema (see _FUSED_FIELDS), from offset 10."""
    cdef Py_ssize_t pos = 10
    cdef _OptInt ignored
    cdef int64_t sender_port
    if n - pos < 16:
        return 1
    r.record_id = pos
    pos += 16
    if (_rd_long(p, n, &pos, &r.hep_version)
            or _rd_opt_long(p, n, &pos, &r.ip_family)
            or _rd_opt_long(p, n, &pos, &r.ip_proto)
            or _rd_opt_span(p, n, &pos, &r.src_ip)
            or _rd_opt_span(p, n, &pos, &r.dst_ip)
            or _rd_opt_long(p, n, &pos, &r.src_port)
            or _rd_opt_long(p, n, &pos, &r.dst_port)
            or _rd_long(p, n, &pos, &r.capture_time)
            or _rd_bool(p, n, &pos)
            or _rd_opt_long(p, n, &pos, &r.proto_type)
            or _rd_opt_long(p, n, &pos, &r.capture_id)
            or _rd_opt_long(p, n, &pos, &ignored)
            or _rd_bool(p, n, &pos)
            or _rd_opt_span(p, n, &pos, &r.auth_key)
            or _rd_opt_span(p, n, &pos, &r.correlation_id)
            or _rd_opt_long(p, n, &pos, &r.vlan)
            or _rd_opt_span(p, n, &pos, &r.node_name)
            or _rd_span(p, n, &pos, &r.payload)
            or _rd_bool(p, n, &pos)
            or _rd_chunks(p, n, &pos)
            or _rd_long(p, n, &pos, &r.receive_time)
            or _rd_span(p, n, &pos, &r.transport)
            or _rd_span(p, n, &pos, &r.sender_ip)
            or _rd_long(p, n, &pos, &sender_port)
            or _rd_span(p, n, &pos, &r.receiver_id)):
        return 1
    return 0 if pos == n else 1


cdef extern from *:
    """
    #define HEP_HIGH_BITS 0x8080808080808080ULL
    #define HEP_LOW_BITS 0x0101010101010101ULL
    """
    const uint64_t _HIGH_BITS "HEP_HIGH_BITS"
    const uint64_t _LOW_BITS "HEP_LOW_BITS"


cdef inline bint _is_ascii_clean(const uint8_t* p, Py_ssize_t n) noexcept:
    """ASCII without NUL: valid UTF-8 whose text needs no cleaning.

    Eight bytes at a time: payloads are read whole, SDP bodies included."""
    cdef Py_ssize_t i = 0
    cdef uint64_t word
    while i + 8 <= n:
        memcpy(&word, p + i, 8)
        # No high bit set, then no zero byte (exact once every high bit is clear).
        if word & _HIGH_BITS or (word - _LOW_BITS) & ~word & _HIGH_BITS:
            return False
        i += 8
    while i < n:
        if p[i] == 0 or p[i] >= 0x80:
            return False
        i += 1
    return True


cdef inline bint _is_ascii(const uint8_t* p, Py_ssize_t n) noexcept:
    """No byte of p[:n] is 0x80 or above."""
    cdef Py_ssize_t i = 0
    cdef uint64_t word
    while i + 8 <= n:
        memcpy(&word, p + i, 8)
        if word & _HIGH_BITS:
            return False
        i += 8
    while i < n:
        if p[i] >= 0x80:
            return False
        i += 1
    return True


cdef object _text(const uint8_t* p, _Span s):
    """A string field as the pure reader decodes it (UnicodeDecodeError alike)."""
    if not s.present:
        return None
    if _is_ascii_clean(p + s.off, s.size):
        return PyUnicode_DecodeASCII(<const char*>p + s.off, s.size, NULL)
    return PyUnicode_DecodeUTF8(<const char*>p + s.off, s.size, NULL)


cdef inline object _opt_int(_OptInt v):
    return v.value if v.present else None


cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object unicode)
    void* PyUnicode_DATA(object unicode)


cdef inline bint _json_plain(const char* s, Py_ssize_t n) noexcept:
    """True when encode_basestring_ascii of the ASCII text s[:n] is s[:n] in quotes."""
    cdef Py_ssize_t i
    cdef uint8_t c
    for i in range(n):
        c = <uint8_t>s[i]
        if c < 0x20 or c > 0x7E or c == 0x22 or c == 0x5C:
            return False
    return True


cdef int _put_json_str(Buf* b, str text) except -1:
    """What `_escape(text)` (json's encode_basestring_ascii) writes."""
    cdef Py_ssize_t n
    cdef const char* s
    if text is None:
        raise TypeError("expected str, got NoneType")
    # An ASCII str's characters are its bytes; any other str has a character that
    # json escapes (and may hold lone surrogates, which UTF-8 cannot encode).
    if PyUnicode_IS_ASCII(text):
        s = <const char*>PyUnicode_DATA(text)
        n = len(text)
        if _json_plain(s, n):
            _put_byte(b, 34)
            _put_raw(b, s, n)
            return _put_byte(b, 34)
    escaped = _escape_json(text)
    s = PyUnicode_AsUTF8AndSize(escaped, &n)
    return _put_raw(b, s, n)


cdef inline int _put_cstr(Buf* b, const char* s) except -1:
    return _put_raw(b, s, strlen(s))


cdef int _put_decimal(Buf* b, int64_t value) except -1:
    """str(value) (printf's %lld, without its cost)."""
    cdef char digits[24]
    cdef int k = 24
    # The magnitude as unsigned: -INT64_MIN does not fit an int64.
    cdef uint64_t magnitude = <uint64_t>value if value >= 0 else 0 - <uint64_t>value
    while True:
        k -= 1
        digits[k] = <char>(48 + magnitude % 10)
        magnitude //= 10
        if magnitude == 0:
            break
    if value < 0:
        k -= 1
        digits[k] = 45
    return _put_raw(b, digits + k, 24 - k)


cdef str _buf_text(Buf* b):
    return PyUnicode_DecodeASCII(b.data, b.size, NULL)


cdef str _clean_nul(object text):
    if text is None or "\x00" not in text:
        return text
    return text.replace("\x00", "")


# Microseconds since 1970 a datetime can hold (years 1 to 9999).
DEF _MIN_MICROS = -62135596800000000
DEF _MAX_MICROS = 253402300799999999


cdef inline int64_t _floor_div(int64_t a, int64_t b) noexcept:
    """Python's a // b for b > 0 (the module divides the C way: cdivision)."""
    cdef int64_t q = a // b
    return q - 1 if (a % b) < 0 else q


cdef object _utc_datetime(int64_t micros):
    """_EPOCH + timedelta(microseconds=micros), for micros in range."""
    cdef int64_t days = _floor_div(micros, 86400000000)
    cdef int64_t rest = micros - days * 86400000000
    cdef int64_t z, era, doe, yoe, y, doy, mp, d, m
    # Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    z = days + 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    if m <= 2:
        y += 1
    return datetime_new(y, m, d, rest // 3600000000, (rest // 60000000) % 60,
                        (rest // 1000000) % 60, rest % 1000000, _UTC)


# data_header's keys between "cseq" and "expires" (rows._SIP_DATA_KEYS), each with
# the comma before it.
cdef const char* _DATA_KEYS[14]
_DATA_KEYS[:] = [b',"ruri_user":', b',"ruri_domain":', b',"from_user":', b',"from_domain":',
                 b',"from_tag":', b',"to_user":', b',"to_domain":', b',"to_tag":',
                 b',"contact_user":', b',"contact_domain":', b',"user_agent":',
                 b',"pid_user":', b',"content_type":', b',"reason":']


# Microseconds from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
DEF _PG_EPOCH_MICROS = 946684800000000


cdef inline int _put_timestamp_micros(Buf* b, int64_t micros) except -1:
    """A timestamptz field of the moment `micros` after 1970 (in datetime's range)."""
    _put_be_int(b, 8, 4)
    return _put_be_int(b, <uint64_t>(micros - _PG_EPOCH_MICROS), 8)


cdef inline int _put_small_or_null(Buf* b, bint present, int64_t value) except -1:
    """An int2 column build_row sets to None when the value does not fit it."""
    if not present or not -32768 <= value <= 32767:
        return _put_null(b)
    _put_be_int(b, 2, 4)
    return _put_be_int(b, <uint64_t>value, 2)


cdef inline int _put_opt_int4(Buf* b, _OptInt v) except -1:
    """An int4 column build_row passes on as it is (copy_tuple then refuses a value
    that does not fit)."""
    if not v.present:
        return _put_null(b)
    if not -2147483648 <= v.value <= 2147483647:
        raise OverflowError("int4: value out of range")
    _put_be_int(b, 4, 4)
    return _put_be_int(b, <uint64_t>v.value, 4)


cdef inline int _put_opt_int8(Buf* b, _OptInt v) except -1:
    if not v.present:
        return _put_null(b)
    _put_be_int(b, 8, 4)
    return _put_be_int(b, <uint64_t>v.value, 8)


cdef inline int _put_opt_text(Buf* b, object value) except -1:
    if value is None:
        return _put_null(b)
    return _put_text_field(b, value, False)


cdef inline int _put_opt_int_obj(Buf* b, object value, int size) except -1:
    if value is None:
        return _put_null(b)
    return _put_int_field(b, value, size)


cdef inline Py_ssize_t _open_field(Buf* b, bint jsonb) except -1:
    """Start a field whose length is known once it is written (`_close_field`)."""
    cdef Py_ssize_t at = b.size
    _reserve(b, 5)
    b.size += 4
    if jsonb:
        b.data[b.size] = 1
        b.size += 1
    return at


cdef inline int _close_field(Buf* b, Py_ssize_t at) except -1:
    cdef Py_ssize_t n = b.size - at - 4
    if n > 0x7FFFFFFF:
        raise OverflowError("value too long for a COPY field")
    _put_be(b.data + at, <uint64_t>n, 4)
    return 0


cdef int _check_text(const uint8_t* p, _Span s) except -1:
    """Raise UnicodeDecodeError where the pure reader would (a string field that is
    not UTF-8), without making the str of an ASCII one."""
    if s.present and not _is_ascii(p + s.off, s.size):
        PyUnicode_DecodeUTF8(<const char*>p + s.off, s.size, NULL)
    return 0


cdef int _put_json_span(Buf* b, const uint8_t* p, _Span s) except -1:
    """`_put_json_str(b, text or "")` of a string field read with `_text`."""
    cdef const char* c = <const char*>p + s.off
    if not s.present:
        return _put_raw(b, '""', 2)
    if _is_ascii(p + s.off, s.size) and _json_plain(c, s.size):
        _put_byte(b, 34)
        _put_raw(b, c, s.size)
        return _put_byte(b, 34)
    return _put_json_str(b, _text(p, s) or "")


cdef int _put_json_decimal(Buf* b, object number) except -1:
    """`_put_json_str(b, str(number))` of an int."""
    cdef int64_t v
    if type(number) is int:
        try:
            v = number
        except OverflowError:
            pass
        else:
            _put_byte(b, 34)
            _put_decimal(b, v)
            return _put_byte(b, 34)
    return _put_json_str(b, str(number))


cdef int _put_json_cseq(Buf* b, object number, object method) except -1:
    """`_put_json_str(b, f"{number} {method}")`."""
    cdef int64_t v
    cdef const char* s
    if (type(number) is int and type(method) is str and PyUnicode_IS_ASCII(method)
            and _json_plain(<const char*>PyUnicode_DATA(method), len(method))):
        try:
            v = number
        except OverflowError:
            pass
        else:
            _put_byte(b, 34)
            _put_decimal(b, v)
            _put_byte(b, 32)
            _put_raw(b, <const char*>PyUnicode_DATA(method), len(method))
            return _put_byte(b, 34)
    return _put_json_str(b, f"{number} {method}")


# The facts `_fused_row` gives a row, in this order (rows.FACTS).
_FACTS_LAYOUT = (
    "hep_type", "capture_time", "payload", "capture_id", "node_name", "src_ip", "dst_ip",
    "call_id", "method", "status", "cseq_num", "cseq_method", "to_tag", "kafka_partition",
)


# The capture columns' kinds, in the order `_fused_row` writes them: it is used only
# while pipeline.storage.wire.COLUMN_KINDS says the same.
_WIRE_LAYOUT = (
    "text", "timestamptz", "header", "header", "text", "bytea", "uuid", "int2", "int2",
    "int8", "text", "text", "int2", "int2", "inet", "int4", "inet", "int4", "int4",
    "timestamptz", "text", "text", "int2", "text", "int8", "text", "text", "text", "text",
    "text", "text", "text", "text", "text", "text", "text", "text", "text", "int4", "text",
    "int4", "int8", "jsonb",
)


cdef object _fused_row(const uint8_t* p, _Rec* r, object value, object partition,
                       object offset, bint store_auth_key, bint protocol_jsonb,
                       bint data_jsonb, Buf* b, object origin):
    """The CaptureRow in wire form of the record at `p`, or None to take the pure path.

    A translation of build_row + copy_tuple for the common case: the COPY tuple is
    written from the record's bytes and the SIP summary (no values tuple, datetimes,
    UUID or header strings), the row keeps its facts (rows.FACTS) and its source,
    whose values the pure builder makes if something asks (`origin`)."""
    cdef int k
    cdef int64_t seconds, useconds, hep_type
    cdef Py_ssize_t at
    cdef bint is_sip = not r.proto_type.present or r.proto_type.value == 1
    cdef const uint8_t* payload_p = p + r.payload.off
    if not _is_ascii_clean(payload_p, r.payload.size):
        # Non-ASCII UTF-8 is common enough to take here too; NUL and invalid UTF-8
        # (raw_bytes) are not.
        if memchr(payload_p, 0, r.payload.size) != NULL:
            return None
        try:
            raw = PyUnicode_DecodeUTF8(<const char*>payload_p, r.payload.size, NULL)
        except UnicodeDecodeError:
            return None
    else:
        raw = PyUnicode_DecodeASCII(<const char*>payload_p, r.payload.size, NULL)
    if not (_MIN_MICROS <= r.capture_time <= _MAX_MICROS
            and _MIN_MICROS <= r.receive_time <= _MAX_MICROS):
        return None
    try:
        src_ip = _text(p, r.src_ip)
        dst_ip = _text(p, r.dst_ip)
        correlation_id = _clean_nul(_text(p, r.correlation_id))
        node_name = _clean_nul(_text(p, r.node_name))
        _check_text(p, r.auth_key)
        _check_text(p, r.transport)
        _check_text(p, r.sender_ip)
        _check_text(p, r.receiver_id)
    except UnicodeDecodeError:
        return None
    sip = None
    if is_sip:
        try:
            sip = _summarise_span(payload_p, r.payload.size)
            if sip is None:
                sip = _summarise_sip(
                    PyBytes_FromStringAndSize(<const char*>payload_p, r.payload.size))
        except _SipParseError:
            return None  # the pure path scans the Call-ID and keeps the reason
    hep_type = r.proto_type.value if r.proto_type.present else 1
    hep_type_value = hep_type if -32768 <= hep_type <= 32767 else None
    capture_id = _opt_int(r.capture_id)
    b.size = 0
    try:
        _put_be_int(b, _NCOLUMNS, 2)
        # sid
        if sip is not None:
            (is_request, method, status_code, reason, ruri_user, ruri_domain, call_id,
             cseq_number, cseq_method, from_user, from_domain, from_tag, to_user, to_domain,
             to_tag, via_branch, contact_user, contact_host, expires, user_agent, content_type,
             reason_header, pai_user) = sip
            # rows.table_for of a SIP record, by its (CSeq) method.
            routed_by = method if is_request else cseq_method
            if routed_by in _CALL_METHODS:
                table = _CALL_TABLE
            elif routed_by in _REGISTRATION_METHODS:
                table = _REGISTRATION_TABLE
            else:
                table = _SIP_DEFAULT_TABLE
            _put_text_field(b, call_id if len(call_id) <= 256 else call_id[:256], False)
        else:
            table = _table_for(r.proto_type.value, None)
            sid = correlation_id or ""
            _put_text_field(b, sid if len(sid) <= 256 else sid[:256], False)
        _put_timestamp_micros(b, r.capture_time)

        # protocol_header, as rows._protocol_header writes it.
        at = _open_field(b, protocol_jsonb)
        _put_cstr(b, '{"protocolFamily":')
        _put_decimal(b, r.ip_family.value if r.ip_family.present else 0)
        _put_cstr(b, ',"protocol":')
        _put_decimal(b, r.ip_proto.value if r.ip_proto.present else 0)
        _put_cstr(b, ',"srcIp":')
        _put_json_str(b, src_ip or "")
        _put_cstr(b, ',"dstIp":')
        _put_json_str(b, dst_ip or "")
        _put_cstr(b, ',"srcPort":')
        _put_decimal(b, r.src_port.value if r.src_port.present else 0)
        _put_cstr(b, ',"dstPort":')
        _put_decimal(b, r.dst_port.value if r.dst_port.present else 0)
        seconds = _floor_div(r.capture_time, 1000000)
        useconds = r.capture_time - seconds * 1000000
        _put_cstr(b, ',"timeSeconds":')
        _put_decimal(b, seconds)
        _put_cstr(b, ',"timeUseconds":')
        _put_decimal(b, useconds)
        _put_cstr(b, ',"payloadType":')
        _put_decimal(b, r.proto_type.value if r.proto_type.present else 1)
        # homer-app casts captureId to int: always a decimal string, "0" without one.
        _put_cstr(b, ',"captureId":"')
        _put_decimal(b, r.capture_id.value if r.capture_id.present else 0)
        _put_byte(b, 34)
        # HOMER's correlation id: the HEP chunk, else (SIP) the Call-ID.
        homer_correlation = correlation_id
        if sip is not None and not correlation_id:
            homer_correlation = call_id
        _put_cstr(b, ',"correlation_id":')
        _put_json_str(b, homer_correlation or "")
        _put_cstr(b, ',"transport":')
        _put_json_span(b, p, r.transport)
        _put_cstr(b, ',"receiverId":')
        _put_json_span(b, p, r.receiver_id)
        if node_name:
            _put_cstr(b, ',"nodeName":')
            _put_json_str(b, node_name)
        if store_auth_key and r.auth_key.present:
            _put_cstr(b, ',"capturePass":')
            _put_json_str(b, _clean_nul(_text(p, r.auth_key)) or "")
        _put_byte(b, 125)
        _close_field(b, at)

        # data_header
        if sip is not None:
            # As build_row writes it for SIP.
            at = _open_field(b, data_jsonb)
            _put_cstr(b, '{"callid":')
            _put_json_str(b, call_id)
            _put_cstr(b, ',"method":')
            if is_request:
                _put_json_str(b, method)
            else:
                # For a response HOMER's `method` is the status code.
                _put_json_decimal(b, status_code)
                method = None
            _put_cstr(b, ',"cseq":')
            _put_json_cseq(b, cseq_number, cseq_method)
            fields = (ruri_user, ruri_domain, from_user, from_domain, from_tag, to_user,
                      to_domain, to_tag, contact_user, contact_host, user_agent, pai_user,
                      content_type, reason_header)
            for k in range(14):
                _put_cstr(b, _DATA_KEYS[k])
                _put_json_str(b, fields[k] or "")
            _put_cstr(b, ',"expires":')
            if expires is not None:
                _put_json_decimal(b, expires)
            else:
                _put_raw(b, '""', 2)
            _put_byte(b, 125)
            _close_field(b, at)
        else:
            _put_text_field(b, _dumps({
                "node": node_name or str(r.capture_id.value if r.capture_id.present else 0),
                "proto": _proto_type_name(r.proto_type.value).lower(),
            }), data_jsonb)
        # raw (the payload is UTF-8 without NUL: its bytes are raw's), raw_bytes
        _put_field_bytes(b, <const char*>payload_p, r.payload.size, False)
        _put_null(b)
        # The HEP envelope: record_id .. receive_time.
        _put_field_bytes(b, <const char*>p + r.record_id, 16, False)
        _put_small_or_null(b, True, r.hep_version)
        _put_small_or_null(b, True, hep_type)
        _put_opt_int8(b, r.capture_id)
        _put_opt_text(b, node_name)
        _put_opt_text(b, correlation_id)
        _put_small_or_null(b, r.ip_family.present, r.ip_family.value)
        _put_small_or_null(b, r.ip_proto.present, r.ip_proto.value)
        if src_ip is None:
            _put_null(b)
        else:
            _put_inet_field(b, src_ip)
        _put_opt_int4(b, r.src_port)
        if dst_ip is None:
            _put_null(b)
        else:
            _put_inet_field(b, dst_ip)
        _put_opt_int4(b, r.dst_port)
        _put_opt_int4(b, r.vlan)
        _put_timestamp_micros(b, r.receive_time)

        if sip is not None:
            if status_code is not None and not -32768 <= status_code <= 32767:
                status_code = None
            if cseq_number is not None and not -9223372036854775808 <= cseq_number <= 9223372036854775807:
                cseq_number = None
            if expires is not None and not -2147483648 <= expires <= 2147483647:
                expires = None
            _put_text_field(b, call_id, False)
            _put_opt_text(b, method)
            _put_opt_int_obj(b, status_code, 2)
            _put_opt_text(b, reason)
            _put_opt_int_obj(b, cseq_number, 8)
            for text in (cseq_method, from_user, from_domain, from_tag, to_user, to_domain,
                         to_tag, ruri_user, ruri_domain, user_agent, via_branch,
                         contact_user, contact_host):
                _put_opt_text(b, text)
            _put_opt_int_obj(b, expires, 4)
            facts = (hep_type_value, r.capture_time, raw, capture_id, node_name, src_ip,
                     dst_ip, call_id, method, status_code, cseq_number, cseq_method,
                     to_tag, partition)
        else:
            for k in range(19):
                _put_null(b)
            facts = (hep_type_value, r.capture_time, raw, capture_id, node_name, src_ip,
                     dst_ip, None, None, None, None, None, None, partition)
        _put_null(b)                        # parse_error
        _put_int_field(b, partition, 4)
        _put_int_field(b, offset, 8)
        _put_null(b)                        # custom_headers
    except (ValueError, TypeError, OverflowError):
        # A value its column cannot hold: the pure path builds the row and leaves its
        # wire None, as copy_tuple refuses it.
        return None
    # Strings, numbers and None: the facts cannot be part of a cycle, and the cyclic
    # GC need not scan them while the batch is alive.
    PyObject_GC_UnTrack(facts)
    wire = PyBytes_FromStringAndSize(b.data, b.size)
    return _CaptureRow(table, None, wire, facts, value, offset, origin)


# -- SIP summary (pipeline.sip.parser.summarise_sip) ----------------------------------
#
# The head's lines are split and their names recognised in C, for the headers the
# summary reads; the start line and the header values are then parsed by the parser's
# own functions (_start_line, _summary and the value caches they use). A head with a
# byte outside ASCII (str.lower and the UTF-8 decoding with replacement have cases of
# their own) takes summarise_sip itself.

# Canonical names of the headers _summary reads, and their compact forms.
_SUMMARY_HEADERS = (
    "call-id", "from", "to", "via", "contact", "cseq", "expires", "p-asserted-identity",
    "user-agent", "server", "content-type", "reason",
)
DEF _NSUMMARY = 12
# The same names as C strings (literals: they live as long as the module) and the
# compact form of each (0: none).
cdef const char* _summary_names[_NSUMMARY]
_summary_names[:] = [b"call-id", b"from", b"to", b"via", b"contact", b"cseq", b"expires",
                     b"p-asserted-identity", b"user-agent", b"server", b"content-type",
                     b"reason"]
cdef Py_ssize_t _summary_name_size[_NSUMMARY]
for _slot in range(_NSUMMARY):
    _summary_name_size[_slot] = strlen(_summary_names[_slot])
cdef char _compact_of[_NSUMMARY]
_compact_of[:] = [b"i"[0], b"f"[0], b"t"[0], b"v"[0], b"m"[0], 0, 0, 0, 0, 0, b"c"[0], 0]


cdef inline bint _is_ws(uint8_t c) noexcept:
    return c == 32 or c == 9


cdef int _summary_slot(const uint8_t* p, Py_ssize_t a, Py_ssize_t b) noexcept:
    """The slot of the header name p[a:b] (stripped, case-insensitive), or -1."""
    cdef Py_ssize_t n, i
    cdef int slot
    cdef const char* name
    cdef uint8_t c
    while a < b and _is_ws(p[a]):
        a += 1
    while b > a and _is_ws(p[b - 1]):
        b -= 1
    n = b - a
    if n == 1:
        c = _lower(p[a])
        for slot in range(_NSUMMARY):
            if _compact_of[slot] == <char>c:
                return slot
    for slot in range(_NSUMMARY):
        name = _summary_names[slot]
        if _summary_name_size[slot] != n:
            continue
        for i in range(n):
            if _lower(p[a + i]) != <uint8_t>name[i]:
                break
        else:
            return slot
    return -1


cdef inline bint _is_ws_cr(uint8_t c) noexcept:
    return c == 32 or c == 9 or c == 13


cdef object _stripped_text(const uint8_t* p, Py_ssize_t a, Py_ssize_t b):
    """p[a:b].strip(" \\t\\r") as str (ASCII)."""
    while a < b and _is_ws_cr(p[a]):
        a += 1
    while b > a and _is_ws_cr(p[b - 1]):
        b -= 1
    return PyUnicode_DecodeASCII(<const char*>p + a, b - a, NULL)


cdef object _summarise_fast(bytes payload):
    """summarise_sip(payload) for an ASCII head; None to call summarise_sip itself."""
    return _summarise_span(<const uint8_t*>PyBytes_AS_STRING(payload), len(payload))


cdef inline Py_ssize_t _line_end(const uint8_t* p, Py_ssize_t a, Py_ssize_t end) noexcept:
    """The position of the first LF in p[a:end], else end."""
    cdef const void* found
    if a >= end:
        return end
    found = memchr(p + a, 10, end - a)
    return <Py_ssize_t>(<const uint8_t*>found - p) if found != NULL else end


cdef object _summarise_span(const uint8_t* p, Py_ssize_t n):
    """_summarise_fast of the payload p[:n] (no bytes object needed)."""
    cdef Py_ssize_t start = 0, end = -1, i, line_start, line_end, colon
    cdef int slot, last_slot = -1
    cdef bint can_fold = False, blank = True
    cdef list found = [None] * _NSUMMARY
    # _split_head: the head ends at the first "\n\r\n", or at a "\n\n" wholly before
    # it. Walking the LFs in order finds the earlier of the two; a "\n\n" whose second
    # LF starts a "\n\r\n" is not wholly before it.
    if n and (p[0] == 13 or p[0] == 10):
        while start < n and (p[start] == 13 or p[start] == 10):
            start += 1
    i = _line_end(p, start, n)
    while i < n:
        if i + 2 < n and p[i + 1] == 13 and p[i + 2] == 10:
            end = i
            break
        if i + 1 < n and p[i + 1] == 10:
            end = i + 1 if i + 3 < n and p[i + 2] == 13 and p[i + 3] == 10 else i
            break
        i = _line_end(p, i + 1, n)
    if end < 0:
        end = n
    if not _is_ascii(p + start, end - start):
        return None
    for i in range(start, end):
        if not (p[i] == 32 or 9 <= p[i] <= 13):
            blank = False
            break
    if blank:
        return None  # empty: summarise_sip raises
    line_end = _line_end(p, start, end)
    first_line = PyUnicode_DecodeASCII(<const char*>p + start, line_end - start, NULL)
    parsed_start = _start_line_fast(first_line)
    # _collect, for the headers _summary reads
    while line_end < end:
        line_start = line_end + 1
        line_end = _line_end(p, line_start, end)
        if line_start < line_end and _is_ws(p[line_start]):
            # A continuation line (folded header value).
            cont = _stripped_text(p, line_start, line_end)
            if can_fold and cont and last_slot >= 0:
                prev = found[last_slot]
                found[last_slot] = f"{prev} {cont}" if prev else cont
            continue
        colon = _find_char(<const char*>p, line_start, line_end, 58)
        if colon < 0:
            can_fold = False
            continue
        i = line_start
        while i < colon and _is_ws(p[i]):
            i += 1
        if i == colon:  # an empty name: not a header
            can_fold = False
            continue
        slot = _summary_slot(p, line_start, colon)
        can_fold = True
        last_slot = -1
        if slot >= 0 and found[slot] is None:
            found[slot] = _stripped_text(p, colon + 1, line_end)
            last_slot = slot
    return _summary_of(parsed_start, found)


cdef dict _first_headers(list found):
    """The parser's `first` mapping (canonical name -> first value) of `found`."""
    first = {}
    for slot in range(_NSUMMARY):
        if found[slot] is not None:
            first[_SUMMARY_HEADERS[slot]] = found[slot]
    return first


def summarise_sip(payload):
    """Compiled `pipeline.sip.parser.summarise_sip`."""
    _rows_init()
    summary = _summarise_fast(payload) if type(payload) is bytes else None
    return _SipSummary._make(summary) if summary is not None else _summarise_sip(payload)


# From, To and Via carry values new with every dialog or transaction (tags, branches):
# the parser's caches miss on them. Their common shapes are read here; any other shape
# goes to the parser's own function (_party, _via).

cdef inline Py_ssize_t _find_char(const char* s, Py_ssize_t a, Py_ssize_t b, char c) noexcept:
    cdef const void* at
    if a >= b:
        return -1
    at = memchr(s + a, c, b - a)
    return <Py_ssize_t>(<const char*>at - s) if at != NULL else -1


cdef inline Py_ssize_t _find_text(const char* s, Py_ssize_t a, Py_ssize_t b,
                                  const char* needle, Py_ssize_t k) noexcept:
    cdef Py_ssize_t i
    for i in range(a, b - k + 1):
        if memcmp(s + i, needle, k) == 0:
            return i
    return -1


cdef object _ws_stripped_or_none(const char* s, Py_ssize_t a, Py_ssize_t b):
    """s[a:b].strip(" \\t") or None."""
    while a < b and (s[a] == 32 or s[a] == 9):
        a += 1
    while b > a and (s[b - 1] == 32 or s[b - 1] == 9):
        b -= 1
    if a == b:
        return None
    return PyUnicode_DecodeASCII(s + a, b - a, NULL)


cdef bint _plain_ascii(const char* s, Py_ssize_t n) noexcept:
    """Printable ASCII, spaces and tabs only: str.split() and strip() act on SP/HT."""
    cdef Py_ssize_t i
    cdef uint8_t c
    for i in range(n):
        c = <uint8_t>s[i]
        if not (32 <= c <= 126 or c == 9):
            return False
    return True


cdef object _param_fast(const char* s, Py_ssize_t a, Py_ssize_t b, const char* needle,
                        str value):
    """_param(value[a:b], needle) (the parser's own case-insensitive search when the
    usual spelling is absent)."""
    cdef Py_ssize_t at, end
    cdef Py_ssize_t k = strlen(needle)
    if a >= b:
        return None
    at = _find_text(s, a, b, needle, k)
    if at < 0:
        return _param(value[a:b], needle.decode("ascii"))
    at += k
    end = _find_char(s, at, b, 59)
    return _ws_stripped_or_none(s, at, end if end >= 0 else b)


cdef object _addr_fast(str value, bint first_only, const char* needle):
    """(user, domain, param) of a From/To/Contact value of the usual shape, as
    _parse_addr + _parse_uri + _param(params, needle) give them; None for the parser."""
    cdef Py_ssize_t n, a, b, lt, gt, close, at, colon, end, uri_a, uri_b
    cdef const char* s = PyUnicode_AsUTF8AndSize(value, &n)
    if not _plain_ascii(s, n):
        return None
    a = 0
    b = n
    while a < b and (s[a] == 32 or s[a] == 9):
        a += 1
    while b > a and (s[b - 1] == 32 or s[b - 1] == 9):
        b -= 1
    if a < b and s[a] == 34:  # a quoted display name
        close = _find_char(s, a + 1, b, 34)
        if close < 0 or _find_char(s, a + 1, close, 92) >= 0:
            return None
        lt = _find_char(s, close + 1, b, 60)
    else:
        lt = _find_char(s, a, b, 60)
        if first_only:
            close = _find_char(s, a, b, 44)
            if close >= 0 and (lt < 0 or close < lt):
                return None  # a list whose first element is an addr-spec
    if lt < 0:
        return None  # addr-spec form
    gt = _find_char(s, lt, b, 62)
    if gt < 0:
        return None
    if first_only:
        # params = rest[gt + 1:], cut at its first comma
        end = _find_char(s, gt + 1, b, 44)
        if end >= 0:
            b = end
    # The URI: rest[lt + 1:gt].strip(_WS), then _parse_uri on it.
    uri_a = lt + 1
    uri_b = gt
    while uri_a < uri_b and (s[uri_a] == 32 or s[uri_a] == 9):
        uri_a += 1
    while uri_b > uri_a and (s[uri_b - 1] == 32 or s[uri_b - 1] == 9):
        uri_b -= 1
    if uri_b - uri_a >= 4 and memcmp(s + uri_a, "sip:", 4) == 0:
        uri_a += 4
    elif uri_b - uri_a >= 5 and memcmp(s + uri_a, "sips:", 5) == 0:
        uri_a += 5
    elif uri_a == uri_b:
        # No URI at all: user and domain stay None.
        return (None, None, _param_fast(s, gt + 1, b, needle, value))
    else:
        return None  # tel:, other schemes and spellings: the parser
    user = None
    at = _find_char(s, uri_a, uri_b, 64)
    if at >= 0:
        colon = _find_char(s, uri_a, at, 58)
        end = colon if colon >= 0 else at
        if end > uri_a:
            user = PyUnicode_DecodeASCII(s + uri_a, end - uri_a, NULL)
        uri_a = at + 1
    # hostport = rest.partition(";")[0], then .partition("?")[0], stripped
    end = _find_char(s, uri_a, uri_b, 59)
    if end >= 0:
        uri_b = end
    end = _find_char(s, uri_a, uri_b, 63)
    if end >= 0:
        uri_b = end
    while uri_a < uri_b and (s[uri_a] == 32 or s[uri_a] == 9):
        uri_a += 1
    while uri_b > uri_a and (s[uri_b - 1] == 32 or s[uri_b - 1] == 9):
        uri_b -= 1
    if uri_a < uri_b and s[uri_a] == 91:
        return None  # [IPv6]: the parser
    colon = _find_char(s, uri_a, uri_b, 58)
    if colon >= 0 and _find_char(s, colon + 1, uri_b, 58) >= 0:
        domain = PyUnicode_DecodeASCII(s + uri_a, uri_b - uri_a, NULL)
    else:
        end = colon if colon >= 0 else uri_b
        domain = PyUnicode_DecodeASCII(s + uri_a, end - uri_a, NULL) if end > uri_a else None
    return (user, domain, _param_fast(s, gt + 1, b, needle, value))


cdef object _via_branch_fast(str value, object fallback):
    """_via(value)[3] for a single Via of the usual shape, else fallback(value)[3]."""
    cdef Py_ssize_t n, a, token_end, slashes, i, semi, at, end
    cdef const char* s = PyUnicode_AsUTF8AndSize(value, &n)
    if not _plain_ascii(s, n) or _find_char(s, 0, n, 44) >= 0:
        return fallback(value)[3]
    a = 0
    while a < n and (s[a] == 32 or s[a] == 9):
        a += 1
    token_end = a
    slashes = 0
    while token_end < n and s[token_end] != 32 and s[token_end] != 9:
        if s[token_end] == 47:
            slashes += 1
        token_end += 1
    i = token_end
    while i < n and (s[i] == 32 or s[i] == 9):
        i += 1
    if slashes != 2 or i >= n or token_end == a:
        return fallback(value)[3]
    semi = _find_char(s, i, n, 59)
    if semi < 0:
        return None
    at = _find_text(s, semi, n, ";branch=", 8)
    if at < 0:
        return fallback(value)[3]
    at += 8
    end = _find_char(s, at, n, 59)
    return _ws_stripped_or_none(s, at, end if end >= 0 else n)


# The slots of _SUMMARY_HEADERS.
DEF _H_CALL_ID = 0
DEF _H_FROM = 1
DEF _H_TO = 2
DEF _H_VIA = 3
DEF _H_CONTACT = 4
DEF _H_CSEQ = 5
DEF _H_EXPIRES = 6
DEF _H_PAI = 7
DEF _H_USER_AGENT = 8
DEF _H_SERVER = 9
DEF _H_CONTENT_TYPE = 10
DEF _H_REASON = 11


cdef tuple _summary_of(object start, list found):
    """pipeline.sip.parser._summary of the first values `found` (per _SUMMARY_HEADERS
    slot, None when absent), with the fast From/To/Via readers; a plain tuple (the row
    builder unpacks it at once), a SipSummary for summarise_sip."""
    is_request, method, status_code, reason, _, ruri_user, ruri_domain = start
    call_id, cseq_number, cseq_method = _call_id_cseq_fast(found)
    value = found[_H_FROM]
    if value:
        party = _addr_fast(value, False, ";tag=")
        if party is None:
            party = _party_py(value)[1:]
        from_user, from_domain, from_tag = party
    else:
        from_user = from_domain = from_tag = None
    value = found[_H_TO]
    if value:
        party = _addr_fast(value, False, ";tag=")
        if party is None:
            party = _party_py(value)[1:]
        to_user, to_domain, to_tag = party
    else:
        to_user = to_domain = to_tag = None
    value = found[_H_VIA]
    via_branch = _via_branch_fast(value, _via_py) if value else None
    value = found[_H_CONTACT]
    if value:
        contact = _addr_fast(value, True, ";expires=")
        if contact is None:
            contact_user, contact_host, _, contact_expires = _contact_py(value)
        else:
            contact_user, contact_host, expires_param = contact
            contact_expires = _to_int(expires_param, 10) if expires_param is not None else None
    else:
        contact_user = contact_host = contact_expires = None
    value = found[_H_EXPIRES]
    expires = _to_int(value, 10) if value is not None else None
    if expires is None:
        expires = contact_expires
    value = found[_H_PAI]
    return (
        is_request, method, status_code, reason, ruri_user, ruri_domain, call_id,
        cseq_number, cseq_method, from_user, from_domain, from_tag, to_user, to_domain,
        to_tag, via_branch, contact_user, contact_host, expires,
        found[_H_USER_AGENT] or found[_H_SERVER] or None,
        found[_H_CONTENT_TYPE] or None,
        found[_H_REASON] or None,
        _pai_py(value) if value else None,
    )


# The start line and CSeq of the usual spelling; other spellings go to the parser's
# own _start_line and _call_id_cseq.

cdef inline bint _is_token_char(uint8_t c) noexcept:
    # parser._is_token: [A-Za-z0-9.!%*_+`'~-]
    return (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or c == 46 or c == 33
            or c == 37 or c == 42 or c == 95 or c == 43 or c == 96 or c == 39 or c == 126
            or c == 45)


cdef inline bint _is_blank(uint8_t c) noexcept:
    return c == 32 or c == 9


cdef object _start_line_fast(str line):
    """parser._start_line(line) for a plain ASCII line (a final CR allowed)."""
    cdef Py_ssize_t n, i, k, t0, t1, u0, u1, v0, v1
    cdef const char* s = PyUnicode_AsUTF8AndSize(line, &n)
    cdef uint8_t c
    if n and s[n - 1] == 13:
        n -= 1
    if not _plain_ascii(s, n):
        return _start_line(line)
    i = 0
    while i < n and _is_blank(s[i]):
        i += 1
    t0 = i
    while i < n and not _is_blank(s[i]):
        i += 1
    t1 = i
    while i < n and _is_blank(s[i]):
        i += 1
    u0 = i
    while i < n and not _is_blank(s[i]):
        i += 1
    u1 = i
    while i < n and _is_blank(s[i]):
        i += 1
    if t0 != 0:
        return _start_line(line)  # start[:4] is not the first word's
    if n >= 4 and s[0] == 83 and s[1] == 73 and s[2] == 80 and s[3] == 47:  # "SIP/"
        # A status line: the code is the second word, the reason the rest.
        if t1 - t0 != 7 or memcmp(s, "SIP/2.0", 7) != 0 or u1 - u0 != 3:
            return _start_line(line)
        for k in range(u0, u1):
            c = <uint8_t>s[k]
            if not 48 <= c <= 57:
                return _start_line(line)
        if s[u0] == 48 or s[u0] == 55 or s[u0] == 56 or s[u0] == 57:
            return _start_line(line)
        v1 = n
        while v1 > i and _is_blank(s[v1 - 1]):
            v1 -= 1
        reason = PyUnicode_DecodeASCII(s + i, v1 - i, NULL) if v1 > i else None
        code = (s[u0] - 48) * 100 + (s[u0 + 1] - 48) * 10 + (s[u0 + 2] - 48)
        return (False, None, code, reason, None, None, None)
    # A request line: method, URI and SIP/2.0, nothing more.
    v0 = i
    while i < n and not _is_blank(s[i]):
        i += 1
    v1 = i
    while i < n and _is_blank(s[i]):
        i += 1
    if (i != n or t1 == t0 or v1 - v0 != 7 or memcmp(s + v0, "SIP/2.0", 7) != 0
            or _find_char(s, u0, u1, 58) < 0):
        return _start_line(line)
    for k in range(t0, t1):
        if not _is_token_char(<uint8_t>s[k]):
            return _start_line(line)
    method = PyUnicode_DecodeASCII(s + t0, t1 - t0, NULL)
    request_uri = PyUnicode_DecodeASCII(s + u0, u1 - u0, NULL)
    ruri_user, ruri_domain, _ = _uri_py(request_uri)
    return (True, method, None, None, request_uri, ruri_user, ruri_domain)


cdef object _call_id_cseq_fast(list found):
    """parser._call_id_cseq of `found` for a CSeq of the usual spelling."""
    cdef Py_ssize_t n, i, a0, a1, b0, b1, k
    cdef const char* s
    cdef int64_t number = 0
    call_id = found[_H_CALL_ID]
    cseq = found[_H_CSEQ]
    if not call_id or cseq is None:
        return _call_id_cseq(_first_headers(found))
    s = PyUnicode_AsUTF8AndSize(cseq, &n)
    if not _plain_ascii(s, n):
        return _call_id_cseq(_first_headers(found))
    i = 0
    while i < n and _is_blank(s[i]):
        i += 1
    a0 = i
    while i < n and not _is_blank(s[i]):
        i += 1
    a1 = i
    while i < n and _is_blank(s[i]):
        i += 1
    b0 = i
    while i < n and not _is_blank(s[i]):
        i += 1
    b1 = i
    while i < n and _is_blank(s[i]):
        i += 1
    if i != n or b1 == b0 or not 0 < a1 - a0 <= 10:
        return _call_id_cseq(_first_headers(found))
    for k in range(a0, a1):
        if not 48 <= <uint8_t>s[k] <= 57:
            return _call_id_cseq(_first_headers(found))
        number = number * 10 + (s[k] - 48)
    for k in range(b0, b1):
        if not _is_token_char(<uint8_t>s[k]):
            return _call_id_cseq(_first_headers(found))
    return call_id, number, PyUnicode_DecodeASCII(s + b0, b1 - b0, NULL)
