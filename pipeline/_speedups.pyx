# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The receiver's per-packet work, compiled: HEP decode, Kafka key, Avro record.

The same functions, with the same signatures, outputs and errors, as the readable
pure-Python reference: `pipeline.hep.decode.decode_packet`,
`pipeline.sip.callid.scan_call_id`, `pipeline.records.mapping.record_key` and
`pipeline.records.packetwrite.packet_encoder`; `datagram_encoder` (as
`pipeline.records.datagrams.datagram_encoder`) fuses decode, key and Avro for one
datagram or a batch without building a HepPacket.
`pipeline.accel` picks this module or the pure one; the unit tests check that both give
identical packets, error reasons, keys and record bytes.

Delegated to the pure code (rare, and identical by construction): HEPv1/v2 decoding and
inflating a compressed payload (zlib does the work there anyway).
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_DecodeASCII, PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

from dataclasses import fields as _dataclass_fields

from pipeline.hep import decode as _pure_decode
from pipeline.hep.chunks import DEDICATED_TYPES, FIXED_BODY_SIZES
from pipeline.hep.errors import HepDecodeError
from pipeline.hep.packet import HepChunk, HepPacket
from pipeline.records import packetwrite as _pure_write
from pipeline.records import datagrams as _pure_datagrams
from pipeline.records.datagrams import AUTH_MISMATCH, AUTH_MISSING


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t* size) except NULL

cdef extern from "<arpa/inet.h>" nogil:
    const char* inet_ntop(int af, const void* src, char* dst, unsigned int size)

cdef extern from "<sys/socket.h>" nogil:
    int AF_INET6

__all__ = [
    "murmur2",
    "record_batch",
    "receive_datagrams",
    "PacketEncoder",
    "decode_packet",
    "datagram_encoder",
    "packet_encoder",
    "record_key",
    "scan_call_id",
]

cdef Py_ssize_t MAX_CHUNKS = _pure_decode.MAX_CHUNKS
cdef Py_ssize_t MAX_PACKET_SIZE = _pure_decode.MAX_PACKET_SIZE
_inflate = _pure_decode._inflate
_decode_v1v2 = _pure_decode._decode_v1v2
_pure_varint = _pure_write.varint

# Chunk size rules by generic type, as in decode.py's _SPEC: spec_has[t] says whether
# the type has a rule; spec_want[t] > 0: dedicated, length must be n; 0: dedicated, any
# length; < 0: extra chunk, length must be -n. Every type with a rule is below 64.
DEF SPEC_TYPES = 64
DEF DEDICATED_SLOTS = 20
DEF MAX_CHUNKS_CAP = 64
cdef bint spec_has[SPEC_TYPES]
cdef int spec_want[SPEC_TYPES]


cdef void _init_spec() except *:
    cdef int t
    for t in range(SPEC_TYPES):
        spec_has[t] = False
        spec_want[t] = 0
    for t in DEDICATED_TYPES:
        if t >= DEDICATED_SLOTS:
            raise RuntimeError(f"dedicated chunk type {t} needs a larger table")
        size = FIXED_BODY_SIZES.get(t)
        spec_has[t] = True
        spec_want[t] = 0 if size is None else size + 6
    for t, size in FIXED_BODY_SIZES.items():
        if t >= SPEC_TYPES:
            raise RuntimeError(f"fixed-size chunk type {t} needs a larger table")
        if t not in DEDICATED_TYPES:
            spec_has[t] = True
            spec_want[t] = -(size + 6)
    if MAX_CHUNKS > MAX_CHUNKS_CAP:
        raise RuntimeError("MAX_CHUNKS exceeds the compiled table")


_init_spec()

# _packet_v3 builds HepPacket positionally (keywords cost ~0.7 us per packet).
_PACKET_FIELDS = (
    "version",
    "ip_family",
    "ip_proto",
    "src_ip",
    "dst_ip",
    "src_port",
    "dst_port",
    "ts_sec",
    "ts_usec",
    "proto_type",
    "capture_id",
    "keep_alive",
    "auth_key",
    "payload",
    "payload_was_compressed",
    "correlation_id",
    "vlan",
    "node_name",
    "extra_chunks",
    "chunk_order",
)
if tuple(f.name for f in _dataclass_fields(HepPacket)) != _PACKET_FIELDS:
    raise RuntimeError("HepPacket fields changed: update _packet_v3 in _speedups.pyx")


# ---------------------------------------------------------------------------------
# HEPv3 decoding into offsets

cdef struct V3:
    Py_ssize_t end
    int seen[DEDICATED_SLOTS]      # chunk offset of each dedicated type, or -1
    int nextra
    int extra_off[MAX_CHUNKS_CAP]  # chunk offsets of the chunks without a field


cdef inline unsigned int _u16(const uint8_t* p) noexcept nogil:
    return (<unsigned int>p[0]) << 8 | p[1]


cdef inline uint64_t _u32(const uint8_t* p) noexcept nogil:
    return ((<uint64_t>p[0]) << 24) | ((<uint64_t>p[1]) << 16) | ((<uint64_t>p[2]) << 8) | p[3]


cdef object _error(str reason, str detail):
    return HepDecodeError(reason, detail)


cdef int _check_v3_header(const uint8_t* p, Py_ssize_t n, object data) except -1:
    cdef Py_ssize_t end
    if n < 6:
        head = bytes(data[: min(n, 4)])
        if b"HEP3".startswith(head) or b"EEP1".startswith(head):
            raise _error("truncated", f"{n} bytes, HEP3 header needs 6")
        raise _error("bad_magic", f"magic {head!r}")
    if not ((p[0] == 0x48 and p[1] == 0x45 and p[2] == 0x50 and p[3] == 0x33)
            or (p[0] == 0x45 and p[1] == 0x45 and p[2] == 0x50 and p[3] == 0x31)):
        raise _error("bad_magic", f"magic 0x{_u32(p):08x}")
    end = _u16(p + 4)
    if end < 6:
        raise _error("bad_length", f"total length {end} < 6")
    if end > n:
        raise _error("truncated", f"total length {end} > {n} bytes received")
    return 0


