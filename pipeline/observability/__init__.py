"""Structured logs and Prometheus metrics shared by every command."""

from pipeline.observability.logs import configure_logging, get_logger
from pipeline.observability.metrics import parse_host_port, register_build_info, serve_metrics

__all__ = [
    "configure_logging",
    "get_logger",
    "parse_host_port",
    "register_build_info",
    "serve_metrics",
]
