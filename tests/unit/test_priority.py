"""Niceness of the processes that share a machine (pipeline.priority), in child processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.priority import raise_nice

CHECK = """
import os, sys
from pipeline.observability import configure_logging, get_logger
from pipeline.priority import set_nice
configure_logging("info", "json")
log = get_logger("test")
if len(sys.argv) > 2:
    # Give up root only now, with everything imported: the interpreter may live where
    # the unprivileged user cannot read (a pyenv under a private /root).
    os.setgid(int(sys.argv[2]))
    os.setuid(int(sys.argv[2]))
ok = set_nice(int(sys.argv[1]), log)
print(ok, os.getpriority(os.PRIO_PROCESS, 0))
"""
NOBODY = 65534


def run_set_nice(value: int, uid: int | None = None) -> tuple[str, str]:
    extra = [] if uid is None else [str(uid)]
    result = subprocess.run(
        [sys.executable, "-c", CHECK, str(value), *extra], capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip(), result.stderr


def test_set_nice_raises_the_niceness_and_zero_leaves_it() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    target = min(19, base + 5)
    assert run_set_nice(target)[0] == f"True {target}"
    assert run_set_nice(0)[0] == f"True {base}"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a child without privilege")
def test_set_nice_without_the_privilege_warns_once_and_goes_on() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    out, err = run_set_nice(-5, uid=NOBODY)
    assert out == f"False {base}"
    assert err.count("nice_not_permitted") == 1


def test_raise_nice_only_ever_raises() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    show = [sys.executable, "-c", "import os; print(os.getpriority(os.PRIO_PROCESS, 0))"]
    raised = subprocess.run(show, preexec_fn=raise_nice(base + 3), capture_output=True,
                            text=True, check=True)  # fmt: skip
    assert int(raised.stdout) == min(19, base + 3)
    kept = subprocess.run(show, preexec_fn=raise_nice(base - 3), capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert int(kept.stdout) == base
