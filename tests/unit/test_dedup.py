"""Duplicate captures: what the per-partition check calls a duplicate, and that every
decision repeats when records are read again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.consumer.dedup import DedupSettings, DuplicateFilter, RecentMessages
from pipeline.storage.rows import COLUMNS, CaptureRow

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def row(payload: str, ms: float, *, capture_id: int = 1, hep_type: int = 1,
        raw_bytes: bytes | None = None) -> CaptureRow:
    values: list[object] = [None] * len(COLUMNS)
    values[COLUMNS.index("raw")] = payload
    values[COLUMNS.index("raw_bytes")] = raw_bytes
    values[COLUMNS.index("hep_type")] = hep_type
    values[COLUMNS.index("capture_id")] = capture_id
    values[COLUMNS.index("create_date")] = T0 + timedelta(milliseconds=ms)
    return CaptureRow("hep_proto_1_call", tuple(values))


def check(f: DuplicateFilter, rows: list[CaptureRow], first_offset: int = 0,
          partition: int = 0) -> list[int]:
    return f.duplicates(partition, rows, list(range(first_offset, first_offset + len(rows))))


def test_a_copy_from_another_agent_within_the_window_is_a_duplicate() -> None:
    f = DuplicateFilter(DedupSettings(window_ms=500))
    rows = [row("INVITE a", 0, capture_id=1), row("INVITE a", 3, capture_id=2),
            row("INVITE b", 4, capture_id=2)]
    assert check(f, rows) == [1]


def test_a_copy_captured_first_by_the_later_agent_is_a_duplicate_too() -> None:
    # The second agent's clock (or path) may put its copy before the first one's.
    f = DuplicateFilter(DedupSettings(window_ms=500))
    assert check(f, [row("m", 10, capture_id=1), row("m", 2, capture_id=2)]) == [1]


def test_retransmissions_a_timer_later_are_kept() -> None:
    f = DuplicateFilter(DedupSettings(window_ms=500))
    rows = [row("INVITE", 0), row("INVITE", 500), row("INVITE", 1500), row("INVITE", 1502)]
    # The copy 2 ms after the third transmission is measured against that one.
    assert check(f, rows) == [3]


def test_match_capture_id_only_counts_copies_of_the_same_agent() -> None:
    f = DuplicateFilter(DedupSettings(window_ms=500, match_capture_id=True))
    rows = [row("m", 0, capture_id=1), row("m", 1, capture_id=2), row("m", 2, capture_id=1)]
    assert check(f, rows) == [2]


def test_only_sip_is_checked() -> None:
    # Identical log lines or RTCP reports within a window are distinct events.
    f = DuplicateFilter(DedupSettings(window_ms=500))
    assert check(f, [row("log", 0, hep_type=100), row("log", 1, hep_type=100)]) == []


def test_payloads_that_are_not_text_are_compared_by_their_bytes() -> None:
    f = DuplicateFilter(DedupSettings(window_ms=500))
    rows = [row("", 0, raw_bytes=b"\x00a"), row("", 1, raw_bytes=b"\x00b"),
            row("", 2, raw_bytes=b"\x00a")]
    assert check(f, rows) == [2]


def test_partitions_are_independent_and_forgotten_on_revoke() -> None:
    f = DuplicateFilter(DedupSettings(window_ms=500))
    assert check(f, [row("m", 0)], partition=0) == []
    assert check(f, [row("m", 1)], first_offset=0, partition=1) == []
    assert check(f, [row("m", 2)], first_offset=5, partition=0) == [0]
    f.forget(0)
    assert check(f, [row("m", 3)], first_offset=6, partition=0) == []


def test_a_record_read_again_is_not_a_duplicate_of_itself() -> None:
    f = DuplicateFilter(DedupSettings(window_ms=500))
    rows = [row("m", 0, capture_id=1), row("m", 1, capture_id=2)]
    assert check(f, rows) == [1]
    # A seek back (restart, fenced batch) reads offsets 0 and 1 again.
    assert check(f, rows) == [1]


def test_the_oldest_messages_go_first_when_the_state_is_full_and_are_counted() -> None:
    f = DuplicateFilter(DedupSettings(window_ms=500, max_entries=2))
    assert check(f, [row("a", 0), row("b", 1), row("c", 2)]) == []
    assert f.evicted_early == 1
    # "a" was forgotten inside its window: its copy is not recognised any more.
    assert check(f, [row("a", 3)], first_offset=3) == []
    assert check(f, [row("c", 4)], first_offset=4) == [0]


def test_expired_messages_leave_the_state() -> None:
    recent = RecentMessages(window_us=500_000, max_entries=100)
    for i in range(50):
        recent.is_duplicate(f"m{i}", i * 100_000, i)
    assert len(recent) <= 6
    assert recent.evicted_early == 0


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        DedupSettings(window_ms=-1)
    with pytest.raises(ValueError):
        DedupSettings(window_ms=1, max_entries=0)
    assert not DedupSettings().enabled


messages = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 3000),
              st.integers(1, 3)),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(messages, st.integers(0, 60))
def test_a_read_again_from_any_offset_drops_only_messages_with_a_stored_copy(
    sequence: list[tuple[str, int, int]], seek: int
) -> None:
    rows = [row(payload, ms, capture_id=agent) for payload, ms, agent in sequence]
    f = DuplicateFilter(DedupSettings(window_ms=500))
    first = set(check(f, rows))
    seek = min(seek, len(rows))
    # The batch from `seek` on was not committed (fenced): it is read again.
    again = {seek + p for p in check(f, rows[seek:], first_offset=seek)}
    stored = {i for i in range(seek) if i not in first} | {
        i for i in range(seek, len(rows)) if i not in again
    }
    for i in again:
        payload, ms, _ = sequence[i]
        assert any(
            sequence[j][0] == payload and abs(sequence[j][1] - ms) < 500
            for j in stored if j < i
        )


def test_a_read_again_within_the_window_repeats_every_decision() -> None:
    rows = [row("a", 0, capture_id=1), row("b", 1), row("a", 2, capture_id=2),
            row("a", 300, capture_id=1), row("b", 301, capture_id=3)]
    f = DuplicateFilter(DedupSettings(window_ms=500))
    assert check(f, rows) == [2, 3, 4]
    assert check(f, rows[1:], first_offset=1) == [1, 2, 3]


@settings(max_examples=200, deadline=None)
@given(messages)
def test_every_duplicate_has_an_earlier_stored_copy_within_the_window(
    sequence: list[tuple[str, int, int]]
) -> None:
    rows = [row(payload, ms, capture_id=agent) for payload, ms, agent in sequence]
    found = set(check(DuplicateFilter(DedupSettings(window_ms=500)), rows))
    for i in found:
        payload, ms, _ = sequence[i]
        assert any(
            sequence[j][0] == payload and abs(sequence[j][1] - ms) < 500
            for j in range(i) if j not in found
        )
