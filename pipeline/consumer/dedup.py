"""Duplicate captures: the same SIP message captured by two agents, stored once.

Two agents on one path (a proxy's siptrace and a heplify on the same host, or two
receivers fed by one mirror) capture the same message within milliseconds of each other:
the same payload under a capture id, record id and receive time of its own. A
retransmission has the same payload too, but comes a retransmission timer later (SIP's
T1 is 500 ms and doubles), so a window shorter than T1 tells the two apart; heplify-server
uses the same rule with a 500 ms cache of payload hashes per process.

Here the key is the payload itself (no hash collisions) and the state is kept per Kafka
partition. A call's packets share a partition whichever receiver published them, so the
check is exact across any number of receivers and consumer workers. A record is a
duplicate of an earlier one with the same key whose capture time is less than the
window away and an earlier offset. The entry remembers the offset of the record that made
it, so a record read again after a seek back (a fenced batch) is never taken for a
duplicate of itself or of a later copy: a record is dropped only when a copy at an
earlier offset was stored.

Pure code: no I/O, clock or configuration; the worker decides what to do with the rows
this marks.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Final

from pipeline.storage.rows import FACTS, CaptureRow

# What the check reads of a row: its facts (`CaptureRow.facts`), not its values.
_HEP_TYPE: Final = FACTS.index("hep_type")
_CAPTURE_ID: Final = FACTS.index("capture_id")
_CAPTURE_TIME: Final = FACTS.index("capture_time")
_PAYLOAD: Final = FACTS.index("payload")
_SIP: Final = 1


@dataclass(frozen=True, slots=True)
class DedupSettings:
    """What counts as a duplicate capture, and what becomes of it."""

    #: Capture times closer than this are one message captured twice; 0 turns it off.
    window_ms: int = 0
    #: Only copies from the same capture agent (capture id) count as duplicates.
    match_capture_id: bool = False
    #: Store duplicates in ``hep_capture_duplicates`` instead of dropping them.
    keep: bool = False
    #: Messages remembered per partition; the oldest go first when it is full.
    max_entries: int = 100_000

    def __post_init__(self) -> None:
        if self.window_ms < 0:
            raise ValueError("window_ms must not be negative")
        if self.max_entries < 1:
            raise ValueError("max_entries must be at least 1")

    @property
    def enabled(self) -> bool:
        return self.window_ms > 0


@dataclass(slots=True)
class _Seen:
    capture_time: int  # µs since the epoch
    offset: int


class RecentMessages:
    """The SIP messages of one partition seen within the window, oldest first."""

    def __init__(self, window_us: int, max_entries: int) -> None:
        self._window_us = window_us
        self._max_entries = max_entries
        self._seen: dict[Hashable, _Seen] = {}
        self._newest = 0
        #: Entries pushed out by `max_entries` while still inside the window: a copy of
        #: their message arriving later is stored twice.
        self.evicted_early = 0

    def __len__(self) -> int:
        return len(self._seen)

    def is_duplicate(self, key: Hashable, capture_time: int, offset: int) -> bool:
        """Whether the message at `offset` repeats one seen less than the window away."""
        self._newest = max(self._newest, capture_time)
        self._expire()
        seen = self._seen.get(key)
        if seen is not None and abs(capture_time - seen.capture_time) < self._window_us:
            # Only a copy at an earlier offset makes a duplicate: that one was stored. An
            # entry at this offset or later is this record's own, or one of a read before a
            # seek back; either way this record is stored.
            return seen.offset < offset
        # First sight, or a retransmission: later copies are measured against this one.
        self._seen.pop(key, None)
        self._seen[key] = _Seen(capture_time, offset)
        if len(self._seen) > self._max_entries:
            oldest = next(iter(self._seen))
            if self._seen.pop(oldest).capture_time > self._newest - self._window_us:
                self.evicted_early += 1
        return False

    def _expire(self) -> None:
        horizon = self._newest - self._window_us
        seen = self._seen
        while seen:
            oldest = next(iter(seen))
            if seen[oldest].capture_time > horizon:
                return
            del seen[oldest]


class DuplicateFilter:
    """Marks duplicate captures in the rows of each partition, in offset order."""

    def __init__(self, settings: DedupSettings) -> None:
        self.settings = settings
        self._partitions: dict[int, RecentMessages] = {}
        #: Messages forgotten while still inside the window (see RecentMessages).
        self.evicted_early = 0

    def duplicates(
        self, partition: int, rows: Sequence[CaptureRow], offsets: Sequence[int]
    ) -> list[int]:
        """Positions in `rows` (read from `offsets` of `partition`) that are duplicates."""
        recent = self._partitions.get(partition)
        if recent is None:
            recent = self._partitions[partition] = RecentMessages(
                self.settings.window_ms * 1000, self.settings.max_entries
            )
        found = []
        evicted_before = recent.evicted_early
        for position, row in enumerate(rows):
            facts = row.facts
            if facts[_HEP_TYPE] != _SIP:
                continue
            key = self.key(facts)
            if recent.is_duplicate(key, _micros(facts[_CAPTURE_TIME]), offsets[position]):
                found.append(position)
        self.evicted_early += recent.evicted_early - evicted_before
        return found

    def key(self, facts: Sequence[object]) -> Hashable:
        """What two captures of one message share: the payload exactly (`FACTS`'s
        ``payload``), and the capture id with --dedup-match-capture-id."""
        payload = facts[_PAYLOAD]
        if self.settings.match_capture_id:
            return (facts[_CAPTURE_ID], payload)
        return payload

    def forget(self, partition: int) -> None:
        """Drop a partition's state (it was revoked: its next owner starts afresh)."""
        self._partitions.pop(partition, None)

    @property
    def remembered(self) -> int:
        return sum(len(recent) for recent in self._partitions.values())


def _micros(moment: object) -> int:
    if type(moment) is int:
        return moment
    raise TypeError(f"capture time is {type(moment).__name__}, not microseconds")
