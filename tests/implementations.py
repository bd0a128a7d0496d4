"""The two implementations of the per-packet functions, for tests that run against both.

`PURE` is the readable reference (pipeline.hep.decode, pipeline.sip.callid,
pipeline.records); `COMPILED` is the pipeline._speedups extension, or None when the
package was installed without it (no C compiler): its tests then skip with that reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from types import ModuleType
from typing import Any

from pipeline.hep.decode import decode_packet
from pipeline.hep.packet import HepPacket
from pipeline.records.codec import RecordCodec
from pipeline.records.datagrams import datagram_encoder
from pipeline.records.mapping import record_key
from pipeline.records.packetwrite import packet_encoder
from pipeline.sip.callid import scan_call_id

NOT_BUILT = (
    "pipeline._speedups is not built (installed without a C compiler or Python headers): "
    "only the pure implementation is tested"
)


@dataclass(frozen=True)
class Implementation:
    name: str
    decode_packet: Callable[[bytes | memoryview], HepPacket]
    scan_call_id: Callable[..., bytes | None]
    record_key: Callable[[HepPacket], bytes | None]
    packet_encoder: Callable[[RecordCodec], Any]
    datagram_encoder: Callable[[RecordCodec], Any]

    def __repr__(self) -> str:
        return self.name


def _compiled_module() -> ModuleType | None:
    try:
        return import_module("pipeline._speedups")
    except ImportError:
        return None


PURE = Implementation(
    "pure", decode_packet, scan_call_id, record_key, packet_encoder, datagram_encoder
)

_module = _compiled_module()
COMPILED = (
    None
    if _module is None
    else Implementation(
        "compiled",
        _module.decode_packet,
        _module.scan_call_id,
        _module.record_key,
        _module.packet_encoder,
        _module.datagram_encoder,
    )
)


#: Carried over to the processes a test starts: a run on the pure path (the README's
#: test command runs part of the suite so, tests/integration/test_pure_path.py) starts
#: its receivers and consumers on it too.
KEPT_SETTINGS = ("HEP_INGEST_PURE_PYTHON",)


def clean_env() -> dict[str, str]:
    """This environment without the HEP_INGEST_* settings a developer may have set."""
    return {
        k: v for k, v in os.environ.items()
        if not k.startswith("HEP_INGEST_") or k in KEPT_SETTINGS
    }  # fmt: skip
