"""Avro records: the contract between the receiver and the consumers.

Pure code: the schema files, single-object encoding, and the mapping from a decoded
HEP packet to the record the receiver publishes.
"""

from pipeline.records.codec import (
    RecordCodec,
    RecordDecodeError,
    load_codec,
)
from pipeline.records.ids import RecordIdGenerator, record_id_text
from pipeline.records.mapping import ReceiveContext, packet_to_record, record_key

__all__ = [
    "ReceiveContext",
    "RecordCodec",
    "RecordDecodeError",
    "RecordIdGenerator",
    "load_codec",
    "packet_to_record",
    "record_id_text",
    "record_key",
]