# chunk_order entries of the generic chunks with a small body (every fixed-size one) are
# shared tuples: a packet's order then allocates only its variable-length chunks' entries.
DEF ORDER_CACHE_LEN = 64
_ORDER_CACHE = [
    [(0, ctype, clen) for clen in range(ORDER_CACHE_LEN)] for ctype in range(SPEC_TYPES)
]


cdef inline object _order_entry(unsigned int vendor, unsigned int ctype, unsigned int clen):
    if vendor == 0 and ctype < SPEC_TYPES and clen < ORDER_CACHE_LEN:
        return (<list>(<list>_ORDER_CACHE)[ctype])[clen]
    return (vendor, ctype, clen)


cdef int _scan_v3(const uint8_t* p, Py_ssize_t n, V3* d, list order, object data) except -1:
    """Walk the chunks, validating as decode.py does; `order` is filled unless None."""
    cdef Py_ssize_t end, off, nxt
    cdef unsigned int vendor, ctype, clen
    cdef int want, i, o, count = 0
    cdef bint has
    _check_v3_header(p, n, data)
    end = _u16(p + 4)
    d.end = end
    d.nextra = 0
    for i in range(DEDICATED_SLOTS):
        d.seen[i] = -1
    off = 6
    while off < end:
        if end - off < 6:
            raise _error("bad_chunk_length", f"{end - off} stray bytes at {off}")
        if count == MAX_CHUNKS:
            raise _error(
                "too_many_chunks", f"more than {MAX_CHUNKS} chunks, stopped at offset {off}"
            )
        vendor = _u16(p + off)
        ctype = _u16(p + off + 2)
        clen = _u16(p + off + 4)
        nxt = off + clen
        if clen < 6 or nxt > end:
            raise _error(
                "bad_chunk_length", f"chunk 0x{vendor:04x}:0x{ctype:04x} length {clen} at {off}"
            )
        count += 1
        if order is not None:
            order.append(_order_entry(vendor, ctype, clen))
        if vendor == 0:
            has = ctype < SPEC_TYPES and spec_has[ctype]
            want = spec_want[ctype] if has else 0
            if has and (want == <int>clen or want == 0):
                if d.seen[ctype] >= 0:
                    raise _error("duplicate_chunk", f"chunk 0x{ctype:04x} again at {off}")
                d.seen[ctype] = <int>off
            elif not has or want == -<int>clen:
                for i in range(d.nextra):
                    o = d.extra_off[i]
                    if _u16(p + o) == 0 and _u16(p + o + 2) == ctype:
                        raise _error("duplicate_chunk", f"chunk 0x{ctype:04x} again at {off}")
                d.extra_off[d.nextra] = <int>off
                d.nextra += 1
            else:
                raise _error(
                    "bad_fixed_size",
                    f"chunk 0x{ctype:04x} body {clen - 6} bytes, expected {abs(want) - 6}",
                )
        else:
            # Vendors reuse generic type numbers with other meanings: never a field.
            d.extra_off[d.nextra] = <int>off
            d.nextra += 1
        off = nxt
    if d.seen[16] >= 0 and d.seen[15] >= 0:
        raise _error("duplicate_chunk", "both payload chunks, 0x000f and 0x0010")
    return 0


cdef inline int _family(const uint8_t* p, V3* d) noexcept:
    return p[d.seen[1] + 6] if d.seen[1] >= 0 else -1


