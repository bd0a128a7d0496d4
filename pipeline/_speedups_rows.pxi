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

DEF _NCOLUMNS = 42
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

cdef int _kinds[_NCOLUMNS]
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


cdef int _rows_init() except -1:
    global _rows_ready, _wire, _build_row, _times_to_micros, _RecordDecodeError
    global _RowFailure, _protocol_header_index, _UTC, _UUID_type, _inet_cache_rows
    if _rows_ready:
        return 0
    from datetime import UTC
    from uuid import UUID
    from pipeline.records import RecordDecodeError
    from pipeline.storage import batch, rows, wire
    codes = {"text": _K_TEXT, "header": _K_HEADER, "int2": _K_INT2, "int4": _K_INT4,
             "int8": _K_INT8, "timestamptz": _K_TIMESTAMPTZ, "inet": _K_INET,
             "uuid": _K_UUID, "bytea": _K_BYTEA}
    if len(wire.COLUMN_KINDS) != _NCOLUMNS:
        raise RuntimeError("pipeline._speedups is out of date: rebuild it")
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


def build_rows(values, partition, offsets, *, codec, store_auth_key=False, wire_format=None):
    """Compiled `pipeline.storage.batch.build_rows`."""
    cdef Py_ssize_t index, n = len(values)
    cdef bint encode = wire_format is not None
    cdef bint protocol_jsonb = False, data_jsonb = False
    _rows_init()
    if encode:
        protocol_jsonb = wire_format.protocol_header_jsonb
        data_jsonb = wire_format.data_header_jsonb
    cdef list rows = []
    cdef list failures = []
    decode = codec.decode
    build = _build_row
    for index in range(n):
        value = values[index]
        try:
            if value is None:
                raise _RecordDecodeError("no_value", "tombstone or empty record")
            record = decode(value)
            if type(record["capture_time"]) is not int:
                _times_to_micros(record)
            row = build(record, kafka_partition=partition, kafka_offset=offsets[index],
                        store_auth_key=store_auth_key)
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
    return rows, failures
