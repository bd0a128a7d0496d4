"""Child processes that do not outlive their parent, even when it is SIGKILLed.

A process killed with SIGKILL runs no clean-up, so the servers `hep-ingest up`
started and the workers of a `--workers` supervisor would be left running. Linux can
signal a child when its parent dies (``prctl(PR_SET_PDEATHSIG)``); `die_with_parent`
makes a `preexec_fn` that asks for it.

Two limits of the kernel feature shape its use:
- the signal is sent when the *thread* that started the child exits, not the
  process: start such children from a thread that lives as long as the parent (the
  main thread, or an executor thread, which lives until the loop's executor is shut
  down, after `up` has stopped its servers);
- it does not survive a fork, so it cannot follow a server that daemonizes (pg_ctl
  starts the PostgreSQL postmaster that way): `pipeline.embedded.watchdog` covers it.

Elsewhere than Linux `die_with_parent` returns None (no preexec_fn): children then
outlive a killed parent as before.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` that has the child sent `signum` when this process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    # Looked up here, not in the child: between fork and exec only async-signal-safe
    # work is sound when other threads exist (a symbol lookup may take a lock).
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
        # The parent may have died between fork and prctl: then no signal would come.
        if os.getppid() != parent:
            os.kill(os.getpid(), signum)

    return preexec
