"""What `hep-ingest --version` prints: the package version and the per-packet code."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    try:
        return version("hep-ingest")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def version_line() -> str:
    from pipeline.accel import IMPLEMENTATION

    return f"hep-ingest {package_version()} (per-packet code: {IMPLEMENTATION})"
