"""Avro single-object encoding of HEP records.

A Kafka value is ``C3 01`` + the 8-byte CRC-64-AVRO fingerprint of the writer schema's
parsing canonical form (little-endian, as the Avro specification and the Java
implementation write it) + the Avro binary body. Any consumer holding the schema files
can resolve the writer schema from the fingerprint; records written with an older
schema are read into the newest one by Avro schema resolution, which is why new fields
must carry defaults.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from pipeline.records.fastread import (
    AvroReadError,
    Reader,
    compile_reader,
    missing_field_defaults,
)
from pipeline.records.fastwrite import Writer, compile_writer
from pipeline.resources import schemas_dir

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
HEADER_SIZE = 10
SCHEMA_GLOB = "hep_packet.v*.avsc"


class RecordDecodeError(ValueError):
    """A Kafka value that is not a HEP record we can read; `reason` is a metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True, slots=True)
class _SchemaVersion:
    version: int
    parsed: Any
    fingerprint: bytes
    read_body: Reader


def _schema_version(path: Path) -> int:
    # hep_packet.v12.avsc -> 12
    return int(path.name.removeprefix("hep_packet.v").removesuffix(".avsc"))


def _load_versions(directory: Path) -> list[_SchemaVersion]:
    versions = []
    for path in sorted(directory.glob(SCHEMA_GLOB), key=_schema_version):
        parsed = fastavro.parse_schema(json.loads(path.read_text()))
        fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
        versions.append(_SchemaVersion(_schema_version(path), parsed, fp, compile_reader(parsed)))
    if not versions:
        raise FileNotFoundError(f"no {SCHEMA_GLOB} in {directory}")
    return versions


@dataclass(slots=True)
class RecordCodec:
    """Writes with the newest schema; reads any known version into the newest."""

    versions: list[_SchemaVersion]
    _by_fingerprint: dict[bytes, _SchemaVersion] = field(init=False)
    _defaults: dict[bytes, dict[str, Any]] = field(init=False)
    _header: bytes = field(init=False)
    _write_body: Writer = field(init=False)

    def __post_init__(self) -> None:
        self._by_fingerprint = {v.fingerprint: v for v in self.versions}
        self._defaults = {
            v.fingerprint: missing_field_defaults(v.parsed, self.writer.parsed)
            for v in self.versions
        }
        self._header = SINGLE_OBJECT_MAGIC + self.writer.fingerprint
        self._write_body = compile_writer(self.writer.parsed)

    @property
    def writer(self) -> _SchemaVersion:
        return self.versions[-1]

    @property
    def header(self) -> bytes:
        """The single-object prefix of every value written: magic + writer fingerprint."""
        return self._header

    @property
    def fingerprint(self) -> bytes:
        return self.writer.fingerprint

    def encode(self, record: dict[str, Any]) -> bytes:
        out = bytearray(self._header)
        self._write_body(out, record)
        return bytes(out)

    def decode(self, data: bytes) -> dict[str, Any]:
        if len(data) < HEADER_SIZE:
            raise RecordDecodeError("truncated", f"{len(data)} bytes")
        if data[:2] != SINGLE_OBJECT_MAGIC:
            raise RecordDecodeError("bad_magic", data[:2].hex())
        writer = self._by_fingerprint.get(bytes(data[2:HEADER_SIZE]))
        if writer is None:
            raise RecordDecodeError("unknown_schema", data[2:HEADER_SIZE].hex())
        view = bytes(data)
        record: dict[str, Any]  # a record schema's reader returns a dict
        try:
            record, end = writer.read_body(view, HEADER_SIZE)
        except (AvroReadError, IndexError) as exc:
            raise RecordDecodeError("bad_body", str(exc) or "truncated") from exc
        if end != len(view):
            raise RecordDecodeError("trailing_bytes", f"{len(view) - end}")
        defaults = self._defaults[writer.fingerprint]
        if defaults:
            for name, value in defaults.items():
                record.setdefault(name, value)
        return record


def load_codec(directory: Path | None = None) -> RecordCodec:
    return RecordCodec(_load_versions(directory or schemas_dir()))
