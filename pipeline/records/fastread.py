"""A compiled Avro binary reader, the counterpart of `fastwrite`.

fastavro's `schemaless_reader` costs ~11 us per HEP record and turns timestamps into
datetime objects the consumer would convert straight back. The consumer's target
(60k rows/s per worker) leaves no room for that, so each record schema is compiled
once into the source of one Python function (no call per field, inline one-byte
varints) and returns plain values: timestamps stay integer microseconds. Records of
an older writer schema are read with that schema and then completed with the newest
schema's defaults: our evolution rule only ever adds fields with defaults, so that is
the whole of schema resolution we need.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Reader = Callable[[bytes, int], tuple[Any, int]]


class AvroReadError(ValueError):
    """The body does not match the schema (truncated, bad varint, bad union index)."""


def read_long(buf: bytes, pos: int) -> tuple[int, int]:
    shift = 0
    result = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise AvroReadError("varint too long")


def read_boolean(buf: bytes, pos: int) -> tuple[bool, int]:
    byte = buf[pos]
    if byte > 1:
        raise AvroReadError("bad boolean")
    return byte == 1, pos + 1


class _Source:
    """Accumulates the generated function's lines with indentation."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.counter = 0

    def fresh(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}{self.counter}"

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)


def _emit_value(src: _Source, schema: Any, target: str, indent: int,
                named: dict[str, Any]) -> None:
    """Emit code that reads one value of `schema` into the variable `target`."""
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, list):
        index = src.fresh("u")
        _emit_long(src, index, indent)
        for position, branch in enumerate(schema):
            keyword = "if" if position == 0 else "elif"
            src.emit(indent, f"{keyword} {index} == {position}:")
            _emit_value(src, branch, target, indent + 1, named)
        src.emit(indent, "else:")
        src.emit(indent + 1, f"raise AvroReadError('union index ' + str({index}))")
        return
    kind = schema if isinstance(schema, str) else schema["type"]
    if kind == "null":
        src.emit(indent, f"{target} = None")
    elif kind in ("int", "long"):
        _emit_long(src, target, indent)
    elif kind in ("string", "bytes"):
        size = src.fresh("s")
        _emit_long(src, size, indent)
        src.emit(indent, f"if {size} < 0 or pos + {size} > len(buf):")
        src.emit(indent + 1, "raise AvroReadError('value past the end')")
        decode = ".decode()" if kind == "string" else ""
        src.emit(indent, f"{target} = buf[pos:pos + {size}]{decode}")
        src.emit(indent, f"pos += {size}")
    elif kind == "boolean":
        src.emit(indent, f"{target}, pos = read_boolean(buf, pos)")
    elif kind == "fixed":
        named[schema["name"]] = schema
        fixed_size = int(schema["size"])
        src.emit(
            indent, f"if pos + {fixed_size} > len(buf): raise AvroReadError('fixed past the end')"
        )
        src.emit(indent, f"{target} = buf[pos:pos + {fixed_size}]")
        src.emit(indent, f"pos += {fixed_size}")
    elif kind == "record":
        named[schema["name"]] = schema
        record = src.fresh("r")
        src.emit(indent, f"{record} = {{}}")
        for f in schema["fields"]:
            value = src.fresh("v")
            _emit_value(src, f["type"], value, indent, named)
            src.emit(indent, f"{record}[{f['name']!r}] = {value}")
        src.emit(indent, f"{target} = {record}")
    elif kind == "array":
        count, item = src.fresh("n"), src.fresh("i")
        src.emit(indent, f"{target} = []")
        src.emit(indent, "while True:")
        _emit_long(src, count, indent + 1)
        src.emit(indent + 1, f"if {count} == 0: break")
        src.emit(indent + 1, f"if {count} < 0:")
        src.emit(indent + 2, f"{count} = -{count}")
        src.emit(indent + 2, "_, pos = read_long(buf, pos)")
        src.emit(indent + 1, f"if {count} > len(buf): raise AvroReadError('array past the end')")
        src.emit(indent + 1, f"for _ in range({count}):")
        _emit_value(src, schema["items"], item, indent + 2, named)
        src.emit(indent + 2, f"{target}.append({item})")
    else:
        raise ValueError(f"unsupported Avro type {kind!r}")


def _emit_long(src: _Source, target: str, indent: int) -> None:
    # One- and two-byte varints (lengths, ports, small ids) are most of what we read.
    src.emit(indent, "b = buf[pos]")
    src.emit(indent, "if b < 128:")
    src.emit(indent + 1, f"{target} = (b >> 1) ^ -(b & 1)")
    src.emit(indent + 1, "pos += 1")
    src.emit(indent, "elif buf[pos + 1] < 128:")
    src.emit(indent + 1, "b = (b & 0x7F) | (buf[pos + 1] << 7)")
    src.emit(indent + 1, f"{target} = (b >> 1) ^ -(b & 1)")
    src.emit(indent + 1, "pos += 2")
    src.emit(indent, "else:")
    src.emit(indent + 1, f"{target}, pos = read_long(buf, pos)")


def compile_reader(schema: Any) -> Reader:
    """Compile a parsed (fastavro.parse_schema) schema into one reader function.

    A truncated body raises IndexError from `buf[pos]`; callers treat it like
    AvroReadError.
    """
    src = _Source()
    src.emit(0, "def read(buf, pos):")
    _emit_value(src, schema, "result", 1, {})
    src.emit(1, "return result, pos")
    namespace: dict[str, Any] = {
        "AvroReadError": AvroReadError,
        "read_long": read_long,
        "read_boolean": read_boolean,
    }
    exec(compile("\n".join(src.lines), "<avro-reader>", "exec"), namespace)
    reader: Reader = namespace["read"]
    return reader


def missing_field_defaults(writer: Any, reader: Any) -> dict[str, Any]:
    """Fields the newest schema has and an older writer lacked, with their defaults."""
    known = {f["name"] for f in writer["fields"]}
    defaults = {}
    for f in reader["fields"]:
        if f["name"] not in known:
            if "default" not in f:
                raise ValueError(f"field {f['name']!r} was added without a default")
            defaults[f["name"]] = f["default"]
    return defaults
