"""Where binary output goes: a file replaced only when complete, or a non-terminal stdout."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from pipeline.commands.binary_output import binary_output


def test_a_terminal_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    with pytest.raises(typer.BadParameter, match="terminal"), binary_output(None):
        pass


def test_a_file_is_replaced_only_when_all_is_written(tmp_path: Path) -> None:
    path = tmp_path / "call.pcap"
    path.write_bytes(b"previous")
    with pytest.raises(RuntimeError), binary_output(path) as out:
        out.write(b"half")
        raise RuntimeError("the query failed")
    assert path.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [path]
    with binary_output(path) as out:
        out.write(b"complete")
    assert path.read_bytes() == b"complete" and list(tmp_path.iterdir()) == [path]
