"""A connection the sink discards after a failed write keeps the write's own error."""

from __future__ import annotations

import asyncpg

from pipeline.postgres.sink import _discard


class _Connection:
    def __init__(self, *, released: bool) -> None:
        self.released = released
        self.terminated = False

    def terminate(self) -> None:
        if self.released:
            raise asyncpg.InterfaceError(
                "cannot call Connection.terminate(): connection has been released back to the pool"
            )
        self.terminated = True


def test_a_connection_still_held_is_terminated() -> None:
    conn = _Connection(released=False)
    _discard(conn)  # type: ignore[arg-type]
    assert conn.terminated


def test_a_connection_already_detached_after_a_crash_raises_nothing() -> None:
    conn = _Connection(released=True)
    _discard(conn)  # type: ignore[arg-type]
    assert not conn.terminated
