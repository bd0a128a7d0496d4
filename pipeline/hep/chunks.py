"""HEPv3 chunk numbers, vendor ids, fixed body sizes and payload protocol-type names.

Values follow the HEP3 specification (REV 37) as summarised in PROTOCOL.md.
"""

from __future__ import annotations

from typing import Final

# Generic chunk types (vendor id 0).
IP_FAMILY: Final = 0x0001
IP_PROTO: Final = 0x0002
IPV4_SRC: Final = 0x0003
IPV4_DST: Final = 0x0004
IPV6_SRC: Final = 0x0005
IPV6_DST: Final = 0x0006
SRC_PORT: Final = 0x0007
DST_PORT: Final = 0x0008
TS_SEC: Final = 0x0009
TS_USEC: Final = 0x000A
PROTO_TYPE: Final = 0x000B
CAPTURE_ID: Final = 0x000C
KEEP_ALIVE: Final = 0x000D
AUTH_KEY: Final = 0x000E
PAYLOAD: Final = 0x000F
PAYLOAD_COMPRESSED: Final = 0x0010
CORRELATION_ID: Final = 0x0011
VLAN_ID: Final = 0x0012
NODE_NAME: Final = 0x0013
SRC_MAC: Final = 0x0014
DST_MAC: Final = 0x0015
ETH_TYPE: Final = 0x0016
TCP_FLAGS: Final = 0x0017
IP_TOS: Final = 0x0018
MOS: Final = 0x0020
R_FACTOR: Final = 0x0021
GEO_LOCATION: Final = 0x0022
JITTER: Final = 0x0023
TRANSACTION_TYPE: Final = 0x0024
PAYLOAD_JSON_KEYS: Final = 0x0025
TAG_VALUES: Final = 0x0026
TAG_TYPE: Final = 0x0027
EVENT_TYPE: Final = 0x0028
GROUP_ID: Final = 0x0029

CHUNK_NAMES: Final[dict[int, str]] = {
    IP_FAMILY: "ip_family",
    IP_PROTO: "ip_proto",
    IPV4_SRC: "ipv4_src",
    IPV4_DST: "ipv4_dst",
    IPV6_SRC: "ipv6_src",
    IPV6_DST: "ipv6_dst",
    SRC_PORT: "src_port",
    DST_PORT: "dst_port",
    TS_SEC: "ts_sec",
    TS_USEC: "ts_usec",
    PROTO_TYPE: "proto_type",
    CAPTURE_ID: "capture_id",
    KEEP_ALIVE: "keep_alive",
    AUTH_KEY: "auth_key",
    PAYLOAD: "payload",
    PAYLOAD_COMPRESSED: "payload_compressed",
    CORRELATION_ID: "correlation_id",
    VLAN_ID: "vlan_id",
    NODE_NAME: "node_name",
    SRC_MAC: "src_mac",
    DST_MAC: "dst_mac",
    ETH_TYPE: "eth_type",
    TCP_FLAGS: "tcp_flags",
    IP_TOS: "ip_tos",
    MOS: "mos",
    R_FACTOR: "r_factor",
    GEO_LOCATION: "geo_location",
    JITTER: "jitter",
    TRANSACTION_TYPE: "transaction_type",
    PAYLOAD_JSON_KEYS: "payload_json_keys",
    TAG_VALUES: "tag_values",
    TAG_TYPE: "tag_type",
    EVENT_TYPE: "event_type",
    GROUP_ID: "group_id",
}

# Body size (chunk length minus the 6-byte chunk header) of every generic type whose
# body is an integer or an address. Any other size is malformed: a decoder that read a
# short body as an integer would silently invent a value.
FIXED_BODY_SIZES: Final[dict[int, int]] = {
    IP_FAMILY: 1,
    IP_PROTO: 1,
    IPV4_SRC: 4,
    IPV4_DST: 4,
    IPV6_SRC: 16,
    IPV6_DST: 16,
    SRC_PORT: 2,
    DST_PORT: 2,
    TS_SEC: 4,
    TS_USEC: 4,
    PROTO_TYPE: 1,
    CAPTURE_ID: 4,
    KEEP_ALIVE: 2,
    VLAN_ID: 2,
    SRC_MAC: 8,
    DST_MAC: 8,
    ETH_TYPE: 2,
    TCP_FLAGS: 1,
    IP_TOS: 1,
    MOS: 2,
    R_FACTOR: 2,
    JITTER: 4,
    TAG_TYPE: 2,
    EVENT_TYPE: 2,
}

# Generic types that map to a HepPacket field; every other generic type is kept in
# HepPacket.extra_chunks.
DEDICATED_TYPES: Final[frozenset[int]] = frozenset(
    {
        IP_FAMILY,
        IP_PROTO,
        IPV4_SRC,
        IPV4_DST,
        IPV6_SRC,
        IPV6_DST,
        SRC_PORT,
        DST_PORT,
        TS_SEC,
        TS_USEC,
        PROTO_TYPE,
        CAPTURE_ID,
        KEEP_ALIVE,
        AUTH_KEY,
        PAYLOAD,
        PAYLOAD_COMPRESSED,
        CORRELATION_ID,
        VLAN_ID,
        NODE_NAME,
    }
)

VENDOR_GENERIC: Final = 0
VENDOR_NAMES: Final[dict[int, str]] = {
    0: "generic",
    1: "freeswitch",
    2: "kamailio",
    3: "opensips",
    4: "asterisk",
    5: "homer",
    6: "sipxecs",
    7: "yeti",
    8: "genesys",
}

FAMILY_IPV4: Final = 2
FAMILY_IPV6: Final = 10

PROTO_TYPE_NAMES: Final[dict[int, str]] = {
    1: "SIP",
    2: "XMPP",
    3: "SDP",
    4: "RTP",
    5: "RTCP",
    6: "MGCP",
    7: "MEGACO",
    8: "M2UA",
    9: "M3UA",
    10: "IAX",
    13: "M2PA",
    32: "QOS_REPORT",
    34: "RTP_AGENT",
    35: "RTCP_XR",
    38: "ORACLE_SBC_QOS",
    50: "SIP_JSON",
    53: "DNS",
    54: "ISUP",
    55: "RTSP",
    56: "DIAMETER",
    57: "GSM_MAP",
    58: "RTCP_PION",
    60: "CDR",
    61: "VERTO",
    99: "QOS_REPORT",
    100: "LOG",
    101: "CDR_JSON",
}


def proto_type_name(proto_type: int) -> str:
    """Name of a payload protocol type; unknown values stay countable as "unknown-N"."""
    name = PROTO_TYPE_NAMES.get(proto_type)
    return name if name is not None else f"unknown-{proto_type}"


def vendor_name(vendor: int) -> str:
    name = VENDOR_NAMES.get(vendor)
    return name if name is not None else f"vendor-{vendor}"
