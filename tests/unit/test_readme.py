"""The README's quickstart stays runnable: the test command is CI's, the rest exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _shell_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL)]


def test_quickstart_is_two_commands_and_the_test_one_is_what_ci_runs() -> None:
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    run, test = _shell_blocks(quickstart)[:2]
    assert run == (
        "python3 -m venv .venv && .venv/bin/pip install -q -e '.[embedded]' "
        "&& .venv/bin/hep-ingest up"
    )
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci.splitlines(), "README and .ci/run must run the same test command"


def test_quickstart_sender_uses_vectors_that_ship_with_the_repository() -> None:
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    sender = _shell_blocks(quickstart)[2]
    folder = re.search(r"tests/data/hep-vectors/(\w+)/packets", sender)
    assert folder is not None
    assert len(list((ROOT / folder.group(0)).glob("*.bin"))) == 170
    assert "('127.0.0.1', 9060)" in sender
