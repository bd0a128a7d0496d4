"""Where a command writes binary output (a pcap file): --output FILE, or stdout when
it is not a terminal. Shared by `hep-ingest call --format pcap` and `export`."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import typer


@contextlib.contextmanager
def binary_output(path: Path | None, *, option: str = "--output") -> Iterator[BinaryIO]:
    """The file at `path` (replaced only once all is written), else stdout.

    Binary data is never sent to a terminal: that is a usage error (exit 2). A file is
    written beside its final name and renamed at the end, so a failed export leaves the
    previous file, not half a capture.
    """
    if path is None:
        if sys.stdout.isatty():
            raise typer.BadParameter(
                "refusing to write a pcap file to a terminal: pipe it "
                "(| tshark -r -) or give a file", param_hint=option)
        sys.stdout.flush()
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    partial = path.with_name(f".{path.name}.partial")
    try:
        with partial.open("wb") as out:
            yield out
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
