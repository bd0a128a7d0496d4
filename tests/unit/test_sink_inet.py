"""The cached binary inet encoder of rows in wire form writes what asyncpg's own
encoder writes."""

from __future__ import annotations

import ipaddress

import pytest

from pipeline.postgres import sink
from pipeline.storage import wire


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.0.0.1", bytes((2, 32, 0, 4, 10, 0, 0, 1))),
        ("::1", bytes((3, 128, 0, 16)) + bytes(15) + b"\x01"),
        ("10.0.0.1/24", bytes((2, 24, 1, 4, 10, 0, 0, 1))),
        (ipaddress.ip_address("192.0.2.7"), bytes((2, 32, 0, 4, 192, 0, 2, 7))),
    ],
)
def test_encode_inet(value: object, expected: bytes) -> None:
    assert wire.encode_inet(value) == expected
    assert wire.encode_inet(value) == expected  # from the cache for strings
    decoded = sink._decode_inet(expected)
    assert str(decoded) == str(ipaddress.ip_interface(value) if "/" in str(value)
                               else ipaddress.ip_address(value))


@pytest.mark.parametrize("bad", ["not-an-address", "", "1.2.3.4/33"])
def test_encode_inet_rejects_non_addresses(bad: str) -> None:
    with pytest.raises(ValueError):
        wire.encode_inet(bad)
    assert bad not in wire._inet_cache


def test_inet_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire, "_INET_CACHE_MAX", 4)
    monkeypatch.setattr(wire, "_inet_cache", {})
    for n in range(10):
        wire.encode_inet(f"10.0.0.{n}")
        assert len(wire._inet_cache) <= 4
