"""The offsets a batch claims, stored with its rows (see docs/architecture.md).

Pure values: the consumer builds them, the PostgreSQL sink applies them with a
compare-and-set in the batch's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

#: In `BatchOutcome.fenced`: the partition has no stored offset row although its claim
#: expected one (the commit that created the row was lost in a crash, or the row was
#: deleted while the group ran).
NO_STORED_OFFSET: Final = -1


@dataclass(frozen=True, slots=True)
class OffsetClaim:
    """Move one partition's stored offset from `expected` to `next_offset`.

    `expected` is the next_offset this worker read (or last stored) for the partition;
    None when no row was stored for it yet (the claim then creates the row, and fails
    if another worker created it first).
    """

    partition: int
    expected: int | None
    next_offset: int


@dataclass(frozen=True, slots=True)
class BatchOffsets:
    """Every claim of one batch, for one consumer group and topic."""

    group: str
    topic: str
    claims: tuple[OffsetClaim, ...] = ()


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What a batch write did.

    `rejected`: rows PostgreSQL refused (objects with .row and .reason), stored nowhere.
    `fenced`: partition -> the next_offset stored for it (`NO_STORED_OFFSET`: no row),
    for every claim whose expected offset was not the stored one; when any claim is
    fenced nothing of the batch was written (the transaction rolled back) and the
    caller writes again without those partitions.
    """

    rejected: list[Any] = field(default_factory=list)
    fenced: dict[int, int] = field(default_factory=dict)
