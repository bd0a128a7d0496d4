"""Pure HEP codec: decode HEPv1/v2/v3, encode HEPv3, frame HEPv1/v2/v3 TCP streams.

No I/O, logging, clock or asyncio: the receiver owns those.
"""

from pipeline.hep.chunks import PROTO_TYPE_NAMES, proto_type_name
from pipeline.hep.decode import MAX_CHUNKS, MAX_INFLATED_PAYLOAD, MAX_PACKET_SIZE, decode_packet
from pipeline.hep.encode import encode_hep3
from pipeline.hep.errors import HepDecodeError, HepError
from pipeline.hep.framer import HepStreamFramer
from pipeline.hep.packet import HepChunk, HepPacket

__all__ = [
    "MAX_CHUNKS",
    "MAX_INFLATED_PAYLOAD",
    "MAX_PACKET_SIZE",
    "PROTO_TYPE_NAMES",
    "HepChunk",
    "HepDecodeError",
    "HepError",
    "HepPacket",
    "HepStreamFramer",
    "decode_packet",
    "encode_hep3",
    "proto_type_name",
]
