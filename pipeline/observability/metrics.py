"""Prometheus exposition. Metrics live in a registry handed in, never created at import."""

from __future__ import annotations

from contextlib import suppress

from prometheus_client import CollectorRegistry, Info, start_http_server


def parse_host_port(value: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """'HOST:PORT', ':PORT' or '[v6]:PORT' -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    host = host.strip("[]") or default_host
    port_number = int(port)
    if not 0 <= port_number <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return host, port_number


def serve_metrics(registry: CollectorRegistry, address: str) -> None:
    """Serve /metrics on a daemon thread (prometheus_client's own server)."""
    host, port = parse_host_port(address)
    start_http_server(port, addr=host, registry=registry)


def register_build_info(registry: CollectorRegistry) -> None:
    """hep_ingest_build_info{version, implementation="compiled|pure"} 1, once per registry.

    `implementation` says whether the per-packet code runs compiled or on the pure-Python
    reference (pipeline.accel).
    """
    from pipeline.accel import IMPLEMENTATION
    from pipeline.version import package_version

    info = Info("hep_ingest_build", "Version and per-packet implementation.", registry=None)
    info.info({"version": package_version(), "implementation": IMPLEMENTATION})
    # Already there when the receiver and the consumer share one registry (`up`).
    with suppress(ValueError):
        registry.register(info)
