"""The only errors the HEP codec raises.

    HepError
     └── HepDecodeError(reason)   malformed input; `reason` is a metric label

Callers catch `HepDecodeError` alone and count `reason`; nothing else may escape the
codec for any input bytes.
"""

from __future__ import annotations


class HepError(Exception):
    """Base of the codec's errors."""


class HepDecodeError(HepError, ValueError):
    """Input that is not a valid HEP packet.

    `reason` is short, stable and machine-readable (a Prometheus label value):
    bad_magic, truncated, bad_length, bad_chunk_length, bad_fixed_size,
    bad_address_family, bad_compressed_payload, duplicate_chunk, too_many_chunks,
    payload_too_large, too_large, ...
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)