cdef Py_ssize_t _ip_text(const uint8_t* p, V3* d, int v4, int v6, char* out) noexcept:
    """The text of the source (v4=3, v6=5) or destination address into out; -1 if none."""
    cdef int o4 = d.seen[v4]
    cdef int o6 = d.seen[v6]
    cdef Py_ssize_t k = 0
    cdef int i, b, family = _family(p, d)
    if o4 >= 0 and (o6 < 0 or family != 10):
        for i in range(4):
            b = p[o4 + 6 + i]
            if b >= 100:
                out[k] = 48 + b // 100
                k += 1
            if b >= 10:
                out[k] = 48 + (b // 10) % 10
                k += 1
            out[k] = 48 + b % 10
            k += 1
            if i < 3:
                out[k] = 46
                k += 1
        return k
    if o6 >= 0:
        if inet_ntop(AF_INET6, p + o6 + 6, out, 64) == NULL:
            return -1
        k = 0
        while out[k] != 0:
            k += 1
        return k
    return -1


cdef object _ip_object(const uint8_t* p, V3* d, int v4, int v6):
    cdef char text[64]
    cdef Py_ssize_t k = _ip_text(p, d, v4, v6, text)
    if k < 0:
        return None
    return PyUnicode_DecodeASCII(text, k, NULL)


cdef inline object _opt_u8(const uint8_t* p, int o):
    return p[o + 6] if o >= 0 else None


cdef inline object _opt_u16(const uint8_t* p, int o):
    return _u16(p + o + 6) if o >= 0 else None


cdef inline Py_ssize_t _body_len(const uint8_t* p, int o) noexcept:
    return _u16(p + o + 4) - 6


cdef object _opt_text(const uint8_t* p, int o):
    if o < 0:
        return None
    return PyUnicode_DecodeUTF8(<const char*>p + o + 6, _body_len(p, o), "replace")


cdef object _payload(const uint8_t* p, V3* d):
    """(payload bytes, compressed) of a scanned packet."""
    cdef int o = d.seen[15]
    cdef int oz = d.seen[16]
    if oz >= 0:
        return _inflate(PyBytes_FromStringAndSize(<const char*>p + oz + 6, _body_len(p, oz))), True
    if o >= 0:
        return PyBytes_FromStringAndSize(<const char*>p + o + 6, _body_len(p, o)), False
    return b"", False


cdef object _packet_v3(const uint8_t* p, V3* d, list order):
    cdef int o, i
    cdef list extra = []
    for i in range(d.nextra):
        o = d.extra_off[i]
        extra.append(
            HepChunk(
                _u16(p + o),
                _u16(p + o + 2),
                PyBytes_FromStringAndSize(<const char*>p + o + 6, _body_len(p, o)),
            )
        )
    payload, compressed = _payload(p, d)
    o = d.seen[14]
    auth_key = (
        PyBytes_FromStringAndSize(<const char*>p + o + 6, _body_len(p, o)) if o >= 0 else None
    )
    return HepPacket(
        3,
        _opt_u8(p, d.seen[1]),
        _opt_u8(p, d.seen[2]),
        _ip_object(p, d, 3, 5),
        _ip_object(p, d, 4, 6),
        _opt_u16(p, d.seen[7]),
        _opt_u16(p, d.seen[8]),
        _u32(p + d.seen[9] + 6) if d.seen[9] >= 0 else 0,
        _u32(p + d.seen[10] + 6) if d.seen[10] >= 0 else 0,
        _opt_u8(p, d.seen[11]),
        _u32(p + d.seen[12] + 6) if d.seen[12] >= 0 else None,
        _opt_u16(p, d.seen[13]),
        auth_key,
        payload,
        compressed,
        _opt_text(p, d.seen[17]),
        _opt_u16(p, d.seen[18]),
        _opt_text(p, d.seen[19]),
        extra,
        order,
    )


cdef int _first_byte(object data, const uint8_t* p, Py_ssize_t n) except -1:
    """Dispatch as decode_packet does: 3 for HEPv3, 1/2 for HEPv1/v2; raises otherwise."""
    if n == 0:
        raise _error("truncated", "empty input")
    first = p[0]
    if first == 0x48 or first == 0x45:
        return 3
    if first == 1 or first == 2:
        if n > MAX_PACKET_SIZE:
            raise _error("too_large", f"{n} bytes, at most {MAX_PACKET_SIZE}")
        return first
    raise _error("bad_magic", f"first byte 0x{first:02x}")


def decode_packet(data):
    """Decode one HEP packet (HEPv3, or HEPv1/HEPv2) from a datagram or a TCP frame."""
    cdef Py_buffer view
    cdef V3 d
    cdef int version
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        p = <const uint8_t*>view.buf
        version = _first_byte(data, p, view.len)
        if version != 3:
            return _decode_v1v2(data, view.len, version)
        order = []
        _scan_v3(p, view.len, &d, order, data)
        return _packet_v3(p, &d, order)
    finally:
        PyBuffer_Release(&view)


# ---------------------------------------------------------------------------------
# Call-ID scan (pipeline/sip/callid.py)

cdef inline bint _is_strip(uint8_t c) noexcept nogil:
    return c == 0x20 or c == 0x09 or c == 0x0D


cdef inline uint8_t _lower(uint8_t c) noexcept nogil:
    return c + 32 if 0x41 <= c <= 0x5A else c


cdef Py_ssize_t _find_nl(const uint8_t* p, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(start, end):
        if p[i] == 0x0A:
            return i
    return -1


cdef object _stripped(const uint8_t* p, Py_ssize_t a, Py_ssize_t b):
    while a < b and _is_strip(p[a]):
        a += 1
    while b > a and _is_strip(p[b - 1]):
        b -= 1
    return PyBytes_FromStringAndSize(<const char*>p + a, b - a)


cdef Py_ssize_t _header_colon(const uint8_t* p, Py_ssize_t q, Py_ssize_t wend) noexcept nogil:
    """Index of the colon if a Call-ID/i header name starts at q (below wend), else -1."""
    cdef const char* name = b"call-id"
    cdef Py_ssize_t i
    if q < wend and _lower(p[q]) == 0x63:  # c
        for i in range(7):
            if q + i >= wend or _lower(p[q + i]) != <uint8_t>name[i]:
                return -1
        q += 7
    elif q < wend and _lower(p[q]) == 0x69:  # i
        q += 1
    else:
        return -1
    while q < wend and (p[q] == 0x20 or p[q] == 0x09):
        q += 1
    return q if q < wend and p[q] == 0x3A else -1


cdef object _scan_call_id(const uint8_t* p, Py_ssize_t size, Py_ssize_t limit):
    cdef Py_ssize_t wend, start, first_nl, nl, colon, eol, next_eol
    cdef bint truncated
    if limit <= 0 or size == 0:
        return None
    if limit < size:
        wend = limit
        truncated = True
    else:
        wend = size
        truncated = False
    start = 0
    while start < wend and (p[start] == 0x0D or p[start] == 0x0A):
        start += 1
    first_nl = _find_nl(p, start, wend)
    if first_nl < 0:
        return None
    # The first LF that starts a Call-ID header or the empty line ending the headers.
    colon = -1
    nl = first_nl
    while nl >= 0:
        if nl + 1 < wend and p[nl + 1] == 0x0A:
            return None
        if nl + 2 < wend and p[nl + 1] == 0x0D and p[nl + 2] == 0x0A:
            return None
        colon = _header_colon(p, nl + 1, wend)
        if colon >= 0:
            break
        nl = _find_nl(p, nl + 1, wend)
    if colon < 0:
        return None
    eol = _find_nl(p, colon, wend)
    if eol < 0:
        if truncated:
            return None
        eol = wend
    value = _stripped(p, colon + 1, eol)
    # Folded continuation lines belong to the value (parse_sip unfolds them).
    while eol + 1 < wend and (p[eol + 1] == 0x20 or p[eol + 1] == 0x09):
        next_eol = _find_nl(p, eol + 1, wend)
        if next_eol < 0:
            if truncated:
                return None
            next_eol = wend
        cont = _stripped(p, eol + 1, next_eol)
        if cont:
            value = value + b" " + cont if value else cont
        eol = next_eol
    return value or None


def scan_call_id(payload, Py_ssize_t limit=4096):
    """Return the raw Call-ID value (full or compact ``i`` form) or None."""
    cdef Py_buffer view
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        return _scan_call_id(<const uint8_t*>view.buf, view.len, limit)
    finally:
        PyBuffer_Release(&view)


def record_key(packet):
    """Kafka key that keeps one call in one partition, in order (see mapping.py)."""
    correlation_id = packet.correlation_id
    if correlation_id:
        return correlation_id.encode("utf-8")
    proto_type = packet.proto_type
    payload = packet.payload
    if (proto_type is None or proto_type == 1) and payload:
        return scan_call_id(payload)
    return None


# ---------------------------------------------------------------------------------
# Avro writer (pipeline/records/packetwrite.py)

cdef struct Buf:
    char* data
    Py_ssize_t size
    Py_ssize_t cap


cdef int _reserve(Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap
    cdef char* grown
    if b.size + extra <= b.cap:
        return 0
    cap = max(b.cap * 2, b.size + extra)
    grown = <char*>PyMem_Realloc(b.data, cap)
    if grown == NULL:
        raise MemoryError()
    b.data = grown
    b.cap = cap
    return 0


cdef inline int _put_raw(Buf* b, const char* src, Py_ssize_t n) except -1:
    _reserve(b, n)
    memcpy(b.data + b.size, src, n)
    b.size += n
    return 0


cdef inline int _put_byte(Buf* b, char c) except -1:
    _reserve(b, 1)
    b.data[b.size] = c
    b.size += 1
    return 0


cdef inline int _put_long(Buf* b, int64_t value) except -1:
    cdef uint64_t n = ((<uint64_t>value) << 1) ^ (<uint64_t>(value >> 63))
    _reserve(b, 10)
    while n > 0x7F:
        b.data[b.size] = <char>((n & 0x7F) | 0x80)
        b.size += 1
        n >>= 7
    b.data[b.size] = <char>n
    b.size += 1
    return 0


cdef int _put_long_obj(Buf* b, object value) except -1:
    cdef int64_t v
    try:
        v = value
    except OverflowError:
        # Outside Avro's long: write what the pure encoder writes for it.
        encoded = _pure_varint(value)
        return _put_raw(b, PyBytes_AS_STRING(encoded), len(encoded))
    return _put_long(b, v)


cdef inline int _put_opt_long(Buf* b, object value) except -1:
    if value is None:
        return _put_byte(b, 0)
    _put_byte(b, 2)
    return _put_long_obj(b, value)


cdef inline int _put_blob(Buf* b, const char* src, Py_ssize_t n) except -1:
    _put_long(b, n)
    return _put_raw(b, src, n)


cdef int _put_buffer(Buf* b, object value, bint with_length) except -1:
    """The bytes of any buffer object, as an Avro bytes value or raw (a fixed field)."""
    cdef Py_buffer view
    PyObject_GetBuffer(value, &view, PyBUF_SIMPLE)
    try:
        if with_length:
            _put_blob(b, <const char*>view.buf, view.len)
        else:
            _put_raw(b, <const char*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)
    return 0


cdef inline int _put_bytes_obj(Buf* b, object value) except -1:
    return _put_buffer(b, value, True)


cdef inline int _put_str(Buf* b, object value) except -1:
    cdef Py_ssize_t n
    cdef const char* s = PyUnicode_AsUTF8AndSize(value, &n)
    return _put_blob(b, s, n)


cdef inline int _put_opt_str(Buf* b, object value) except -1:
    if value is None:
        return _put_byte(b, 0)
    _put_byte(b, 2)
    return _put_str(b, value)


cdef int _put_timestamp(Buf* b, object value) except -1:
    return _put_long_obj(b, value)


cdef int _put_auth(Buf* b, object auth_key, object context) except -1:
    if auth_key is None:
        _put_byte(b, 0)  # auth_key_present false
        return _put_byte(b, 0)  # auth_key null
    _put_byte(b, 1)
    if context.forward_auth_key:
        _put_byte(b, 2)
        return _put_str(b, auth_key.decode("utf-8", "replace"))
    return _put_byte(b, 0)


cdef int _put_tail(Buf* b, object receive_time_us, object context) except -1:
    _put_byte(b, 0)  # end of the extra_chunks array
    _put_timestamp(b, receive_time_us)
    _put_str(b, context.transport)
    _put_str(b, context.sender_ip)
    _put_long_obj(b, context.sender_port)
    return _put_str(b, context.receiver_id)


cdef int _put_head(Buf* b, bytes header, object record_id) except -1:
    if len(record_id) != 16:
        raise ValueError(f"fixed field needs 16 bytes, got {len(record_id)}")
    _put_raw(b, PyBytes_AS_STRING(header), len(header))
    return _put_buffer(b, record_id, False)


cdef int _put_packet(Buf* b, object packet, object receive_time_us, object context) except -1:
    """Every field from hep_version to the extra chunks' end, from a HepPacket."""
    _put_long_obj(b, packet.version)
    _put_opt_long(b, packet.ip_family)
    _put_opt_long(b, packet.ip_proto)
    _put_opt_str(b, packet.src_ip)
    _put_opt_str(b, packet.dst_ip)
    _put_opt_long(b, packet.src_port)
    _put_opt_long(b, packet.dst_port)
    ts_sec = packet.ts_sec
    from_receiver = ts_sec == 0
    _put_timestamp(b, receive_time_us if from_receiver else ts_sec * 1_000_000 + packet.ts_usec)
    _put_byte(b, 1 if from_receiver else 0)
    _put_opt_long(b, packet.proto_type)
    _put_opt_long(b, packet.capture_id)
    _put_opt_long(b, packet.keep_alive)
    _put_auth(b, packet.auth_key, context)
    _put_opt_str(b, packet.correlation_id)
    _put_opt_long(b, packet.vlan)
    _put_opt_str(b, packet.node_name)
    _put_bytes_obj(b, packet.payload)
    _put_byte(b, 1 if packet.payload_was_compressed else 0)
    chunks = packet.extra_chunks
    if chunks:
        _put_long(b, len(chunks))
        for chunk in chunks:
            _put_long_obj(b, chunk.vendor)
            _put_long_obj(b, chunk.type)
            _put_bytes_obj(b, chunk.value)
    return 0


cdef int _put_opt_field(Buf* b, const uint8_t* p, int o, int width) except -1:
    if o < 0:
        return _put_byte(b, 0)
    _put_byte(b, 2)
    if width == 1:
        return _put_long(b, p[o + 6])
    if width == 2:
        return _put_long(b, _u16(p + o + 6))
    return _put_long(b, <int64_t>_u32(p + o + 6))


cdef int _put_opt_ip(Buf* b, const uint8_t* p, V3* d, int v4, int v6) except -1:
    cdef char text[64]
    cdef Py_ssize_t k = _ip_text(p, d, v4, v6, text)
    if k < 0:
        return _put_byte(b, 0)
    _put_byte(b, 2)
    return _put_blob(b, text, k)


cdef object _put_v3(Buf* b, const uint8_t* p, V3* d, object receive_time_us, object context):
    """The fields of a scanned HEPv3 packet, as _put_packet writes its HepPacket; returns
    the Kafka key (record_key of that packet)."""
    cdef int o, i
    cdef int64_t ts_sec
    _put_long(b, 3)
    _put_opt_field(b, p, d.seen[1], 1)
    _put_opt_field(b, p, d.seen[2], 1)
    _put_opt_ip(b, p, d, 3, 5)
    _put_opt_ip(b, p, d, 4, 6)
    _put_opt_field(b, p, d.seen[7], 2)
    _put_opt_field(b, p, d.seen[8], 2)
    ts_sec = <int64_t>_u32(p + d.seen[9] + 6) if d.seen[9] >= 0 else 0
    if ts_sec == 0:
        _put_timestamp(b, receive_time_us)
    else:
        o = d.seen[10]
        _put_long(b, ts_sec * 1_000_000 + (<int64_t>_u32(p + o + 6) if o >= 0 else 0))
    _put_byte(b, 1 if ts_sec == 0 else 0)
    _put_opt_field(b, p, d.seen[11], 1)
    _put_opt_field(b, p, d.seen[12], 4)
    _put_opt_field(b, p, d.seen[13], 2)
    o = d.seen[14]
    _put_auth(
        b,
        PyBytes_FromStringAndSize(<const char*>p + o + 6, _body_len(p, o)) if o >= 0 else None,
        context,
    )
    correlation_id = _opt_text(p, d.seen[17])
    _put_opt_str(b, correlation_id)
    _put_opt_field(b, p, d.seen[18], 2)
    _put_opt_str(b, _opt_text(p, d.seen[19]))
    # The payload: raw from the datagram unless it was compressed.
    o = d.seen[15]
    if d.seen[16] >= 0:
        payload = _inflate(
            PyBytes_FromStringAndSize(<const char*>p + d.seen[16] + 6, _body_len(p, d.seen[16]))
        )
        _put_bytes_obj(b, payload)
        _put_byte(b, 1)
        payload_ptr = <const uint8_t*>PyBytes_AS_STRING(payload)
        payload_len = len(payload)
    elif o >= 0:
        payload_ptr = p + o + 6
        payload_len = _body_len(p, o)
        _put_blob(b, <const char*>payload_ptr, payload_len)
        _put_byte(b, 0)
    else:
        payload_ptr = p
        payload_len = 0
        _put_blob(b, <const char*>p, 0)
        _put_byte(b, 0)
    if d.nextra:
        _put_long(b, d.nextra)
        for i in range(d.nextra):
            o = d.extra_off[i]
            _put_long(b, _u16(p + o))
            _put_long(b, _u16(p + o + 2))
            _put_blob(b, <const char*>p + o + 6, _body_len(p, o))
    if correlation_id:
        return correlation_id.encode("utf-8")
    o = d.seen[11]
    if (o < 0 or p[o + 6] == 1) and payload_len:
        return _scan_call_id(payload_ptr, payload_len, 4096)
    return None


cdef class PacketEncoder:
    """Writes a HepPacket as the codec's writer schema would (packetwrite.PacketEncoder)."""

    cdef bytes _header

    def __init__(self, bytes header):
        self._header = header

    @property
    def header(self):
        return self._header

    def encode(self, packet, record_id, receive_time_us, context):
        """The same bytes as codec.encode(packet_to_record(packet, ...))."""
        cdef Buf b
        b.data = <char*>PyMem_Malloc(512)
        if b.data == NULL:
            raise MemoryError()
        b.size = 0
        b.cap = 512
        try:
            _put_head(&b, self._header, record_id)
            _put_packet(&b, packet, receive_time_us, context)
            _put_tail(&b, receive_time_us, context)
            return PyBytes_FromStringAndSize(b.data, b.size)
        finally:
            PyMem_Free(b.data)

    cdef object _datagram(self, object data, object record_id, object next_id,
                          object receive_time_us, object context, object auth_key, Buf* b):
        """(key, value) of one datagram; the record id is `record_id`, else `next_id()`,
        drawn only once the datagram was accepted (as the intake does). With `auth_key`
        (bytes), a packet that does not carry it gives its rejection reason (a str)."""
        cdef Py_buffer view
        cdef V3 d
        cdef int version, o
        cdef Py_ssize_t at = len(self._header)
        b.size = 0
        _put_raw(b, PyBytes_AS_STRING(self._header), at)
        _put_raw(b, PyBytes_AS_STRING(_NO_ID), 16)
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            p = <const uint8_t*>view.buf
            version = _first_byte(data, p, view.len)
            if version == 3:
                _scan_v3(p, view.len, &d, None, data)
                if auth_key is not None:
                    o = d.seen[14]
                    if o < 0:
                        return AUTH_MISSING
                    if not _same_key(p + o + 6, _body_len(p, o), auth_key):
                        return AUTH_MISMATCH
                key = _put_v3(b, p, &d, receive_time_us, context)
            else:
                packet = _decode_v1v2(data, view.len, version)
                if auth_key is not None:
                    rejection = _pure_datagrams.auth_rejection(packet.auth_key, auth_key)
                    if rejection is not None:
                        return rejection
                _put_packet(b, packet, receive_time_us, context)
                key = record_key(packet)
        finally:
            PyBuffer_Release(&view)
        _put_tail(b, receive_time_us, context)
        if record_id is None:
            record_id = next_id()
        _check_id(record_id)
        _copy_into(b.data + at, record_id)
        return key, PyBytes_FromStringAndSize(b.data, b.size)

    def encode_datagram(self, data, record_id, receive_time_us, context):
        """(record_key(p), encode(p, ...)) for p = decode_packet(data), without building p.

        Raises HepDecodeError exactly as decode_packet(data) would.
        """
        cdef Buf b
        _init_buf(&b)
        try:
            return self._datagram(data, record_id, None, receive_time_us, context, None, &b)
        finally:
            PyMem_Free(b.data)

    def encode_datagrams(self, datagrams, contexts, receive_time_us, next_id, auth_key=None):
        """encode_datagram over a batch: one outcome per datagram, in order.

        `contexts[i]` is the ReceiveContext of `datagrams[i]`; `next_id()` gives each
        accepted packet its record id. An outcome is the (key, value) tuple, or the
        HepDecodeError reason (a str) of a datagram that did not decode, or with
        `auth_key` the rejection reason of a packet that does not carry that key.
        """
        cdef Buf b
        cdef Py_ssize_t i, count = len(datagrams)
        cdef list outcomes = []
        if auth_key is not None and not isinstance(auth_key, bytes):
            raise TypeError("auth_key must be bytes or None")
        _init_buf(&b)
        try:
            for i in range(count):
                try:
                    outcomes.append(
                        self._datagram(
                            datagrams[i], None, next_id, receive_time_us, contexts[i],
                            auth_key, &b,
                        )
                    )
                except HepDecodeError as exc:
                    outcomes.append(exc.reason)
            return outcomes
        finally:
            PyMem_Free(b.data)


_NO_ID = bytes(16)


cdef bint _same_key(const uint8_t* found, Py_ssize_t size, bytes expected) noexcept:
    """Whether the auth key chunk body equals `expected`, in time that depends only on the
    lengths (as hmac.compare_digest, which the pure reference uses)."""
    cdef const uint8_t* want = <const uint8_t*>PyBytes_AS_STRING(expected)
    cdef Py_ssize_t i, n = len(expected)
    cdef uint8_t diff = 0 if size == n else 1
    for i in range(n if size >= n else size):
        diff |= found[i] ^ want[i]
    return diff == 0


cdef int _init_buf(Buf* b) except -1:
    b.data = <char*>PyMem_Malloc(2048)
    if b.data == NULL:
        raise MemoryError()
    b.size = 0
    b.cap = 2048
    return 0


cdef int _check_id(object record_id) except -1:
    if len(record_id) != 16:
        raise ValueError(f"fixed field needs 16 bytes, got {len(record_id)}")
    return 0


cdef int _copy_into(char* dst, object record_id) except -1:
    cdef Py_buffer view
    PyObject_GetBuffer(record_id, &view, PyBUF_SIMPLE)
    try:
        memcpy(dst, view.buf, 16)
    finally:
        PyBuffer_Release(&view)
    return 0


def packet_encoder(codec):
    """The compiled encoder's `encode` for `codec`'s writer schema, or None if its layout
    differs from the one this module writes (then callers take the generic path)."""
    if not _pure_write._matches_layout(codec.writer.parsed):
        return None
    return PacketEncoder(codec.header).encode


def datagram_encoder(codec):
    """The compiled PacketEncoder for `codec` (for encode_datagram[s]), or None."""
    if not _pure_write._matches_layout(codec.writer.parsed):
        return None
    return PacketEncoder(codec.header)




# -- reading a UDP socket: recvmmsg -----------------------------------------------------

cdef extern from *:
    """
    #include <errno.h>
    #include <stdlib.h>
    #include <string.h>
    #include <sys/socket.h>
    #include <sys/uio.h>
    #include <netinet/in.h>

    #define HEP_RECV_SLOTS 64
    #define HEP_RECV_SLOT_BYTES 65536

    /* One slot per datagram of a batch. The area is allocated once (4 MiB of address
       space; only the pages that datagrams are written to become resident) and shared
       by every socket of the process: a batch is copied out before the next is read. */
    static char *hep_recv_area = NULL;
    static struct sockaddr_storage hep_recv_addr[HEP_RECV_SLOTS];
    static socklen_t hep_recv_addrlen[HEP_RECV_SLOTS];
    static size_t hep_recv_len[HEP_RECV_SLOTS];

    /* Up to n (1..HEP_RECV_SLOTS) datagrams of fd without blocking, into the slots:
       how many (at least 1), or -1 with errno (EAGAIN: nothing there). Fewer than n
       means the socket had no more (an error after the first datagram is the next
       call's). */
    static int hep_recv_batch(int fd, int n) {
        int i, got;
        if (hep_recv_area == NULL) {
            hep_recv_area = (char *)malloc((size_t)HEP_RECV_SLOTS * HEP_RECV_SLOT_BYTES);
            if (hep_recv_area == NULL) { errno = ENOMEM; return -1; }
        }
    #ifdef __linux__
        struct mmsghdr msgs[HEP_RECV_SLOTS];
        struct iovec iov[HEP_RECV_SLOTS];
        memset(msgs, 0, sizeof(struct mmsghdr) * (size_t)n);
        for (i = 0; i < n; i++) {
            iov[i].iov_base = hep_recv_area + (size_t)i * HEP_RECV_SLOT_BYTES;
            iov[i].iov_len = HEP_RECV_SLOT_BYTES;
            msgs[i].msg_hdr.msg_name = &hep_recv_addr[i];
            msgs[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        do {
            got = recvmmsg(fd, msgs, (unsigned int)n, MSG_DONTWAIT, NULL);
        } while (got < 0 && errno == EINTR);
        for (i = 0; i < got; i++) {
            hep_recv_len[i] = msgs[i].msg_len;
            hep_recv_addrlen[i] = msgs[i].msg_hdr.msg_namelen;
        }
        return got;
    #else
        for (i = 0; i < n; i++) {
            ssize_t size;
            hep_recv_addrlen[i] = sizeof(struct sockaddr_storage);
            do {
                size = recvfrom(fd, hep_recv_area + (size_t)i * HEP_RECV_SLOT_BYTES,
                                HEP_RECV_SLOT_BYTES, MSG_DONTWAIT,
                                (struct sockaddr *)&hep_recv_addr[i], &hep_recv_addrlen[i]);
            } while (size < 0 && errno == EINTR);
            if (size < 0) return i > 0 ? i : -1;
            hep_recv_len[i] = (size_t)size;
        }
        return n;
    #endif
    }
    """
    int HEP_RECV_SLOTS
    int HEP_RECV_SLOT_BYTES
    char* hep_recv_area
    unsigned int hep_recv_addrlen[]
    size_t hep_recv_len[]
    int hep_recv_batch(int fd, int n) nogil
    const void* hep_recv_sockaddr "(const void *)hep_recv_addr"

cdef extern from "<errno.h>":
    int errno
    int EAGAIN
    int EWOULDBLOCK

cdef extern from "<string.h>":
    int memcmp(const void* a, const void* b, size_t n)
    char* strerror(int errnum)

cdef extern from "<netinet/in.h>":
    ctypedef struct in_addr_t_ "struct in_addr":
        pass
    ctypedef struct in6_addr_t_ "struct in6_addr":
        pass
    ctypedef struct sockaddr_in "struct sockaddr_in":
        unsigned short sin_family
        unsigned short sin_port
        in_addr_t_ sin_addr
    ctypedef struct sockaddr_in6 "struct sockaddr_in6":
        unsigned short sin6_family
        unsigned short sin6_port
        unsigned int sin6_flowinfo
        in6_addr_t_ sin6_addr
        unsigned int sin6_scope_id
    unsigned short ntohs(unsigned short)
    unsigned int ntohl(unsigned int)

cdef extern from "<sys/socket.h>":
    int AF_INET
    ctypedef struct sockaddr_storage "struct sockaddr_storage":
        unsigned short ss_family

# The last sender's address and its Python tuple: a HEP agent sends every datagram
# from the same address, so the tuple is built once, not once per datagram.
cdef sockaddr_storage _last_address
cdef unsigned int _last_address_len = 0
cdef object _last_sender = None


cdef object _sender_at(int slot):
    """The address of the datagram in `slot` as socket.recvfrom gives it."""
    global _last_address_len, _last_sender
    cdef const sockaddr_storage* address = (<const sockaddr_storage*>hep_recv_sockaddr) + slot
    cdef unsigned int length = hep_recv_addrlen[slot]
    cdef char text[64]
    cdef const sockaddr_in* v4
    cdef const sockaddr_in6* v6
    if (
        length == _last_address_len
        and length > 0
        and memcmp(address, &_last_address, length) == 0
    ):
        return _last_sender
    if length >= sizeof(sockaddr_in) and address.ss_family == AF_INET:
        v4 = <const sockaddr_in*>address
        inet_ntop(AF_INET, &v4.sin_addr, text, sizeof(text))
        sender = (text.decode("ascii"), ntohs(v4.sin_port))
    elif length >= sizeof(sockaddr_in6) and address.ss_family == AF_INET6:
        v6 = <const sockaddr_in6*>address
        inet_ntop(AF_INET6, &v6.sin6_addr, text, sizeof(text))
        sender = (text.decode("ascii"), ntohs(v6.sin6_port), ntohl(v6.sin6_flowinfo),
                  v6.sin6_scope_id)
    else:  # no address (as recvfrom returns for it): not cached
        return None
    memcpy(&_last_address, address, length)
    _last_address_len = length
    _last_sender = sender
    return sender


def receive_datagrams(sock, Py_ssize_t limit, list packets, list senders):
    """Append up to `limit` datagrams and their senders; True when the limit was reached.

    As pipeline.datagram_read.receive_datagrams (False when the socket has
    nothing left; another error raised as OSError after what was read before it), with
    one recvmmsg per up to 64 datagrams.
    """
    cdef int fd = sock.fileno()
    cdef Py_ssize_t done = 0
    cdef int want, got, slot, error
    while done < limit:
        want = <int>min(limit - done, HEP_RECV_SLOTS)
        with nogil:
            got = hep_recv_batch(fd, want)
        if got < 0:
            error = errno
            if error == EAGAIN or error == EWOULDBLOCK:
                return False
            raise OSError(error, strerror(error).decode("utf-8", "replace"))
        for slot in range(got):
            packets.append(
                PyBytes_FromStringAndSize(
                    hep_recv_area + <size_t>slot * HEP_RECV_SLOT_BYTES, hep_recv_len[slot]
                )
            )
            senders.append(_sender_at(slot))
        done += got
        if got < want:
            return False
    return True


# -- Kafka record batch (magic v2) for one partition ----------------------------------

cdef extern from *:
    """
    /* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), Kafka's batch CRC:
       slicing-by-8, eight table lookups per 8 bytes. */
    #include <stdint.h>
    #include <string.h>
    static uint32_t hep_crc32c_table[8][256];

    static void hep_crc32c_init(void) {
        uint32_t i, k, crc;
        for (i = 0; i < 256; i++) {
            crc = i;
            for (k = 0; k < 8; k++) crc = (crc >> 1) ^ ((crc & 1) ? 0x82F63B78u : 0u);
            hep_crc32c_table[0][i] = crc;
        }
        for (i = 0; i < 256; i++) {
            crc = hep_crc32c_table[0][i];
            for (k = 1; k < 8; k++) {
                crc = hep_crc32c_table[0][crc & 0xFF] ^ (crc >> 8);
                hep_crc32c_table[k][i] = crc;
            }
        }
    }

    static uint32_t hep_crc32c(const unsigned char *p, size_t n) {
        uint32_t crc = 0xFFFFFFFFu;
        while (n >= 8) {
            uint32_t lo = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16)
                          | ((uint32_t)p[3] << 24);
            uint32_t hi = (uint32_t)p[4] | ((uint32_t)p[5] << 8) | ((uint32_t)p[6] << 16)
                          | ((uint32_t)p[7] << 24);
            lo ^= crc;
            crc = hep_crc32c_table[7][lo & 0xFF] ^ hep_crc32c_table[6][(lo >> 8) & 0xFF]
                  ^ hep_crc32c_table[5][(lo >> 16) & 0xFF] ^ hep_crc32c_table[4][lo >> 24]
                  ^ hep_crc32c_table[3][hi & 0xFF] ^ hep_crc32c_table[2][(hi >> 8) & 0xFF]
                  ^ hep_crc32c_table[1][(hi >> 16) & 0xFF] ^ hep_crc32c_table[0][hi >> 24];
            p += 8;
            n -= 8;
        }
        while (n--) crc = hep_crc32c_table[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
        return crc ^ 0xFFFFFFFFu;
    }
    """
    void hep_crc32c_init() noexcept
    uint32_t hep_crc32c(const uint8_t* p, size_t n) noexcept nogil


hep_crc32c_init()


cdef inline int _size_of_varint(int64_t value) noexcept:
    cdef uint64_t v = ((<uint64_t>value) << 1) ^ (<uint64_t>(value >> 63))
    cdef int size = 1
    while v >= 0x80:
        v >>= 7
        size += 1
    return size


cdef inline void _write_be(char* at, uint64_t value, int size) noexcept:
    cdef int i
    for i in range(size):
        at[i] = <char>((value >> (8 * (size - 1 - i))) & 0xFF)


DEF BATCH_HEADER = 61  # the v2 batch header (HEADER_STRUCT of aiokafka's builder)
DEF ATTRIBUTES_AT = 21  # where the CRC-covered part begins
DEF CODEC_ZSTD = 4


def record_batch(list records, Py_ssize_t start, Py_ssize_t batch_size,
                 int64_t timestamp_ms, compress=None):
    """(end, batch): records[start:end] as one Kafka v2 record batch, in bytes.

    The bytes aiokafka's DefaultRecordBatchBuilder(magic=2, no producer id, not
    transactional) builds from the same records appended with offsets 0, 1, ... and
    `timestamp_ms`, then build(): records are taken while the batch stays below
    `batch_size` (the first always); `compress` (zstd, or None for no compression)
    is applied to the records, smaller or not (as aiokafka's compiled builder does).
    `records` holds (key or None, value) tuples of bytes.
    """
    cdef Buf b
    cdef Py_ssize_t count = len(records), end = start, i, key_len, value_len
    cdef int64_t body, offset
    cdef object key, value
    cdef tuple record
    cdef uint32_t crc
    cdef bint compressed = False
    _init_buf(&b)
    try:
        _reserve(&b, BATCH_HEADER)
        b.size = BATCH_HEADER
        while end < count:
            record = <tuple>records[end]
            key = record[0]
            value = record[1]
            offset = end - start
            key_len = -1 if key is None else len(<bytes>key)
            value_len = len(<bytes>value)
            body = (1 + 1 + _size_of_varint(offset)  # attributes, timestamp delta 0, offset
                    + (1 if key is None else _size_of_varint(key_len) + key_len)
                    + _size_of_varint(value_len) + value_len + 1)  # no headers
            if end > start and b.size + body + _size_of_varint(body) >= batch_size:
                break
            _put_long(&b, body)
            _put_byte(&b, 0)  # attributes
            _put_byte(&b, 0)  # timestamp delta: one timestamp for the batch
            _put_long(&b, offset)
            if key is None:
                _put_long(&b, -1)
            else:
                _put_long(&b, key_len)
                _put_raw(&b, PyBytes_AS_STRING(key), key_len)
            _put_long(&b, value_len)
            _put_raw(&b, PyBytes_AS_STRING(value), value_len)
            _put_byte(&b, 0)  # headers
            end += 1
        if compress is not None:
            packed = compress(PyBytes_FromStringAndSize(b.data + BATCH_HEADER,
                                                        b.size - BATCH_HEADER))
            b.size = BATCH_HEADER
            _put_buffer(&b, packed, False)
            compressed = True
        _write_be(b.data, 0, 8)  # base offset: the broker's
        _write_be(b.data + 8, b.size - 12, 4)  # length from here on
        _write_be(b.data + 12, 0xFFFFFFFFU, 4)  # no partition leader epoch
        b.data[16] = 2  # magic
        _write_be(b.data + 21, CODEC_ZSTD if compressed else 0, 2)  # attributes
        _write_be(b.data + 23, end - start - 1, 4)  # last offset delta
        _write_be(b.data + 27, <uint64_t>timestamp_ms, 8)  # first timestamp
        _write_be(b.data + 35, <uint64_t>timestamp_ms, 8)  # max timestamp
        _write_be(b.data + 43, <uint64_t>-1, 8)  # producer id: none
        _write_be(b.data + 51, 0xFFFF, 2)  # producer epoch: none
        _write_be(b.data + 53, 0xFFFFFFFFU, 4)  # base sequence: none
        _write_be(b.data + 57, end - start, 4)  # records
        crc = hep_crc32c(<const uint8_t*>b.data + ATTRIBUTES_AT, b.size - ATTRIBUTES_AT)
        _write_be(b.data + 17, crc, 4)
        return end, PyBytes_FromStringAndSize(b.data, b.size)
    finally:
        PyMem_Free(b.data)


def murmur2(data):
    """Kafka's default partitioner hash, unsigned: as pipeline.kafka_batch.murmur2."""
    cdef Py_buffer view
    cdef const uint8_t* p
    cdef Py_ssize_t length, end, i
    cdef uint32_t h, k, m = 0x5BD1E995U
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        p = <const uint8_t*>view.buf
        length = view.len
        h = 0x9747B28CU ^ <uint32_t>length
        end = length & ~3
        i = 0
        while i < end:
            k = (<uint32_t>p[i] | (<uint32_t>p[i + 1] << 8) | (<uint32_t>p[i + 2] << 16)
                 | (<uint32_t>p[i + 3] << 24))
            k *= m
            k ^= k >> 24
            h = (h * m) ^ (k * m)
            i += 4
        if length & 3:
            if (length & 3) == 3:
                h ^= <uint32_t>p[end + 2] << 16
            if (length & 3) >= 2:
                h ^= <uint32_t>p[end + 1] << 8
            h = (h ^ p[end]) * m
        h ^= h >> 13
        h *= m
        return h ^ (h >> 15)
    finally:
        PyBuffer_Release(&view)
include "_speedups_rows.pxi"
