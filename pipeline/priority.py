"""Scheduling priority: capture before storage when both share a machine's CPUs.

The receiver cannot ask a sender to wait: a datagram that finds the socket buffer full
is lost. The consumer and PostgreSQL can fall behind and catch up (Kafka holds what
they have not stored yet). So storage runs at a higher niceness (lower priority) and the
receiver may run at a lower one (higher priority) where it is permitted to: raising a
niceness is always allowed, lowering it needs root or CAP_SYS_NICE (systemd's
``AmbientCapabilities=CAP_SYS_NICE`` or ``Nice=``, compose's ``cap_add: [SYS_NICE]``).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from pipeline.observability.logs import EventLogger

#: The niceness range of Linux (and POSIX setpriority).
NICE_MIN, NICE_MAX = -20, 19


def current_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)


def set_nice(value: int, log: EventLogger) -> bool:
    """Give this process (and the children it starts later) niceness `value`.

    0 leaves the inherited niceness alone. Not permitted (a lower niceness without
    CAP_SYS_NICE): one warning, and the process runs on at the niceness it has.
    """
    if value == 0:
        return True
    before = current_nice()
    try:
        os.setpriority(os.PRIO_PROCESS, 0, value)
    except PermissionError as exc:
        log.warning(
            "nice_not_permitted", nice=value, current=before, error=exc.strerror,
            hint="a lower niceness needs root or CAP_SYS_NICE",
        )
        return False
    log.info("nice_set", nice=value, previous=before)
    return True


def raise_nice(value: int) -> Callable[[], None]:
    """A `preexec_fn` that runs the child at niceness `value`, or the parent's if higher.

    Only ever raises the niceness, which needs no privilege, so it cannot fail for
    want of one. Servers that fork (pg_ctl daemonizes the postmaster, which forks a
    backend per connection) pass it on to all their processes.
    """

    def preexec() -> None:
        current = os.getpriority(os.PRIO_PROCESS, 0)
        if value > current:
            os.setpriority(os.PRIO_PROCESS, 0, value)

    return preexec
